"""The chunk step as CUDA graphs: one capture per cache-fill phase, then one replay per chunk.

``StreamingPipeline(cuda_graphs=True)`` compiles the chunk step
(:meth:`~stream_r1_fast.inference.FlowMatchSampler.denoise_chunk`: 4 denoising forwards and
the refresh) with ``torch.compile(mode="reduce-overhead", fullgraph=True)``: PyTorch's
CUDA-graph trees record the step the first times it runs with a new set of shapes or code
path and replay the recording afterwards, so a steady chunk is one graph launch instead of
thousands of kernel launches. The step was made for this: it draws no random numbers (the
noise is drawn before it, into a tensor), reads no device value on the host, and its time
embeddings are computed once per stream. What varies per stream is made static:

* the cache's state tensors, the text context and the time contexts keep their storage for
  the whole stream, and are marked static (``torch._dynamo.mark_static_address``), so the
  graphs read and write them in place instead of copying them in;
* the noise is copied into the graph's input buffer on every replay (one small copy);
* the step's output lives in the graph's memory pool and is overwritten by the next replay,
  so it is cloned before it is handed out.

The fused cache (``cache_impl="fused"``) runs one code path for every chunk: one recording.
The rotated cache attends to a key prefix that grows while the cache fills: one recording
per fill phase (three at the defaults), then the steady one. A new stream allocates a new
cache, so its graphs are recorded again on its first chunks.

Where graphs cannot run the pipeline says why, once, with a :class:`CudaGraphsUnavailable`
warning and in :attr:`StreamingPipeline.cuda_graphs_status`, and runs the same step compiled
without graphs (a CPU device; a torch without CUDA). When PyTorch itself declines to record
(it counts every such skip), the status says so after the first chunk.
"""

from __future__ import annotations

import warnings

import torch


class CudaGraphsUnavailable(UserWarning):
    """``cuda_graphs=True`` but the chunk step runs without CUDA graphs (the message says why)."""


def unavailable_reason(device: torch.device) -> str | None:
    """Why the chunk step cannot be captured as CUDA graphs on ``device``, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; the pipeline runs on {device.type}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; torch sees none"
    return None


def _skips() -> int:
    """Recordings PyTorch's CUDA-graph trees have declined so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


def _static_tensors(*objects) -> list[torch.Tensor]:
    out = []
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, (list, tuple)):
            out.extend(_static_tensors(*obj))
        elif callable(getattr(obj, "tensors", None)):
            out.extend(obj.tensors())
        elif hasattr(obj, "__dict__"):
            out.extend(_static_tensors(*vars(obj).values()))
    return out


class GraphedChunkStep:
    """The chunk step of one pipeline under ``cuda_graphs=True``: :meth:`prepare` once per
    stream, then ``step(model, noise, text, cache, times)`` per chunk (same call and result as
    ``sampler.denoise_chunk``)."""

    def __init__(self, denoise_chunk, compile_options: dict | None = None):
        options = dict(compile_options or {})
        if "mode" in options:
            raise ValueError("cuda_graphs=True sets torch.compile's mode ('reduce-overhead'); drop 'mode' from "
                             "compile_options")
        self._graphed = torch.compile(denoise_chunk, fullgraph=True, dynamic=False, mode="reduce-overhead",
                                      **options)
        self._plain = torch.compile(denoise_chunk, fullgraph=True, dynamic=False, **options)
        self.status = "not run yet"
        self._warned = False
        self._use_graphs = False
        self._skips_before = 0
        self._checked = False

    def prepare(self, device: torch.device, cache, text, times) -> None:
        """Before a stream's first chunk: graphs or not on ``device`` (warns once when not), and
        the stream's persistent tensors marked static."""
        reason = unavailable_reason(device)
        self._use_graphs = reason is None
        self._checked = False
        if reason is not None:
            self.status = f"off: {reason} (the step runs compiled without graphs)"
            if not self._warned:
                warnings.warn(f"cuda_graphs=True: {reason}; the chunk step runs compiled without graphs",
                              CudaGraphsUnavailable, stacklevel=4)
                self._warned = True
            return
        for t in _static_tensors(cache, times):
            torch._dynamo.mark_static_address(t)
        self.mark_text(text)
        self._skips_before = _skips()
        self.status = "recording"

    @staticmethod
    def mark_text(text) -> None:
        """A prompt's text context (its storage is reused by later switches: ``copy_``)."""
        for t in _static_tensors(text):
            torch._dynamo.mark_static_address(t)

    def __call__(self, model, noise, text, cache, times):
        if not self._use_graphs:
            return self._plain(model, noise, text, cache, times)
        torch.compiler.cudagraph_mark_step_begin()
        x0 = self._graphed(model, noise, text, cache, times).clone()
        if not self._checked:
            skipped = _skips() - self._skips_before
            self.status = ("captured" if skipped == 0 else
                           f"skipped by torch ({skipped} recording(s) declined; TORCH_LOGS=perf_hints says why)")
            self._checked = True
        return x0


__all__ = ["CudaGraphsUnavailable", "GraphedChunkStep", "unavailable_reason"]
