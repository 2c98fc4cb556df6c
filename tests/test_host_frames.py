"""Frames reach the host asynchronously (a pinned copy, the stream computed one chunk ahead,
by default on CUDA) and the caller sees the same chunks, in the same order, as without."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import tiny_text_encoder, tiny_tokenizer, tiny_transformer, tiny_vae

from stream_r1_fast.inference import PromptEncoder, StreamingPipeline
from stream_r1_fast.inference.host_frames import HostFrames
from stream_r1_fast.inference.schedule import LivePromptSchedule
from stream_r1_fast.inference.vae import to_uint8_frames, to_uint8_video

SIZE = dict(height=16, width=24)


def _pipe(device, **options):
    encoder = PromptEncoder(tiny_tokenizer(), tiny_text_encoder(), max_length=16)
    return StreamingPipeline(tiny_transformer(), tiny_vae(), encoder, **options).to(device)


class _CountingStep:
    """The pipeline's chunk step, counting its calls."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, *args):
        self.calls += 1
        return self.step(*args)


@pytest.mark.parametrize("ahead", [True, False])
def test_run_ahead_hands_out_chunk_n_after_launching_n_plus_1(ahead):
    """Chunk 0 at once (the time to first frame), then each chunk once the next is launched."""
    pipe = _pipe("cpu", run_ahead=ahead)
    assert pipe.run_ahead is ahead
    pipe.chunk_step = counting = _CountingStep(pipe.chunk_step)
    seen, chunks = [], []
    for chunk in pipe.stream("a red circle", num_chunks=4, seed=3, **SIZE):
        seen.append(counting.calls)
        chunks.append(chunk)
    assert seen == ([1, 3, 4, 4] if ahead else [1, 2, 3, 4])
    # A live stream never runs ahead: a prompt set after chunk n must reach chunk n + 1.
    counting.calls, live_seen = 0, []
    live = []
    for c in pipe.stream(LivePromptSchedule("a red circle"), num_chunks=4, seed=3, **SIZE):
        live_seen.append(counting.calls)
        live.append(c)
    assert live_seen == [1, 2, 3, 4]
    reference = list(_pipe("cpu", run_ahead=False).stream("a red circle", num_chunks=4, seed=3, **SIZE))
    for a, b, c in zip(chunks, live, reference):
        assert a.index == b.index == c.index and a.first_frame == c.first_frame
        torch.testing.assert_close(a.frames, c.frames, rtol=0, atol=0)
        torch.testing.assert_close(b.latents, c.latents, rtol=0, atol=0)
    # A caller that stops early: one chunk more was computed than taken, none after.
    for stop in (0, 2):
        counting.calls = 0
        for chunk in pipe.stream("a red circle", seed=3, **SIZE):
            if chunk.index == stop:
                break
        assert counting.calls == stop + 1 + (ahead and stop > 0)


def test_run_ahead_defaults_to_cuda_and_is_checked():
    assert _pipe("cpu").run_ahead is False
    with pytest.raises(TypeError, match="run_ahead must be True, False or None"):
        _pipe("cpu", run_ahead="yes")


def test_uint8_video_on_the_device_then_the_host():
    video = torch.rand(2, 3, 5, 4, 6) * 2.2 - 1.1
    frames = to_uint8_frames(video)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 5, 4, 6, 3)
    torch.testing.assert_close(to_uint8_video(video), frames, rtol=0, atol=0)
    assert frames.min() == 0 and frames.max() == 255  # clamped, not wrapped
    host = HostFrames().start(to_uint8_video(video))()
    assert host.device.type == "cpu"
    torch.testing.assert_close(host, frames, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pinned_copies_are_fresh_per_chunk():
    frames = [torch.randint(0, 255, (1, 4, 8, 8, 3), dtype=torch.uint8, device="cuda") for _ in range(3)]
    copier = HostFrames()
    takes = [copier.start(f) for f in frames]
    hosts = [t() for t in takes]
    for h, f in zip(hosts, frames):
        assert h.is_pinned() and h.device.type == "cpu"
        torch.testing.assert_close(h, f.cpu(), rtol=0, atol=0)
    assert len({h.data_ptr() for h in hosts}) == 3  # a kept chunk is never overwritten




@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_stream_run_ahead_gives_the_live_streams_chunks():
    """On CUDA a fixed schedule runs one chunk ahead and a live one does not: same frames."""
    pipe = _pipe("cuda")
    ahead = list(pipe.stream("a red circle", num_chunks=4, seed=3, **SIZE))
    live = list(pipe.stream(LivePromptSchedule("a red circle"), num_chunks=4, seed=3, **SIZE))
    assert [c.index for c in ahead] == [0, 1, 2, 3]
    for a, b in zip(ahead, live):
        assert a.first_frame == b.first_frame and a.frames.is_pinned()
        torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
        torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
