"""The FastAPI app of ``stream-r1 serve``: the page, ``/api/info``, ``/api/stats`` and the
``/ws`` WebSocket (protocol: :mod:`stream_r1_fast.serve.protocol`).

Each WebSocket connection is a :class:`Session` with at most one stream at a time (a new
``start`` replaces it). Streams hold one of ``max_streams`` slots (:class:`StreamSlots`);
beyond that a ``start`` waits in a FIFO queue of at most ``max_queue`` (told "busy, N in
queue" as its place changes) or is refused when the queue is full. Generation runs on a
fixed pool of ``max_streams`` worker threads, one chunk per job, never on the event loop; a
disconnect cancels the session's stream, closes its :class:`~stream_r1_fast.inference.pipeline.LiveStream`
(its KV cache is freed when the chunk in progress is done) and gives the slot back.

A stream paused for more than ``pause_timeout_s`` is stopped (it holds a slot while paused).
With ``fps > 0`` a stream is paced to real time: it runs at most ``lead_s`` seconds of video
ahead of playback, so a prompt switch shows within about a chunk (``fps=0``: as fast as it
can, for benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from stream_r1_fast.serve.backend import POLICY_PRESETS, Backend
from stream_r1_fast.serve.protocol import MAX_MESSAGE_BYTES, Control, ProtocolError, Start, Switch, parse

STATIC = Path(__file__).parent / "static"


class QueueFull(Exception):
    pass


class StreamSlots:
    """``limit`` concurrent streams; beyond it a FIFO queue of at most ``max_queue`` waiters,
    each told its place (1 = next) whenever it changes. Event-loop only (not thread-safe)."""

    def __init__(self, limit: int, max_queue: int):
        if limit < 1 or max_queue < 0:
            raise ValueError(f"need limit >= 1 and max_queue >= 0, got {limit}, {max_queue}")
        self.limit, self.max_queue = limit, max_queue
        self.running = 0
        self._waiters: deque[tuple[asyncio.Future, asyncio.Event]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, on_position=None) -> None:
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(f"busy: {self.running} streams running (the limit), and the queue of "
                            f"{self.max_queue} is full; try again later")
        fut = asyncio.get_running_loop().create_future()
        moved = asyncio.Event()
        entry = (fut, moved)
        self._waiters.append(entry)
        try:
            while not fut.done():
                moved.clear()
                if on_position is not None:
                    await on_position(self._waiters.index(entry) + 1)
                if fut.done():
                    break
                waiter = asyncio.ensure_future(moved.wait())
                try:
                    await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._tell_positions()
            elif fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over as this waiter left
            raise

    def release(self) -> None:
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to the first in line (running unchanged)
                self._tell_positions()
                return
        self.running -= 1

    def _tell_positions(self) -> None:
        for _, moved in self._waiters:
            moved.set()


class Server:
    """State shared by the sessions of one app: the backend, slots, worker pool and counters."""

    def __init__(self, backend: Backend, *, max_streams: int = 2, max_queue: int = 8, max_chunks: int | None = 1200,
                 fps: float | None = None, lead_s: float = 1.0, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 check_origin: bool = True, pause_timeout_s: float = 300.0):
        self.backend = backend
        self.max_streams, self.max_queue, self.max_chunks = max_streams, max_queue, max_chunks
        self.fps = backend.fps if fps is None else fps
        self.lead_s = lead_s
        self.pause_timeout_s = pause_timeout_s  # a stream paused longer is stopped (it holds a slot)
        self.max_message_bytes = max_message_bytes
        self.check_origin = check_origin
        self.slots = StreamSlots(max_streams, max_queue)
        self.pool = ThreadPoolExecutor(max_streams, thread_name_prefix="stream-r1-gen")
        self.live_streams: weakref.WeakSet = weakref.WeakSet()
        self.connections = 0
        self.totals = {"connections": 0, "streams": 0, "chunks": 0, "frames": 0, "errors": 0}
        self._lock = threading.Lock()

    def stats(self) -> dict:
        return {
            "connections": self.connections, "streams_running": self.slots.running, "queued": self.slots.waiting,
            "live_streams_open": self.open_live_streams(),
            "max_streams": self.max_streams, "max_queue": self.max_queue, "totals": dict(self.totals),
        }

    def open_live_streams(self) -> int:
        with self._lock:
            return sum(1 for s in self.live_streams if not s.closed)

    def hello(self) -> dict:
        return {"type": "hello", **self.backend.info(), "max_streams": self.max_streams, "max_queue": self.max_queue,
                "max_chunks": self.max_chunks, "max_message_bytes": self.max_message_bytes, "paced_fps": self.fps,
                "streams_running": self.slots.running, "queued": self.slots.waiting}

    def check_prompt(self, prompt: str) -> None:
        if self.backend.check_prompt is not None:
            self.backend.check_prompt(prompt)

    def shutdown(self) -> None:
        with self._lock:
            streams = list(self.live_streams)
        for live in streams:
            live.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


class Session:
    """One WebSocket connection: reads commands, runs at most one stream task."""

    def __init__(self, server: Server, ws: WebSocket):
        self.server, self.ws = server, ws
        self.backend = server.backend
        self.task: asyncio.Task | None = None
        self.live = None
        self.running = asyncio.Event()
        self.running.set()
        self._send_lock = asyncio.Lock()
        self._open = True

    # ------------------------------------------------------------------ sending

    async def send(self, msg: dict, frames: list[bytes] = ()) -> None:
        """One JSON message (and the binary frames that belong to it, unbroken)."""
        if not self._open:
            return
        async with self._send_lock:
            try:
                await self.ws.send_json(msg)
                for f in frames:
                    await self.ws.send_bytes(f)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._open = False  # the client went away; the reader loop ends the session

    async def error(self, message: str, fatal: bool = False) -> None:
        self.server.totals["errors"] += 1
        await self.send({"type": "error", "message": message, "fatal": fatal})

    # ------------------------------------------------------------------ reading

    async def run(self) -> None:
        await self.ws.accept()
        await self.send(self.server.hello())
        try:
            while self._open:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                try:
                    cmd = parse(text if text is not None else msg.get("bytes"), presets=POLICY_PRESETS,
                                max_prompt_chars=self.backend.max_prompt_chars,
                                max_bytes=self.server.max_message_bytes, max_chunks=self.server.max_chunks)
                except ProtocolError as exc:
                    await self.error(str(exc))
                    continue
                await self.handle(cmd)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self._open = False
            await self.stop_stream()

    async def handle(self, cmd) -> None:
        if isinstance(cmd, Start):
            try:
                self.server.check_prompt(cmd.prompt)
            except ValueError as exc:
                await self.error(f"prompt refused: {exc}")
                return
            await self.stop_stream()
            self.running.set()
            self.task = asyncio.create_task(self.stream(cmd))
        elif isinstance(cmd, Switch):
            live = self.live
            if live is None or live.closed:
                await self.error("no stream to switch: send 'start' first")
                return
            try:
                self.server.check_prompt(cmd.prompt)
                if self.backend.cheap_prompt_check:
                    live.switch(cmd.prompt)
                else:  # a large text encoder: off the event loop
                    await asyncio.to_thread(live.switch, cmd.prompt)
            except (ValueError, TypeError, RuntimeError) as exc:
                await self.error(f"prompt refused: {exc}")
                return
            await self.send({"type": "switch_ok", "prompt": cmd.prompt, "after_chunk": live.chunks_made - 1})
        elif isinstance(cmd, Control):
            if self.task is None or self.task.done():
                await self.error(f"no stream to {cmd.type}")
            elif cmd.type == "pause":
                self.running.clear()
                await self.send({"type": "paused"})
            elif cmd.type == "resume":
                self.running.set()
                await self.send({"type": "resumed"})
            else:
                await self.stop_stream()
                await self.send({"type": "stopped", "reason": "stop"})

    async def stop_stream(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ streaming

    async def stream(self, start: Start) -> None:
        server, backend = self.server, self.backend
        t_request = time.perf_counter()

        async def tell(position: int) -> None:
            await self.send({"type": "queued", "position": position, "running": server.slots.running,
                             "max_streams": server.max_streams, "message": f"busy, {position} in queue"})

        try:
            await server.slots.acquire(tell)
        except QueueFull as exc:
            await self.error(str(exc), fatal=True)
            return
        job = opening = None
        gone = threading.Event()  # set when this task ends: a stream opened after it is closed at once
        live = None
        try:
            seed = start.seed if start.seed is not None else random.randrange(2**31)
            t_start = time.perf_counter()

            def open_stream():
                s = backend.pipe.open_stream(start.prompt, num_chunks=start.max_chunks, height=backend.height,
                                             width=backend.width, seed=seed, policy=start.policy)
                with server._lock:
                    server.live_streams.add(s)
                if gone.is_set():
                    s.close()
                return s

            job = opening = server.pool.submit(open_stream)
            try:
                live = await asyncio.wrap_future(job)
            except (ValueError, TypeError, RuntimeError) as exc:
                await self.error(f"cannot start the stream: {exc}", fatal=True)
                return
            self.live = live
            server.totals["streams"] += 1
            await self.send({"type": "started", "prompt": start.prompt, "seed": seed,
                             "policy": dataclasses.asdict(start.policy), "queued_ms": (t_start - t_request) * 1000,
                             "max_chunks": start.max_chunks})

            def step():
                try:
                    chunk = next(live)
                except StopIteration:
                    return None
                return chunk, backend.encode_frames(chunk.frames[0])

            fps, lead = server.fps, server.lead_s
            play0, sent, later_frames, later_s, ttff = None, 0, 0, 0.0, None
            while True:
                if not self.running.is_set():
                    t_pause = time.perf_counter()
                    try:
                        await asyncio.wait_for(self.running.wait(), server.pause_timeout_s)
                    except asyncio.TimeoutError:
                        await self.send({"type": "stopped", "reason": "pause_timeout", "message":
                                         f"paused for more than {server.pause_timeout_s:g} s: the stream was stopped "
                                         "to free its slot"})
                        break
                    if play0 is not None:
                        play0 += time.perf_counter() - t_pause
                if fps and play0 is not None:
                    ahead = sent / fps - (time.perf_counter() - play0)
                    if ahead > lead:
                        await asyncio.sleep(ahead - lead)
                        continue  # re-check pause after sleeping
                t0 = time.perf_counter()
                job = server.pool.submit(step)
                result = await asyncio.wrap_future(job)
                t1 = time.perf_counter()
                if result is None:
                    await self.send({"type": "stopped", "reason": "limit",
                                     "message": f"the stream reached its {start.max_chunks} chunks"})
                    break
                chunk, images = result
                if ttff is None:
                    ttff = t1 - t_start
                    play0 = t1
                else:
                    later_frames += len(images)
                    later_s += t1 - t0
                sent += len(images)
                server.totals["chunks"] += 1
                server.totals["frames"] += len(images)
                await self.send({
                    "type": "chunk", "index": chunk.index, "frames": len(images), "first_frame": chunk.first_frame,
                    "prompt": chunk.prompts[0], "prompt_since": chunk.prompt_since,
                    "switched": chunk.index > 0 and chunk.prompt_since == chunk.index,
                    "ttff_ms": ttff * 1000, "chunk_ms": (t1 - t0) * 1000,
                    "fps": later_frames / later_s if later_s > 0 else None, "mime": backend.mime,
                }, images)
                if not self._open:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failure inside generation ends this stream, not the server
            await self.error(f"the stream failed: {type(exc).__name__}: {exc}", fatal=True)
        finally:
            gone.set()
            self.live = None
            if live is not None:
                live.close()
            elif opening is not None:  # cancelled while the stream was being opened
                opening.add_done_callback(_close_result)
            if job is not None and not job.done():
                loop = asyncio.get_running_loop()
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(server.slots.release))
            else:
                server.slots.release()


def _close_result(future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def create_app(backend: Backend, **server_options) -> FastAPI:
    """The app serving ``backend``; ``server_options``: those of :class:`Server`."""
    server = Server(backend, **server_options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.shutdown()

    app = FastAPI(title="stream-r1 live", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    page = (STATIC / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/api/info")
    async def info():
        return JSONResponse(server.hello())

    @app.get("/api/stats")
    async def stats():
        return JSONResponse(server.stats())

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket):
        origin = ws.headers.get("origin")
        if server.check_origin and origin and urlsplit(origin).netloc != ws.headers.get("host"):
            await ws.close(code=1008, reason="cross-origin WebSocket refused")
            return
        server.connections += 1
        server.totals["connections"] += 1
        try:
            await Session(server, ws).run()
        finally:
            server.connections -= 1

    return app
