"""NVILA's tiling (common/tiling.py) against references written here a different way.

- The grid: the rule restated over the whole candidate set at once (nearest aspect; among the
  equally near, the largest grid with fewer than twice the image's pixels, else the smallest),
  not as the module's running comparison.
- The tiles' order: images painted with one colour per grid cell, so every tile says which cell it is.
- The S2 merge: PyTorch's own "area" interpolation and explicit loops over tiles and pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_edge.common.tiling import (area_resize, choose_grid, dynamic_tiles, merge_grid, merge_s2, merge_s2_tokens,
                                    s2_tiles, split_grid)

TILE = 28  # a small tower image size; the rule is the same at 448


def grid_reference(width, height, tile, min_tiles, max_tiles):
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles]
    gaps = {g: abs(width / height - g[0] / g[1]) for g in grids}
    nearest = [g for g in grids if gaps[g] == min(gaps.values())]
    roomy = [g for g in nearest if width * height > 0.5 * tile * tile * g[0] * g[1]]
    smallest = min(nearest, key=lambda g: g[0] * g[1])
    # the running rule keeps the first nearest, then any later (larger) one the image fills enough
    larger = [g for g in roomy if g[0] * g[1] > smallest[0] * smallest[1]]
    return max(larger, key=lambda g: g[0] * g[1]) if larger else smallest


# square, 16:9 wide, 1:3 tall, 10:1 panorama, a small 3:2 photo
SIZES = [(500, 500), (1280, 720), (300, 900), (2000, 200), (60, 40)]


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("min_tiles,max_tiles", [(1, 12), (9, 12), (1, 6)])
def test_grid_matches_the_reference(width, height, min_tiles, max_tiles):
    for tile in (TILE, 448):
        assert choose_grid(width, height, tile, min_tiles, max_tiles) == grid_reference(width, height, tile, min_tiles, max_tiles)


def test_known_grids_at_448():
    assert choose_grid(1280, 720, 448, 1, 12) == (4, 2)  # 2:1 nearest 16:9; the image fills 4x2 tiles enough
    assert choose_grid(500, 500, 448, 1, 12) == (1, 1)  # 1x1 and 2x2 equally near; too few pixels for 2x2
    assert choose_grid(1000, 1000, 448, 1, 12) == (3, 3)
    assert choose_grid(500, 500, 448, 9, 12) == (3, 3)  # dynamic_s2's last scale: at least 9 tiles


def painted(width, height, cols, rows, seed=0):
    """An image whose cell (r, c) of a cols x rows grid is one solid colour; returns it and the colours."""
    colours = np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    ys = (np.arange(height) * rows) // height
    xs = (np.arange(width) * cols) // width
    return Image.fromarray(colours[ys][:, xs]), colours


def centre(tile: Image.Image) -> np.ndarray:
    a = np.asarray(tile).astype(int)
    h, w = a.shape[:2]
    return a[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2].reshape(-1, 3).mean(0)


@pytest.mark.parametrize("width,height", SIZES[:4])
def test_dynamic_tiles_come_row_by_row_then_the_thumbnail(width, height):
    cols, rows = choose_grid(width, height, TILE, 1, 12)
    image, colours = painted(width, height, cols, rows)
    tiles, plan = dynamic_tiles(image, TILE, 1, 12)
    assert plan.grid == (cols, rows) and plan.num_tiles == len(tiles)
    assert all(t.size == (TILE, TILE) for t in tiles)
    assert len(tiles) == cols * rows + (1 if cols * rows > 1 else 0)
    for k in range(cols * rows):
        np.testing.assert_allclose(centre(tiles[k]), colours[k // cols, k % cols], atol=2)
    if plan.thumbnail:  # the whole image, small
        np.testing.assert_array_equal(np.asarray(tiles[-1]), np.asarray(image.resize((TILE, TILE), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize("width,height", SIZES[:4])
def test_s2_tiles_are_each_scale_in_turn(width, height):
    scales = (TILE, 2 * TILE, 3 * TILE)
    tiles, plan = s2_tiles(Image.new("RGB", (width, height)), TILE, scales, 12)
    cols, rows = choose_grid(width, height, TILE, 9, 12)
    assert plan.scale_grids == (1, 2) and plan.grid == (cols, rows)
    assert len(tiles) == plan.num_tiles == 1 + 4 + cols * rows
    # the 2x2 scale's tiles in row order: paint that scale's cells and look
    image, colours = painted(width, height, 2, 2, seed=1)
    tiles, _ = s2_tiles(image, TILE, scales, 12)
    for k in range(4):
        np.testing.assert_allclose(centre(tiles[1 + k]), colours[k // 2, k % 2], atol=2)


@pytest.mark.parametrize("shape,out", [((3, 8, 8), (4, 4)), ((2, 4, 6), (8, 12)), ((2, 8, 8), (12, 20)), ((1, 5, 7), (3, 4))])
def test_area_resize_is_pytorchs_area_interpolation(shape, out, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=out, mode="area")[0].numpy()
    np.testing.assert_allclose(area_resize(x, *out), want, rtol=1e-6, atol=1e-6)


def test_merge_and_split_grid_are_inverse_and_place_tiles_by_rows(rng):
    cols, rows, side, c = 3, 2, 4, 5
    tiles = rng.standard_normal((cols * rows, side * side, c)).astype(np.float32)
    merged = merge_grid(tiles, cols, rows)
    for k in range(cols * rows):
        r, q = divmod(k, cols)
        for p in range(side * side):
            y, x = divmod(p, side)
            np.testing.assert_array_equal(merged[:, r * side + y, q * side + x], tiles[k, p])
    np.testing.assert_array_equal(split_grid(merged, cols, rows), tiles)


def test_merge_s2_against_a_torch_reference(rng):
    """Scales 1x1, 2x2 and a 3x4 last grid of 4x4-patch tiles, merged onto the last scale's grid."""
    side, c, (cols, rows) = 4, 3, (4, 3)
    tiles, plan = s2_tiles(Image.new("RGB", (4 * 100, 3 * 100)), TILE, (TILE, 2 * TILE, 3 * TILE), 12)
    assert plan.grid == (cols, rows)
    features = rng.standard_normal((plan.num_tiles, side * side, c)).astype(np.float32)

    def board(block: np.ndarray, nc: int, nr: int) -> torch.Tensor:  # [nr*nc, P, C] -> [1, C, nr*side, nc*side]
        out = torch.zeros(1, c, nr * side, nc * side)
        for k in range(nr * nc):
            r, q = divmod(k, nc)
            out[0, :, r * side:(r + 1) * side, q * side:(q + 1) * side] = torch.from_numpy(block[k].T.reshape(c, side, side))
        return out

    maps = [board(features[0:1], 1, 1), board(features[1:5], 2, 2), board(features[5:], cols, rows)]
    size = maps[-1].shape[-2:]
    want = torch.cat([torch.nn.functional.interpolate(m, size=size, mode="area") for m in maps], dim=1)[0].numpy()
    got = merge_s2(features, plan)  # [blocks, P, 3C]
    assert got.shape == (cols * rows, side * side, 3 * c)
    np.testing.assert_allclose(merge_grid(got, cols, rows), want, rtol=1e-6, atol=1e-6)
    # the projector's tokens come back in row order over the whole map
    tokens = rng.standard_normal((cols * rows, 4, 2)).astype(np.float32)  # 2x2 tokens per block
    flat = merge_s2_tokens(tokens, plan)
    assert flat.shape == (cols * rows * 4, 2)
    np.testing.assert_array_equal(flat[1], tokens[0, 1])  # row 0: block 0's first row, then block 1's
    np.testing.assert_array_equal(flat[2], tokens[1, 0])
    np.testing.assert_array_equal(flat[2 * cols], tokens[0, 2])  # row 1 starts with block 0's second row
