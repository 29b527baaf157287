"""`vlm-camera`: ask an engine about a live camera or a video, answer by answer.

    vlm-camera engine/ --source csi://0 --prompt "Is the door open?"
    vlm-camera engine/ --source rtsp://cam.local:8554/live --prompt "How many people?" --web :8080
    vlm-camera engine/ --source csi://0 --prompt "Is the door open?" --web 0.0.0.0:8080 --web-key-file key
    vlm-camera engine/ --source file://clip.mp4 --prompt "What colour is the car?" --log answers.jsonl
    vlm-camera engine/ --source v4l2:///dev/video0 --prompt "Is there smoke?" --alert "yes" \\
               --alert-command "notify-send smoke" --alert-every 60

Sources: file://clip.mp4 (or a plain path; --realtime plays it as a live camera), a folder of
images, v4l2:///dev/video0 (USB), csi://0 (Jetson CSI, needs JetPack's OpenCV with GStreamer),
rtsp://... (reconnects after a drop). Query options set the capture: csi://0?width=1920&height=1080.
Each answer is printed with its frame's capture time, frame number and latency; --log appends it
to a JSONL file. Ctrl-C stops cleanly and prints a summary (frames in, answers, dropped, latency).
The live page (--web) stays on 127.0.0.1 unless given another address, which needs a key; see
docs/jetson.md for exposing it safely.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from vlm_edge.common.cli import run
from vlm_edge.common.log import setup_logging

from .webguard import KEY_ENV, KEY_MIN_CHARS, check_exposure, is_loopback, read_key


def camera_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-camera", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", help="an engine directory written by vlm-export")
    p.add_argument("--source", required=True, help="file://, a folder, v4l2://, csi:// or rtsp:// (see above)")
    p.add_argument("--prompt", required=True, help="what to ask about every frame")
    p.add_argument("--fps", type=float, help="take at most this many frames per second from the source")
    p.add_argument("--realtime", action="store_true", help="play a video file at its own speed, as a live camera "
                                                           "(frames the model cannot keep up with are dropped)")
    p.add_argument("--queue-size", type=int, default=2, help="frames waiting for the model (default 2; live sources "
                                                             "drop the oldest)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest answer (default 16)")
    p.add_argument("--log", help="append every answer to this JSONL file (whole lines only; a write that fails, "
                                 "e.g. on a full disk, is reported once and counted, and the app goes on)")
    p.add_argument("--alert", help="a regular expression: when an answer matches it, run --alert-command and/or "
                                   "post to --alert-webhook")
    p.add_argument("--alert-command", help="command to run on a match, split into words and run without a shell "
                                           "($VLM_ANSWER holds the answer, NUL removed; the answer record comes as "
                                           "JSON on stdin; stopped after 30 s)")
    p.add_argument("--alert-webhook", metavar="URL", help="http(s) URL to POST the answer record to (JSON) on a "
                                                           "match; redirects are not followed, 10 s at most; "
                                                           "link-local and multicast hosts are refused")
    p.add_argument("--alert-webhook-private", action="store_true",
                   help="let --alert-webhook post to this machine or a private (LAN) address, e.g. a home "
                        "automation hub; without it such hosts are refused")
    p.add_argument("--alert-every", type=float, default=30.0, help="seconds between alerts at most (default 30); "
                   "at most 4 alerts run at once, one more is skipped (counted as alerts_skipped)")
    p.add_argument("--web", metavar="HOST:PORT", help="serve a live page (video, answers, the prompt) here; a bare "
                                                      ":PORT listens on 127.0.0.1; another address needs a key")
    p.add_argument("--web-key-file", metavar="FILE",
                   help=f"the page's key, the file's first line (else ${KEY_ENV}); at least {KEY_MIN_CHARS} "
                        "characters, e.g. `openssl rand -hex 16 > key`. Required when --web is not loopback; every "
                        "request then needs `Authorization: Bearer KEY`, or opens /?key=KEY once in a browser")
    p.add_argument("--web-host", metavar="NAME", action="append", default=[],
                   help="a host name the page is opened by (camera.local; a reverse proxy's name); requests naming "
                        "another host than these, its address or localhost are refused (repeatable)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--retry-for", type=float, help="seconds a dropped live source keeps reconnecting (default: "
                                                   "until stopped)")
    p.add_argument("--backend", default="auto", help="runtime backend: auto, ort-cpu, ort-cuda or tensorrt")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--summary", help="write the run's summary (JSON) here at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> None:
        from vlm_edge.common.errors import InputError
        from vlm_edge.edge import load

        from .camera import CameraApp, CameraConfig
        from .sources import open_source
        from .web import WebView, parse_address

        config = CameraConfig(args.prompt, max_new_tokens=args.max_new_tokens, queue_size=args.queue_size,
                              log_path=args.log, alert=args.alert, alert_command=args.alert_command,
                              alert_webhook=args.alert_webhook, alert_every=args.alert_every,
                              alert_webhook_private=args.alert_webhook_private)
        config.validate()
        address = parse_address(args.web) if args.web else None
        if address is None and (args.web_key_file or args.web_host):
            raise InputError("--web-key-file and --web-host go with --web HOST:PORT")
        key = read_key(args.web_key_file) if address is not None else None
        if address is not None and not is_loopback(address[0]):
            check_exposure(*address, key)
            print(f"vlm-camera: warning: --web {args.web} is reachable from the network; every request needs the "
                  "key, but plain HTTP carries it and the video unencrypted (use a trusted network, an SSH tunnel "
                  "or a TLS proxy)", file=sys.stderr, flush=True)
        source = open_source(args.source, fps=args.fps, queue_size=args.queue_size, realtime=args.realtime,
                             retry_for=args.retry_for)
        pipe = load(args.engine, args.backend, **({"threads": args.threads} if args.threads else {}))
        app = CameraApp(pipe, source, config)
        web = (WebView(app, *address, key=key, host_names=tuple(args.web_host)).start()
               if address is not None else None)
        if web:
            print(f"live page: {web.url}" + (" (with the key: open /?key=KEY once, or send Authorization: Bearer "
                                             "KEY)" if key else ""), flush=True)
        timer = threading.Timer(args.duration, app.stop) if args.duration else None
        if timer:
            timer.daemon = True
            timer.start()
        previous = signal.signal(signal.SIGINT, lambda *_: app.stop())  # Ctrl-C: finish the answer, then stop
        try:
            for record in app.run():
                print(record.line(), flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)
            if timer:
                timer.cancel()
            if web:
                web.stop()
        summary = app.stats.summary()
        print("summary: " + json.dumps(summary), flush=True)
        if args.summary:
            from vlm_edge.common.fsutil import atomic_write_json

            atomic_write_json(args.summary, summary)

    return run("vlm-camera", go)


def jetson_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-jetson", description="What this Jetson is and whether an engine fits it: "
                                "module, L4T and JetPack, power mode (nvpmodel), CUDA, TensorRT, onnxruntime and "
                                "its providers, memory; with --engine, whether its TensorRT plans were built for this "
                                "device and whether its weights fit in memory. On other machines the Jetson facts "
                                "read 'unknown'.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the device's facts")
    info.add_argument("--engine", help="an engine directory to check against this device")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--root", default="/", help="read the device files under this folder (a recorded tree)")
    info.add_argument("--power", action="store_true", help="also read the power rails once (INA3221 in sysfs)")
    args = p.parse_args(argv)

    def go() -> None:
        from .device import engine_fit, probe, report
        from .telemetry import read_ina3221, total_watts

        facts = probe(args.root, commands=args.root == "/")
        fit = engine_fit(args.engine, facts) if args.engine else []
        rails = read_ina3221(args.root) if args.power else {}
        if args.json:
            out = facts.to_dict()
            if args.engine:
                out["engine"] = fit
            if args.power:
                out["rails_w"] = {name: rail.watts for name, rail in rails.items()}
                out["total_w"], out["total_source"] = total_watts(rails)
            print(json.dumps(out, indent=2))
            return
        print(report(facts))
        for line in fit:
            print(f"{'engine':<12} {line}")
        if args.power:
            watts, source = total_watts(rails)
            for name, rail in rails.items():
                print(f"{'rail':<12} {name}: " + (f"{rail.watts:.2f} W" if rail.watts is not None else "not readable"))
            print(f"{'power':<12} " + (f"{watts:.2f} W ({source})" if watts is not None else source))

    return run("vlm-jetson", go)


def bench_main(argv: list[str] | None = None) -> int:
    """vlm-bench with the Jetson power meter behind --power (the benchmark itself is vlm_edge.edge.bench)."""
    from vlm_edge.edge.bench import main

    from .telemetry import PowerMeter

    return main(argv, power_meter=PowerMeter)


if __name__ == "__main__":
    sys.exit(camera_main())
