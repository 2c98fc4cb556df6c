"""`stream-r1 serve` over real loopback sockets (uvicorn in a thread): a bounded load test with
several concurrent clients, and the leak test (connect, stream, drop, repeat: memory and
thread count stay flat, every stream is closed and freed)."""

import asyncio
import gc
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from stream_r1_fast.serve.app import create_app  # noqa: E402
from stream_r1_fast.serve.backend import toy_backend  # noqa: E402
from stream_r1_fast.serve.loadtest import report, run_load  # noqa: E402
from stream_r1_fast.serve.local import LocalServer  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    return toy_backend()


def process_figures():
    """(OS threads of this process, resident memory in MiB) from /proc."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


async def wait_idle(server, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = server.stats()
        if s["connections"] == 0 and s["streams_running"] == 0 and s["live_streams_open"] == 0:
            return s
        await asyncio.sleep(0.02)
    raise AssertionError(f"not idle after {timeout} s: {server.stats()}")


def test_load_several_concurrent_clients(backend):
    """6 clients, 2 streams at a time (the rest queue), 6 chunks each, unpaced; bounded in time."""
    clients, chunks = 6, 6
    app = create_app(backend, max_streams=2, max_queue=8, fps=0)
    server = app.state.server
    t0 = time.perf_counter()
    seen_running, latencies = [], []

    async def load_and_watch():
        import httpx

        load = asyncio.ensure_future(run_load(srv.ws_url, clients, chunks, backend.default_prompt, timeout=90))
        async with httpx.AsyncClient(base_url=srv.url) as http:
            while not load.done():  # the event loop answers while streams are generated
                t = time.perf_counter()
                stats = (await http.get("/api/stats")).json()
                latencies.append(time.perf_counter() - t)
                seen_running.append(stats["streams_running"])
                await asyncio.sleep(0.05)
        return await load

    with LocalServer(app) as srv:
        results = asyncio.run(load_and_watch())
        asyncio.run(wait_idle(server))
        workers = [t for t in threading.enumerate() if t.name.startswith("stream-r1-gen")]
    wall = time.perf_counter() - t0
    print("\n" + report(results) + f"\nwall {wall:.1f} s")
    expected = 9 + 12 * (chunks - 1)
    for r in results:
        assert r.errors == [] and r.stopped == "limit"
        assert (r.chunks, r.frames) == (chunks, expected)
        assert r.fps > 5, r  # frames/s per client, after its first chunk
    queued = [r for r in results if r.queued_messages]
    assert len(queued) >= clients - 2  # beyond two streams everyone was told to wait
    assert any(m.startswith("busy, ") and m.endswith(" in queue") for r in queued for m in r.queued_messages)
    assert server.totals["streams"] == clients and server.totals["frames"] == clients * expected
    assert wall < 90
    assert max(seen_running) == 2 and len(workers) <= 2  # bounded: two streams, two worker threads
    print(f"/api/stats under load: {len(latencies)} requests, max {max(latencies) * 1000:.0f} ms")
    assert sorted(latencies)[len(latencies) // 2] < 0.25  # median: generation is not on the event loop


def test_oversized_and_malformed_over_a_real_socket(backend):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    app = create_app(backend, max_streams=1, fps=0)

    async def main():
        async with connect(srv.ws_url, max_size=1 << 24) as ws:
            await ws.recv()
            await ws.send("{" + " " * 10_000 + "}")
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and "10002 bytes refused: the limit is 4096 bytes" in err["message"]
            await ws.send(b"\x00" * 100)
            assert "binary messages are not accepted" in json.loads(await ws.recv())["message"]
            await ws.send(json.dumps({"type": "start", "prompt": backend.default_prompt, "max_chunks": 1}))
            kinds = [json.loads(m)["type"] for m in [await ws.recv() for _ in range(2)]]
            assert kinds == ["started", "chunk"]  # still served after the refusals
        async with connect(srv.ws_url, max_size=1 << 24) as ws:
            await ws.recv()
            await ws.send("x" * (2 << 20))  # beyond the transport's limit (1 MiB): the server closes, 1009
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1009
        from websockets.exceptions import InvalidStatus

        try:  # a page of another site may not use this server: the handshake is refused
            async with connect(srv.ws_url, origin="http://elsewhere.example"):
                raise AssertionError("a cross-origin WebSocket was accepted")
        except InvalidStatus as exc:
            assert exc.response.status_code == 403

    with LocalServer(app) as srv:
        asyncio.run(main())
        asyncio.run(wait_idle(app.state.server))


async def one_cycle(url, prompt, chunks_before_drop, abrupt):
    from websockets.asyncio.client import connect

    ws = await connect(url)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    await ws.send(json.dumps({"type": "start", "prompt": prompt, "seed": 0}))
    seen = 0
    while seen < chunks_before_drop:
        m = await ws.recv()
        if isinstance(m, str) and json.loads(m)["type"] == "chunk":
            seen += 1
    if abrupt:
        ws.transport.abort()  # the TCP connection drops without a closing handshake
    else:
        await ws.close()


def test_disconnect_mid_stream_leaks_nothing(backend):
    app = create_app(backend, max_streams=2, max_queue=4, fps=0)
    server = app.state.server
    prompt = backend.default_prompt

    async def cycles(n):
        for i in range(n):
            # two clients at once, dropped mid-stream, one abruptly
            await asyncio.gather(one_cycle(srv.ws_url, prompt, 2, abrupt=i % 2 == 0),
                                 one_cycle(srv.ws_url, prompt, 1, abrupt=i % 2 == 1))
            await wait_idle(server)

    with LocalServer(app) as srv:
        asyncio.run(cycles(2))  # warm-up: worker threads, allocator pools, import caches
        gc.collect()
        threads0, rss0 = process_figures()
        asyncio.run(cycles(8))
        gc.collect()
        threads1, rss1 = process_figures()
        stats = server.stats()
        live_left = len(server.live_streams)
    print(f"\nleak test: {stats['totals']['streams']} streams dropped mid-stream; threads {threads0} -> {threads1}, "
          f"RSS {rss0:.1f} -> {rss1:.1f} MiB")
    assert stats["totals"]["streams"] == 20 and stats["totals"]["connections"] == 20
    assert live_left == 0  # every LiveStream (its KV cache, decoder, generator) was freed
    assert threads1 <= threads0
    assert rss1 - rss0 < 25, (rss0, rss1)
