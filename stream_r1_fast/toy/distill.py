"""Causal students of the toy teacher: the ODE-regression initialisation, and the toy world
behind the training engine (:class:`~stream_r1_fast.training.Trainer`) for DMD, Re-DMD and
Stream-R1 (docs/method.md, docs/toy_world.md).

**ODE regression** (the CausVid / Self-Forcing initialisation). The teacher integrates its
probability-flow ODE from noise to a clean clip on a grid that contains the student's four
timesteps; the states it passes at those timesteps and the clip it ends at are training pairs.
The student learns ``x0 = f(x_t, t)`` for them *as it will be used*: chunk by chunk through
``forward_chunk`` against its own EMA-Sink KV cache, the cache refreshed with the teacher's
clean chunks (teacher forcing), each chunk at its own randomly drawn student timestep.

**Distillation.** :func:`build_toy_trainer` assembles a :class:`Trainer` from the shipped toy
pieces: the ODE-initialised student as generator, the teacher as the real score, a copy of the
teacher as the critic (the fake score starts where the real one is, as in DMD2), the toy codec
as the VAE, the caption encoder as the text encoder, and the toy reward model for the
reward-weighted modes. ``model.dir: toy`` in a training config selects it, so
``stream-r1 train --config configs/toy_stream_r1.yaml`` runs the whole method on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.inference.sampler import FlowMatchSampler, shift_timesteps
from stream_r1_fast.training.rollout import snapshot_cache

# The students' streaming shape: 3 latent frames per chunk (12 video frames, 9 for the first),
# 3 chunks = 9 latent frames = 33 video frames per training rollout.
CHUNK_FRAMES = 3
NUM_CHUNKS = 3


def ode_grid(student_timesteps: Sequence[float], steps: int = 24, shift: float = 3.0) -> list[float]:
    """The teacher's Euler grid (``steps`` steps warped by ``shift``, 1000 -> 0) with the student's
    timesteps inserted: descending, starting at 1000, ending at 0, no duplicates."""
    # float64: a float32 linspace puts teacher points ~1e-5 off (937.499991 beside the student's 937.5).
    teacher = shift_timesteps(torch.linspace(1000, 0, steps + 1, dtype=torch.float64).tolist(), shift)
    grid = set(round(t, 6) for t in teacher)
    grid.update(round(float(t), 6) for t in student_timesteps)
    grid.update((1000.0, 0.0))
    return sorted(grid, reverse=True)


@torch.no_grad()
def teacher_ode_pairs(teacher, text, uncond_text, noise: torch.Tensor, *, student_timesteps: Sequence[float],
                      steps: int = 24, shift: float = 3.0, cfg: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the teacher's ODE from ``noise`` [B, C, F, h, w] (``x_1000``).

    Returns ``(states, x0)``: ``states`` [S, B, C, F, h, w], the ODE's state at each of the S
    student timesteps (in their order), and ``x0`` [B, C, F, h, w] the clean end (float32).
    ``text`` / ``uncond_text``: the teacher's conditioning (``uncond_text`` unused at ``cfg`` 1).
    """
    grid = ode_grid(student_timesteps, steps, shift)
    wanted = {round(float(t), 6): i for i, t in enumerate(student_timesteps)}
    states: list[torch.Tensor | None] = [None] * len(wanted)
    x = noise.float()
    for t, t_next in zip(grid[:-1], grid[1:]):
        if t in wanted:
            states[wanted[t]] = x.clone()
        v = teacher(x, t, text).sample.float()
        if cfg != 1.0:
            v_u = teacher(x, t, uncond_text).sample.float()
            v = v_u + cfg * (v - v_u)
        x = x + (t_next - t) / 1000.0 * v
    return torch.stack(states), x


