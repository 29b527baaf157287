"""The vision graph alone, per `vlm-export --vision` precision: ms per image and error to PyTorch.

    python benchmarks/vision.py [--checkpoint ckpt/] [--work /tmp/vision-bench] [--runs 5] [--profile]

Without --checkpoint it makes the runtime benchmark's model (`vlm-model init --preset
bench-qwen0.5b`: SigLIP so400m, 384 px, 27 layers, 729 patches -> 196 tokens; random weights).
Each precision's graph is built with export/vision.py from the same weights and timed in ONNX
Runtime on the CPU with all cores, one image (the built-in test picture), median of --runs after a
warm-up. Error: per-image cosine and max |error| / max |reference| against the PyTorch tower on
that image and two random ones. --profile adds the share of time per ONNX op type.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def op_profile(path: Path, feeds: dict) -> list[tuple[str, float]]:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    times = collections.Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["args"]["op_name"]] += e["dur"]
    total = sum(times.values())
    return [(op, t / total) for op, t in times.most_common(6)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--work", default="/tmp/vision-bench")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--precisions", default="fp32,int8,fp16")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    import torch
    from PIL import Image

    from vlm_edge.common.image import preprocess_images
    from vlm_edge.edge.bench import builtin_image
    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.validate import cosines
    from vlm_edge.export.vision import build_vision
    from vlm_edge.model import load_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.checkpoint) if args.checkpoint else work / "ckpt"
    if not (ckpt_dir / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "bench-qwen0.5b", "-o",
                        str(ckpt_dir), "--force"], check=True)
    ckpt = load_checkpoint(ckpt_dir)
    model = ckpt.model.eval()
    pre = model.image_processor_config
    rng = np.random.default_rng(0)
    images = [Image.fromarray(builtin_image(pre.height))] + [
        Image.fromarray(rng.integers(0, 256, (pre.height, pre.width, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = preprocess_images(images, pre)
    with torch.no_grad():
        ref = model.encode_images(torch.from_numpy(pixels)).float().numpy()
    state = lambda m: {k: v.detach().float().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    tower, projector = state(model.vision_tower), state(model.mm_projector)
    del ckpt, model
    rows = []
    for precision in args.precisions.split(","):
        path = work / f"vision-{precision}.onnx"
        g = GraphBuilder("vision", path)
        build_vision(g, ckpt_config(ckpt_dir), tower, projector, precision)
        g.save()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {"pixel_values": pixels})[0]
        one = {"pixel_values": pixels[:1]}
        session.run(None, one)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            session.run(None, one)
            times.append((time.perf_counter() - t0) * 1e3)
        row = {"precision": precision, "ms": statistics.median(times), "min_ms": min(times),
               "cosine_min": float(cosines(out, ref).min()),
               "rel_err": float(np.abs(out - ref).max() / np.abs(ref).max()),
               "weight_mib": (work / f"vision-{precision}.onnx.data").stat().st_size / 2**20}
        if args.profile:
            row["profile"] = op_profile(path, one)
        rows.append(row)
        del session
    base = rows[0]["ms"]
    print(f"\nvision graph, one {pre.height} px image, {ort.get_device()} ONNX Runtime {ort.__version__}\n")
    print("| precision | ms per image | vs " + rows[0]["precision"] + " | weights MiB | cosine (min of 3 images) | rel err |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['ms']:.0f} | {base / r['ms']:.2f}x | {r['weight_mib']:.0f} | "
              f"{r['cosine_min']:.5f} | {r['rel_err']:.1e} |")
    for r in rows:
        if "profile" in r:
            print(f"{r['precision']}: " + ", ".join(f"{op} {100 * share:.0f}%" for op, share in r["profile"]))


def ckpt_config(ckpt_dir: Path):
    from vlm_edge.common.vila_config import VilaConfig

    return VilaConfig.read(ckpt_dir)


if __name__ == "__main__":
    main()
