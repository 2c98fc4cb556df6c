"""Distributed helpers of the trainer: FSDP2 sharding of a transformer (:func:`shard_model`),
and the collectives the step loop needs (a mean over ranks, the device a flag is reduced on)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    """True under ``torchrun`` once the process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def shard_model(model: torch.nn.Module, *, param_dtype: torch.dtype | None = None,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 with one unit per transformer block, then the root (patch/time/text embedders
    and the head): parameters, gradients and optimiser state are sharded at rest, and a
    forward gathers one block at a time (freed again after the block when
    ``reshard_after_forward``, and gathered again for its backward).

    The root's ``forward_chunk``, ``embed_text`` and ``encode_text`` get FSDP's forward hooks
    too. Text conditioning must reach the blocks as raw embeddings or a lazy
    :class:`~stream_r1_fast.models.TextContext` (each block projects its own cross-attention
    K/V inside its forward); ``encode_text`` returns the lazy form once the blocks are sharded.

    ``param_dtype`` (e.g. bfloat16): compute dtype of the gathered parameters
    (``MixedPrecisionPolicy``; gradients are reduced in float32, sharded parameters and
    optimiser state keep their dtype). Forward inputs are not cast (the model casts what it
    needs; the trainer's autocast does the rest)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {"reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=False)
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for name in ("forward_chunk", "embed_text", "encode_text"):
        register_fsdp_forward_method(model, name)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def global_mean(value: torch.Tensor) -> float:
    v = value.detach().double().reshape(1).cpu()
    if distributed():
        dist.all_reduce(v)
        v /= dist.get_world_size()
    return float(v)



def flag_device(device: torch.device) -> torch.device:
    """Where a flag tensor is all-reduced: ``device`` under NCCL, else the CPU."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


__all__ = ["distributed", "flag_device", "full_tensor", "global_mean", "shard_model"]
