"""Streaming text-to-video generation: chunks of latent frames denoised against a bounded KV
cache, decoded and handed out as they are made, for as long as the caller keeps iterating.

>>> pipe = StreamingPipeline.from_pretrained("Wan2.1-T2V-1.3B", checkpoint="rf.pt")  # or the -Diffusers folder
>>> for chunk in pipe.stream("a red fox runs through snow", num_chunks=7, seed=0):
...     show(chunk.frames)          # uint8 [B, T, H, W, 3], 9 frames then 12 per chunk

Memory is constant in the stream's length: the KV cache, the text K/V and the VAE's causal
feature cache have fixed sizes and nothing is accumulated (the caller keeps what it wants).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from stream_r1_fast.cache import CachePolicy, resolve_cache_impl
from stream_r1_fast.devices import resolve_device
from stream_r1_fast.inference.sampler import FlowMatchSampler
from stream_r1_fast.inference.text import PromptEncoder, as_prompt_list
from stream_r1_fast.inference.vae import StreamingVAEDecoder, codec_factors, to_uint8_frames
from stream_r1_fast.models.loading import load_transformer
from stream_r1_fast.models.wan import CausalWanTransformer


_DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "half": torch.float16, "fp32": torch.float32,
                "float": torch.float32}


def _as_dtype(value) -> torch.dtype | None:
    """A floating-point torch dtype from a dtype or its name ('bfloat16', 'torch.float16', 'bf16'), or None."""
    if isinstance(value, torch.dtype):
        return value if value.is_floating_point else None
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        dt = _DTYPE_NAMES.get(name) or getattr(torch, name, None)
        return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None
    return None


def resolve_dtype(dtype, torch_dtype, name: str = "dtype", default: torch.dtype | None = torch.bfloat16):
    """``dtype`` / ``torch_dtype`` (diffusers' name) -> a floating-point torch dtype; giving both
    with different values, or anything else than a float dtype, is a ValueError naming it."""
    for value, arg in ((dtype, name), (torch_dtype, "torch_dtype")):
        if value is not None and _as_dtype(value) is None:
            raise ValueError(f"{arg}={value!r}: not a floating-point torch dtype "
                             "(torch.bfloat16, torch.float16, torch.float32, or their names)")
    if dtype is not None and torch_dtype is not None and _as_dtype(dtype) != _as_dtype(torch_dtype):
        raise ValueError(f"{name}={dtype!r} and torch_dtype={torch_dtype!r} disagree: give one of them")
    value = dtype if dtype is not None else torch_dtype
    return default if value is None else _as_dtype(value)


def _check_lora_path(lora) -> None:
    p = Path(lora)
    where = f"lora={str(lora)!r}"
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such LoRA file or folder")
    if p.is_dir():
        if not (p / "adapter_config.json").is_file() or not any(
            (p / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")
        ):
            raise FileNotFoundError(f"{where}: a peft adapter folder needs adapter_config.json and adapter_model.safetensors")
    elif p.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(f"{where}: unknown LoRA type (expected a peft adapter folder, .safetensors, .pt or .pth)")


@dataclasses.dataclass
class StreamChunk:
    """One generated chunk of a batch of streams.

    index: chunk number in the stream (0-based). latents: clean latents [B, C, Fq, h, w]
    (float32, on the model's device). frames: uint8 [B, T, H, W, 3] on the CPU, or None
    without decoding. first_frame: index of the chunk's first video frame in the stream.
    prompts: the prompt of each stream for this chunk (always a list of str).
    prompt_since: the chunk at which these prompts took effect (``== index`` on the chunk where
    a switch took effect: switches happen at chunk boundaries). recached: a KV recache
    (:meth:`StreamingPipeline.stream`'s ``recache``) ran before this chunk, under its prompts.
    """

    index: int
    latents: torch.Tensor
    frames: torch.Tensor | None
    first_frame: int
    prompts: list[str]
    prompt_since: int = 0
    recached: bool = False


def _checked_prompts(prompts, where: str) -> list[str]:
    """A prompt or a list of them (one per stream) -> a list of non-empty prompts; the error
    names ``where`` (e.g. "the prompt of chunk 3") and the stream."""
    out = as_prompt_list(prompts, where)
    for b, p in enumerate(out):
        if not p.strip():
            raise ValueError(where + (f" (stream {b})" if len(out) > 1 else "") + f" is empty: {p!r}")
    return out


class PromptSchedule:
    """Which prompts hold from which chunk on: ``{chunk_index: prompt or [prompt per stream]}``.

    A schedule must start at chunk 0. A plain str / list of str is the schedule ``{0: it}``.
    Every prompt is checked here, so a bad entry fails before the first chunk, not when it is
    reached: a prompt must be a non-empty str with more than whitespace in it.
    """

    def __init__(self, entries: Mapping[int, str | Sequence[str]]):
        if not isinstance(entries, Mapping) or not entries:
            raise TypeError(f"a prompt schedule is a non-empty dict {{chunk: prompt}}, got {type(entries).__name__}")
        items = {}
        for k, v in entries.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"prompt schedule keys must be chunk indices >= 0, got {k!r}")
            items[k] = _checked_prompts(v, f"the prompt of chunk {k}")
        if 0 not in items:
            raise ValueError(f"a prompt schedule must give the prompt of chunk 0, got chunks {sorted(items)}")
        self.entries = dict(sorted(items.items()))
        self.batch_size()  # entries of different batch sizes fail here too

    @classmethod
    def of(cls, prompt) -> "PromptSchedule":
        if isinstance(prompt, PromptSchedule):
            return prompt
        if isinstance(prompt, Mapping):
            return cls(prompt)
        return cls({0: as_prompt_list(prompt)})

    def batch_size(self) -> int:
        """Streams in the batch (1 when every entry is a single prompt)."""
        sizes = {len(v) for v in self.entries.values()} - {1}
        if len(sizes) > 1:
            raise ValueError(f"prompt schedule entries give different batch sizes: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def at(self, chunk: int) -> list[str] | None:
        """The prompts that start at ``chunk``, or None if nothing changes there."""
        return self.entries.get(chunk)

    def take(self, chunk: int) -> tuple[list[str], bool | None] | None:
        """What the chunk loop reads before chunk ``chunk``: None if the prompts do not change
        there, else ``(prompts, recache)`` — the prompts as a list of non-empty str (an entry
        added to :attr:`entries` after the schedule was built is checked here, and a plain
        str stays one prompt) and whether to recache (None: the stream's ``recache``)."""
        prompts = self.at(chunk)
        return None if prompts is None else (_checked_prompts(prompts, f"the prompt of chunk {chunk}"), None)


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
    """

    def __init__(
        self,
        transformer: CausalWanTransformer,
        vae=None,
        prompt_encoder: PromptEncoder | None = None,
        *,
        sampler: FlowMatchSampler = FlowMatchSampler(),
        chunk_frames: int = 3,
        compile_step: bool = False,
        compile_options: dict | None = None,
        cache_impl: str = "fused",
    ):
        self._check_options(chunk_frames=chunk_frames, compile_step=compile_step, compile_options=compile_options,
                            cache_impl=cache_impl)
        self.cache_impl = resolve_cache_impl(cache_impl)
        self.transformer = transformer.eval()
        self.vae = vae.eval() if vae is not None else None
        self.prompt_encoder = prompt_encoder
        self.sampler = sampler
        self.chunk_frames = chunk_frames
        self.chunk_step = sampler.denoise_chunk
        if compile_step:
            self.chunk_step = torch.compile(sampler.denoise_chunk, fullgraph=True, dynamic=False,
                                            **(compile_options or {}))

    @classmethod
    def _check_options(cls, **options) -> None:
        """The keyword arguments of ``__init__`` after the models, checked (from_pretrained
        calls this before it loads anything)."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        known = [n for n in params if n not in ("self", "transformer", "vae", "prompt_encoder")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)} (known: {', '.join(known)})")
        chunk_frames = options.get("chunk_frames", params["chunk_frames"].default)
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
        if options.get("compile_options") is not None and not options.get("compile_step", False):
            raise ValueError("compile_options are given but compile_step is False")
        if "cache_impl" in options:
            resolve_cache_impl(options["cache_impl"])
        sampler = options.get("sampler")
        if sampler is not None and not isinstance(sampler, FlowMatchSampler):
            raise TypeError(f"sampler must be a FlowMatchSampler, got {type(sampler).__name__}")

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
        (``STREAM_R1_FAST_VERBOSE=1`` keeps them).
        """
        from stream_r1_fast.models.loading import (
            check_checkpoint_path,
            find_wan_folder,
            load_vae,
            merge_lora,
            quiet_loading,
        )

        # -- everything that can be checked without the weights
        cls._check_options(**kwargs)
        dtype = resolve_dtype(dtype, torch_dtype)
        enc_dtype = resolve_dtype(text_encoder_dtype, None, "text_encoder_dtype", default=dtype)
        device = resolve_device(device)
        if not isinstance(offload_text_encoder, bool):
            raise TypeError(f"offload_text_encoder must be True or False, got {offload_text_encoder!r}")
        if which not in ("auto", "generator", "generator_ema"):
            raise ValueError(f"which must be 'auto', 'generator' or 'generator_ema', got {which!r}")
        folder = find_wan_folder(path, "path", transformer_weights=checkpoint is None)
        if checkpoint is not None:
            check_checkpoint_path(checkpoint, "checkpoint")
        if lora is not None:
            _check_lora_path(lora)
        if lora_alpha is not None and (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or lora_alpha <= 0):
            raise ValueError(f"lora_alpha must be a number > 0, got {lora_alpha!r}")
        config = folder.transformer_config()
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        try:
            with torch.device("meta"):
                CausalWanTransformer.from_config(cfg)
        except Exception as exc:  # a config that cannot build the model is the folder's fault
            raise ValueError(f"path={str(path)!r}: {folder.transformer / 'config.json'} does not describe a "
                             f"Wan transformer: {exc}") from None

        # -- the weights
        with quiet_loading():
            load_dtype = torch.float32 if lora is not None else dtype
            transformer = load_transformer(checkpoint or folder.transformer, config, which=which,
                                           dtype=load_dtype, device=device)
            if lora is not None:
                transformer = merge_lora(transformer, lora, alpha=lora_alpha).to(dtype)
            vae = load_vae(folder.vae, dtype=torch.float32, device=device)
            encoder = PromptEncoder.from_parts(folder.tokenizer, folder.text_encoder, dtype=enc_dtype, device=device,
                                               offload=offload_text_encoder)
        return cls(transformer, vae, encoder, **kwargs)

    # ------------------------------------------------------------------ placement

    def to(self, *args, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> "StreamingPipeline":
        """Move the pipeline, as ``pipe.to("cuda")``, ``pipe.to(torch.float16)``,
        ``pipe.to("cuda", torch.bfloat16)`` or by keyword. ``dtype`` casts the transformer and
        the text encoder; the VAE stays in float32 (as :meth:`from_pretrained` loads it). An
        offloaded text encoder stays on the CPU and encodes on the new device. Returns self."""
        for a in args:
            if isinstance(a, (torch.dtype, str)) and _as_dtype(a) is not None:
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
        t = self.vae_factors[0]
        latent = 1 + math.ceil((num_frames - 1) / t)
        return math.ceil(latent / self.chunk_frames)

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
                get alone, so it matches that stream generated alone up to floating-point
                rounding, not bit for bit: a batched convolution or matmul may sum in another
                order than a one-stream one (the patch embedding's Conv3d does on CPU), and the
                last-bit differences carry through the cache without growing. Measured in
                float32 on CPU: latents within 1.5e-4 over 100 chunks (7.8e-5 over 32) for the
                toy student, 6e-6 for the tiny test model; decoded uint8 frames off by 1 in
                0.002% of values. In bf16 / on GPU expect that precision's rounding instead.
                Bit-exact equality would take one forward per stream (no batching).
            policy: sink frames, window frames, EMA alpha of the KV cache; the window must hold
                a chunk.
            decode: decode frames with the VAE (needs one); otherwise ``frames`` is None.
            recache: at every prompt switch after chunk 0, re-encode the cached frames under
                the new prompt (LongLive's KV recache, :meth:`_recache`) before the chunk where
                the switch takes effect, so that their self-attention K/V stop carrying the old
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
        if policy.window_frames < self.chunk_frames:
            raise ValueError(
                f"the cache window ({policy.window_frames} frames) must hold a chunk ({self.chunk_frames} frames)"
            )
        if decode and self.vae is None:
            raise RuntimeError("decode=True needs a VAE: build the pipeline with vae=... or pass decode=False")
        lat_h, lat_w = self._latent_size(height, width)
        self._check_prompts(schedule)
        generator = self._generators(seed, batch)
        return self._run(schedule, batch, num_chunks, lat_h, lat_w, generator, policy, decode, recache)

    def _check_prompts(self, schedule: PromptSchedule) -> None:
        """Every prompt of the schedule against the text encoder, before the first chunk: an
        encoder with a ``check_prompt(prompt)`` method (the toy world's closed vocabulary) raises
        there for a prompt it could not encode."""
        if self.prompt_encoder is None:
            raise RuntimeError("this pipeline has no text encoder: build it with prompt_encoder=...")
        check = getattr(self.prompt_encoder, "check_prompt", None)
        if check is not None:
            for k, prompts in schedule.entries.items():
                for p in dict.fromkeys(prompts):
                    try:
                        check(p)
                    except ValueError as exc:
                        raise ValueError(f"the prompt of chunk {k}: {exc}") from None

    def _generators(self, seed, batch: int):
        dev = self.device
        if seed is None:
            return None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return torch.Generator(device=dev).manual_seed(seed)
        if isinstance(seed, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
            if len(seed) != batch:
                raise ValueError(f"{len(seed)} seeds for a batch of {batch} streams")
            return [torch.Generator(device=dev).manual_seed(s) for s in seed]
        raise TypeError(f"seed must be an int, a list of ints (one per stream) or None, got {seed!r}")

    def _run(self, schedule, batch, num_chunks, lat_h, lat_w, generator, policy, decode,
             recache=False) -> Iterator[StreamChunk]:
        model = self.transformer
        cache = self.cache_impl.for_model(model, batch, lat_h, lat_w, policy, chunk_frames=self.chunk_frames)
        decoder = None
        if decode:
            make = getattr(self.vae, "streaming_decoder", None)
            decoder = make() if make is not None else StreamingVAEDecoder(self.vae)
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
                text = new_text if text is None else text.copy_(new_text)
                since = n
                if n > 0 and (recache if want is None else want):
                    recached = self._recache(cache, history, text, times, policy)
            noise = self.sampler.draw_chunk_noise(shape, generator, device=self.device)
            x0 = self.chunk_step(model, noise, text, cache, times)
            if history is not None:
                history.add(x0)
            frames = to_uint8_frames(decoder.decode(x0)) if decoder is not None else None
            yield StreamChunk(n, x0, frames, first_frame, list(prompts), since, recached)
            first_frame += frames.shape[1] if frames is not None else 0
            n += 1

    @torch.no_grad()
    def _recache(self, cache, history: "LatentHistory | None", text, times, policy: CachePolicy) -> bool:
        """LongLive's KV recache at a prompt switch: rebuild the self-attention cache from the
        clean latents of the frames it holds, re-run through the context refresh (t = 0,
        ``update_cache=True``) under the new prompt's ``text``, in their order and in the
        chunks they were made in (a frame's K/V depend on the frames of its chunk and on the
        cache before it). Returns whether anything was recomputed.

        What is recomputed, with S sink and W window frames after F frames made:

        * F <= S + W (nothing evicted yet): the cache holds frames 0..F-1 exactly (the sink is
          the first frames, nothing folded into it): it is emptied (``reset()``) and every frame
          re-fed from frame 0, sink included — what the cache would hold had these latents
          been made under the new prompt.
        * F > S + W: the window (the last W frames) is emptied and re-fed after the sink; the
          **sink is kept as it is**. Under EMA (alpha < 1) the sink is a running fold of every
          frame evicted since the start, which the latents of a bounded history cannot
          recompute; a static sink (alpha = 1) is kept too, as LongLive keeps its frame sink
          (it rewrites the sink only when the recached frames start at frame 0, the case
          above). The window is re-fed against that sink, so the frames attend to what they
          will be attended with.

        Positions are window-relative, so the rebuilt cache has the positions of the one it
        replaces. Cost: one refresh forward per recached chunk (the window's, at most
        ceil((S + W) / chunk_frames) + 1 forwards)."""
        if history is None or not history.chunks:
            return False
        model, cf = self.transformer, self.chunk_frames
        s, w = policy.sink_frames, policy.window_frames
        made = history.end
        if made <= s + w or s == 0:
            cache.reset()
            start = 0 if made <= s + w else made - w
        else:
            _clear_window(cache)
            start = made - w
        batch = history.chunks[0][1].shape[0]
        for first, x0 in history.chunks:
            lo = max(start - first, 0)
            if lo >= x0.shape[2]:
                continue
            piece = x0[:, :, lo:]
            t = times[-1] if piece.shape[2] == cf else model.time_context(0.0, batch, piece.shape[2])
            model.forward_chunk(piece, t, text, cache, update_cache=True)
        return True

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


class LatentHistory:
    """The clean latents of the last ``frames`` latent frames of a stream, by chunk: what a KV
    recache re-encodes. Holds whole chunks, the fewest that cover the last ``frames`` frames
    (at most ``frames + chunk_frames - 1`` frames); ``end``: latent frames made so far."""

    def __init__(self, frames: int):
        self.frames = frames
        self.chunks: list[tuple[int, torch.Tensor]] = []  # (first latent frame, latents [B, C, f, h, w])
        self.end = 0

    def add(self, x0: torch.Tensor) -> None:
        self.chunks.append((self.end, x0.detach().clone()))  # the caller may change the chunk it is handed
        self.end += x0.shape[2]
        while self.chunks and self.end - (self.chunks[0][0] + self.chunks[0][1].shape[2]) >= self.frames:
            self.chunks.pop(0)

    def held_frames(self) -> int:
        return sum(x.shape[2] for _, x in self.chunks)


def _clear_window(cache) -> None:
    """Empty the window of a cache whose sink is full, keeping the sink (the cache's own
    ``clear_window()``: SinkKVCache and RotatedSinkKVCache have one)."""
    clear = getattr(cache, "clear_window", None)
    if not callable(clear):
        raise NotImplementedError(f"a KV recache that keeps the sink needs a cache with clear_window() "
                                  f"(SinkKVCache, RotatedSinkKVCache); got {type(cache).__name__}")
    clear()


# ---------------------------------------------------------------------- live streams


class LivePromptSchedule(PromptSchedule):
    """A prompt schedule that can be changed while its stream runs: :meth:`set` queues prompts
    for the next chunk the stream starts (with or without a recache). Thread-safe; the chunk
    loop of :meth:`StreamingPipeline.stream` reads it through :meth:`take` as it reads any
    schedule, so a schedule fixed in advance and live switches take the same path."""

    def __init__(self, prompt: str | Sequence[str]):
        super().__init__({0: prompt})
        self._lock = threading.Lock()
        self._pending: tuple[list[str], bool | None] | None = None
        self.last_change = 0  # the chunk at which the prompts in force took effect

    def set(self, prompts: str | Sequence[str], recache: bool | None = None) -> None:
        """Queue ``prompts`` (a str is one prompt) for the next chunk that starts; ``recache``:
        whether to recache there (None: the stream's default). A later call before that chunk
        replaces this one."""
        prompts = _checked_prompts(prompts, "the prompt")
        with self._lock:
            self._pending = (prompts, recache)

    def take(self, chunk: int) -> tuple[list[str], bool | None] | None:
        if chunk == 0:
            return list(self.entries[0]), None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.last_change = chunk
        return pending

    def at(self, chunk: int) -> list[str] | None:
        taken = self.take(chunk)
        return None if taken is None else taken[0]


@dataclasses.dataclass
class LiveChunk(StreamChunk):
    """A :class:`StreamChunk` of a live stream (``prompt_since``: the chunk at which this chunk's
    prompts took effect, ``== index`` on the chunk where a switch took effect; ``recached``: a
    KV recache ran before it)."""


class LiveStream:
    """One live stream of :meth:`StreamingPipeline.open_stream`.

    ``next(live)`` (or iteration) generates the next :class:`LiveChunk`; :meth:`switch` may be
    called from another thread while a chunk is being made (it then takes effect at the chunk
    after it); :meth:`close` may be called from any thread at any time: a chunk in progress
    finishes, and the stream's generator (its KV cache, decoder state, text K/V) is released
    at once or when that chunk is done.
    """

    def __init__(self, pipe: "StreamingPipeline", prompt: str | Sequence[str], *, num_chunks: int | None = None,
                 recache: bool = False, **kwargs):
        self.pipe = pipe
        self.schedule = LivePromptSchedule(prompt)
        self.batch = self.schedule.batch_size()
        self.check(self.schedule.entries[0])
        self.recache = recache
        self._gen = pipe.stream(self.schedule, num_chunks=num_chunks, recache=recache, **kwargs)
        self._step_lock = threading.Lock()
        self._closed = False
        self.chunks_made = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self, prompt: str | Sequence[str]) -> list[str]:
        """The prompt(s) as a list, or a TypeError / ValueError saying why the pipeline's text
        encoder cannot take them (the toy world's closed vocabulary); no state changes."""
        prompts = _checked_prompts(prompt, "the prompt")
        if len(prompts) not in (1, self.batch):
            raise ValueError(f"{len(prompts)} prompts for a live stream of {self.batch} streams")
        encoder = self.pipe.prompt_encoder
        if encoder is None:
            raise RuntimeError("this pipeline has no text encoder: build it with prompt_encoder=...")
        check = getattr(encoder, "check_prompt", None)
        if check is not None:
            for p in prompts:
                check(p)
        else:
            with torch.no_grad():
                encoder(prompts)  # raises for what it cannot encode (an encoder with a cache keeps the result)
        return prompts

    def switch(self, prompt: str | Sequence[str], recache: bool | None = None) -> None:
        """Use ``prompt`` from the next chunk that starts (the text conditioning is re-encoded
        there). ``recache``: re-encode the cached frames under the new prompt there too
        (:meth:`StreamingPipeline._recache`; None: the stream's ``recache``); otherwise the
        self-attention cache is kept as it is. The chunk where the switch took effect has
        ``prompt_since == index`` (and ``recached``). Raises (and changes nothing) for a prompt
        the text encoder cannot take."""
        if self._closed:
            raise RuntimeError("the live stream is closed")
        if recache is not None and not isinstance(recache, bool):
            raise TypeError(f"recache must be True, False or None, got {recache!r}")
        self.schedule.set(self.check(prompt), recache)

    def __iter__(self) -> "LiveStream":
        return self

    def __next__(self) -> LiveChunk:
        try:
            with self._step_lock:
                if self._closed:
                    raise StopIteration
                try:
                    chunk = next(self._gen)
                except BaseException:
                    self._release()
                    raise
                self.chunks_made += 1
                return LiveChunk(**{f.name: getattr(chunk, f.name) for f in dataclasses.fields(StreamChunk)})
        finally:
            if self._closed and self._gen is not None:  # closed while this chunk was being made
                self.close()

    def _release(self) -> None:
        self._closed = True
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()

    def close(self) -> None:
        """End the stream; idempotent, callable from any thread, never waits for a chunk."""
        self._closed = True
        if self._step_lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._step_lock.release()

    def __enter__(self) -> "LiveStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
