"""Frames to the host without stalling the GPU: a pinned, asynchronous copy.

A decoded chunk is wanted on the host (an mp4 writer, a WebSocket), but a blocking
``.cpu()`` makes the host wait for the GPU to finish the chunk *before* it launches the next
one, and the GPU then idles while the host encodes frames and launches again. Two pieces
remove that gap on CUDA:

* :class:`HostFrames` starts the device-to-host copy of a chunk's uint8 frames into pinned
  memory (``non_blocking``, an event recorded after it) and returns a handle; the host blocks
  only when it takes the frames. The pinned tensors come from PyTorch's caching host
  allocator (fresh per chunk, so a caller may keep every chunk it is given; the cache reuses
  their memory once they are dropped and their copy is done).
* the pipeline runs a stream one chunk ahead (``StreamingPipeline(run_ahead=...)``, on by
  default on CUDA): chunk n is handed out (its copy waited for) only after chunk n + 1 has
  been launched, so the GPU computes n + 1 while the caller handles n. Chunk 0 is handed out
  at once (the time to first frame does not wait for chunk 1). Same frames, same order; one
  chunk more is computed than a caller that stops early takes.

Off CUDA the copy is synchronous.
"""

from __future__ import annotations

from typing import Callable

import torch


class HostFrames:
    """Asynchronous device-to-host copies of uint8 frame tensors (:meth:`start`)."""

    def start(self, frames: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Begin copying ``frames`` to the host; the returned callable waits for the copy and
        returns the host tensor (pinned on CUDA; the same tensor's ``.cpu()`` elsewhere)."""
        if frames.device.type != "cuda":
            host = frames.cpu()
            return lambda: host
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        host.copy_(frames, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def take() -> torch.Tensor:
            done.synchronize()
            return host

        return take


__all__ = ["HostFrames"]
