"""saliency_weights: the compiled kernels against the float64 reference, the invariants of the
weights, degenerate inputs, opcheck, torch.compile and argument errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream_r1_fast
from stream_r1_fast.ops.saliency import axis_weights_from_rewards, saliency_weights
from stream_r1_fast.ops.saliency_ref import latent_grid, saliency_weights_ref
from tolerances import assert_fa_close

HAS_EXTENSION = stream_r1_fast.backend_info().name == "extension"
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")

# The device fixture is parametrised per test, not per example: hypothesis may reuse it.
fixture_ok = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

ODD_SIZES = st.integers(1, 37)


@st.composite
def problems(draw):
    """A random problem: input tensor (CPU), axis weights or None, and the op's keyword args."""
    fused = draw(st.booleans())
    b = draw(st.integers(1, 3))
    t = draw(st.sampled_from([1, 2, 3, 5, 7, 9, 13]))
    h, w = draw(ODD_SIZES), draw(ODD_SIZES)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # Per-frame scales and a smooth spatial bump give the profiles real contrast.
    frame_scale = 0.3 + torch.rand(t, generator=gen)
    yy = torch.linspace(-1, 1, h)[:, None]
    xx = torch.linspace(-1, 1, w)[None, :]
    cy, cx = (torch.rand(2, generator=gen) * 2 - 1).tolist()
    bump = 0.5 + torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * 2.0)
    if fused:
        x = torch.rand(b, t, h, w, generator=gen) * frame_scale[:, None, None] * bump
        aw = None
    else:
        a, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
        x = torch.randn(a, b, t, c, h, w, generator=gen) * frame_scale[:, None, None, None] * bump
        aw = torch.rand(*(draw(st.sampled_from([(a,), (b, a)]))), generator=gen) + 0.1
    kwargs = dict(
        mode=draw(st.sampled_from(["vae", "trilinear"])),
        temporal_factor=draw(st.sampled_from([1, 2, 4])),
        spatial_factor=draw(st.sampled_from([1, 2, 4, 8])),
        tau_floor=draw(st.floats(0, 1)),
        sigma_floor=draw(st.floats(0, 1)),
        gamma_t=draw(st.floats(0, 1)),
        gamma_s=draw(st.floats(0, 1)),
    )
    return x.to(dtype), aw, kwargs


def _ref(x, aw, kwargs):
    args = [kwargs[k] for k in ("mode", "temporal_factor", "spatial_factor", "tau_floor",
                                "sigma_floor", "gamma_t", "gamma_s")]
    if aw is None:
        aw = torch.full((x.shape[0],), 1.0 / x.shape[0]) if x.dim() == 6 else torch.empty(0)
    return saliency_weights_ref(x, aw.to(x.dtype if x.dtype == torch.float64 else torch.float32), *args)


@fixture_ok
@given(problem=problems())
def test_matches_float64_reference(device, problem):
    x, aw, kwargs = problem
    out = saliency_weights(x.to(device), None if aw is None else aw.to(device), **kwargs)
    truth = _ref(x.double(), None if aw is None else aw.double(), kwargs)
    same_precision = _ref(x, aw, kwargs)
    # The op upcasts every input dtype exactly and computes in float32, so its yardstick is the
    # float32 reference on the same input, with the float32 atol whatever the input dtype.
    for name, o, s, t in zip(("weights", "tau", "sigma"), out, same_precision, truth):
        assert o.dtype == torch.float32 and o.device.type == device.type, name
        assert_fa_close(o.cpu(), s, t, torch.float32, name)


