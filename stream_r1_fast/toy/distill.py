"""Causal students of the toy teacher: their streaming shape and schedule, and the toy world
behind the training engine (:class:`~stream_r1_fast.training.Trainer`) for DMD, Re-DMD and
Stream-R1 (docs/method.md, docs/toy_world.md).

**Students.** :data:`CHUNK_FRAMES` x :data:`NUM_CHUNKS` latent frames per rollout and the
4-step schedule (:func:`student_sampler`); their ODE-regression initialisation
(``scripts/toy/ode_init.py``) is :mod:`stream_r1_fast.training.ode_regression` on this shape.

**Distillation.** The toy pieces behind the training engine (the models, the world captions as
prompts, :func:`~stream_r1_fast.toy.recipe.build_toy_trainer`) are the factories of
:mod:`stream_r1_fast.toy.recipe`, named by ``configs/toy_*.yaml``, so
``stream-r1 train --config configs/toy_stream_r1.yaml`` runs the whole method on a CPU.
"""

from __future__ import annotations

from stream_r1_fast.inference.sampler import FlowMatchSampler

# The students' streaming shape: 3 latent frames per chunk (12 video frames, 9 for the first),
# 3 chunks = 9 latent frames = 33 video frames per training rollout.
CHUNK_FRAMES = 3
NUM_CHUNKS = 3


def student_sampler() -> FlowMatchSampler:
    """The students' 4-step schedule (shift 5), as at inference."""
    return FlowMatchSampler()


__all__ = ["CHUNK_FRAMES", "NUM_CHUNKS", "student_sampler"]
