"""`vlm-serve`: an OpenAI-compatible chat endpoint over an engine directory, on this machine.

    vlm-serve engine/                                   http://127.0.0.1:8000/v1 (loopback only)
    vlm-serve engine/ --port 9000 --api-key secret      clients send Authorization: Bearer secret
    vlm-serve engine/ --host 0.0.0.0 --api-key secret   reachable from the network (use a key)

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "engine", "messages": [{"role": "user", "content": "Repeat after me: cat dog"}]}'

Endpoints: /v1/chat/completions (stream or not), /v1/models, /health, /metrics, /docs.
The model is named after the engine directory unless --model-name says otherwise.
"""

from __future__ import annotations

import argparse
import sys

from vlm_edge.common.cli import run
from vlm_edge.common.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", help="an engine directory written by vlm-export")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1/ requests (visible in ps: prefer "
                                     "--api-key-file or the VLM_SERVE_API_KEY environment variable)")
    p.add_argument("--api-key-file", help="read the API key from this file (its first line)")
    p.add_argument("--model-name", help="the model id clients send (default: the engine directory's name)")
    p.add_argument("--backend", default="auto", choices=("auto", "ort-cpu", "ort-cuda", "tensorrt"))
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--queue-size", type=int, default=16, help="requests admitted at once, running and waiting; "
                                                              "more get 429 with Retry-After (default 16)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included (default 300)")
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens when a request gives none (default 256)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="encoded size per image (default 20 MB)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="pixels per image and per video frame, checked before decoding (default 16.7 M)")
    p.add_argument("--max-video-frames", type=int, default=20_000,
                   help="frames a video part may have; longer clips are refused with 413 (default 20000)")
    p.add_argument("--allow-local-images", action="store_true",
                   help="let image_url name files on this machine, under --image-root only")
    p.add_argument("--image-root", default=".", help="with --allow-local-images: the folder image paths must lie "
                                                     "in (default: the current folder)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="let the server fetch http(s) image URLs (public addresses only; 10 s per fetch in all)")
    p.add_argument("--allow-private-image-hosts", action="store_true",
                   help="with --allow-remote-images: also loopback and private (LAN) hosts, e.g. an IP camera; "
                        "link-local addresses (cloud metadata) stay refused")
    p.add_argument("--cors-origin", action="append", default=[], help="allow browser requests from this origin "
                                                                      "(repeatable; default: CORS off)")
    p.add_argument("--max-memory", type=float, metavar="MB",
                   help="memory for images being decoded, all requests together; more waits, and one image that "
                        "needs more is refused with 413 (default: an eighth of RAM, at most 1024 MB)")
    p.add_argument("--verify", action="store_true", help="check every engine file's SHA-256 against the manifest at "
                                                         "start (sizes are always checked)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def serve() -> None:
        from pathlib import Path

        from vlm_edge.common.errors import InputError
        from vlm_edge.common.extras import require
        from vlm_edge.common.manifest import Manifest, check_files

        require("fastapi", "vlm-serve")
        require("uvicorn", "vlm-serve")
        import uvicorn

        from .app import ServerConfig, create_app
        from .images import ImageLimits

        if not (Path(args.engine) / "manifest.json").is_file():
            raise InputError(f"{args.engine} is not an engine directory (no manifest.json); create one with vlm-export")
        check_files(args.engine, Manifest.read(args.engine), hashes=args.verify)  # a broken engine: one line, exit 2
        if args.max_memory is not None and args.max_memory <= 0:
            raise InputError("--max-memory must be > 0 (MB)")
        if args.queue_size < 1 or args.max_images < 0 or args.timeout <= 0 or args.max_tokens < 1:
            raise InputError("--queue-size and --max-tokens must be >= 1, --max-images >= 0, --timeout > 0")
        if args.allow_local_images and not Path(args.image_root).is_dir():
            raise InputError(f"--image-root {args.image_root}: not a directory")
        if args.allow_private_image_hosts and not args.allow_remote_images:
            raise InputError("--allow-private-image-hosts needs --allow-remote-images")
        if args.max_image_pixels < 1 or args.max_video_frames < 1 or args.max_image_mb <= 0:
            raise InputError("--max-image-pixels and --max-video-frames must be >= 1, --max-image-mb > 0")
        limits = ImageLimits(max_bytes=int(args.max_image_mb * (1 << 20)), max_pixels=args.max_image_pixels,
                             max_video_frames=args.max_video_frames,
                             local_root=args.image_root if args.allow_local_images else None,
                             allow_remote=args.allow_remote_images, allow_private_hosts=args.allow_private_image_hosts)
        api_key = api_key_from(args)
        if api_key is None and not _is_loopback(args.host):
            print(f"vlm-serve: warning: {args.host} is reachable from the network and no API key is set; anyone who "
                  "can reach it can use the model (set --api-key-file or VLM_SERVE_API_KEY)", file=sys.stderr)
        config = ServerConfig(args.engine, backend=args.backend, threads=args.threads, model_name=args.model_name,
                              api_key=api_key, queue_size=args.queue_size, timeout=args.timeout,
                              default_max_tokens=args.max_tokens, max_images=args.max_images, limits=limits,
                              cors_origins=tuple(args.cors_origin),
                              max_memory=None if args.max_memory is None else int(args.max_memory * (1 << 20)))
        from vlm_edge.edge import load

        # Loaded before the port is bound: a broken engine is one line and exit code 2, not a 503 later.
        pipe = load(config.engine, config.backend, threads=config.threads)
        print(f"serving {config.name!r} at http://{args.host}:{args.port}/v1 (health: /health, docs: /docs)",
              file=sys.stderr)
        uvicorn.run(create_app(config, load=lambda: pipe), host=args.host, port=args.port,
                    log_level="info" if args.verbose else "warning",
                    timeout_graceful_shutdown=int(config.shutdown_grace) + 5)

    return run("vlm-serve", serve)


def api_key_from(args) -> str | None:
    """--api-key, else the first line of --api-key-file, else $VLM_SERVE_API_KEY; None: no key."""
    import os
    from pathlib import Path

    from vlm_edge.common.errors import InputError

    given = [name for name, value in (("--api-key", args.api_key), ("--api-key-file", args.api_key_file))
             if value is not None]
    if len(given) > 1:
        raise InputError("give the API key once: --api-key or --api-key-file")
    key = args.api_key
    if args.api_key_file is not None:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError):
            raise InputError(f"--api-key-file {args.api_key_file}: cannot read a key from it (one line of text)") from None
    if key is None:
        key = os.environ.get("VLM_SERVE_API_KEY") or None
    if key is not None and not key:
        raise InputError("the API key is empty")
    return key


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
