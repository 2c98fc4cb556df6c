"""The toy world's causal-student pipeline: the teacher's ODE pairs and the streamed
ODE-regression loss (stream_r1_fast/training/ode_regression.py) on the toy models, and the
toy recipes (the toy trainer itself: tests/test_toy_recipe.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.inference.sampler import FlowMatchSampler, shift_timesteps
from stream_r1_fast.toy.distill import CHUNK_FRAMES, NUM_CHUNKS
from stream_r1_fast.toy.models import WEIGHTS, load_teacher, load_transformer_file
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.training.config import TrainConfig
from stream_r1_fast.training.ode_regression import ode_grid, ode_regression_loss, teacher_ode_pairs
from tolerances import assert_exact_close

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEACHER_FILE = WEIGHTS / "teacher.safetensors"
STUDENT_T = FlowMatchSampler().timesteps  # the students' 4 timesteps, 1000 first
CAPTIONS = [
    "a small red circle moving left fast on a black background",
    "a large blue square moving up slow and a small green triangle moving right fast on a gray background",
]
B, C, F, H, W = 2, 16, CHUNK_FRAMES * NUM_CHUNKS, 8, 8


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


@pytest.fixture(scope="module")
def emb():
    return ToyTextEncoder()(CAPTIONS)


def _near(values, t, tol=1e-3):
    return sum(abs(v - t) < tol for v in values)


# ----------------------------------------------------------------------------- ode_grid


@pytest.mark.parametrize("steps,shift", [(24, 3.0), (4, 3.0), (10, 1.0)])
def test_ode_grid_is_the_teacher_grid_with_the_student_steps(steps, shift):
    grid = ode_grid(STUDENT_T, steps, shift)
    assert grid[0] == 1000.0 and grid[-1] == 0.0
    assert all(a > b for a, b in zip(grid, grid[1:])), "strictly descending"
    assert min(a - b for a, b in zip(grid, grid[1:])) > 1e-3, "no (near-)duplicates"
    for t in STUDENT_T:
        assert _near(grid, t) == 1, f"student timestep {t} must appear exactly once"
    teacher_grid = shift_timesteps(torch.linspace(1000, 0, steps + 1).tolist(), shift)
    for t in teacher_grid:
        assert _near(grid, t) == 1, f"teacher grid point {t} must appear exactly once"
    # Nothing else: the union of the two grids.
    assert len(grid) == len({round(t, 3) for t in (*teacher_grid, *STUDENT_T)})


# ----------------------------------------------------------------------------- teacher_ode_pairs


def _euler(teacher, emb, uncond, noise, steps, cfg):
    """Hand-rolled Euler over ode_grid; returns ({t: state at t}, x0)."""
    grid = ode_grid(STUDENT_T, steps, 3.0)
    x, seen = noise.clone(), {}
    with torch.no_grad():
        for i in range(len(grid) - 1):
            t, dt = grid[i], grid[i + 1] - grid[i]
            seen[t] = x.clone()
            v = teacher(x, t, emb).sample
            if uncond is not None:
                v_u = teacher(x, t, uncond).sample
                v = v_u + cfg * (v - v_u)
            x = x + dt / 1000.0 * v
    return seen, x


def test_teacher_ode_pairs_keep_the_states_at_the_student_steps(teacher, emb):
    noise = torch.randn(B, C, F, H, W, generator=torch.Generator().manual_seed(0))
    states, x0 = teacher_ode_pairs(teacher, emb, None, noise, student_timesteps=STUDENT_T, steps=4)
    assert states.shape == (len(STUDENT_T), B, C, F, H, W) and x0.shape == noise.shape
    assert states.dtype == x0.dtype == torch.float32
    assert torch.equal(states[0], noise), "t = 1000 is the start: the first state is the noise"
    seen, ref_x0 = _euler(teacher, emb, None, noise, 4, 1.0)
    assert_exact_close(x0, ref_x0, "x0 (clean end of the ODE)")
    for i, t in enumerate(STUDENT_T):
        (key,) = [k for k in seen if abs(k - t) < 1e-3]
        assert_exact_close(states[i], seen[key], f"state at t={t}")
    # The states move along the trajectory (not all the noise) and the end is not the noise.
    assert not torch.allclose(states[1], states[0]) and not torch.allclose(x0, noise, atol=0.1)


def test_teacher_ode_pairs_with_guidance_use_the_unconditional_branch(teacher, emb):
    noise = torch.randn(B, C, F, H, W, generator=torch.Generator().manual_seed(1))
    uncond = ToyTextEncoder()([""] * B)
    _, plain = teacher_ode_pairs(teacher, emb, uncond, noise, student_timesteps=STUDENT_T, steps=4, cfg=1.0)
    states, guided = teacher_ode_pairs(teacher, emb, uncond, noise, student_timesteps=STUDENT_T, steps=4, cfg=2.5)
    assert (guided - plain).abs().max() > 1e-2, "cfg 2.5 must differ from cfg 1"
    seen, ref = _euler(teacher, emb, uncond, noise, 4, 2.5)
    assert_exact_close(guided, ref, "guided x0")
    (key,) = [k for k in seen if abs(k - STUDENT_T[-1]) < 1e-3]
    assert_exact_close(states[-1], seen[key], "guided state at the last student step")


# ----------------------------------------------------------------------------- ode_regression_loss

POLICY = CachePolicy(3, 3, 0.999)


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(2)
    states = torch.randn(len(STUDENT_T), B, C, F, H, W, generator=g)
    x0 = torch.randn(B, C, F, H, W, generator=g) * 0.5
    # Different steps per sample and per chunk.
    step_index = torch.tensor([[0, 2, 3], [3, 1, 2]])
    return states, x0, step_index


@pytest.fixture
def student():
    return load_transformer_file(TEACHER_FILE).train().requires_grad_(True)


def _loss(student, emb, states, x0, step_index, **kw):
    kw.setdefault("chunk_frames", CHUNK_FRAMES)  # the toy students' chunk
    return ode_regression_loss(student, emb, states, x0, step_index, timesteps=STUDENT_T, policy=POLICY, **kw)


def _reference_loss(student, emb, states, x0, step_index, grad=False):
    """Each sample streamed alone with its own cache: MSE of x0 = x_t - t/1000 v per chunk,
    then the clean chunk written to the cache at t = 0 (no grad). With ``grad`` the chunk's
    forward runs on a deep copy of the cache, so the refresh cannot touch its saved tensors."""
    losses = []
    with torch.set_grad_enabled(grad):
        for b in range(states.shape[1]):
            cache = SinkKVCache.for_model(student, 1, H, W, POLICY)
            for c in range(states.shape[3] // CHUNK_FRAMES):
                frames = slice(c * CHUNK_FRAMES, (c + 1) * CHUNK_FRAMES)
                t = STUDENT_T[int(step_index[b, c])]
                x_t = states[int(step_index[b, c]), b : b + 1, :, frames]
                cache.begin_chunk()
                v = student.forward_chunk(x_t, t, emb[b : b + 1], copy.deepcopy(cache) if grad else cache).float()
                pred = FlowMatchSampler.predict_x0(x_t, v, t)
                losses.append(((pred - x0[b : b + 1, :, frames]) ** 2).mean())
                with torch.no_grad():
                    student.forward_chunk(x0[b : b + 1, :, frames], 0.0, emb[b : b + 1], cache, update_cache=True)
    return torch.stack(losses).mean()


def test_ode_regression_loss_equals_a_streamed_reference(student, emb, pairs):
    states, x0, step_index = pairs
    ref = _reference_loss(student, emb, states, x0, step_index)
    loss = _loss(student, emb, states, x0, step_index)  # grad enabled: the snapshot-cache path
    with torch.no_grad():
        loss_ng = _loss(student, emb, states, x0, step_index)  # the live-cache path
    assert loss.requires_grad and loss.shape == ()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_ng, ref, rtol=1e-5, atol=1e-6)
    # The cache matters: a reference without context (each chunk alone) gives another loss.
    chunks = [slice(c * CHUNK_FRAMES, (c + 1) * CHUNK_FRAMES) for c in range(NUM_CHUNKS)]
    alone = torch.stack([_reference_loss(student, emb, states[:, :, :, sl], x0[:, :, sl], step_index[:, c : c + 1])
                         for c, sl in enumerate(chunks)]).mean()
    assert abs(float(alone) - float(ref)) > 1e-4


def test_ode_regression_loss_reaches_the_student_parameters(student, emb, pairs):
    states, x0, step_index = pairs
    _loss(student, emb, states, x0, step_index).backward()
    params = dict(student.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    for name in ("patch_embedding.weight", "proj_out.weight", "blocks.0.attn1.to_q.weight",
                 "blocks.3.attn2.to_k.weight", "condition_embedder.text_embedder.linear_1.weight"):
        if name in params:
            assert params[name].grad.abs().sum() > 0, name
    assert sum(float(p.grad.abs().sum() > 0) for p in params.values()) >= 0.9 * len(params)
    # The same gradient as the reference's: each chunk's loss reaches the parameters only
    # through that chunk's own forward (not through the refreshes that built its cache).
    got = {n: p.grad.clone() for n, p in params.items()}
    student.zero_grad(set_to_none=True)
    _reference_loss(student, emb, states, x0, step_index, grad=True).backward()
    for n, p in params.items():
        scale = float(p.grad.abs().max()) + 1e-12
        assert float((got[n] - p.grad).abs().max()) <= 1e-4 * scale + 1e-8, n


def test_ode_regression_loss_depends_only_on_each_chunks_selected_state(student, emb, pairs):
    states, x0, step_index = pairs
    leaf = states.clone().requires_grad_(True)
    _loss(student, emb, leaf, x0, step_index).backward()
    grad = leaf.grad
    used = torch.zeros_like(grad, dtype=torch.bool)
    for b in range(B):
        for c in range(NUM_CHUNKS):
            frames = slice(c * CHUNK_FRAMES, (c + 1) * CHUNK_FRAMES)
            used[int(step_index[b, c]), b, :, frames] = True
            assert grad[int(step_index[b, c]), b, :, frames].abs().sum() > 0, (b, c)
    assert torch.count_nonzero(grad[~used]) == 0, "gradient reached unselected or other chunks' noisy states"

    # Unselected states do not enter at all (bitwise the same loss).
    with torch.no_grad():
        base = _loss(student, emb, states, x0, step_index)
        noisy = states + torch.randn(states.shape, generator=torch.Generator().manual_seed(3)) * ~used
        assert torch.equal(_loss(student, emb, noisy, x0, step_index), base)


def test_later_chunks_see_the_clean_chunk_not_the_noisy_one(student, emb, pairs):
    """loss = (l0 + l1 + l2) / 3 and l0 is the one-chunk loss of chunk 0 (empty cache): the
    later chunks' part 3 loss - l0 must not move when chunk 0's noisy states do, and must move
    when chunk 0's clean target (what the cache is refreshed with) does."""
    states, x0, step_index = pairs
    first = slice(0, CHUNK_FRAMES)

    def later_part(s, x):
        full = _loss(student, emb, s, x, step_index)
        l0 = _loss(student, emb, s[:, :, :, first], x[:, :, first], step_index[:, :1])
        return 3 * full - l0, l0

    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        rest, l0 = later_part(states, x0)
        s2 = states.clone()
        s2[:, :, :, first] += torch.randn(s2[:, :, :, first].shape, generator=g)
        rest_s, l0_s = later_part(s2, x0)
        x2 = x0.clone()
        x2[:, :, first] += torch.randn(x2[:, :, first].shape, generator=g)
        rest_x, _ = later_part(states, x2)
    assert abs(float(l0_s - l0)) > 1e-3, "chunk 0's own loss follows its noisy input"
    torch.testing.assert_close(rest_s, rest, rtol=1e-5, atol=1e-5)
    assert abs(float(rest_x - rest)) > 1e-4, "later chunks attend to chunk 0's clean frames"


