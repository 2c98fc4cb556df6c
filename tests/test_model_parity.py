"""The causal Wan transformer against diffusers' WanTransformer3DModel (same weights, fp32)."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from tiny_wan import TEXT_DIM, tiny_transformer

from stream_r1_fast.models import CausalWanTransformer, preset


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def pair():
    ours = tiny_transformer(seed=3)
    ref = WanTransformer3DModel(**preset("tiny")).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def test_parameter_names_and_shapes_equal_diffusers():
    for name in ("tiny", "wan2.1-1.3b"):
        with torch.device("meta"):
            ours = CausalWanTransformer(**preset(name))
            ref = WanTransformer3DModel(**preset(name))
        a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert a == b, name


@pytest.mark.parametrize("shape", [(1, 4, 1, 2, 2), (2, 4, 5, 6, 8), (3, 4, 4, 4, 10)])
def test_bidirectional_forward_equals_diffusers(pair, shape):
    ours, ref = pair
    torch.manual_seed(0)
    x = torch.randn(shape)
    t = torch.rand(shape[0]) * 1000
    ctx = torch.randn(shape[0], 7, TEXT_DIM)
    with torch.no_grad():
        want = ref(x, t, ctx).sample
        got = ours(x, t, ctx).sample
        got_ctx = ours(x, t, ours.encode_text(ctx)).sample  # precomputed text K/V
    assert got.shape == want.shape
    assert _rel_err(got, want) <= 1e-5
    torch.testing.assert_close(got_ctx, got)


def test_per_frame_timesteps(pair):
    ours, _ = pair
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 5, TEXT_DIM)
    t = torch.tensor([900.0, 100.0])
    with torch.no_grad():
        same = ours(x, t[:, None].expand(2, 3), ctx).sample
        base = ours(x, t, ctx).sample
        mixed = ours(x, torch.tensor([[900.0, 900.0, 10.0], [100.0, 100.0, 100.0]]), ctx).sample
    torch.testing.assert_close(same, base)
    assert (mixed[0, :, 2] - base[0, :, 2]).abs().max() > 1e-4  # frame 2's own timestep matters


def test_gradient_checkpointing_same_gradients():
    model = tiny_transformer(seed=4).train()
    torch.manual_seed(2)
    x, ctx, t = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 5, TEXT_DIM), torch.tensor([500.0])

    def grads():
        model.zero_grad()
        model(x, t, ctx, causal_chunk_frames=1).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_rejects_bad_config_and_inputs():
    with pytest.raises(ValueError, match="text-to-video only"):
        CausalWanTransformer(**preset("tiny", image_dim=1280))
    with pytest.raises(KeyError, match="unknown model preset"):
        preset("wan3")
    model = tiny_transformer()
    with pytest.raises(ValueError, match="latents must be"):
        model(torch.randn(1, 3, 1, 4, 4), 10.0, torch.randn(1, 2, TEXT_DIM))
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        model(torch.randn(1, 4, 1, 4, 4), 10.0, torch.randn(1, 2, 7))
    with pytest.raises(ValueError, match="timestep must be"):
        model(torch.randn(1, 4, 2, 4, 4), torch.ones(1, 3), torch.randn(1, 2, TEXT_DIM))
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(torch.randn(1, 4, 1, 3, 4), 10.0, torch.randn(1, 2, TEXT_DIM))
