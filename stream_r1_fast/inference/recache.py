"""LongLive's KV recache at a prompt switch: the clean latents a stream keeps for it
(:class:`LatentHistory`) and the rebuild of the self-attention cache from them (:func:`recache_kv`)."""

from __future__ import annotations

import torch

from stream_r1_fast.cache import CachePolicy


class LatentHistory:
    """The clean latents of the last ``frames`` latent frames of a stream, by chunk: what a KV
    recache re-encodes. Holds whole chunks, the fewest that cover the last ``frames`` frames
    (at most ``frames + chunk_frames - 1`` frames); ``end``: latent frames made so far."""

    def __init__(self, frames: int):
        self.frames = frames
        self.chunks: list[tuple[int, torch.Tensor]] = []  # (first latent frame, latents [B, C, f, h, w])
        self.end = 0

    def add(self, x0: torch.Tensor) -> None:
        self.chunks.append((self.end, x0.detach().clone()))  # the caller may change the chunk it is handed
        self.end += x0.shape[2]
        while self.chunks and self.end - (self.chunks[0][0] + self.chunks[0][1].shape[2]) >= self.frames:
            self.chunks.pop(0)

    def held_frames(self) -> int:
        return sum(x.shape[2] for _, x in self.chunks)


def _clear_window(cache) -> None:
    """Empty the window of a cache whose sink is full, keeping the sink (the cache's own
    ``clear_window()``: SinkKVCache and RotatedSinkKVCache have one)."""
    clear = getattr(cache, "clear_window", None)
    if not callable(clear):
        raise NotImplementedError(f"a KV recache that keeps the sink needs a cache with clear_window() "
                                  f"(SinkKVCache, RotatedSinkKVCache); got {type(cache).__name__}")
    clear()


@torch.no_grad()
def recache_kv(model, chunk_frames: int, cache, history: LatentHistory | None, text, times,
               policy: CachePolicy) -> bool:
    """LongLive's KV recache at a prompt switch: rebuild the self-attention cache from the
    clean latents of the frames it holds, re-run through the context refresh (t = 0,
    ``update_cache=True``) under the new prompt's ``text``, in their order and in the
    chunks they were made in (a frame's K/V depend on the frames of its chunk and on the
    cache before it). Returns whether anything was recomputed.

    What is recomputed, with S sink and W window frames after F frames made:

    * F <= S + W (nothing evicted yet): the cache holds frames 0..F-1 exactly (the sink is
      the first frames, nothing folded into it): it is emptied (``reset()``) and every frame
      re-fed from frame 0, sink included — what the cache would hold had these latents
      been made under the new prompt.
    * F > S + W: the window (the last W frames) is emptied and re-fed after the sink; the
      **sink is kept as it is**. Under EMA (alpha < 1) the sink is a running fold of every
      frame evicted since the start, which the latents of a bounded history cannot
      recompute; a static sink (alpha = 1) is kept too, as LongLive keeps its frame sink
      (it rewrites the sink only when the recached frames start at frame 0, the case
      above). The window is re-fed against that sink, so the frames attend to what they
      will be attended with.

    Positions are window-relative, so the rebuilt cache has the positions of the one it
    replaces. Cost: one refresh forward per recached chunk (the window's, at most
    ceil((S + W) / chunk_frames) + 1 forwards). ``model``: the causal transformer; ``times``:
    the stream's time contexts (the last one, t = 0, is the refresh's)."""
    if history is None or not history.chunks:
        return False
    s, w = policy.sink_frames, policy.window_frames
    made = history.end
    if made <= s + w or s == 0:
        cache.reset()
        start = 0 if made <= s + w else made - w
    else:
        _clear_window(cache)
        start = made - w
    batch = history.chunks[0][1].shape[0]
    for first, x0 in history.chunks:
        lo = max(start - first, 0)
        if lo >= x0.shape[2]:
            continue
        piece = x0[:, :, lo:]
        t = times[-1] if piece.shape[2] == chunk_frames else model.time_context(0.0, batch, piece.shape[2])
        model.forward_chunk(piece, t, text, cache, update_cache=True)
    return True
