"""A bounded load test: ``clients`` concurrent loopback WebSocket clients, each starting one
stream of ``chunks`` chunks; reports frames per second per client (from its first frame to its
last) and how long each waited in the queue. Stops by itself (``timeout`` seconds at most).

    python -m stream_r1_fast.serve.loadtest --clients 4 --chunks 8      # serves the toy itself
    python -m stream_r1_fast.serve.loadtest --url ws://127.0.0.1:8000/ws
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time


@dataclasses.dataclass
class ClientResult:
    client: int
    chunks: int = 0
    frames: int = 0
    bytes: int = 0
    queued_messages: list = dataclasses.field(default_factory=list)
    wait_s: float = 0.0  # from 'start' to the first frame
    stream_s: float = 0.0  # from the first frame to the last
    errors: list = dataclasses.field(default_factory=list)
    stopped: str | None = None

    @property
    def fps(self) -> float:
        """Frames per second after the first chunk arrived (the stream's sustained rate)."""
        return (self.frames - self.first_chunk_frames) / self.stream_s if self.stream_s > 0 else float("nan")

    first_chunk_frames: int = 0


async def run_client(url: str, n: int, prompt: str, chunks: int, seed: int = 0) -> ClientResult:
    from websockets.asyncio.client import connect

    r = ClientResult(n)
    async with connect(url, max_size=1 << 24) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        prompt = prompt or hello["default_prompt"]
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "start", "prompt": prompt, "seed": seed, "max_chunks": chunks}))
        t_first = t_last = None
        async for msg in ws:
            if isinstance(msg, bytes):
                r.frames += 1
                r.bytes += len(msg)
                t_last = time.perf_counter()
                if t_first is None:
                    t_first = t_last
                continue
            m = json.loads(msg)
            if m["type"] == "queued":
                r.queued_messages.append(m["message"])
            elif m["type"] == "chunk":
                r.chunks += 1
                if m["index"] == 0:
                    r.first_chunk_frames = m["frames"]
            elif m["type"] == "error":
                r.errors.append(m["message"])
                if m.get("fatal"):
                    break
            elif m["type"] == "stopped":
                r.stopped = m["reason"]
                break
        if t_first is not None:
            r.wait_s = t_first - t0
            # the stream's time: from the end of the first chunk's frames to the last frame
            r.stream_s = t_last - t_first
    return r


async def run_load(url: str, clients: int, chunks: int, prompt: str, timeout: float = 120.0) -> list[ClientResult]:
    tasks = [run_client(url, i, prompt, chunks, seed=i) for i in range(clients)]
    return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))


def report(results: list[ClientResult]) -> str:
    lines = [f"{'client':>6} {'chunks':>6} {'frames':>6} {'waited s':>8} {'frames/s':>8}  queued"]
    for r in results:
        lines.append(f"{r.client:>6} {r.chunks:>6} {r.frames:>6} {r.wait_s:>8.2f} {r.fps:>8.1f}  "
                     + (r.queued_messages[0] if r.queued_messages else "-") + (f"  errors: {r.errors}" if r.errors else ""))
    total = sum(r.frames for r in results)
    span = max(r.wait_s + r.stream_s for r in results) if results else 0
    lines.append(f"all: {total} frames in {span:.2f} s = {total / span if span else float('nan'):.1f} frames/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server's ws:// URL (default: serve the toy world here, unpaced)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--max-streams", type=int, default=2, help="without --url: the server's limit")
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.url:
        results = asyncio.run(run_load(args.url, args.clients, args.chunks, args.prompt or "", args.timeout))
    else:
        import torch

        from stream_r1_fast.serve.app import create_app
        from stream_r1_fast.serve.backend import toy_backend
        from stream_r1_fast.serve.local import LocalServer

        torch.set_num_threads(1)
        backend = toy_backend()
        app = create_app(backend, max_streams=args.max_streams, max_queue=args.clients, fps=0)
        with LocalServer(app) as srv:
            results = asyncio.run(run_load(srv.ws_url, args.clients, args.chunks,
                                           args.prompt or backend.default_prompt, args.timeout))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