@fixture_ok
@given(problem=problems())
def test_invariants(device, problem):
    x, aw, kwargs = problem
    weights, tau, sigma = saliency_weights(x.to(device), None if aw is None else aw.to(device), **kwargs)
    b, t, h, w = (x.shape[i] for i in ((1, 2, 4, 5) if x.dim() == 6 else (0, 1, 2, 3)))
    f_lat, h_lat, w_lat = latent_grid(t, h, w, kwargs["temporal_factor"], kwargs["spatial_factor"])
    assert weights.shape == (b, f_lat, h_lat, w_lat)
    assert tau.shape == (b, f_lat)
    assert sigma.shape == (b, f_lat, h_lat, w_lat)
    weights, tau, sigma = weights.double().cpu(), tau.double().cpu(), sigma.double().cpu()
    one = torch.ones((), dtype=torch.float64)
    torch.testing.assert_close(weights.mean((1, 2, 3)), one.expand(b), rtol=0, atol=1e-5)
    torch.testing.assert_close(tau.mean(1), one.expand(b), rtol=0, atol=1e-5)
    torch.testing.assert_close(sigma.mean((2, 3)), one.expand(b, f_lat), rtol=0, atol=1e-5)
    product = tau[:, :, None, None] * sigma
    torch.testing.assert_close(weights, product / product.mean((1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    assert (weights > 0).all() or min(kwargs["tau_floor"], kwargs["sigma_floor"]) == 0


def _official_profile(x: torch.Tensor, dims: tuple[int, ...], gamma: float, floor: float) -> torch.Tensor:
    """Stream-R1's strength knob, written from its description: min-max normalise, mix with
    uniform, THEN floor, then divide by the mean (float64; non-degenerate profiles only)."""
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    hat = (x - lo) / (hi - lo)
    hat = (1 - gamma) + gamma * hat
    hat = torch.maximum(hat, torch.full_like(hat, floor))
    return hat / hat.mean(dims, keepdim=True)


def test_strength_mixes_before_the_floor(device):
    """gamma_t = 0.5 on a two-frame profile [0, 1]: mix -> [0.5, 1], floor 0.2 -> [0.5, 1],
    mean 0.75 -> tau [2/3, 4/3] (flooring first gave [0.75, 1.25])."""
    x = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None]  # [B=1, T=2, H, W]
    _, tau, _ = saliency_weights(x.to(device), temporal_factor=1, spatial_factor=1, gamma_t=0.5)
    torch.testing.assert_close(tau.cpu(), torch.tensor([[2 / 3, 4 / 3]]), rtol=0, atol=1e-6)


@fixture_ok
@given(
    gamma_t=st.floats(0, 1), gamma_s=st.floats(0, 1), tau_floor=st.floats(0, 1),
    sigma_floor=st.floats(0, 1), t=st.integers(2, 9), h=ODD_SIZES, w=ODD_SIZES,
    seed=st.integers(0, 2**31 - 1),
)
def test_profiles_follow_stream_r1_order(device, gamma_t, gamma_s, tau_floor, sigma_floor, t, h, w, seed):
    """tau and sigma against the few lines above, on odd shapes (factors 1: the latent grid is
    the input); profiles close to the op's "constant" threshold are left out."""
    if h * w < 2:
        h = 2
    gen = torch.Generator().manual_seed(seed)
    x = torch.randperm(t * h * w, generator=gen).double().reshape(1, t, h, w) + 1.0
    x = x * (1.0 + torch.randperm(t, generator=gen).double())[None, :, None, None]  # frame contrast
    _, tau, sigma = saliency_weights(
        x.float().to(device), temporal_factor=1, spatial_factor=1, tau_floor=tau_floor,
        sigma_floor=sigma_floor, gamma_t=gamma_t, gamma_s=gamma_s,
    )
    def clear_range(p, dims):  # far from the op's "constant" threshold (RANGE_RTOL)
        return ((p.amax(dims) - p.amin(dims)) > 1e-2 * p.abs().amax(dims)).all()

    frame_means = x.mean((2, 3))
    if clear_range(frame_means, (1,)):
        want_tau = _official_profile(frame_means, (1,), gamma_t, tau_floor)
        torch.testing.assert_close(tau.cpu().double(), want_tau, rtol=1e-5, atol=1e-5)
    if clear_range(x, (2, 3)):
        want_sigma = _official_profile(x, (2, 3), gamma_s, sigma_floor)
        torch.testing.assert_close(sigma.cpu().double(), want_sigma, rtol=1e-5, atol=1e-5)


def _degenerate_inputs():
    cases = {
        "zeros": torch.zeros(3, 2, 9, 3, 21, 19),
        "constant_grad": torch.full((3, 2, 9, 3, 21, 19), 0.37),
        "constant_map": torch.full((2, 9, 21, 19), 0.1),
        "one_frame": torch.full((2, 1, 21, 19), 2.5),
        "tiny": torch.full((3, 2, 5, 3, 13, 11), 1e-30),
        "tiny_map": torch.full((2, 5, 13, 11), 1e-38),
        "nan": torch.full((2, 5, 13, 11), float("nan")),
        "inf": torch.full((2, 5, 13, 11), float("inf")),
    }
    return [pytest.param(v, id=k) for k, v in cases.items()]


@pytest.mark.parametrize("mode", ["vae", "trilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x", _degenerate_inputs())
def test_degenerate_inputs_give_uniform_weights(device, x, dtype, mode):
    aw = torch.tensor([0.2, 0.3, 0.5], device=device) if x.dim() == 6 else None
    for out in saliency_weights(x.to(device, dtype), aw, mode=mode):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["vae", "trilinear"])
def test_more_saliency_gets_more_weight(device, mode):
    # Latent frame k holds saliency k + 1 (frames of one VAE group share it); the left half of
    # every frame is brighter than the right.
    t, tf = 13, 4
    f_lat = latent_grid(t, 16, 16, tf, 8)[0]
    frame_level = torch.tensor([0] + [1 + (i - 1) // tf for i in range(1, t)], dtype=torch.float32) + 1
    x = frame_level[None, :, None, None].expand(1, t, 16, 16).clone()
    x[..., :8] *= 2.0
    weights, tau, sigma = saliency_weights(x.to(device), mode=mode, temporal_factor=tf, tau_floor=0.0)
    assert tau.shape == (1, f_lat)
    assert (tau[0, 1:] > tau[0, :-1]).all(), tau
    assert (sigma[..., 0] > sigma[..., 1]).all(), sigma
    assert weights[0, -1, 0, 0] == weights.max()


def test_per_sample_axis_weights_match_per_sample_calls(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 3, 17, 23, generator=gen).to(device)
    aw = torch.rand(2, 3, generator=gen).to(device)
    batched = saliency_weights(x, aw, spatial_factor=4)
    for b in range(2):
        single = saliency_weights(x[:, b : b + 1].contiguous(), aw[b], spatial_factor=4)
        for got, want in zip(batched, single):
            torch.testing.assert_close(got[b : b + 1], want, rtol=1e-6, atol=1e-6)


def test_float64_runs_the_reference():
    x = torch.rand(1, 5, 9, 9, dtype=torch.float64)
    out = saliency_weights(x, spatial_factor=2)
    assert all(o.dtype == torch.float64 for o in out)


def test_axis_weights_from_rewards():
    r = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    w = axis_weights_from_rewards(r)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert w[0].argmax() == 1 and w[0].argmin() == 2  # the weakest axis gets the most say
    torch.testing.assert_close(w[1], torch.full((3,), 1 / 3))
    sharp = axis_weights_from_rewards(r[0], temperature=0.1)
    assert sharp[1] > w[0, 1]
    with pytest.raises(ValueError, match="temperature"):
        axis_weights_from_rewards(r, temperature=0.0)


# ---- op registration -----------------------------------------------------------------------


@needs_extension
@pytest.mark.parametrize("mode", ["vae", "trilinear"])
@pytest.mark.parametrize("rank", [4, 6])
def test_opcheck(device, mode, rank):
    gen = torch.Generator().manual_seed(1)
    if rank == 6:
        x, aw = torch.randn(2, 2, 5, 3, 11, 13, generator=gen), torch.rand(2, 2, generator=gen)
    else:
        x, aw = torch.rand(2, 5, 11, 13, generator=gen), torch.empty(0)
    args = (x.to(device), aw.to(device), mode, 2, 4, 0.2, 0.15, 0.9, 1.0)
    torch.library.opcheck(torch.ops.stream_r1_fast.saliency_weights.default, args)


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    def loss_weights(grads, rewards):
        weights, _, _ = saliency_weights(grads, axis_weights_from_rewards(rewards), spatial_factor=4)
        return weights * 2.0

    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(3, 1, 5, 3, 13, 17, generator=gen).to(device)
    rewards = torch.randn(3, generator=gen).to(device)
    compiled = torch.compile(loss_weights, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(grads, rewards), loss_weights(grads, rewards))


# ---- errors --------------------------------------------------------------------------------


def _bad_calls(device):
    x = torch.rand(3, 1, 5, 3, 9, 9, device=device)
    aw = torch.rand(3, device=device)
    return [
        ("rank", lambda: saliency_weights(x[0], aw), r"\[A, B, T, C, H, W\]"),
        ("axis_weights length", lambda: saliency_weights(x, aw[:2]), "axis_weights must have shape"),
        ("axis_weights dtype", lambda: saliency_weights(x, aw.long()), "axis_weights must be a floating"),
        ("mode", lambda: saliency_weights(x, aw, mode="nearest"), "mode must be"),
        ("int dtype", lambda: saliency_weights(x.long(), aw), "saliency must be float32"),
        ("non-contiguous", lambda: saliency_weights(x.transpose(-1, -2), aw), "contiguous"),
        ("empty", lambda: saliency_weights(x[:, :, :0], aw), "empty"),
        ("temporal_factor 0", lambda: saliency_weights(x, aw, temporal_factor=0), "temporal_factor"),
        ("spatial_factor 0", lambda: saliency_weights(x, aw, spatial_factor=0), "spatial_factor"),
        ("tau_floor", lambda: saliency_weights(x, aw, tau_floor=1.5), "tau_floor"),
        ("sigma_floor", lambda: saliency_weights(x, aw, sigma_floor=-0.1), "sigma_floor"),
        ("gamma_t", lambda: saliency_weights(x, aw, gamma_t=float("nan")), "gamma_t"),
        ("gamma_s", lambda: saliency_weights(x, aw, gamma_s=2), "gamma_s"),
    ]


def test_bad_arguments_raise_clear_errors(device):
    """The public checks run before dispatch: the same message whichever backend would run."""
    for what, call, match in _bad_calls(device):
        with pytest.raises((ValueError, TypeError), match=match):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_mismatch_raises():
    x = torch.rand(3, 1, 5, 3, 9, 9, device="cuda")
    with pytest.raises(ValueError, match="device"):
        saliency_weights(x, torch.rand(3))
    if HAS_EXTENSION:
        with pytest.raises(RuntimeError, match="device"):
            torch.ops.stream_r1_fast.saliency_weights(x, torch.rand(3), "vae", 4, 8, 0.2, 0.15, 1.0, 1.0)
        with pytest.raises(RuntimeError, match="CUDA tensor"):
            torch.ops.stream_r1_fast.saliency_weights(
                torch.rand(1, 5, 9, 9), torch.rand(3, device="cuda"), "vae", 4, 8, 0.2, 0.15, 1.0, 1.0
            )


@needs_extension
def test_op_checks_its_arguments(device):
    """Direct calls of the op (bypassing the Python checks) fail with the argument's name."""
    x = torch.rand(3, 1, 5, 3, 9, 9, device=device)
    aw = torch.rand(3, device=device)
    op = torch.ops.stream_r1_fast.saliency_weights
    good = dict(mode="vae", tf=4, sf=8, tau_floor=0.2, sigma_floor=0.15, gamma_t=1.0, gamma_s=1.0)

    def call(s=x, w=aw, **over):
        a = {**good, **over}
        return op(s, w, a["mode"], a["tf"], a["sf"], a["tau_floor"], a["sigma_floor"], a["gamma_t"], a["gamma_s"])

    cases = [
        (lambda: call(s=x[0]), "saliency must be per-axis gradients"),
        (lambda: call(w=aw[:2]), "axis_weights must have shape"),
        (lambda: call(w=aw.long()), "axis_weights must be a floating"),
        (lambda: call(s=x.double()), "saliency must be float32"),
        (lambda: call(s=x.transpose(-1, -2)), "saliency must be contiguous"),
        (lambda: call(mode="area"), "mode must be"),
        (lambda: call(tf=0), "temporal_factor"),
        (lambda: call(sf=0), "spatial_factor"),
        (lambda: call(sigma_floor=1.01), "sigma_floor"),
        (lambda: call(gamma_t=-1.0), "gamma_t"),
    ]
    for fn, match in cases:
        with pytest.raises(RuntimeError, match=match):
            fn()


@needs_extension
@pytest.mark.parametrize("which", ["saliency", "axis_weights"])
@pytest.mark.parametrize("rank", [4, 6])
def test_one_meta_tensor_is_refused(which, rank):
    """A direct call mixing meta with CPU tensors dispatches to the fake kernel, which must
    refuse it instead of returning uninitialised memory (the ignored axis_weights of a fused
    map included: every tensor argument on one device)."""
    x = torch.rand(3, 1, 5, 3, 9, 9) if rank == 6 else torch.rand(1, 5, 9, 9)
    aw = torch.rand(3)
    if which == "saliency":
        x = x.to("meta")
    else:
        aw = aw.to("meta")
    with pytest.raises((RuntimeError, ValueError), match="axis_weights must be on the device of saliency"):
        torch.ops.stream_r1_fast.saliency_weights(x, aw, "vae", 4, 8, 0.2, 0.15, 1.0, 1.0)


@pytest.mark.parametrize("kwargs, frames, cells", [
    (dict(spatial_factor=2**63 - 1), 3, 1), (dict(temporal_factor=2**63 - 1), 2, 2),
    (dict(temporal_factor=2**62, spatial_factor=2**62), 2, 1),
])
def test_factors_near_int64_max(device, kwargs, frames, cells):
    """Latent grid 1 + ceil((T - 1) / tf), ceil(H / sf) without the overflow of (a + b - 1) / b,
    in the kernel, the reference and the fake kernel alike."""
    x = torch.randn(3, 2, 9, 3, 16, 16, device=device)
    weights, tau, sigma = saliency_weights(x, **kwargs)
    assert tau.shape == (2, frames) and weights.shape == (2, frames, cells, cells)
    args = {"temporal_factor": 4, "spatial_factor": 8, **kwargs}
    ref = saliency_weights_ref(x.cpu(), torch.full((3,), 1 / 3), "vae", args["temporal_factor"],
                               args["spatial_factor"])
    for got, want in zip((weights, tau, sigma), ref):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)
    if HAS_EXTENSION:
        fake = torch.ops.stream_r1_fast.saliency_weights(
            x.to("meta"), torch.rand(3, device="meta"), "vae", args["temporal_factor"],
            args["spatial_factor"], 0.2, 0.15, 1.0, 1.0)
        assert [t.shape for t in fake] == [weights.shape, tau.shape, sigma.shape]
