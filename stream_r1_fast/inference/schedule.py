"""What a stream is conditioned on and what it hands out: the prompt schedule (fixed in advance,
or changed live from another thread) and the chunks a stream yields."""

from __future__ import annotations

import dataclasses
import threading
from typing import Mapping, Sequence

import torch

from stream_r1_fast.inference.text import as_prompt_list


@dataclasses.dataclass
class StreamChunk:
    """One generated chunk of a batch of streams.

    index: chunk number in the stream (0-based). latents: clean latents [B, C, Fq, h, w]
    (float32, on the model's device). frames: uint8 [B, T, H, W, 3] on the CPU, or None
    without decoding. first_frame: index of the chunk's first video frame in the stream.
    prompts: the prompt of each stream for this chunk (always a list of str).
    prompt_since: the chunk at which these prompts took effect (``== index`` on the chunk where
    a switch took effect: switches happen at chunk boundaries). recached: a KV recache
    (:meth:`StreamingPipeline.stream`'s ``recache``) ran before this chunk, under its prompts.
    """

    index: int
    latents: torch.Tensor
    frames: torch.Tensor | None
    first_frame: int
    prompts: list[str]
    prompt_since: int = 0
    recached: bool = False


def checked_prompts(prompts, where: str) -> list[str]:
    """A prompt or a list of them (one per stream) -> a list of non-empty prompts; the error
    names ``where`` (e.g. "the prompt of chunk 3") and the stream."""
    out = as_prompt_list(prompts, where)
    for b, p in enumerate(out):
        if not p.strip():
            raise ValueError(where + (f" (stream {b})" if len(out) > 1 else "") + f" is empty: {p!r}")
    return out


class PromptSchedule:
    """Which prompts hold from which chunk on: ``{chunk_index: prompt or [prompt per stream]}``.

    A schedule must start at chunk 0. A plain str / list of str is the schedule ``{0: it}``.
    Every prompt is checked here, so a bad entry fails before the first chunk, not when it is
    reached: a prompt must be a non-empty str with more than whitespace in it.
    """

    def __init__(self, entries: Mapping[int, str | Sequence[str]]):
        if not isinstance(entries, Mapping) or not entries:
            raise TypeError(f"a prompt schedule is a non-empty dict {{chunk: prompt}}, got {type(entries).__name__}")
        items = {}
        for k, v in entries.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"prompt schedule keys must be chunk indices >= 0, got {k!r}")
            items[k] = checked_prompts(v, f"the prompt of chunk {k}")
        if 0 not in items:
            raise ValueError(f"a prompt schedule must give the prompt of chunk 0, got chunks {sorted(items)}")
        self.entries = dict(sorted(items.items()))
        self.batch_size()  # entries of different batch sizes fail here too

    @classmethod
    def of(cls, prompt) -> "PromptSchedule":
        if isinstance(prompt, PromptSchedule):
            return prompt
        if isinstance(prompt, Mapping):
            return cls(prompt)
        return cls({0: as_prompt_list(prompt)})

    def batch_size(self) -> int:
        """Streams in the batch (1 when every entry is a single prompt)."""
        sizes = {len(v) for v in self.entries.values()} - {1}
        if len(sizes) > 1:
            raise ValueError(f"prompt schedule entries give different batch sizes: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def at(self, chunk: int) -> list[str] | None:
        """The prompts that start at ``chunk``, or None if nothing changes there."""
        return self.entries.get(chunk)

    def take(self, chunk: int) -> tuple[list[str], bool | None] | None:
        """What the chunk loop reads before chunk ``chunk``: None if the prompts do not change
        there, else ``(prompts, recache)`` — the prompts as a list of non-empty str (an entry
        added to :attr:`entries` after the schedule was built is checked here, and a plain
        str stays one prompt) and whether to recache (None: the stream's ``recache``)."""
        prompts = self.at(chunk)
        return None if prompts is None else (checked_prompts(prompts, f"the prompt of chunk {chunk}"), None)


class LivePromptSchedule(PromptSchedule):
    """A prompt schedule that can be changed while its stream runs: :meth:`set` queues prompts
    for the next chunk the stream starts (with or without a recache). Thread-safe; the chunk
    loop of :meth:`StreamingPipeline.stream` reads it through :meth:`take` as it reads any
    schedule, so a schedule fixed in advance and live switches take the same path."""

    def __init__(self, prompt: str | Sequence[str]):
        super().__init__({0: prompt})
        self._lock = threading.Lock()
        self._pending: tuple[list[str], bool | None] | None = None
        self.last_change = 0  # the chunk at which the prompts in force took effect

    def set(self, prompts: str | Sequence[str], recache: bool | None = None) -> None:
        """Queue ``prompts`` (a str is one prompt) for the next chunk that starts; ``recache``:
        whether to recache there (None: the stream's default). A later call before that chunk
        replaces this one."""
        prompts = checked_prompts(prompts, "the prompt")
        with self._lock:
            self._pending = (prompts, recache)

    def take(self, chunk: int) -> tuple[list[str], bool | None] | None:
        if chunk == 0:
            return list(self.entries[0]), None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.last_change = chunk
        return pending

    def at(self, chunk: int) -> list[str] | None:
        taken = self.take(chunk)
        return None if taken is None else taken[0]


def check_schedule_prompts(encoder, schedule: PromptSchedule) -> None:
    """Every prompt of ``schedule`` against the text ``encoder``, before the first chunk: an
    encoder with a ``check_prompt(prompt)`` method (a closed vocabulary) raises there for a
    prompt it could not encode, named by the chunk it starts at."""
    check = getattr(encoder, "check_prompt", None)
    if check is None:
        return
    for k, prompts in schedule.entries.items():
        for p in dict.fromkeys(prompts):
            try:
                check(p)
            except ValueError as exc:
                raise ValueError(f"the prompt of chunk {k}: {exc}") from None


def stream_generators(seed, batch: int, device):
    """The noise generators of a stream: None (nondeterministic), one for an int seed, one per
    stream for a list of ``batch`` ints."""
    if seed is None:
        return None
    if isinstance(seed, int) and not isinstance(seed, bool):
        return torch.Generator(device=device).manual_seed(seed)
    if isinstance(seed, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        if len(seed) != batch:
            raise ValueError(f"{len(seed)} seeds for a batch of {batch} streams")
        return [torch.Generator(device=device).manual_seed(s) for s in seed]
    raise TypeError(f"seed must be an int, a list of ints (one per stream) or None, got {seed!r}")


@dataclasses.dataclass
class LiveChunk(StreamChunk):
    """A :class:`StreamChunk` of a live stream (``prompt_since``: the chunk at which this chunk's
    prompts took effect, ``== index`` on the chunk where a switch took effect; ``recached``: a
    KV recache ran before it)."""

