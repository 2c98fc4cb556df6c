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

This module holds the routes; the pieces are :mod:`.slots` (:class:`StreamSlots`, the queue),
:mod:`.server` (:class:`Server`, what the sessions share) and :mod:`.session` (:class:`Session`,
one connection and its stream).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse

from stream_r1_fast.serve.backend import Backend
from stream_r1_fast.serve.server import Server
from stream_r1_fast.serve.session import Session
from stream_r1_fast.serve.slots import QueueFull, StreamSlots

STATIC = Path(__file__).parent / "static"


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


# QueueFull, StreamSlots, Server and Session stay importable from here.
__all__ = ["STATIC", "QueueFull", "Server", "Session", "StreamSlots", "create_app"]
