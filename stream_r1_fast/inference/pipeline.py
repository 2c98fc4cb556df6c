"""Streaming text-to-video generation: chunks of latent frames denoised against a bounded KV
cache, decoded and handed out as they are made, for as long as the caller keeps iterating.

>>> pipe = StreamingPipeline.from_pretrained("Wan2.1-T2V-1.3B", checkpoint="rf.pt")  # or the -Diffusers folder
>>> for chunk in pipe.stream("a red fox runs through snow", num_chunks=7, seed=0):
...     show(chunk.frames)          # uint8 [B, T, H, W, 3], 9 frames then 12 per chunk

Memory is constant in the stream's length: the KV cache, the text K/V and the VAE's causal
feature cache have fixed sizes and nothing is accumulated (the caller keeps what it wants).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from stream_r1_fast.cache import CachePolicy, resolve_cache_impl
from stream_r1_fast.devices import resolve_device
from stream_r1_fast.inference.assembly import as_dtype, check_pipeline_options, load_parts, resolve_dtype
from stream_r1_fast.inference.graphs import GraphedChunkStep
from stream_r1_fast.inference.host_frames import HostFrames
from stream_r1_fast.inference.live import LiveStream
from stream_r1_fast.inference.recache import LatentHistory, recache_kv
from stream_r1_fast.inference.sampler import FlowMatchSampler
from stream_r1_fast.inference.schedule import (LivePromptSchedule, PromptSchedule, StreamChunk, check_schedule_prompts,
                                              stream_generators)
from stream_r1_fast.inference.text import PromptEncoder
from stream_r1_fast.inference.vae import StreamingVAEDecoder, codec_factors, to_uint8_video
from stream_r1_fast.models.wan import CausalWanTransformer

# The stream's pieces live beside this file: loading (assembly.py), prompt schedules and the
# chunks handed out (schedule.py), the KV recache (recache.py), live streams (live.py).
__all__ = ["CHUNK_FRAMES", "LatentHistory", "LiveStream", "PromptSchedule", "StreamChunk", "StreamingPipeline",
           "chunks_for_frames"]

CHUNK_FRAMES = 3  # latent frames per chunk: the pipeline's default (what the command line generates with)


def chunks_for_frames(num_frames: int, temporal_factor: int, chunk_frames: int = CHUNK_FRAMES) -> int:
    """Chunks needed for at least ``num_frames`` video frames with a codec of ``temporal_factor``
    (the first latent frame gives one video frame, each later one ``temporal_factor``): 81 frames
    -> 21 latent frames -> 7 chunks of 3."""
    return math.ceil((1 + math.ceil((num_frames - 1) / temporal_factor)) / chunk_frames)



def _finish_chunk(value) -> StreamChunk:
    """A chunk of :meth:`StreamingPipeline._run` once its frames are on the host."""
    n, x0, take, first_frame, prompts, since, recached = value  # take: waits for the host copy
    return StreamChunk(n, x0, take() if take is not None else None, first_frame, prompts, since, recached)

class StreamingPipeline:
    """Causal Wan transformer + sampler + KV cache (+ UMT5 text encoder, + Wan VAE).

    ``vae`` may also be any codec with ``temporal_factor``, ``spatial_factor`` and a
    ``streaming_decoder()`` whose ``decode(latents)`` maps chunks to [B, 3, T, H, W] in [-1, 1]
    (:class:`stream_r1_fast.toy.ToyCodec`); ``prompt_encoder`` any callable prompts ->
    [B, Lt, text_dim] (:class:`stream_r1_fast.toy.ToyTextEncoder`).

    Holds no state between streams: each :meth:`stream` call makes its own cache.
    ``chunk_frames``: latent frames per chunk (3). ``compile_step``: run each chunk's step
    (4 denoising forwards + the refresh, :meth:`FlowMatchSampler.denoise_chunk`) through
    ``torch.compile(fullgraph=True)``, with ``compile_options`` (e.g. ``{"backend": "eager"}``,
    ``{"mode": "max-autotune-no-cudagraphs"}``); the step has fixed shapes for the whole
    stream (the cache tensors never change size), so it compiles once. The noise of a chunk
    is drawn before its step (a ``torch.Generator`` cannot be traced).

    ``cache_impl``: the KV cache storage, same semantics either way: ``"fused"`` (default,
    :class:`~stream_r1_fast.cache.SinkKVCache`: pre-RoPE K/V and the fused ``sink_attention``
    / ``ema_cache_update`` ops) or ``"rotated"`` (opt-in,
    :class:`~stream_r1_fast.cache.RotatedSinkKVCache`: keys stored rotated, one dense
    ``scaled_dot_product_attention`` per block, PyTorch ops only). With ``compile_step`` the
    rotated cache compiles once per fill phase (3 at the defaults), then reuses the last.

    ``cuda_graphs``: run the chunk step as CUDA graphs (compiled with
    ``mode="reduce-overhead"``: recorded on a stream's first chunks, then one replay per
    chunk; :mod:`stream_r1_fast.inference.graphs`); ``compile_options`` apply to it too. Off a
    CUDA device it warns once (:class:`~stream_r1_fast.inference.graphs.CudaGraphsUnavailable`)
    and runs the step compiled without graphs; :attr:`cuda_graphs_status` says which ran.

    ``run_ahead``: compute a stream one chunk ahead of its caller, so the GPU works on chunk
    n + 1 while the caller handles chunk n (whose frames reach the host through a pinned,
    asynchronous copy: :mod:`stream_r1_fast.inference.host_frames`). Same chunks; one more is
    computed than a caller that stops early takes. Default (None): on for a CUDA device.
    Never for a live stream (a prompt set after chunk n must reach chunk n + 1).
    """

    def __init__(
        self,
        transformer: CausalWanTransformer,
        vae=None,
        prompt_encoder: PromptEncoder | None = None,
        *,
        sampler: FlowMatchSampler = FlowMatchSampler(),
        chunk_frames: int = CHUNK_FRAMES,
        compile_step: bool = False,
        compile_options: dict | None = None,
        cache_impl: str = "fused",
        cuda_graphs: bool = False,
        run_ahead: bool | None = None,
    ):
        self._check_options(chunk_frames=chunk_frames, compile_step=compile_step, compile_options=compile_options,
                            cache_impl=cache_impl, cuda_graphs=cuda_graphs, run_ahead=run_ahead)
        self.cache_impl = resolve_cache_impl(cache_impl)
        self.transformer = transformer.eval()
        self.vae = vae.eval() if vae is not None else None
        self.prompt_encoder = prompt_encoder
        self.sampler = sampler
        self.chunk_frames = chunk_frames
        self._run_ahead = run_ahead
        self.chunk_step = sampler.denoise_chunk
        self._graphs = GraphedChunkStep(sampler.denoise_chunk, compile_options) if cuda_graphs else None
        if self._graphs is not None:
            self.chunk_step = self._graphs
        elif compile_step:
            self.chunk_step = torch.compile(sampler.denoise_chunk, fullgraph=True, dynamic=False,
                                            **(compile_options or {}))

    @classmethod
    def _check_options(cls, **options) -> None:
        """``__init__``'s options, checked before from_pretrained loads anything."""
        check_pipeline_options(cls.__init__, options)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        checkpoint: str | Path | None = None,
        which: str = "auto",
        lora: str | Path | None = None,
        lora_alpha: float | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        text_encoder_dtype: torch.dtype | str | None = None,
        offload_text_encoder: bool = False,
        **kwargs,
    ) -> "StreamingPipeline":
        """From a Wan model folder in either layout: diffusers' (``transformer/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/``) or the original one Wan-AI publishes
        (``config.json`` + ``diffusion_pytorch_model*.safetensors``, ``Wan2.1_VAE.pth``,
        ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``), converted on load.

        checkpoint: replaces the transformer's weights (a Self-Forcing / Reward Forcing /
            LongLive ``.pt`` with ``generator[_ema]``, an original-layout file, a diffusers folder).
        lora: a LoRA adapter merged into the transformer (a peft adapter folder, or a LongLive
            ``.pt`` with ``generator_lora``); ``lora_alpha`` when the file does not say (default:
            the rank, LongLive's scale 1). The merge runs in float32, then casts to ``dtype``.
        dtype / torch_dtype (the diffusers name; give one): the transformer's dtype (bfloat16);
            a torch dtype or its name. The VAE runs in float32; the text encoder in
            ``text_encoder_dtype`` or else ``dtype``.
        device: where to run (default: cuda if available, else cpu).
        offload_text_encoder: keep the UMT5 encoder on the CPU; it visits ``device`` only to
            encode new prompts (its weights' bytes of device memory saved; see
            :meth:`PromptEncoder.enable_offload`).
        kwargs: :class:`StreamingPipeline` options (sampler, chunk_frames, compile_step...).

        Every argument, path and file layout is checked before any weight is read: a bad one
        raises (ValueError / TypeError / FileNotFoundError, naming the argument and the path).
        Third-party warnings and progress bars are silenced while loading
        (``STREAM_R1_FAST_VERBOSE=1`` keeps them). The loading itself:
        :func:`stream_r1_fast.inference.assembly.load_parts`.
        """
        cls._check_options(**kwargs)
        transformer, vae, encoder = load_parts(
            path, checkpoint=checkpoint, which=which, lora=lora, lora_alpha=lora_alpha, dtype=dtype,
            torch_dtype=torch_dtype, device=device, text_encoder_dtype=text_encoder_dtype,
            offload_text_encoder=offload_text_encoder,
        )
        return cls(transformer, vae, encoder, **kwargs)

    # ------------------------------------------------------------------ placement

    def to(self, *args, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> "StreamingPipeline":
        """Move the pipeline, as ``pipe.to("cuda")``, ``pipe.to(torch.float16)``,
        ``pipe.to("cuda", torch.bfloat16)`` or by keyword. ``dtype`` casts the transformer and
        the text encoder; the VAE stays in float32 (as :meth:`from_pretrained` loads it). An
        offloaded text encoder stays on the CPU and encodes on the new device. Returns self."""
        for a in args:
            if isinstance(a, (torch.dtype, str)) and as_dtype(a) is not None:
                dtype = a if dtype is None else dtype
            elif isinstance(a, (str, torch.device)):
                device = a if device is None else device
            else:
                raise TypeError(f"to() takes a device and/or a dtype, got {a!r}")
        from stream_r1_fast.models.loading import quiet_loading

        dtype = resolve_dtype(dtype, None, default=None)
        device = resolve_device(device) if device is not None else None
        with quiet_loading():
            self.transformer.to(device=device, dtype=dtype)
            if self.vae is not None and device is not None:
                self.vae.to(device)
        enc = self.prompt_encoder
        if enc is not None:
            if callable(getattr(enc, "to", None)):
                enc.to(device=device, dtype=dtype)
            elif device is not None and hasattr(enc, "device"):
                enc.device = device
        return self

    def enable_text_encoder_offload(self) -> None:
        """Keep the text encoder on the CPU between prompt switches (see
        :meth:`PromptEncoder.enable_offload`)."""
        self._offloadable_encoder().enable_offload(self.device)

    def disable_text_encoder_offload(self) -> None:
        self._offloadable_encoder().disable_offload()

    def _offloadable_encoder(self) -> PromptEncoder:
        if not isinstance(self.prompt_encoder, PromptEncoder):
            raise RuntimeError(f"text-encoder offload needs a PromptEncoder, this pipeline has {type(self.prompt_encoder).__name__}")
        return self.prompt_encoder

    def device_memory_bytes(self) -> dict[str, int]:
        """Bytes of parameters and buffers each part keeps on the pipeline's device."""
        dev = self.device
        parts = {"transformer": self.transformer, "vae": self.vae,
                 "text_encoder": getattr(self.prompt_encoder, "text_encoder", None)}
        out = {}
        for name, module in parts.items():
            if isinstance(module, torch.nn.Module):
                tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()
                out[name] = sum(t.numel() * t.element_size() for t in tensors if t.device == dev)
        return out

    @property
    def run_ahead(self) -> bool:
        """Whether streams run one chunk ahead of their caller (``run_ahead``; None: on CUDA)."""
        return self.device.type == "cuda" if self._run_ahead is None else self._run_ahead

    @property
    def cuda_graphs_status(self) -> str:
        """How the last stream ran its chunk step under ``cuda_graphs=True`` ("captured", or
        why not); "off" when the pipeline was built without it."""
        return self._graphs.status if self._graphs is not None else "off"

    # ------------------------------------------------------------------ sizes

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def vae_factors(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE ((4, 8) for Wan's)."""
        return codec_factors(self.vae)

    def chunks_for_frames(self, num_frames: int) -> int:
        """Chunks needed for at least ``num_frames`` video frames (81 frames -> 21 latent -> 7)."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        return chunks_for_frames(num_frames, self.vae_factors[0], self.chunk_frames)

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.vae_factors[1]
        _, ph, pw = self.transformer.config.patch_size
        for name, v, m in (("height", height, s * ph), ("width", width, s * pw)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"{name} must be a positive multiple of {m} pixels, got {v!r}")
        return height // s, width // s

    # ------------------------------------------------------------------ generation

    def _text(self, prompts: list[str], batch: int):
        if self.prompt_encoder is None:
            raise RuntimeError("this pipeline has no text encoder: build it with prompt_encoder=...")
        if len(prompts) == 1 and batch > 1:
            prompts = prompts * batch
        return self.transformer.encode_text(self.prompt_encoder(prompts)), prompts

    @torch.no_grad()
    def stream(
        self,
        prompt: str | Sequence[str] | Mapping[int, str | Sequence[str]] | PromptSchedule,
        *,
        num_chunks: int | None = None,
        height: int = 480,
        width: int = 832,
        seed: int | Sequence[int] | None = None,
        policy: CachePolicy = CachePolicy(),
        decode: bool = True,
        recache: bool = False,
    ) -> Iterator[StreamChunk]:
        """Generate chunk after chunk; each ``next()`` does one chunk's denoising steps and
        refresh (and its VAE decode).

        Args:
            prompt: a prompt; a list of prompts (a batch of streams); or a schedule
                ``{chunk: prompt(s)}`` switching prompts at chunk boundaries (the text K/V
                replaced; the self-attention cache kept, or re-encoded with ``recache``).
            num_chunks: chunks to make; None streams until the caller stops iterating.
            height, width: video size in pixels (multiples of 16 for Wan).
            seed: an int (one generator for the batch), one int per stream, or None
                (nondeterministic). With one int per stream, stream b gets the noise it would
                get alone and matches that stream generated alone up to rounding (a batched
                matmul may sum in another order; the differences do not grow through the
                cache). Float32 on CPU: latents within 1.5e-4 over 100 chunks for the toy
                student, uint8 frames off by 1 in 0.002% of values.
            policy: sink frames, window frames, EMA alpha of the KV cache; the window must hold
                a chunk.
            decode: decode frames with the VAE (needs one); otherwise ``frames`` is None.
            recache: at every prompt switch after chunk 0, re-encode the cached frames under
                the new prompt (LongLive's KV recache,
                :func:`~stream_r1_fast.inference.recache.recache_kv`) before the chunk where the
                switch takes effect, so that their self-attention K/V stop carrying the old
                prompt's conditioning; off, a switch only replaces the text K/V. Each chunk
                says where its prompts took effect (``prompt_since``) and whether a recache
                ran before it (``recached``).
        """
        if not isinstance(recache, bool):
            raise TypeError(f"recache must be True or False, got {recache!r}")
        schedule = PromptSchedule.of(prompt)
        batch = schedule.batch_size()
        if num_chunks is not None and (isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1):
            raise ValueError(f"num_chunks must be a positive int or None, got {num_chunks!r}")
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must be a CachePolicy, got {type(policy).__name__}")
        policy.check_chunk(self.chunk_frames)  # the window must hold a chunk
        if decode and self.vae is None:
            raise RuntimeError("decode=True needs a VAE: build the pipeline with vae=... or pass decode=False")
        lat_h, lat_w = self._latent_size(height, width)
        if self.prompt_encoder is None:
            raise RuntimeError("this pipeline has no text encoder: build it with prompt_encoder=...")
        check_schedule_prompts(self.prompt_encoder, schedule)
        generator = stream_generators(seed, batch, self.device)
        return self._run(schedule, batch, num_chunks, lat_h, lat_w, generator, policy, decode, recache)

    def _run(self, schedule, batch, num_chunks, lat_h, lat_w, generator, policy, decode,
             recache=False) -> Iterator[StreamChunk]:
        """The stream's chunks; run ahead (:attr:`run_ahead`): chunk n > 0 is handed out once
        chunk n + 1 has been launched, its frames copied to the host meanwhile (never for a
        live stream: a prompt set after chunk n must reach chunk n + 1)."""
        ahead = self.run_ahead and not isinstance(schedule, LivePromptSchedule)
        pending = None
        model = self.transformer
        cache = self.cache_impl.for_model(model, batch, lat_h, lat_w, policy, chunk_frames=self.chunk_frames)
        decoder = None
        if decode:
            make = getattr(self.vae, "streaming_decoder", None)
            decoder = make() if make is not None else StreamingVAEDecoder(self.vae)
        host = HostFrames()
        shape = (batch, model.config.in_channels, self.chunk_frames, lat_h, lat_w)
        times = self.sampler.time_contexts(model, batch, self.chunk_frames)
        text, prompts = None, None
        first_frame, n, since = 0, 0, 0
        # The clean latents of the last (sink + window) frames, for a recache (bounded: a few chunks);
        # kept when a switch may ask for one (a live stream may at any switch).
        history = LatentHistory(policy.sink_frames + policy.window_frames) \
            if recache or isinstance(schedule, LivePromptSchedule) else None
        while num_chunks is None or n < num_chunks:
            switch, recached = schedule.take(n), False
            if switch is not None:
                new_prompts, want = switch
                with torch.no_grad():  # the generator runs outside stream()'s no_grad
                    new_text, prompts = self._text(new_prompts, batch)
                if text is None:
                    text = new_text
                    if self._graphs is not None:
                        self._graphs.prepare(self.device, cache, text, times)
                else:
                    text.copy_(new_text)
                since = n
                if n > 0 and (recache if want is None else want):
                    recached = recache_kv(model, self.chunk_frames, cache, history, text, times, policy)
            noise = self.sampler.draw_chunk_noise(shape, generator, device=self.device)
            x0 = self.chunk_step(model, noise, text, cache, times)
            if history is not None:
                history.add(x0)
            take = None
            if decoder is not None:
                video = to_uint8_video(decoder.decode(x0))
                take, count = host.start(video), video.shape[1]
            ready = (n, x0, take, first_frame, list(prompts), since, recached)
            if pending is not None:
                yield _finish_chunk(pending)
            pending = ready if ahead and n > 0 else None  # chunk 0 at once: the time to first frame
            if pending is None:
                yield _finish_chunk(ready)
            first_frame += count if decoder is not None else 0
            n += 1
        if pending is not None:
            yield _finish_chunk(pending)

    def generate(self, prompt, num_frames: int, **kwargs) -> torch.Tensor:
        """A whole video: uint8 [B, num_frames, H, W, 3] (convenience over :meth:`stream`)."""
        chunks = [c.frames for c in self.stream(prompt, num_chunks=self.chunks_for_frames(num_frames), **kwargs)]
        return torch.cat(chunks, dim=1)[:, :num_frames]

    def open_stream(self, prompt: str | Sequence[str], **kwargs) -> "LiveStream":
        """A live stream (for an interactive viewer): ``next(live)`` makes one chunk,
        ``live.switch(prompt, recache=None)`` changes the prompt from the next chunk boundary on
        (from any thread), ``live.close()`` ends it and frees its cache. ``kwargs``: those of
        :meth:`stream` (``num_chunks`` defaults to None: until closed; ``recache``: the default
        of every switch)."""
        return LiveStream(self, prompt, **kwargs)
