"""A live camera stream through vlm-camera's app: frames in, answers out, frames dropped, latency.

    python benchmarks/camera_stream.py [--engine DIR] [--seconds 30] [--fps 10] [--source rtsp|file]

The stream is our scene renderer's video (a big shape per 2-second segment, moving through the
cells, colours changing), served in real time by the loopback RTSP server of the tests
(tests/rtsp_server.py, MJPEG over RTP) or played as a live file (--source file: the realtime
file source). Without --engine, a micro model is trained here (seconds) to name the colour.
Latency is from the moment the source read a frame to the moment its answer was complete
(median and p95); "right" counts answers that name the colour of the frame they were about.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the scene video, the colour model and the RTSP server live there

PROMPT = "What colour is the shape?"


def dominant(image: np.ndarray) -> str:
    from vlm_edge.train.scenes import COLOURS

    pixels = image.reshape(-1, 3).astype(int)
    mean = pixels[pixels.max(1) - pixels.min(1) > 80].mean(0)
    return min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - mean).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", help="an engine directory (default: train the micro colour model here)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--source", choices=("rtsp", "file"), default="rtsp")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--prompt", default=PROMPT, help=f"the question (default {PROMPT!r}, the micro model's one)")
    p.add_argument("--shape", help="draw only this shape (the tiny model asks about a shape by name: "
                                   "--shape circle --prompt 'What colour is the circle?')")
    args = p.parse_args()

    from fixtures import scene_frames, train_colour_model, write_video

    import vlm_edge.edge as edge
    from vlm_edge.jetson.camera import CameraApp, CameraConfig
    from vlm_edge.jetson.sources import open_source

    work = Path(tempfile.mkdtemp(prefix="camera-bench-"))
    engine = Path(args.engine) if args.engine else train_colour_model(work / "colour")
    segments = tuple((c, args.shape or s) for c, s in (("red", "circle"), ("blue", "square"), ("green", "triangle"),
                                         ("yellow", "circle"), ("purple", "square")))
    frames, _ = scene_frames(segments, seconds=2.0, fps=int(args.fps))
    server = None
    if args.source == "rtsp":
        from rtsp_server import RtspServer

        server = RtspServer(frames, fps=args.fps).start()
        uri = server.url
    else:
        uri = str(write_video(work / "clip.mp4", frames * int(np.ceil(args.seconds / 10) + 1), fps=int(args.fps)))
    pipe = edge.load(str(engine), **({"threads": args.threads} if args.threads else {}))
    app = CameraApp(pipe, open_source(uri, realtime=True, queue_size=2), CameraConfig(args.prompt, max_new_tokens=4))
    shown = {}
    app.listeners.append(lambda kind, v: shown.__setitem__(v.index, v.image) if kind == "frame" else None)
    records, start = [], None
    for record in app.run():
        start = start or record.captured
        records.append(record)
        if record.answered - start >= args.seconds:
            app.stop()
    if server:
        server.stop()
    span = records[-1].answered - records[0].captured
    frames_in = app.stats.frames_in
    latency = sorted(r.latency for r in records)
    right = sum(r.answer == dominant(shown[r.frame]) for r in records if r.frame in shown)
    print(f"engine {engine}, source {args.source} at {args.fps:g} frames/s, {span:.1f} s")
    print("| frames in | answers | dropped | answers/s | latency median ms | latency p95 ms | right |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {frames_in} | {len(records)} | {app.stats.dropped} | {len(records) / span:.1f} | "
          f"{statistics.median(latency) * 1e3:.0f} | {latency[int(0.95 * (len(latency) - 1))] * 1e3:.0f} | "
          f"{right}/{len(records)} |")
    print(f"(frames in - answers - dropped = {frames_in - len(records) - app.stats.dropped}: frames read while the "
          "stream restarted or left waiting at the end)")
    time.sleep(0.1)


if __name__ == "__main__":
    main()
