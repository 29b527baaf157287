"""VILA1.5's S2 (`s2: true`, the `-s2` releases): the preprocessed picture resized bicubically to
each scale, cut into tower-sized tiles, the tiles' features merged back per scale, area-resized onto
the first scale's grid and concatenated along channels before the projector.

Checked against PyTorch itself: the numpy bicubic resize against `interpolate(mode="bicubic")`, and
the image tokens against a long-hand PyTorch S2 (interpolate, chessboard split, the tower on each
tile, merge, `interpolate(mode="area")`, concat, projector); then exports in float and 4-bit answer
like the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fixtures import write_release_fixture
from test_nvila import _pictures, _tiled_parity, multi_scale_exports
from test_nvila import _video_parity as nvila_video_parity


@pytest.fixture(scope="module")
def vila_s2(tmp_path_factory, spm_model):
    return write_release_fixture(tmp_path_factory.mktemp("s2") / "VILA1.5-3b-s2-tiny", spm_model=spm_model, s2=True)


@pytest.mark.parametrize("size", [(84, 84), (126, 126), (100, 57), (30, 50)])
def test_bicubic_resize_matches_pytorch(size):
    from vlm_edge.common.tiling import bicubic_resize

    x = np.random.default_rng(0).standard_normal((3, 42, 42)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bicubic", align_corners=False)[0]
    np.testing.assert_allclose(bicubic_resize(x, *size), theirs.numpy(), rtol=1e-5, atol=1e-5)


def s2_long_hand(model, picture: torch.Tensor, scales) -> torch.Tensor:
    """One preprocessed picture [3, S, S] -> its image tokens, S2 written out in PyTorch."""
    first, maps = scales[0], []
    for scale in scales:
        big = torch.nn.functional.interpolate(picture[None], size=(scale, scale), mode="bicubic", align_corners=False)[0]
        k = scale // first
        tiles = torch.stack([big[:, r * first:(r + 1) * first, c * first:(c + 1) * first] for r in range(k) for c in range(k)])
        feats = model.vision_features(tiles)  # [k*k, P, C]
        side = int(round(feats.shape[1] ** 0.5))
        board = torch.zeros(feats.shape[2], k * side, k * side)
        for i in range(k * k):
            r, c = divmod(i, k)
            board[:, r * side:(r + 1) * side, c * side:(c + 1) * side] = feats[i].t().reshape(-1, side, side)
        maps.append(board)
    grid = maps[0].shape[-1]
    merged = torch.cat([torch.nn.functional.interpolate(m[None], size=(grid, grid), mode="area")[0] for m in maps])
    return model.mm_projector(merged.reshape(merged.shape[0], -1).t()[None])[0]


def test_s2_layout_loads_and_its_tokens_match_a_long_hand_reference(vila_s2, rng):
    from vlm_edge.common.image import image_token_count, load_image, preprocess_image, preprocess_tiled
    from vlm_edge.model import load_checkpoint

    ckpt = load_checkpoint(vila_s2)
    assert ckpt.config.is_s2 and ckpt.config.s2_pixels and ckpt.config.mm_hidden_size == 3 * 32
    pre = ckpt.model.image_processor_config
    assert pre.tiling == "s2" and pre.s2_scales == (42, 84, 126)
    pictures = _pictures(rng)
    pixels, plans = preprocess_tiled(pictures, pre)
    assert [p.num_tiles for p in plans] == [1 + 4 + 9] * len(pictures)
    with torch.no_grad():
        ours = ckpt.model.encode_images(torch.from_numpy(pixels), plans)
        for picture, tokens in zip(map(load_image, pictures), ours):
            whole = torch.from_numpy(preprocess_image(picture, pre))
            ref = s2_long_hand(ckpt.model, whole, pre.s2_scales)
            assert tokens.shape[0] == image_token_count(picture.size, pre, 4) == 4  # 3x3 patches -> padded 4x4 -> 2x2
            np.testing.assert_allclose(tokens.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_s2_exports_in_float_and_4_bit_and_the_runtime_matches_the_reference(vila_s2, tmp_path, rng):
    from vlm_edge.common.errors import UnsupportedFeatureError
    from vlm_edge.export.api import export_checkpoint
    from vlm_edge.export.config import ExportConfig

    multi_scale_exports(vila_s2, tmp_path, rng, "s2", _video_parity)

    with pytest.raises(UnsupportedFeatureError, match="S2"):  # said plainly, before any work
        export_checkpoint(vila_s2, tmp_path / "trt", ExportConfig(awq4=True, flavours=("ort", "trt"), method="rtn"))


def _video_parity(engine_dir, ckpt_dir, tmp_path):
    """S2 is how the tower sees any picture: each of a clip's 8 frames goes through every scale
    (NVILA's frames skip its tiling), and the runtime answers as the reference does."""
    plans = nvila_video_parity(engine_dir, ckpt_dir, tmp_path)
    assert [p.num_tiles for p in plans] == [1 + 4 + 9] * 8


def test_s2_settings_we_do_not_run_are_refused_in_one_line(vila_s2, tmp_path):
    import shutil

    from vlm_edge.common.errors import UnsupportedFeatureError
    from vlm_edge.model import load_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(vila_s2, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    for change, words in (({"s2_resize_output_to_scale_idx": 1}, "s2_resize_output_to_scale_idx=1"),
                          ({"s2_max_split_size": 21}, "s2_max_split_size=21")):
        (ckpt / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UnsupportedFeatureError, match=words):
            load_checkpoint(ckpt)
