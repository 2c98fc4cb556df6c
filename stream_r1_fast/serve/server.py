"""What the sessions of one ``stream-r1 serve`` app share (:class:`Server`): the backend, the
stream slots, the fixed pool of generation threads, the open live streams and the counters."""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from stream_r1_fast.serve.backend import Backend
from stream_r1_fast.serve.protocol import MAX_MESSAGE_BYTES
from stream_r1_fast.serve.slots import StreamSlots


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


__all__ = ["Server"]
