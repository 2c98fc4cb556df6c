"""`stream-r1 serve`: the live API of the pipeline and the WebSocket protocol, with the server
in-process (Starlette's TestClient) on the shipped toy world."""

import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from stream_r1_fast.cache import CachePolicy  # noqa: E402
from stream_r1_fast.serve.app import StreamSlots, create_app  # noqa: E402
from stream_r1_fast.serve.backend import toy_backend  # noqa: E402
from stream_r1_fast.serve.protocol import ProtocolError, parse  # noqa: E402
from stream_r1_fast.serve.backend import POLICY_PRESETS  # noqa: E402

A = "a large red circle moving right slow on a black background"
B = "a small blue square moving up fast on a gray background"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def backend():
    return toy_backend()


@pytest.fixture(scope="module")
def pipe(backend):
    return backend.pipe


def frames_of(pipe, schedule, n, seed, policy=CachePolicy()):
    chunks = list(pipe.stream(schedule, num_chunks=n, height=32, width=32, seed=seed, policy=policy))
    return [c.frames[0].numpy() for c in chunks]


# ---------------------------------------------------------------------- the live API


def test_live_stream_switch_equals_the_schedule(pipe):
    live = pipe.open_stream(A, height=32, width=32, seed=3)
    got = []
    for i in range(5):
        if i == 2:
            live.switch(B)
        got.append(next(live))
    live.close()
    ref = frames_of(pipe, {0: A, 2: B}, 5, seed=3)
    for c, r in zip(got, ref):
        np.testing.assert_array_equal(c.frames[0].numpy(), r)
    assert [c.prompts[0] for c in got] == [A, A, B, B, B]
    assert [c.prompt_since for c in got] == [0, 0, 2, 2, 2]
    # and the switch changed something (the text K/V was re-encoded)
    assert not np.array_equal(ref[3], frames_of(pipe, A, 5, seed=3)[3])


def test_live_stream_refuses_bad_prompts_and_keeps_going(pipe):
    live = pipe.open_stream(A, height=32, width=32, seed=0)
    next(live)
    with pytest.raises(ValueError, match="not in the toy vocabulary"):
        live.switch("a purple dog moving left fast on a black background")
    with pytest.raises(ValueError, match="empty"):
        live.switch("   ")
    with pytest.raises(TypeError):
        live.switch(3)
    c = next(live)
    assert c.prompts == [A] and c.prompt_since == 0
    with pytest.raises(ValueError, match="toy vocabulary"):
        pipe.open_stream("a dog", height=32, width=32)


def test_live_stream_close_from_another_thread_mid_chunk(pipe):
    live = pipe.open_stream(A, height=32, width=32, seed=0)
    next(live)
    started = threading.Event()
    results = []

    def worker():
        started.set()
        for _ in range(3):
            try:
                results.append(next(live))
            except StopIteration:
                results.append("stop")
                return

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    time.sleep(0.01)  # most likely inside the chunk: close() must not wait for it
    t_close = time.perf_counter()
    live.close()
    assert time.perf_counter() - t_close < 0.05
    t.join(TIMEOUT)
    assert results[-1] == "stop" and len(results) <= 2  # the chunk in progress finishes, then no more
    assert live.closed and live._gen is None  # the generator (cache, decoder) is released
    with pytest.raises(StopIteration):
        next(live)
    with pytest.raises(RuntimeError, match="closed"):
        live.switch(B)
    live.close()  # idempotent


def test_live_stream_num_chunks(pipe):
    live = pipe.open_stream(A, height=32, width=32, seed=0, num_chunks=2)
    assert len(list(live)) == 2 and live.closed


# ---------------------------------------------------------------------- protocol parsing


@pytest.mark.parametrize("text, match", [
    ("{bad", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "dance"}', "unknown message type"),
    ('{"prompt": "x"}', "unknown message type"),
    ('{"type": "start"}', "prompt"),
    ('{"type": "start", "prompt": ""}', "empty"),
    ('{"type": "start", "prompt": "x", "seed": -1}', "seed"),
    ('{"type": "start", "prompt": "x", "seed": 1.5}', "seed"),
    ('{"type": "start", "prompt": "x", "seed": true}', "seed"),
    ('{"type": "start", "prompt": "x", "policy": "lru"}', "unknown cache policy"),
    ('{"type": "start", "prompt": "x", "policy": {"sink": 3, "window": 0}}', "window"),
    ('{"type": "start", "prompt": "x", "policy": {"alpha": 2}}', "alpha"),
    ('{"type": "start", "prompt": "x", "policy": {"size": 2}}', "policy"),
    ('{"type": "start", "prompt": "x", "max_chunks": 0}', "max_chunks"),
    ('{"type": "pause", "now": true}', "does not take"),
    ('{"type": "switch", "prompt": ["a"]}', "prompt"),
    ("x" * 5000, "5000 bytes refused"),
    (b"\x00\x01", "binary messages"),
])
def test_parse_refuses(text, match):
    with pytest.raises(ProtocolError, match=match):
        parse(text, presets=POLICY_PRESETS)