def ode_regression_loss(student, text, states: torch.Tensor, x0: torch.Tensor, step_index: torch.Tensor, *,
                        timesteps: Sequence[float], chunk_frames: int = CHUNK_FRAMES,
                        policy: CachePolicy = CachePolicy()) -> torch.Tensor:
    """Mean squared error of the student's streamed ``x0`` predictions on ODE pairs.

    Args:
        student: a CausalWanTransformer.
        text: the student's conditioning for the batch (a TextContext or embeddings).
        states: [S, B, C, F, h, w] ODE states at the S student ``timesteps``; x0: [B, C, F, h, w].
        step_index: long [B, F // chunk_frames], which student timestep each chunk is shown at.
    Chunk c is predicted against a cache holding the teacher's clean chunks before it (written
    by the refresh forward, as at inference), so the loss of a chunk reaches the parameters
    only through that chunk's own forward.
    """
    s, b, _, f, h, w = states.shape
    if f % chunk_frames:
        raise ValueError(f"{f} latent frames do not split into chunks of {chunk_frames}")
    if step_index.shape != (b, f // chunk_frames):
        raise ValueError(f"step_index must be [{b}, {f // chunk_frames}], got {list(step_index.shape)}")
    ts = torch.tensor([float(t) for t in timesteps], device=states.device)
    param = next(student.parameters())
    cache = SinkKVCache.for_model(student, b, h, w, policy, dtype=param.dtype, device=param.device)
    rows = torch.arange(b, device=states.device)
    total = 0.0
    for c in range(f // chunk_frames):
        frames = slice(c * chunk_frames, (c + 1) * chunk_frames)
        idx = step_index[:, c]
        x_t = states[idx, rows][:, :, frames]
        t = ts[idx]
        cache.begin_chunk()
        live = snapshot_cache(cache) if torch.is_grad_enabled() else cache
        v = student.forward_chunk(x_t, t, text, live).float()
        pred = x_t - (t / 1000.0).view(-1, 1, 1, 1, 1) * v
        total = total + ((pred - x0[:, :, frames]) ** 2).mean()
        with torch.no_grad():
            student.forward_chunk(x0[:, :, frames].to(param.dtype), 0.0, text, cache, update_cache=True)
    return total / (f // chunk_frames)


def toy_captions(count: int, seed: int = 0) -> list[str]:
    """``count`` captions of random world clips (the distribution the teacher was trained on)."""
    from stream_r1_fast.toy.world import ToyWorld

    world, g = ToyWorld(), torch.Generator().manual_seed(seed)
    return [world.sample_attributes(g).caption for _ in range(count)]


def build_toy_trainer(config, *, student: str | Path | None = None):
    """A :class:`~stream_r1_fast.training.Trainer` on the toy world's shipped models.

    ``model.student``: the generator's initial weights (default: the shipped ODE-initialised
    student, ``weights/student_ode.safetensors``); ``model.teacher``: the real score (default:
    the shipped teacher); ``model.critic``: the critic's initial weights (default: the teacher).
    ``reward.factory``: the reward model of the reward-weighted modes (the toy one:
    ``stream_r1_fast.toy.reward:ToyRewardModel.pretrained``).
    """
    from stream_r1_fast.toy.codec import ToyCodec
    from stream_r1_fast.toy.models import WEIGHTS, load_transformer_file
    from stream_r1_fast.toy.text import ToyTextEncoder
    from stream_r1_fast.training.config import resolve_factory
    from stream_r1_fast.training.trainer import Trainer

    m = config.model
    device = torch.device(config.train.device or "cpu")
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)

    def load(spec, default: Path) -> torch.nn.Module:
        path = Path(spec) if spec else default
        if not path.is_file():
            raise FileNotFoundError(f"toy model weights {path} do not exist (see scripts/toy/ for how to make them)")
        return load_transformer_file(path, dtype).to(device).requires_grad_(True)

    generator = load(student or m.student, WEIGHTS / "student_ode.safetensors")
    teacher = load(m.teacher, WEIGHTS / "teacher.safetensors").requires_grad_(False)
    critic = load(m.critic, Path(m.teacher) if m.teacher else WEIGHTS / "teacher.safetensors")
    reward = None
    if config.weighting.mode != "dmd":
        reward = resolve_factory(config.reward.factory)(**config.reward.kwargs)
        if isinstance(reward, torch.nn.Module):
            reward = reward.to(device).eval().requires_grad_(False)
    return Trainer(config, generator=generator, teacher=teacher, critic=critic, text_encoder=ToyTextEncoder(device),
                   vae=ToyCodec.pretrained().to(device),
                   reward_model=reward, device=device)


def student_sampler() -> FlowMatchSampler:
    """The students' 4-step schedule (shift 5), as at inference."""
    return FlowMatchSampler()


__all__ = ["CHUNK_FRAMES", "NUM_CHUNKS", "build_toy_trainer", "ode_grid", "ode_regression_loss", "student_sampler",
           "teacher_ode_pairs", "toy_captions"]
