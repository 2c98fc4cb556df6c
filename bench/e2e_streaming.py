"""End-to-end streaming benchmark: the Wan2.1-T2V-1.3B architecture with random weights (the
compute does not depend on the values) and the Wan VAE, chunk by chunk, ours against a
faithful reproduction of Reward Forcing's inference path, in the same run.

Modes (``--modes``): ``ours`` (SinkKVCache: pre-RoPE cache, the fused sink_attention /
ema_cache_update ops), ``rotated`` (RotatedSinkKVCache: keys stored rotated, one dense SDPA
per block, PyTorch ops only), ``baseline`` (the Reward-Forcing-style path). ``ours`` and
``rotated`` run StreamingPipeline's chunk step (``FlowMatchSampler.denoise_chunk`` with the
stream's time contexts); with ``--cuda-graphs`` each also runs as ``<mode>+graphs``, the step
the pipeline runs under ``cuda_graphs=True`` (``inference/graphs.py``: compiled with
``mode="reduce-overhead"``, recorded per cache-fill shape, then replayed). A graph mode first
runs one untimed stream (compilation; its wall time is reported as ``compile_stream_s``);
each timed stream then records its graphs again on its first chunks (a new cache is new
static memory): the first two chunks of every shape are a warm-up run and the recording, so
``--warmup`` should cover them (5 for the rotated cache at the defaults: 3 fill shapes, the
steady one twice). Off CUDA the graph modes run compiled without graphs and say so.

What is timed, per chunk: the noise draws, 4 denoising forwards, the context-refresh
forward (together: the step), the streaming VAE decode of the chunk (in float32, as
StreamingPipeline runs it) and the copy of its uint8 frames to the host. Text encoding is NOT
timed (it happens once per prompt; the UMT5 encoder is not loaded: random text embeddings of
the right shape stand in). Reported:
- time to first frame: from the start of chunk 0 to its frames on the host;
- sustained FPS: video frames of the chunks after warm-up / the wall time from the start of the
  first of them to the end of the last (``--no-vae``: the frames those chunks would decode to);
- breakdown: step (noise + denoising + refresh), VAE decode (+ host copy), medians per chunk;
  the baseline also splits its step into denoising and refresh;
- peak memory (CUDA) of the whole run.
The modes alternate over ``--repeats`` runs (default 3); medians and the spread (min, max)
over the repeats are reported.

    python bench/e2e_streaming.py                         # 1.3B, 480x832, on CUDA
    python bench/e2e_streaming.py --config tiny --height 32 --width 48 --device cpu

JSON goes to bench/results/e2e_streaming_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, device_name, environment  # noqa: E402

from stream_r1_fast.cache import CachePolicy, RotatedSinkKVCache, SinkKVCache  # noqa: E402
from stream_r1_fast.inference.graphs import GraphedChunkStep  # noqa: E402
from stream_r1_fast.inference.sampler import FlowMatchSampler, randn  # noqa: E402
from stream_r1_fast.inference.vae import StreamingVAEDecoder, to_uint8_frames  # noqa: E402
from stream_r1_fast.models import CausalWanTransformer  # noqa: E402
from stream_r1_fast.models.configs import preset  # noqa: E402
from stream_r1_fast.ops.rope import rope_angles  # noqa: E402


class RewardForcingStyleCache:
    """Reward Forcing's inference cache as its code runs it, for the baseline: per layer a
    pre-allocated buffer of ``capacity`` frames (the current chunk included) whose indices live
    in tensors read back with ``.item()`` at every call (host syncs), eviction by shifting the
    window with ``clone()``, the EMA fold into the sink, and RoPE applied in float64 to every
    cached key at every call from a complex table precomputed once (as its code does), then
    ``torch.cat`` of sink and window and SDPA."""

    def __init__(self, num_layers, batch, grid, heads, head_dim, policy: CachePolicy, chunk_frames, *, dtype, device):
        self.grid = grid
        self.p = grid[0] * grid[1]
        self.sink = policy.sink_frames * self.p
        self.alpha = policy.alpha
        cap = (policy.slots + chunk_frames) * self.p
        self.k = [torch.zeros(batch, cap, heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.local_end = [torch.zeros((), dtype=torch.long, device=device) for _ in range(num_layers)]
        self.fresh = [False] * num_layers
        # Window-relative positions: token i of the buffer is always at the same position.
        ang = rope_angles(torch.arange(cap // self.p, device=device), *grid, head_dim, 10000.0)
        self.freqs = torch.polar(torch.ones_like(ang), ang)  # complex128 [cap, head_dim / 2]

    def begin_chunk(self):
        self.fresh = [True] * len(self.fresh)

    def _write(self, layer, k, v):
        n = k.shape[1]
        end = int(self.local_end[layer].item())  # host sync, as in the reference code
        cap = self.k[layer].shape[1]
        if self.fresh[layer]:
            self.fresh[layer] = False
            if end + n > cap:
                evicted = end + n - cap
                rolled = end - evicted - self.sink
                for buf in (self.k[layer], self.v[layer]):
                    if evicted == self.sink:
                        seg = buf[:, self.sink : self.sink + evicted]
                        buf[:, : self.sink] = self.alpha * buf[:, : self.sink] + (1 - self.alpha) * seg
                    buf[:, self.sink : self.sink + rolled] = buf[:, self.sink + evicted : self.sink + evicted + rolled].clone()
                end -= evicted
            end += n
            self.local_end[layer].fill_(end)
        self.k[layer][:, end - n : end] = k
        self.v[layer][:, end - n : end] = v
        return end

    def attend(self, layer, q, k, v):
        end = self._write(layer, k, v)
        keys = torch.cat([self.k[layer][:, : self.sink], self.k[layer][:, self.sink : end]], dim=1)
        values = torch.cat([self.v[layer][:, : self.sink], self.v[layer][:, self.sink : end]], dim=1)
        keys = _rotate(keys, self.freqs[:end])
        qr = _rotate(q, self.freqs[end - q.shape[1] : end])
        o = F.scaled_dot_product_attention(qr.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        return o.transpose(1, 2)

    def update(self, layer, k, v):
        # The refresh: write the clean K/V over the chunk's frames (the model skips the last
        # block's attention on the refresh, so this write is not redundant there).
        self._write(layer, k, v)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D] times the complex table [L, D/2] in float64 (adjacent pairs as complex)."""
    xc = torch.view_as_complex(x.to(torch.float64).unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(-2).to(x.dtype)


def video_frames(chunk_index: int, latent_frames: int, temporal_factor: int = 4) -> int:
    """Video frames a chunk decodes to: latent frame 0 alone, then ``temporal_factor`` each."""
    return latent_frames * temporal_factor - (temporal_factor - 1 if chunk_index == 0 else 0)


class Clock:
    """Marks on the device's timeline (CUDA events: no host sync while running)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def make_cache(kind, model, args, device, dtype):
    policy = CachePolicy.ema_sink(args.sink, args.window, args.alpha)
    lat_h, lat_w = args.height // 8, args.width // 8
    cfg = model.config
    if kind == "ours":
        return SinkKVCache.for_model(model, args.batch, lat_h, lat_w, policy, dtype=dtype, device=device)
    if kind == "rotated":
        return RotatedSinkKVCache.for_model(model, args.batch, lat_h, lat_w, policy, chunk_frames=args.chunk_frames,
                                            dtype=dtype, device=device)
    return RewardForcingStyleCache(cfg.num_layers, args.batch, model.latent_grid(lat_h, lat_w), cfg.num_attention_heads,
                                   cfg.attention_head_dim, policy, args.chunk_frames, dtype=dtype, device=device)


def baseline_step(model, sampler, cache, text, gen, shape, device, dtype, clock):
    """Reward Forcing's chunk loop: noise drawn just before use, each forward embedding its
    timestep. Returns x0 and the mark between denoising and refresh."""
    x_t = randn(shape, gen, device=device)
    cache.begin_chunk()
    last = len(sampler.timesteps) - 1
    for i, t in enumerate(sampler.timesteps):
        v = model.forward_chunk(x_t.to(dtype), t, text, cache).float()
        x0 = sampler.predict_x0(x_t, v, t)
        if i < last:
            x_t = sampler.add_noise(x0, randn(x0.shape, gen, device=device), sampler.timesteps[i + 1])
    mid = clock.mark()
    model.forward_chunk(x0.to(dtype), 0.0, text, cache, update_cache=True)
    return x0, mid


def run_mode(mode, model, vae, text, args, device, dtype, graphed=None, chunks=None, warmup=None):
    """One stream of ``warmup + chunks`` chunks in ``mode`` (``ours``, ``rotated``,
    ``baseline``, ``<cache>+graphs`` with ``graphed`` its GraphedChunkStep). Returns its
    figures and (with --keep-output) every chunk's latents."""
    chunks = args.chunks if chunks is None else chunks
    warmup = args.warmup if warmup is None else warmup
    kind = mode.split("+")[0]
    cache = make_cache(kind, model, args, device, dtype)
    lat_h, lat_w = args.height // 8, args.width // 8
    shape = (args.batch, model.config.in_channels, args.chunk_frames, lat_h, lat_w)
    decoder = StreamingVAEDecoder(vae) if vae is not None else None
    sampler = FlowMatchSampler()
    gen = torch.Generator(device=device).manual_seed(0)
    clock = Clock(device)
    times = sampler.time_contexts(model, args.batch, args.chunk_frames) if kind != "baseline" else None
    step = graphed if graphed is not None else sampler.denoise_chunk
    if graphed is not None:
        graphed.prepare(device, cache, text, times)
    marks, frames_per_chunk, outputs = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t_start = time.perf_counter()
    ttff = None
    with torch.no_grad():
        for n in range(warmup + chunks):
            if n == warmup:  # the measured window starts with the first chunk after warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_measure = time.perf_counter()
            m0 = clock.mark()
            if kind == "baseline":
                x0, mid = baseline_step(model, sampler, cache, text, gen, shape, device, dtype, clock)
            else:
                x0, mid = step(model, sampler.draw_chunk_noise(shape, gen, device=device), text, cache, times), None
            m2 = clock.mark()
            if decoder is not None:
                frames = to_uint8_frames(decoder.decode(x0.float()))  # includes the copy to the host
                count = frames.shape[1]
            else:
                x0.cpu()  # the latents reach the host, as frames would
                count = video_frames(n, args.chunk_frames)
            m3 = clock.mark()
            if n == 0:
                ttff = time.perf_counter() - t_start  # the host has chunk 0's frames now
            marks.append((m0, mid, m2, m3))
            frames_per_chunk.append(count)
            if args.keep_output:
                outputs.append(x0.float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t_measure
    measured = marks[warmup:]
    n_frames = sum(frames_per_chunk[warmup:])
    result = {
        "mode": mode,
        "sustained_fps": n_frames / wall,
        "time_to_first_frame_s": ttff,
        "chunk_ms_median": statistics.median(clock.ms(a, d) for a, _, _, d in measured),
        "step_ms_median": statistics.median(clock.ms(a, c) for a, _, c, _ in measured),
        "vae_and_copy_ms_median": statistics.median(clock.ms(c, d) for _, _, c, d in measured),
        "frames_measured": n_frames,
        "chunks_measured": len(measured),
    }
    if kind == "baseline":
        result["denoise_ms_median"] = statistics.median(clock.ms(a, b) for a, b, _, _ in measured)
        result["refresh_ms_median"] = statistics.median(clock.ms(b, c) for _, b, c, _ in measured)
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if graphed is not None:
        result["cuda_graphs_status"] = graphed.status
    return result, outputs


def summarize(mode: str, runs: list[dict]) -> dict:
    """Medians over the repeats of every figure, the spread (min, max) of the FPS and TTFF."""
    out = {"mode": mode, "repeats": len(runs), "runs": runs}
    for key, value in runs[0].items():
        if key != "mode":
            out[key] = statistics.median(r[key] for r in runs) if not isinstance(value, str) else value
    for key in ("sustained_fps", "time_to_first_frame_s"):
        out[f"{key}_spread"] = [min(r[key] for r in runs), max(r[key] for r in runs)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="wan2.1-1.3b", help="model preset (wan2.1-1.3b, tiny)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk-frames", type=int, default=3)
    p.add_argument("--sink", type=int, default=3)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.999)
    p.add_argument("--chunks", type=int, default=20, help="measured chunks after warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of every mode (medians over them)")
    p.add_argument("--modes", nargs="+", default=["ours", "baseline"], choices=["ours", "rotated", "baseline"])
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also run ours / rotated as <mode>+graphs (the pipeline's cuda_graphs=True step)")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE (transformer only)")
    p.add_argument("--keep-output", action="store_true", help="compare the latents of every chunk across the modes")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON result")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    cfg = preset(args.config)
    with torch.device(device):
        model = CausalWanTransformer(**cfg).to(dtype).eval()
    vae = None
    if not args.no_vae:
        from diffusers import AutoencoderKLWan

        z = cfg["in_channels"]
        vae_kwargs = {} if args.config != "tiny" else dict(
            base_dim=16, z_dim=z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=[0.0] * z, latents_std=[1.0] * z
        )
        with torch.device(device):
            vae = AutoencoderKLWan(**vae_kwargs).float().eval()  # float32, as StreamingPipeline
        if vae.config.z_dim != cfg["in_channels"]:
            raise SystemExit(f"VAE z_dim {vae.config.z_dim} != model in_channels {cfg['in_channels']}")
    text = model.encode_text(torch.randn(args.batch, 512, cfg["text_dim"], device=device, dtype=dtype))

    print(f"device: {device_name(device)}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in environment().items()))
    print(f"model {args.config} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params), {args.dtype}, "
          f"{args.height}x{args.width}, batch {args.batch}, chunks of {args.chunk_frames} latent frames, "
          f"sink {args.sink} + window {args.window} (EMA {args.alpha}), {args.warmup} warm-up + {args.chunks} measured chunks; "
          f"VAE {'on' if vae is not None else 'off'}; text encoding excluded")
    if args.repeats < 1 or args.chunks < 1 or args.warmup < 0:
        raise SystemExit("--repeats and --chunks must be >= 1, --warmup >= 0")
    modes = list(args.modes)
    graphed, compile_s = {}, {}
    if args.cuda_graphs:
        for kind in [m for m in args.modes if m != "baseline"]:
            modes.append(f"{kind}+graphs")
            graphed[f"{kind}+graphs"] = GraphedChunkStep(FlowMatchSampler().denoise_chunk)
    for mode, step in graphed.items():  # compile once, outside the timed streams
        t0 = time.perf_counter()
        run_mode(mode, model, vae, text, args, device, dtype, graphed=step, chunks=1, warmup=max(args.warmup, 5))
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s[mode] = time.perf_counter() - t0
        print(f"{mode:>14}: compiled in an untimed stream of {max(args.warmup, 5) + 1} chunks, "
              f"{compile_s[mode]:.1f} s; {step.status}")
    runs, outs = {m: [] for m in modes}, {}
    for rep in range(args.repeats):  # alternate the modes so that drift hits both alike
        for mode in modes:
            r, o = run_mode(mode, model, vae, text, args, device, dtype, graphed=graphed.get(mode))
            runs[mode].append(r)
            outs.setdefault(mode, o)
            split = (f" (denoise {r['denoise_ms_median']:.1f} + refresh {r['refresh_ms_median']:.1f})"
                     if "denoise_ms_median" in r else "")
            print(f"{mode:>14} [{rep + 1}/{args.repeats}]: {r['sustained_fps']:.2f} FPS sustained, first frame "
                  f"{r['time_to_first_frame_s']:.3f} s, chunk {r['chunk_ms_median']:.1f} ms = step "
                  f"{r['step_ms_median']:.1f}{split} + VAE/copy {r['vae_and_copy_ms_median']:.1f}"
                  + (f", peak {r['peak_memory_gb']:.2f} GiB" if "peak_memory_gb" in r else ""))
    results = [summarize(mode, rs) for mode, rs in runs.items()]
    for r in results:
        if r["mode"] in compile_s:
            r["compile_stream_s"] = compile_s[r["mode"]]
        lo, hi = r["sustained_fps_spread"]
        how = f"CUDA graphs: {r['cuda_graphs_status']}" if "cuda_graphs_status" in r else "eager"
        print(f"{r['mode']:>14}: median {r['sustained_fps']:.2f} FPS (min {lo:.2f}, max {hi:.2f}) over {args.repeats} "
              f"repeats, first frame {r['time_to_first_frame_s']:.3f} s ({how})")
    by = {r["mode"]: r for r in results}
    summary = {}
    # (mode, JSON key suffix, label): each engine against the Reward-Forcing-style baseline.
    for mode, suffix, label in (("ours", "", ""), ("rotated", "_rotated", "rotated cache: "),
                                ("ours+graphs", "_graphs", "CUDA graphs: "),
                                ("rotated+graphs", "_rotated_graphs", "rotated cache, CUDA graphs: ")):
        if mode not in by or "baseline" not in by:
            continue
        summary[f"speedup{suffix}"] = speedup = by[mode]["sustained_fps"] / by["baseline"]["sustained_fps"]
        print(f"{label}speed-up over the Reward-Forcing-style path: {speedup:.2f}x")
        if args.keep_output:
            diff = max((a - b).abs().max().item() for a, b in zip(outs[mode], outs["baseline"]))
            summary[f"max_abs_diff_latents{suffix}"] = diff
            print(f"max |{mode} - baseline| over all chunks' latents: {diff:.3e}")
    if "rotated" in by and "ours" in by:
        summary["speedup_rotated_over_ours"] = by["rotated"]["sustained_fps"] / by["ours"]["sustained_fps"]
        print(f"rotated cache over the fused-op cache: {summary['speedup_rotated_over_ours']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"e2e_streaming_{device.type}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"device": device_name(device), "environment": environment(),
                               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "results": results, "summary": summary}, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