def test_parse_accepts():
    s = parse('{"type": "start", "prompt": "  a  b ", "seed": 7, "policy": {"sink": 0, "window": 6, "alpha": 1}}',
              presets=POLICY_PRESETS, max_chunks=50)
    assert (s.prompt, s.seed, s.policy, s.max_chunks) == ("a b", 7, CachePolicy(0, 6, 1.0), 50)
    assert parse('{"type": "start", "prompt": "x", "policy": "static_sink"}', presets=POLICY_PRESETS).policy.alpha == 1.0
    with pytest.raises(ProtocolError, match="max_chunks"):
        parse('{"type": "start", "prompt": "x", "max_chunks": 51}', presets=POLICY_PRESETS, max_chunks=50)
    assert parse('{"type": "stop"}', presets=POLICY_PRESETS).type == "stop"


# ---------------------------------------------------------------------- the server, in-process


def receive(ws, *, until=("chunk",), frames=None):
    """Messages up to the first of type ``until``; a chunk's frames go to ``frames``."""
    while True:
        m = ws.receive()
        if m.get("bytes") is not None:
            if frames is not None:
                frames.append(m["bytes"])
            continue
        if m["type"] == "websocket.close":
            raise AssertionError(f"closed: {m}")
        msg = json.loads(m["text"])
        if msg["type"] in until:
            return msg


def read_chunk(ws):
    msg = receive(ws, until=("chunk", "stopped", "error"))
    if msg["type"] != "chunk":
        return msg, []
    frames = [ws.receive_bytes() for _ in range(msg["frames"])]
    return msg, [np.asarray(Image.open(io.BytesIO(f))) for f in frames]


@pytest.fixture(scope="module")
def client(backend):
    app = create_app(backend, max_streams=2, max_queue=1, fps=0)
    with TestClient(app) as c:
        yield c


def wait_idle(client, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get("/api/stats").json()
        if s["streams_running"] == 0 and s["queued"] == 0 and s["live_streams_open"] == 0:
            return s
        time.sleep(0.02)
    raise AssertionError(f"server not idle: {s}")


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for needle in ('id="prompt"', 'id="start"', 'id="switch"', 'id="pause"', 'id="stop"', 'id="seed"', 'id="policy"',
                   'id="ttff"', 'id="fps"', 'id="chunk"', 'id="log"', "image-rendering: pixelated", "/ws"):
        assert needle in page.text, needle
    info = client.get("/api/info").json()
    assert info["width"] == info["height"] == 32 and info["frame_format"] == "png"
    assert "OBJECT" in info["prompt_help"]["grammar"] and len(info["prompt_help"]["examples"]) >= 3
    assert info["default_prompt"] in info["prompt_help"]["examples"]
    assert set(info["policies"]) == {"ema_sink", "static_sink", "no_sink"}


def test_stream_switch_mid_stream(client, pipe):
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["max_streams"] == 2
        ws.send_json({"type": "start", "prompt": A, "seed": 5, "policy": "ema_sink"})
        started = receive(ws, until=("started",))
        assert started["seed"] == 5 and started["policy"] == {"sink_frames": 3, "window_frames": 3, "alpha": 0.999}
        got = []
        msg, frames = read_chunk(ws)
        got.append((msg, frames))
        assert msg["index"] == 0 and msg["frames"] == 9 and msg["prompt"] == A and msg["ttff_ms"] > 0
        assert frames[0].shape == (32, 32, 3) and frames[0].std() > 1
        ws.send_json({"type": "switch", "prompt": B})
        while True:
            msg, frames = read_chunk(ws)
            got.append((msg, frames))
            if msg["prompt"] == B:
                break
            assert len(got) < 50
        k = msg["index"]
        assert msg["switched"] and msg["prompt_since"] == k and k >= 1
        for _ in range(2):
            m2, f2 = read_chunk(ws)
            got.append((m2, f2))
            assert m2["prompt"] == B and m2["prompt_since"] == k and not m2["switched"]
        assert got[-1][0]["fps"] > 0
        ws.send_json({"type": "stop"})
        assert receive(ws, until=("stopped",))["reason"] == "stop"
    # what came over the socket is the pipeline's stream with that schedule, frame for frame (PNG is lossless)
    ref = frames_of(pipe, {0: A, k: B}, len(got), seed=5)
    for (m, frames), r in zip(got, ref):
        np.testing.assert_array_equal(np.stack(frames), r)
    wait_idle(client)


def test_bad_prompts_and_messages_get_errors_not_a_dead_stream(client):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "start", "prompt": "a purple dog on a black background", "seed": 0})
        err = receive(ws, until=("error",))
        assert "prompt refused" in err["message"] and not err["fatal"]
        ws.send_json({"type": "switch", "prompt": B})
        assert "no stream to switch" in receive(ws, until=("error",))["message"]
        ws.send_json({"type": "start", "prompt": A, "seed": 0})
        read_chunk(ws)
        for bad, match in [
            ({"type": "switch", "prompt": "a large red dog moving right slow on a black background"}, "unknown shape 'dog'"),
            ({"type": "switch", "prompt": "a large red circle moving right slow on a black background and more"}, "toy caption"),
            ({"type": "switch", "prompt": "x" * 600}, "limit of 512"),
            ({"type": "switch", "prompt": "a small red circle moving up slow and a large red square moving up slow "
                                          "on a black background"}, "distinct colours"),
        ]:
            ws.send_json(bad)
            assert match in receive(ws, until=("error",))["message"]
        ws.send_text("{not json")
        assert "not JSON" in receive(ws, until=("error",))["message"]
        ws.send_text(json.dumps({"type": "switch", "prompt": "a " * 3000}))
        assert "bytes refused: the limit is 4096" in receive(ws, until=("error",))["message"]
        ws.send_bytes(b"\x89PNG")
        assert "binary messages are not accepted" in receive(ws, until=("error",))["message"]
        msg, frames = read_chunk(ws)  # the stream goes on, with its prompt
        assert msg["type"] == "chunk" and msg["prompt"] == A and len(frames) == 12
        ws.send_json({"type": "stop"})
        receive(ws, until=("stopped",))
    wait_idle(client)


