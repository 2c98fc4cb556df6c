"""One WebSocket connection of ``stream-r1 serve`` (:class:`Session`): it reads the commands
(:mod:`stream_r1_fast.serve.protocol`) and runs at most one stream at a time, a chunk per job
on the server's worker pool, paced to real time, stopped on disconnect or a long pause (the
rules are in :mod:`stream_r1_fast.serve.app`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from stream_r1_fast.serve.backend import POLICY_PRESETS
from stream_r1_fast.serve.protocol import Control, ProtocolError, Start, Switch, parse
from stream_r1_fast.serve.server import Server
from stream_r1_fast.serve.slots import QueueFull


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


__all__ = ["Session"]
