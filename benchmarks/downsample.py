"""The fused downsample + LayerNorm kernel against PyTorch, on a GPU.

    python benchmarks/downsample.py [--side 27] [--channels 1152] [--ratio 2] [--batches 1 8 64]
                                    [--dtype float16] [--runs 200] [--no-compile]

Defaults are VILA1.5-3b's projector input (27 x 27 SigLIP tokens of 1152 channels, 2x2 blocks);
B is images per call: camera frames, or the tiles of a dynamic-resolution image. Rows:

    ours           the CUDA kernel (gpu_kernels/cuda/downsample.cu), loaded through cuda-python
    eager          PyTorch's chain: pad, view, permute, reshape, layer_norm (what the model runs)
    torch.compile  the same chain compiled by Inductor
    copy           a device-to-device copy of the same bytes: the bandwidth ceiling of this GPU

Each row: median microseconds per call over --runs (CUDA events, after 20 warm-ups), achieved
GB/s (the input read once plus the output written once, the least any implementation must
move) and that as a share of the copy row's GB/s. Needs torch with CUDA, cuda-python and nvcc.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def eager_chain(x, weight, bias, side: int, ratio: int, column_major: bool, eps: float):
    """model/projector.py's DownSample + LayerNorm, in PyTorch ops: [B, S*S, C] -> [B, T, r*r*C]."""
    import torch.nn.functional as F

    batch, _, channels = x.shape
    grid = x.view(batch, side, side, channels)
    extra = -side % ratio
    if extra:
        grid = F.pad(grid, (0, 0, 0, extra, 0, extra))
    half = (side + extra) // ratio
    blocks = grid.view(batch, half, ratio, half, ratio, channels)
    blocks = blocks.permute(0, 3, 1, 2, 4, 5) if column_major else blocks.permute(0, 1, 3, 2, 4, 5)
    tokens = blocks.reshape(batch, half * half, ratio * ratio * channels)
    return F.layer_norm(tokens, (tokens.shape[-1],), weight, bias, eps)


def time_cuda(fn, runs: int) -> float:
    """Median microseconds of fn() on the current stream."""
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=27)
    p.add_argument("--channels", type=int, default=1152)
    p.add_argument("--ratio", type=int, default=2, choices=(2, 3))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile row")
    args = p.parse_args()

    import torch

    from vlm_edge.kernels.loader import DownsampleKernel

    kernel = DownsampleKernel()
    dtype = getattr(torch, args.dtype)
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(args.dtype)
    if np_dtype is None:
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16
    side, channels, ratio = args.side, args.channels, args.ratio
    half = -(-side // ratio)
    width = ratio * ratio * channels
    compiled = torch.compile(eager_chain, dynamic=False) if args.compile else None
    print(f"GPU: {torch.cuda.get_device_name()}  sm{kernel.sm}  {args.dtype}  S={side} C={channels} r={ratio}")
    print(f"| B | row | us/call | GB/s | share of copy | vs eager |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        gen = torch.Generator(device="cuda").manual_seed(batch)
        x = torch.randn(batch, side * side, channels, device="cuda", generator=gen).to(dtype)
        weight = (torch.rand(width, device="cuda", generator=gen) + 0.5).to(dtype)
        bias = (torch.randn(width, device="cuda", generator=gen) * 0.1).to(dtype)
        y = torch.empty(batch, half * half, width, device="cuda", dtype=dtype)
        stream = torch.cuda.current_stream().cuda_stream

        def ours():
            kernel.launch(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), y.data_ptr(), batch=batch, side=side,
                          channels=channels, dtype=np_dtype, ratio=ratio, order="column_major", stream=stream)

        ours()
        torch.cuda.synchronize()
        want = eager_chain(x.float(), weight.float(), bias.float(), side, ratio, True, 1e-5)
        err = (y.float() - want).abs().max().item()
        moved = (x.numel() + y.numel()) * x.element_size()
        src = torch.empty(moved // 2 // x.element_size(), device="cuda", dtype=dtype)
        dst = torch.empty_like(src)
        rows = {"ours": ours,
                "eager": lambda: eager_chain(x, weight, bias, side, ratio, True, 1e-5)}
        if compiled is not None:
            rows["torch.compile"] = lambda: compiled(x, weight, bias, side, ratio, True, 1e-5)
        rows["copy"] = lambda: dst.copy_(src)
        times = {name: time_cuda(fn, args.runs) for name, fn in rows.items()}
        copy_gbs = moved / times["copy"] / 1e3
        for name, us in times.items():
            gbs = moved / us / 1e3
            print(f"| {batch} | {name} | {us:.1f} | {gbs:.0f} | {gbs / copy_gbs:.0%} | {times['eager'] / us:.2f}x |")
        print(f"| {batch} | (ours vs eager fp32: max abs err {err:.1e}) | | | | |")


if __name__ == "__main__":
    main()
