"""Self-Forcing backward simulation: the student makes a whole video from noise, chunk by
chunk, with its own KV cache (:func:`training_cache_policy`) and the inference sampler's schedule (the same
cache classes — :class:`~stream_r1_fast.cache.SinkKVCache` by default, ``cache_impl="rotated"`` for
:class:`~stream_r1_fast.cache.RotatedSinkKVCache` — and ``forward_chunk`` code paths as
:class:`~stream_r1_fast.inference.StreamingPipeline`).

Each chunk is denoised up to the exit step k (drawn once per iteration, shared by all chunks
and, under ``torch.distributed``, by all ranks): the steps before k run without grad; the
forward at step k carries the gradient and its ``x0_hat`` is the chunk's output; the context
refresh writes the *detached* output into the cache without grad (the chunk step is
:func:`~stream_r1_fast.inference.sampler.denoise_chunk`, inference's). No gradient flows
between chunks through the cache.
"""

from __future__ import annotations

import random

import torch
import torch.distributed as dist

from stream_r1_fast.cache import CachePolicy, resolve_cache_impl
from stream_r1_fast.inference.sampler import FlowMatchSampler, Generators, denoise_chunk


def training_cache_policy(rollout) -> CachePolicy:
    """The cache a training rollout uses (``rollout``: a RolloutConfig).

    ``cache: full`` (the official recipe): a plain window that holds every frame before the
    last chunk, so nothing is evicted or folded and positions are the frames' indices in the
    rollout. ``cache: ema_sink``: the inference EMA-Sink cache of ``sink_frames`` +
    ``window_frames`` slots with ``alpha``.
    """
    if rollout.cache == "ema_sink":
        return CachePolicy(rollout.sink_frames, rollout.window_frames, rollout.alpha)
    earlier = (rollout.num_chunks - 1) * rollout.chunk_frames
    return CachePolicy(sink_frames=0, window_frames=max(earlier, rollout.chunk_frames), alpha=1.0)


def draw_exit_step(num_steps: int, rng: random.Random, device=None) -> int:
    """k ~ U{0 .. num_steps - 1} from ``rng``; under torch.distributed rank 0's draw is broadcast."""
    k = rng.randrange(num_steps)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        dev = device if backend == "nccl" else "cpu"
        t = torch.tensor([k], dtype=torch.int64, device=dev)
        dist.broadcast(t, src=0)
        k = int(t.item())
    return k


def self_forcing_rollout(
    model,
    text,
    *,
    num_chunks: int,
    chunk_frames: int,
    latent_size: tuple[int, int],
    exit_step: int,
    sampler: FlowMatchSampler = FlowMatchSampler(),
    policy: CachePolicy = CachePolicy(),
    generator: Generators = None,
    cache_dtype: torch.dtype | None = None,
    cache_impl="fused",
) -> torch.Tensor:
    """Roll out ``num_chunks`` chunks for the prompts of ``text`` (a TextContext).

    ``generator``: one torch.Generator, or one per sample (sample b's noise then depends on
    generator b only, so a batch split across ranks rolls out the same samples).
    ``cache_impl``: ``"fused"`` (:class:`~stream_r1_fast.cache.SinkKVCache`), ``"rotated"``
    (:class:`~stream_r1_fast.cache.RotatedSinkKVCache`) or a cache class; same semantics.
    Returns latents [B, C, num_chunks * chunk_frames, h, w] (float32) whose graph reaches the
    student's parameters through the step-``exit_step`` forward of every chunk.
    """
    steps = sampler.timesteps
    if not 0 <= exit_step < len(steps):
        raise ValueError(f"exit_step must be in [0, {len(steps) - 1}], got {exit_step}")
    b = text.batch_size
    h, w = latent_size
    param = next(model.parameters())
    cache_cls = resolve_cache_impl(cache_impl)
    cache = cache_cls.for_model(model, b, h, w, policy, chunk_frames=chunk_frames, dtype=cache_dtype or param.dtype,
                                device=param.device)
    shape = (b, model.config.in_channels, chunk_frames, h, w)
    out = []
    for _ in range(num_chunks):
        # The start noise and the exit_step re-noising draws, in the order the steps use them.
        noise = sampler.draw_chunk_noise(shape, generator, device=param.device, steps=exit_step + 1)
        out.append(denoise_chunk(model, text, cache, noise[0], steps[:exit_step + 1], noise=noise[1:]))
    return torch.cat(out, dim=2)
