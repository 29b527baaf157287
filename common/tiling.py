"""Cutting one image into the vision tower's tiles: NVILA's `dynamic` and `dynamic_s2` aspect ratios.

Shared by the PyTorch reference and the runtime (numpy + Pillow only). The vision graph takes the
tiles as its batch; how their features become one image's tokens is the tile plan's job.

Choosing a grid (both modes): among the grids of `cols x rows` tiles with min_tiles <= cols*rows <=
max_tiles, take the one whose aspect cols/rows is nearest the image's width/height. When several
are equally near, the smallest grid, unless the image has more than half the pixels of a larger
one, which then wins (the largest such).

    dynamic      the image resized to (cols*T, rows*T), cut into cols*rows tiles of T x T, row by row;
                 then, when there is more than one tile, the whole image resized to T x T (the
                 thumbnail). Each tile is projected alone: tokens = tiles x tokens per tile, tile order.
    dynamic_s2   for each scale s of s2_scales but the last: the image resized to a square of
                 (s / s2_scales[0]) x T and cut into its tiles (1, 4, ...); then for the last scale a
                 grid as above with min_tiles = (last / first)^2. The tower's features are merged back
                 per scale, resized to one grid and concatenated along channels (see merge_s2).

T is the tower's image size (448 for NVILA's SigLIP). Resizing is Pillow's bicubic, as NVILA's
preprocessing does before the image processor rescales and normalizes each tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import CheckpointError


def choose_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the grid an image of `width` x `height` is cut into (the module docstring)."""
    if not 1 <= min_tiles <= max_tiles:
        raise CheckpointError(f"tiles: need 1 <= min_tiles ({min_tiles}) <= max_tiles ({max_tiles})")
    grids = sorted({(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles}, key=lambda g: g[0] * g[1])
    aspect = width / height
    best, best_gap = (1, 1), float("inf")
    for cols, rows in grids:
        gap = abs(aspect - cols / rows)
        if gap < best_gap:
            best, best_gap = (cols, rows), gap
        elif gap == best_gap and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def cut(image: Image.Image, cols: int, rows: int, tile: int) -> list[Image.Image]:
    """The image resized to cols*tile x rows*tile, cut into tiles row by row."""
    resized = image.resize((cols * tile, rows * tile), resample=Image.Resampling.BICUBIC)
    return [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]


@dataclass(frozen=True)
class TilePlan:
    """How one image's tiles become its features.

    mode "single": one tile. "dynamic": `grid` tiles (+ a thumbnail when thumbnail), each projected
    alone. "s2": per scale square grids (scale_grids), then the last scale's `grid`.
    `grid` is (cols, rows).
    """

    mode: str
    grid: tuple[int, int] = (1, 1)
    thumbnail: bool = False
    scale_grids: tuple[int, ...] = ()  # s2: the side of each scale's square grid, the last scale excluded

    @property
    def num_tiles(self) -> int:
        cols, rows = self.grid
        return sum(s * s for s in self.scale_grids) + cols * rows + int(self.thumbnail)


def dynamic_tiles(image: Image.Image, tile: int, min_tiles: int = 1, max_tiles: int = 12
                  ) -> tuple[list[Image.Image], TilePlan]:
    cols, rows = choose_grid(*image.size, tile, min_tiles, max_tiles)
    tiles = cut(image, cols, rows, tile)
    thumbnail = len(tiles) > 1
    if thumbnail:
        tiles.append(image.resize((tile, tile), resample=Image.Resampling.BICUBIC))
    return tiles, TilePlan("dynamic", (cols, rows), thumbnail)


def s2_tiles(image: Image.Image, tile: int, scales: tuple[int, ...], max_tiles: int = 12
             ) -> tuple[list[Image.Image], TilePlan]:
    first, last = scales[0], scales[-1]
    if any(s % first for s in scales):
        raise CheckpointError(f"config.json: s2_scales {','.join(map(str, scales))} must be multiples of the first")
    sides = tuple(s // first for s in scales[:-1])
    tiles: list[Image.Image] = []
    for side in sides:
        tiles += cut(image, side, side, tile)
    min_tiles = (last // first) ** 2
    cols, rows = choose_grid(*image.size, tile, min_tiles, max(max_tiles, min_tiles))
    tiles += cut(image, cols, rows, tile)
    return tiles, TilePlan("s2", (cols, rows), False, sides)


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] weights of bicubic interpolation along one axis, as PyTorch's
    interpolate(mode="bicubic", align_corners=False) computes them: source x = (o + 0.5) * n_in / n_out
    - 0.5, Keys' cubic with a = -0.75 over the 4 nearest samples, indices clamped at the edges."""
    f = np.float32  # PyTorch computes the source positions and weights in float32 for float32 pixels
    m = np.zeros((n_out, n_in), np.float64)
    scale, a = f(n_in) / f(n_out), f(a)
    for o in range(n_out):
        x = scale * (f(o) + f(0.5)) - f(0.5)
        base = int(np.floor(x))
        t = f(x - f(base))
        for k, d in zip(range(-1, 3), (t + f(1), t, f(1) - t, f(2) - t)):  # each sample's distance from x
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            m[o, min(max(base + k, 0), n_in - 1)] += float(w)
    return m


def bicubic_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] float pixels -> [C, height, width], bicubic without antialiasing (the S2 wrapper
    resizes its normalized pixel tensor this way)."""
    rows, cols = _cubic_matrix(x.shape[1], height), _cubic_matrix(x.shape[2], width)
    return np.einsum("oh,chw,pw->cop", rows, x.astype(np.float64), cols).astype(np.float32)


def s2_pixel_tiles(pixels: np.ndarray, scales: tuple[int, ...]) -> tuple[np.ndarray, "TilePlan"]:
    """VILA1.5's S2: one preprocessed picture [3, S, S] (S = scales[0], the tower's size) -> the
    tower's tiles at every scale [n, 3, S, S] and their plan. Each scale is the picture resized
    bicubically to scale x scale and cut into (scale / S)^2 tiles, row by row; the features are
    merged back onto the first scale's grid (merge_s2 with output scale 0)."""
    first = scales[0]
    if pixels.shape[1:] != (first, first) or any(s % first for s in scales):
        raise CheckpointError(f"s2: a {pixels.shape[2]}x{pixels.shape[1]} picture for scales {scales}; the first scale "
                              "must be the picture's size and the others its multiples")
    tiles = []
    for scale in scales:
        big = pixels if scale == first else bicubic_resize(pixels, scale, scale)
        k = scale // first
        tiles += [big[:, r * first:(r + 1) * first, c * first:(c + 1) * first] for r in range(k) for c in range(k)]
    sides = tuple(s // first for s in scales)
    return np.stack(tiles).astype(np.float32), TilePlan("s2", (sides[-1], sides[-1]), False, sides[:-1])


def area_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] -> [C, height, width] by area averaging: output cell i covers the input cells
    floor(i*H/height) .. ceil((i+1)*H/height) - 1, each weighted alike (PyTorch's "area" mode)."""

    def along(a: np.ndarray, out: int, axis: int) -> np.ndarray:
        n = a.shape[axis]
        if n == out:
            return a
        starts = [(i * n) // out for i in range(out)]
        ends = [-(-((i + 1) * n) // out) for i in range(out)]
        return np.stack([np.take(a, range(s, e), axis=axis).mean(axis=axis) for s, e in zip(starts, ends)], axis=axis)

    return along(along(np.asarray(x, np.float32), height, 1), width, 2).astype(np.float32)


def merge_grid(tiles: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """[rows*cols, side*side, C] features of tiles in row order -> one map [C, rows*side, cols*side]."""
    n, p, c = tiles.shape
    side = int(round(p ** 0.5))
    grid = tiles.reshape(rows, cols, side, side, c)  # [r, c, y, x, C]
    return np.ascontiguousarray(grid.transpose(4, 0, 2, 1, 3).reshape(c, rows * side, cols * side))


def split_grid(x: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """[C, rows*h, cols*w] -> [rows*cols, h*w, C]: the inverse of merge_grid."""
    c, height, width = x.shape
    h, w = height // rows, width // cols
    blocks = x.reshape(c, rows, h, cols, w).transpose(1, 3, 2, 4, 0)  # [r, c, y, x, C]
    return np.ascontiguousarray(blocks.reshape(rows * cols, h * w, c))


def merge_s2(features: np.ndarray, plan: TilePlan, output_scale: int = -1, scales: int = 0) -> np.ndarray:
    """One image's tower features [num_tiles, P, C] -> the projector's input [blocks, P, scales*C].

    Each scale's tiles are merged into one map, every map is area-resized to the map of scale
    `output_scale` (NVILA: -1, the last), the maps are concatenated along channels, and the result
    is cut back into tower-sized blocks, row by row (the projector runs on each block). A picture
    seen whole (a video frame: plan mode "single") is one block, its features repeated `scales`
    times along channels, as NVILA does for pictures it does not tile."""
    if plan.mode == "single":
        if scales < 1 or features.shape[0] != 1:
            raise ValueError("s2: a whole picture is one tile, repeated over the model's scales")
        return np.concatenate([features] * scales, axis=-1)
    maps, start = [], 0
    grids = [(s, s) for s in plan.scale_grids] + [plan.grid]
    for cols, rows in grids:
        maps.append(merge_grid(features[start:start + cols * rows], cols, rows))
        start += cols * rows
    if start != features.shape[0]:
        raise ValueError(f"s2: {features.shape[0]} tiles of features for a plan of {start}")
    out_cols, out_rows = grids[output_scale]
    _, height, width = maps[output_scale].shape
    merged = np.concatenate([area_resize(m, height, width) for m in maps], axis=0)
    return split_grid(merged, out_cols, out_rows)


def merge_s2_tokens(tokens: np.ndarray, plan: TilePlan, output_scale: int = -1) -> np.ndarray:
    """The projector's output for one image's blocks [blocks, t, D] -> its tokens [blocks*t, D], in
    row order over the whole merged map (not block after block)."""
    cols, rows = ([(s, s) for s in plan.scale_grids] + [plan.grid])[output_scale]
    merged = merge_grid(tokens, cols, rows)  # [D, rows*k, cols*k]
    return np.ascontiguousarray(merged.reshape(merged.shape[0], -1).T)


def output_grid(plan: TilePlan, output_scale: int = -1) -> tuple[int, int]:
    """(cols, rows) of tower-sized blocks the projector sees for one image."""
    if plan.mode != "s2":
        return plan.grid  # (1, 1) for a picture seen whole
    return ([(s, s) for s in plan.scale_grids] + [plan.grid])[output_scale]


def s2_image_embeds(features: np.ndarray, plans: list[TilePlan], project, output_scale: int = -1,
                    scales: int = 0) -> list[np.ndarray]:
    """Tower features of all images' tiles [tiles, P, C] -> one [tokens, D] array per image, through
    `project` ([blocks, P, scales*C] -> [blocks, t, D]: the projector graph, or the reference's)."""
    out, start = [], 0
    for plan in plans:
        blocks = merge_s2(features[start:start + plan.num_tiles], plan, output_scale, scales)
        start += plan.num_tiles
        tokens = np.asarray(project(blocks), np.float32)
        out.append(tokens.reshape(-1, tokens.shape[-1]) if plan.mode == "single"
                   else merge_s2_tokens(tokens, plan, output_scale))
    return out