def test_pause_resume_stop_and_chunk_limit(client):
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "start", "prompt": A, "seed": 1, "max_chunks": 40})
        read_chunk(ws)
        ws.send_json({"type": "pause"})
        receive(ws, until=("paused",))
        before = client.get("/api/stats").json()["totals"]["chunks"]
        time.sleep(0.6)
        after = client.get("/api/stats").json()["totals"]["chunks"]
        assert after - before <= 1  # at most the chunk that was in progress
        ws.send_json({"type": "resume"})
        receive(ws, until=("resumed",))
        read_chunk(ws)
        ws.send_json({"type": "stop"})
        assert receive(ws, until=("stopped",))["reason"] == "stop"
        ws.send_json({"type": "pause"})
        assert "no stream to pause" in receive(ws, until=("error",))["message"]
        ws.send_json({"type": "start", "prompt": B, "seed": 1, "max_chunks": 2, "policy": {"sink": 0, "window": 6, "alpha": 1.0}})
        assert receive(ws, until=("started",))["policy"] == {"sink_frames": 0, "window_frames": 6, "alpha": 1.0}
        n = 0
        while True:
            msg, _ = read_chunk(ws)
            if msg["type"] != "chunk":
                break
            n += 1
        assert msg["type"] == "stopped" and msg["reason"] == "limit" and n == 2
    wait_idle(client)


def test_paused_too_long_is_stopped(backend):
    app = create_app(backend, max_streams=1, fps=0, pause_timeout_s=0.3)
    with TestClient(app) as c:
        with c.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_json({"type": "start", "prompt": A, "seed": 0})
            read_chunk(ws)
            ws.send_json({"type": "pause"})
            stopped = receive(ws, until=("stopped",))
            assert stopped["reason"] == "pause_timeout" and "free its slot" in stopped["message"]
            wait_idle(c)
            ws.send_json({"type": "resume"})
            assert "no stream to resume" in receive(ws, until=("error",))["message"]


def test_same_seed_same_frames_random_seed_reported(client):
    def first_chunk(seed):
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_json({"type": "start", "prompt": A, "seed": seed, "max_chunks": 1})
            started = receive(ws, until=("started",))
            return started["seed"], read_chunk(ws)[1]

    s1, f1 = first_chunk(11)
    s2, f2 = first_chunk(11)
    s3, f3 = first_chunk(None)
    assert s1 == s2 == 11 and isinstance(s3, int)
    np.testing.assert_array_equal(np.stack(f1), np.stack(f2))
    wait_idle(client)


