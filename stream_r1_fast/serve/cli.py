"""The ``stream-r1 serve`` command (argument parsing here; FastAPI and uvicorn are imported
only when it runs).

    stream-r1 serve                                  # toy world, CPU, http://127.0.0.1:8000
    stream-r1 serve --model WAN_FOLDER [--checkpoint rf.pt] [--device cuda]
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="diffusers Wan model folder (default: the toy world's shipped student on the CPU)")
    p.add_argument("--checkpoint", help="with --model: student weights replacing the transformer's; "
                                        "without: a toy student .safetensors")
    p.add_argument("--device", help="with --model: cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="with --model")
    p.add_argument("--height", type=int, default=480, help="with --model: video height in pixels")
    p.add_argument("--width", type=int, default=832, help="with --model: video width in pixels")
    p.add_argument("--max-streams", type=int, default=2, help="streams generated at once (default 2); more wait in a queue")
    p.add_argument("--max-queue", type=int, default=8, help="clients that may wait for a stream (default 8); more are refused")
    p.add_argument("--max-chunks", type=int, default=1200, help="chunks per stream at most (default 1200, 15 min of video)")
    p.add_argument("--fps", type=float, default=None,
                   help="pace streams to this playback rate (default: the model's, 16; 0: as fast as generated)")
    p.add_argument("--pause-timeout", type=float, default=300.0,
                   help="seconds a stream may stay paused before it is stopped to free its slot (default 300)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for the toy world, whose tiny ops are fastest on one thread per stream)")
    p.add_argument("--log-level", default="info")
    return p


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``serve`` to the ``stream-r1`` subcommands."""
    p = subparsers.add_parser("serve", help="live web demo: stream in the browser, switch prompts mid-stream")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_app(args):
    from stream_r1_fast.serve.app import create_app
    from stream_r1_fast.serve.backend import toy_backend, wan_backend

    for name in ("max_streams", "port"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_queue < 0 or args.max_chunks < 1 or (args.fps is not None and args.fps < 0) or args.pause_timeout <= 0:
        raise ValueError("--max-queue must be >= 0, --max-chunks >= 1, --fps >= 0 and --pause-timeout > 0")
    if args.model:
        backend = wan_backend(args.model, args.checkpoint, device=args.device, dtype=args.dtype,
                              height=args.height, width=args.width)
    else:
        backend = toy_backend(args.checkpoint)
    return create_app(backend, max_streams=args.max_streams, max_queue=args.max_queue,
                      max_chunks=args.max_chunks, fps=args.fps, pause_timeout_s=args.pause_timeout)


def run(args) -> int:
    import torch
    import uvicorn

    torch.set_num_threads(args.threads or (1 if not args.model else torch.get_num_threads()))
    app = build_app(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"stream-r1 serve: warning: listening on {args.host}, reachable from other machines")
    print(f"stream-r1 serve: {app.state.server.backend.name}; open http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_max_size=1 << 20,
                ws_ping_interval=20, ws_ping_timeout=20)
    return 0


def main(argv=None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="stream-r1 serve", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter)).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