def test_ode_regression_loss_rejects_bad_shapes(student, emb, pairs):
    states, x0, step_index = pairs
    with pytest.raises(ValueError, match=r"step_index must be \[2, 3\], got \[2, 2\]"):
        _loss(student, emb, states, x0, step_index[:, :2])
    with pytest.raises(ValueError, match=r"step_index must be \[2, 3\], got \[3\]"):
        _loss(student, emb, states, x0, step_index[0])
    with pytest.raises(ValueError, match="8 latent frames do not split into chunks of 3"):
        _loss(student, emb, states[:, :, :, :8], x0[:, :, :8], step_index)
    with pytest.raises(ValueError, match="9 latent frames do not split into chunks of 2"):
        _loss(student, emb, states, x0, step_index, chunk_frames=2)


# ----------------------------------------------------------------------------- unguided DMD


def test_dmd_gradient_without_guidance_skips_the_unconditional_branch():
    from stream_r1_fast.training.dmd import dmd_gradient

    g = torch.Generator().manual_seed(6)
    x, eps = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    t = torch.tensor([300.0, 700.0])

    def cond(x_t, t):
        return 0.5 * x_t

    def fake(x_t, t):
        return 0.3 * x_t + 0.1

    def boom(x_t, t):
        raise AssertionError("the unconditional branch was scored at guidance 0")

    got, _ = dmd_gradient(x, cond, boom, fake, guidance_scale=0.0, t=t, eps=eps)
    ref, _ = dmd_gradient(x, cond, cond, fake, guidance_scale=3.0, t=t, eps=eps)  # cond - uncond = 0
    torch.testing.assert_close(got, ref)
    guided, _ = dmd_gradient(x, cond, fake, fake, guidance_scale=3.0, t=t, eps=eps)
    assert (guided - got).abs().max() > 1e-3