def test_busy_queue_and_full(client):
    """max_streams 2, max_queue 1: two stream, the third is told "busy, 1 in queue", a fourth
    is refused; when one stops the queued one starts."""
    with client.websocket_connect("/ws") as w1, client.websocket_connect("/ws") as w2, \
            client.websocket_connect("/ws") as w3, client.websocket_connect("/ws") as w4:
        for w in (w1, w2, w3, w4):
            w.receive_json()
        for w in (w1, w2):
            w.send_json({"type": "start", "prompt": A, "seed": 0})
            read_chunk(w)
        w3.send_json({"type": "start", "prompt": B, "seed": 0})
        q = receive(w3, until=("queued",))
        assert q["position"] == 1 and q["message"] == "busy, 1 in queue" and q["running"] == 2
        assert client.get("/api/stats").json()["queued"] == 1
        w4.send_json({"type": "start", "prompt": B, "seed": 0})
        err = receive(w4, until=("error",))
        assert err["fatal"] and "queue of 1 is full" in err["message"]
        w1.send_json({"type": "stop"})
        assert receive(w3, until=("started",))["queued_ms"] > 0
        msg, _ = read_chunk(w3)
        assert msg["prompt"] == B
        for w in (w2, w3):
            w.send_json({"type": "stop"})
    wait_idle(client)


def test_cross_origin_refused(client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as exc:
        with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
            ws.receive_json()
    assert exc.value.code == 1008


def test_slots_fifo_and_cancellation():
    import asyncio

    async def main():
        slots = StreamSlots(1, 2)
        await slots.acquire()
        seen = {1: [], 2: []}

        async def waiter(i):
            async def tell(p):
                seen[i].append(p)
            await slots.acquire(tell)
            return i

        t1 = asyncio.create_task(waiter(1))
        t2 = asyncio.create_task(waiter(2))
        await asyncio.sleep(0.01)
        assert slots.waiting == 2 and seen == {1: [1], 2: [2]}
        t1.cancel()  # the first in line leaves: the second moves up
        await asyncio.sleep(0.01)
        assert slots.waiting == 1 and seen[2] == [2, 1]
        slots.release()
        assert await t2 == 2 and slots.running == 1
        slots.release()
        assert slots.running == 0

    asyncio.run(main())


def test_import_does_not_pull_in_fastapi_and_cli_hook():
    code = "import sys, stream_r1_fast, stream_r1_fast.cli as c; c.build_parser(); print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    from stream_r1_fast.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.max_streams) == ("127.0.0.1", 8000, None, 2)
    from stream_r1_fast.serve.cli import build_app

    with pytest.raises(ValueError, match="max-streams"):
        build_app(build_parser().parse_args(["serve", "--max-streams", "0"]))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        build_app(build_parser().parse_args(["serve", "--model", "/nonexistent/wan"]))


def test_wan_weights_same_protocol(tmp_path):
    """`--model` serves a diffusers Wan folder (tiny random components here, on the CPU) through
    the same app: free-text prompts, the UMT5 text encoder re-encoding on a switch."""
    from tiny_wan import write_pipeline_dir

    from stream_r1_fast.cli import build_parser
    from stream_r1_fast.serve.cli import build_app

    folder = write_pipeline_dir(tmp_path / "wan")
    args = build_parser().parse_args(["serve", "--model", str(folder), "--dtype", "fp32", "--device", "cpu",
                                      "--height", "16", "--width", "24", "--fps", "0"])
    app = build_app(args)
    backend = app.state.server.backend
    assert not backend.cheap_prompt_check and backend.check_prompt is None
    with TestClient(app) as c:
        with c.websocket_connect("/ws") as ws:
            hello = ws.receive_json()
            assert (hello["height"], hello["width"]) == (16, 24) and "wan" in hello["model"]
            ws.send_json({"type": "start", "prompt": "a red circle moves left", "seed": 2, "max_chunks": 4})
            msg, frames = read_chunk(ws)
            assert msg["index"] == 0 and frames[0].shape == (16, 24, 3)
            ws.send_json({"type": "switch", "prompt": "a blue square moves up"})
            receive(ws, until=("switch_ok",))
            prompts = [msg["prompt"]]
            while True:
                msg, _ = read_chunk(ws)
                if msg["type"] != "chunk":
                    break
                prompts.append(msg["prompt"])
            assert msg["reason"] == "limit" and len(prompts) == 4
            assert prompts[0] == "a red circle moves left" and prompts[-1] == "a blue square moves up"
        wait_idle(c)
    # large frames go as JPEG
    from stream_r1_fast.serve.backend import Backend

    big = Backend(backend.pipe, "x", 480, 832)
    assert big.frame_format == "jpeg" and big.mime == "image/jpeg"
    jpeg = big.encode_frames(np.full((1, 480, 832, 3), 128, np.uint8))[0]
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (832, 480)
