"""Live streams for an interactive viewer (:meth:`StreamingPipeline.open_stream`): one chunk per
``next()``, prompt switches from any thread, closing at any time."""

from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import torch

from stream_r1_fast.inference.schedule import LiveChunk, LivePromptSchedule, StreamChunk, checked_prompts


class LiveStream:
    """One live stream of :meth:`StreamingPipeline.open_stream` (``pipe``: the pipeline).

    ``next(live)`` (or iteration) generates the next :class:`LiveChunk`; :meth:`switch` may be
    called from another thread while a chunk is being made (it then takes effect at the chunk
    after it); :meth:`close` may be called from any thread at any time: a chunk in progress
    finishes, and the stream's generator (its KV cache, decoder state, text K/V) is released
    at once or when that chunk is done.
    """

    def __init__(self, pipe, prompt: str | Sequence[str], *, num_chunks: int | None = None,
                 recache: bool = False, **kwargs):
        self.pipe = pipe
        self.schedule = LivePromptSchedule(prompt)
        self.batch = self.schedule.batch_size()
        self.check(self.schedule.entries[0])
        self.recache = recache
        self._gen = pipe.stream(self.schedule, num_chunks=num_chunks, recache=recache, **kwargs)
        self._step_lock = threading.Lock()
        self._closed = False
        self.chunks_made = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self, prompt: str | Sequence[str]) -> list[str]:
        """The prompt(s) as a list, or a TypeError / ValueError saying why the pipeline's text
        encoder cannot take them (the toy world's closed vocabulary); no state changes."""
        prompts = checked_prompts(prompt, "the prompt")
        if len(prompts) not in (1, self.batch):
            raise ValueError(f"{len(prompts)} prompts for a live stream of {self.batch} streams")
        encoder = self.pipe.prompt_encoder
        if encoder is None:
            raise RuntimeError("this pipeline has no text encoder: build it with prompt_encoder=...")
        check = getattr(encoder, "check_prompt", None)
        if check is not None:
            for p in prompts:
                check(p)
        else:
            with torch.no_grad():
                encoder(prompts)  # raises for what it cannot encode (an encoder with a cache keeps the result)
        return prompts

    def switch(self, prompt: str | Sequence[str], recache: bool | None = None) -> None:
        """Use ``prompt`` from the next chunk that starts (the text conditioning is re-encoded
        there). ``recache``: re-encode the cached frames under the new prompt there too
        (:func:`~stream_r1_fast.inference.recache.recache_kv`; None: the stream's ``recache``); otherwise the
        self-attention cache is kept as it is. The chunk where the switch took effect has
        ``prompt_since == index`` (and ``recached``). Raises (and changes nothing) for a prompt
        the text encoder cannot take."""
        if self._closed:
            raise RuntimeError("the live stream is closed")
        if recache is not None and not isinstance(recache, bool):
            raise TypeError(f"recache must be True, False or None, got {recache!r}")
        self.schedule.set(self.check(prompt), recache)

    def __iter__(self) -> "LiveStream":
        return self

    def __next__(self) -> LiveChunk:
        try:
            with self._step_lock:
                if self._closed:
                    raise StopIteration
                try:
                    chunk = next(self._gen)
                except BaseException:
                    self._release()
                    raise
                self.chunks_made += 1
                return LiveChunk(**{f.name: getattr(chunk, f.name) for f in dataclasses.fields(StreamChunk)})
        finally:
            if self._closed and self._gen is not None:  # closed while this chunk was being made
                self.close()

    def _release(self) -> None:
        self._closed = True
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()

    def close(self) -> None:
        """End the stream; idempotent, callable from any thread, never waits for a chunk."""
        self._closed = True
        if self._step_lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._step_lock.release()

    def __enter__(self) -> "LiveStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