# ----------------------------------------------------------------------------- Stream-R1's ablation recipes


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name,knobs", [("stream_r1_inter", {"weighting.gamma_t": 0.0, "weighting.gamma_s": 0.0}),
                                        ("stream_r1_intra", {"weighting.beta": 0.0})])
def test_ablation_recipes_change_one_knob_of_stream_r1(name, knobs):
    full = _flat(yaml.safe_load((CONFIGS / "toy_stream_r1.yaml").read_text()))
    ablation = _flat(yaml.safe_load((CONFIGS / f"toy_{name}.yaml").read_text()))
    changed = {k: v for k, v in ablation.items() if full.get(k, "absent") != v}
    assert changed == {**knobs, "train.output_dir": f"runs/toy/{name}"}
    assert set(full) <= set(ablation)


def test_ablation_recipes_switch_off_one_level():
    """inter only: the weight is exp(2 r) on every latent of a rollout; intra only: W_intra alone
    (mean 1 per rollout, not uniform), the same saliency map as the full recipe's."""
    from stream_r1_fast.toy.reward import ToyRewardModel
    from stream_r1_fast.toy.world import ToyWorld
    from stream_r1_fast.training.weighting import Weighting

    videos, attrs = ToyWorld().batch(3, seed=11)
    video = videos.clamp(0, 1)
    prompts = [a.caption for a in attrs]
    shape = (3, 16, 9, 8, 8)
    reward = ToyRewardModel.pretrained()
    made = {n: Weighting(TrainConfig.from_yaml(CONFIGS / f"toy_{n}.yaml").weighting, reward, (4, 4))(video, prompts, shape)
            for n in ("stream_r1", "stream_r1_inter", "stream_r1_intra")}
    (full, full_logs), (inter, inter_logs), (intra, intra_logs) = made.values()
    for w in (full, inter, intra):
        assert w.shape == (3, 1, 9, 8, 8) and torch.isfinite(w).all()
    per_sample = inter.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    torch.testing.assert_close(per_sample[:, 0], inter_logs["w_inter"].to(per_sample))
    torch.testing.assert_close(intra_logs["w_inter"], torch.ones(3, dtype=intra_logs["w_inter"].dtype))
    torch.testing.assert_close(intra.flatten(1).mean(1), torch.ones(3, dtype=intra.dtype))
    assert float(intra.flatten(1).std(1).min()) > 0.05, "the saliency weights are not uniform"
    # The full recipe is the product of its two levels (same rewards, same saliency maps).
    torch.testing.assert_close(full, inter * intra)
