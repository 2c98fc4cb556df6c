"""The toy codec: causal grouping, streaming decode equal to whole decode, pipeline integration."""

import pytest
import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.inference import StreamingPipeline
from stream_r1_fast.models import CausalWanTransformer
from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.models import TEACHER_CONFIG
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import ToyWorld


@pytest.fixture(scope="module")
def clips():
    video, _ = ToyWorld().batch(3, seed=99)
    return video.permute(0, 2, 1, 3, 4) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]


def test_shipped_codec_reconstructs(clips):
    codec = ToyCodec.pretrained()
    z = codec.encode(clips)
    assert z.shape == (3, 16, 9, 8, 8)
    assert 0.7 < float(z.std()) < 1.3  # unit-scaled latents for the diffusion model
    rec = codec.decode(z)
    assert rec.shape == clips.shape
    psnr = 10 * torch.log10(4 / ((rec - clips) ** 2).mean())
    assert psnr > 25, psnr


def test_frame_layout_helpers_match_the_codec_layout(clips):
    """encode_frames/decode_frames take and give the worlds' [B, T, 3, H, W] in [0, 1]."""
    codec = ToyCodec.pretrained()
    frames = ((clips + 1) / 2).permute(0, 2, 1, 3, 4)
    z = codec.encode_frames(frames)
    torch.testing.assert_close(z, codec.encode(clips))
    out = codec.decode_frames(z)
    assert out.shape == frames.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, ((codec.decode(z) + 1) / 2).permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(codec.round_trip(frames), out)
    assert float((out - frames).abs().mean()) < 0.05


def test_first_frame_is_its_own_group(clips):
    codec = ToyCodec.pretrained()
    z = codec.encode(clips)
    z_first = codec.encode(clips[:, :, :1])
    torch.testing.assert_close(z[:, :, :1], z_first)
    # Frames after the first group do not change earlier latents (causality).
    changed = clips.clone()
    changed[:, :, 9:] = 0
    torch.testing.assert_close(codec.encode(changed)[:, :, :3], z[:, :, :3])


@pytest.mark.parametrize("chunks", [(3, 3, 3), (1, 4, 4), (2, 1, 6)])
def test_streaming_decode_equals_whole_decode(clips, chunks):
    codec = ToyCodec.pretrained()
    z = torch.randn(2, 16, sum(chunks), 8, 8, generator=torch.Generator().manual_seed(0))
    whole = codec.decode(z)
    dec = codec.streaming_decoder()
    parts, start = [], 0
    for n in chunks:
        parts.append(dec.decode(z[:, :, start : start + n]))
        start += n
    assert parts[0].shape[2] == 1 + 4 * (chunks[0] - 1)
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=0, atol=1e-6)
    dec.reset()
    torch.testing.assert_close(dec.decode(z), whole, rtol=0, atol=1e-6)


def test_fit_is_reproducible(clips):
    a, b = ToyCodec.fit(clips, 8), ToyCodec.fit(clips.clone(), 8)
    torch.testing.assert_close(a.basis, b.basis)


def test_pipeline_streams_through_the_toy_codec():
    torch.manual_seed(0)
    model = CausalWanTransformer(**TEACHER_CONFIG).eval()
    pipe = StreamingPipeline(model, ToyCodec.pretrained(), ToyTextEncoder())
    assert pipe.vae_factors == (4, 4)
    prompt = "a small red circle moving left fast on a black background"
    chunks = list(pipe.stream(prompt, num_chunks=3, height=32, width=32, seed=0, policy=CachePolicy(3, 3)))
    assert [c.frames.shape[1] for c in chunks] == [9, 12, 12]
    assert chunks[0].frames.shape == (1, 9, 32, 32, 3) and chunks[0].frames.dtype == torch.uint8
    video = pipe.generate(prompt, 33, height=32, width=32, seed=0, policy=CachePolicy(3, 3))
    assert video.shape == (1, 33, 32, 32, 3)


def test_per_channel_scaling_whitens_the_latents_and_round_trips(clips, tmp_path):
    one, per = ToyCodec.fit(clips, 8), ToyCodec.fit(clips, 8, per_channel=True)
    assert one.scale.shape == () and per.scale.shape == (8,)
    z_one, z_per = one.encode(clips), per.encode(clips)
    torch.testing.assert_close(z_per.std(dim=(0, 2, 3, 4)), torch.ones(8), atol=0.05, rtol=0)
    assert float(z_one.std(dim=(0, 2, 3, 4)).amax() / z_one.std(dim=(0, 2, 3, 4)).amin()) > 3  # the spectrum
    # Same basis, so the same reconstruction: the scaling cancels.
    torch.testing.assert_close(per.decode(z_per), one.decode(z_one), atol=1e-5, rtol=0)
    per.save(tmp_path / "c.safetensors")
    back = ToyCodec.from_file(tmp_path / "c.safetensors")
    torch.testing.assert_close(back.scale, per.scale, atol=0, rtol=0)
    torch.testing.assert_close(back.encode(clips), z_per, atol=0, rtol=0)
    assert ToyCodec.pretrained().scale.shape == ()  # files with one factor still load
