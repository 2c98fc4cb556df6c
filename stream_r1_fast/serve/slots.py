"""Stream slots of ``stream-r1 serve``: at most ``limit`` streams at once, then a bounded FIFO
queue whose waiters are told their place (:class:`StreamSlots`); a full queue refuses
(:class:`QueueFull`)."""

from __future__ import annotations

import asyncio
from collections import deque


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


__all__ = ["QueueFull", "StreamSlots"]
