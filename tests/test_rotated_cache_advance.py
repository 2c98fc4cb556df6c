"""rotated_cache_advance: the kernels against the PyTorch reference over every fill state
(hypothesis shapes: odd tokens per frame, batch 1 and 3, 1-3 heads, head dims 6, 10, 64 and 128,
sinks 0-3, windows 1-5, chunks 1..window, alpha 0 / 1 / random), both against an independent
pre-RoPE model (the frames un-rotated equal ema_cache_update's list-of-frames cache), and the
schema, compile, CUDA graph, input and grad checks. The cache-level comparison over whole
streams is tests/test_rotated_cache.py (RotatedSinkKVCache.update calls this op)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops.rope import apply_rope, compute_dtype, rope_angles, rope_tables
from stream_r1_fast.ops.rotated_cache import rotated_cache_advance
from stream_r1_fast.ops.rotated_cache_ref import evicted_frames, rotated_cache_advance_ref
from test_ema_cache import FrameListCache, _set
from tolerances import EXACT

HAS_EXTENSION = backend_info().name == "extension"
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])]
FIXTURE_OK = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])
# (rtol, atol) of kernel vs reference, once per dtype: the same operations in the same order,
# so float32 rounding order at most (float64: double's), then one rounding to the dtype.
TOL = {**EXACT, torch.float64: (1e-12, 1e-12)}
THETA = 10000.0


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _close(got, want, what):
    rtol, atol = TOL[want.dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


class Buffers:
    """One block's buffers [B, N, P, H, D] with their RoPE tables (as RotatedSinkKVCache keeps them)."""

    def __init__(self, batch, grid, heads, head_dim, sink, window, chunk, dtype, device, gen=None):
        self.grid, self.sink, self.window = grid, sink, window
        self.tokens = grid[0] * grid[1]
        n = sink + window + chunk
        shape = (batch, n, self.tokens, heads, head_dim)
        self.keys = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        self.values = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        self.cos, self.sin = rope_tables(n, *grid, head_dim, THETA, dtype, device)

    def args(self, k_new, v_new, occupied, alpha):
        return (self.keys, self.values, k_new, v_new, self.cos, self.sin, occupied, self.sink, self.window, alpha)


@st.composite
def advance_cases(draw):
    sink, window = draw(st.integers(0, 3)), draw(st.integers(1, 5))
    chunk = draw(st.integers(1, window))
    slots = sink + window
    steps = 2 * slots // chunk + 3  # from the first occupancy through the fill into the steady state
    return dict(
        batch=draw(st.sampled_from([1, 3])),
        grid=draw(st.sampled_from([(1, 1), (1, 3), (5, 1), (3, 3)])),  # odd tokens per frame
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([6, 10, 64, 128])),
        sink=sink, window=window, chunk=chunk,
        start=draw(st.integers(0, slots)),  # any fill state as the first one
        frames=draw(st.lists(st.integers(1, chunk), min_size=steps, max_size=steps)),
        alpha=draw(st.one_of(st.sampled_from([0.0, 1.0, 0.999]), st.floats(0.0, 1.0))),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def _chunk(bufs, frames, gen):
    b, _, p, h, d = bufs.keys.shape
    make = lambda: torch.randn(b, frames * p, h, d, generator=gen).to(bufs.keys)  # noqa: E731
    return make(), make()


@FIXTURE_OK
@given(case=advance_cases())
def test_kernel_matches_reference(device, case):
    """Chunk after chunk from a random fill state: the op (the device's kernel where there is
    one) and the reference on the same buffers stay within the dtype's tolerance."""
    gen = torch.Generator().manual_seed(case["seed"])
    ours = Buffers(case["batch"], case["grid"], case["heads"], case["head_dim"], case["sink"], case["window"],
                   case["chunk"], case["dtype"], device, gen)
    ref = Buffers(case["batch"], case["grid"], case["heads"], case["head_dim"], case["sink"], case["window"],
                  case["chunk"], case["dtype"], device)
    ref.keys.copy_(ours.keys)
    ref.values.copy_(ours.values)
    m, slots, seen = case["start"], case["sink"] + case["window"], set()
    for step, f in enumerate(case["frames"]):
        k_new, v_new = _chunk(ours, f, gen)
        rotated_cache_advance(*ours.args(k_new, v_new, m, case["alpha"]))
        rotated_cache_advance_ref(*ref.args(k_new, v_new, m, case["alpha"]))
        what = f"step {step} (m={m}, F={f}, E={evicted_frames(m, f, case['sink'], case['window'])})"
        _close(ours.keys, ref.keys, f"{what}: keys")
        _close(ours.values, ref.values, f"{what}: values")
        seen.add(m)
        m = min(m + f, slots)
    assert slots in seen or case["start"] + sum(case["frames"][:-1]) < slots  # reached the steady state


def _unrotated(keys: torch.Tensor, m: int, grid) -> torch.Tensor:
    b, _, p, h, d = keys.shape
    ang = rope_angles(torch.arange(m), *grid, d, THETA)
    return apply_rope(keys[:, :m].reshape(b, m * p, h, d).double(), -ang, torch.float64).view(b, m, p, h, d)


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("sink, window, chunks", [(3, 3, [3]), (2, 5, [3]), (1, 5, [3]), (6, 3, [3]),
                                                  (3, 4, [1, 2, 4, 3]), (0, 4, [3, 1]), (2, 3, [1])],
                         ids=str)
def test_follows_the_pre_rope_frame_model(device, impl, sink, window, chunks):
    """float64 buffers, 14 chunks: the stored keys turned back to pre-RoPE, and the values,
    equal ema_cache_update's semantics kept as a plain list of frames (test_ema_cache's
    FrameListCache) -- the fold in rotated space is the pre-RoPE fold seen through RoPE. The
    model folds in float32 (as ema_cache_update does), hence 1e-6 (measured: <= 2e-7)."""
    grid, heads, head_dim, alpha = (1, 3), 2, 64, 0.7
    advance = rotated_cache_advance if impl == "op" else rotated_cache_advance_ref
    bufs = Buffers(2, grid, heads, head_dim, sink, window, max(chunks), torch.float64, device)
    model = FrameListCache(sink, window, alpha)
    gen = torch.Generator().manual_seed(sink * 10 + window)
    m, evictions = 0, set()
    for step in range(14):
        f = chunks[step % len(chunks)]
        k_pre, v_new = _chunk(bufs, f, gen)
        advance(*bufs.args(k_pre, v_new, m, alpha))
        shape5 = (2, f, 3, heads, head_dim)
        model.update(k_pre.reshape(shape5), v_new.reshape(shape5))
        evictions.add(model.last_evicted)
        m = min(m + f, sink + window)
        want_k = torch.cat(model.tensors("k", bufs.keys), dim=1)
        want_v = torch.cat(model.tensors("v", bufs.values), dim=1)
        assert want_k.shape[1] == m
        torch.testing.assert_close(_unrotated(bufs.keys, m, grid), want_k.double(), rtol=1e-6, atol=1e-6,
                                   msg=lambda msg: f"step {step}: keys: {msg}")
        torch.testing.assert_close(bufs.values[:, :m], want_v, rtol=1e-6, atol=1e-6,
                                   msg=lambda msg: f"step {step}: values: {msg}")
    assert evictions - {0}, "the sequence never evicted"


def test_worked_example_head_dim_6(device):
    """D = 6: one temporal pair (2 - 4 * 1 = 2 elements), one row and one column pair; P = 1,
    so only the temporal pair turns. Sink 1, window 1, chunks of 1, alpha 0.5: the second chunk
    evicts frame 1 (at position 1), turned back by one frame into the sink."""
    bufs = Buffers(1, (1, 1), 1, 6, 1, 1, 1, torch.float64, device)
    bufs.keys.zero_()
    bufs.values.zero_()
    x = torch.tensor([1.0, 0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64, device=device).view(1, 1, 1, 6)
    for m in range(3):
        rotated_cache_advance(*bufs.args(x * (m + 1), -x * (m + 1), m, 0.5))
    # Frame 0 (x) at position 0: as it is. Frame 1 (2x) was written rotated at position 1, and
    # turned back by one frame on its eviction: 2x again. Sink: 0.5 x + 0.5 * 2x = 1.5x.
    torch.testing.assert_close(bufs.keys[0, 0, 0, 0], 1.5 * x.flatten())
    torch.testing.assert_close(bufs.values[0, 0, 0, 0], -1.5 * x.flatten())
    # Frame 2 (3x) at slot 1 = position 1: its temporal pair turned by 1 rad (theta^0 * 1).
    c, s = torch.cos(torch.tensor(1.0)).item(), torch.sin(torch.tensor(1.0)).item()
    want = torch.tensor([3.0 * c, 3.0 * s, 3.0, 6.0, 9.0, 12.0], dtype=torch.float64)
    torch.testing.assert_close(bufs.keys[0, 1, 0, 0].cpu(), want)
    torch.testing.assert_close(bufs.values[0, 1, 0, 0].cpu(), -3.0 * x.flatten().cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_unaligned_storage(device, dtype):
    """Buffers and chunks starting one element past an aligned address take the narrow-access
    path (one element per access, a pair per thread) and agree all the same."""
    b, sink, window, chunk, grid, h, d = 2, 2, 3, 2, (1, 3), 2, 8
    bufs = Buffers(b, grid, h, d, sink, window, chunk, dtype, device, torch.Generator().manual_seed(0))
    ref = Buffers(b, grid, h, d, sink, window, chunk, dtype, device)
    for name in ("keys", "values"):
        t = getattr(bufs, name)
        shifted = torch.zeros(t.numel() + 1, dtype=dtype, device=device)[1:].view(t.shape)
        shifted.copy_(t)
        setattr(bufs, name, shifted)
        getattr(ref, name).copy_(t)
    gen, m = torch.Generator().manual_seed(1), 0
    for _ in range(3 * (sink + window)):
        k_new, v_new = _chunk(bufs, chunk, gen)
        k_new = torch.cat([k_new.new_zeros(1), k_new.flatten()])[1:].view(k_new.shape)
        rotated_cache_advance(*bufs.args(k_new, v_new, m, 0.9))
        rotated_cache_advance_ref(*ref.args(k_new, v_new, m, 0.9))
        m = min(m + chunk, sink + window)
    _close(bufs.keys, ref.keys, "keys")
    _close(bufs.values, ref.values, "values")


def _good_args(device, dtype=torch.float32):
    bufs = Buffers(1, (1, 3), 2, 8, 2, 3, 2, dtype, device, torch.Generator().manual_seed(0))
    k_new = torch.randn(1, 2 * 3, 2, 8, dtype=dtype, device=device)
    return dict(keys=bufs.keys, values=bufs.values, k_new=k_new, v_new=k_new.clone(), cos=bufs.cos, sin=bufs.sin,
                occupied=5, sink_size=2, window=3, alpha=0.9)


def _pair(a, b, fn):
    return _set(**{a: lambda x: fn(x[a]), b: lambda x: fn(x[b])})


BAD_INPUTS = {  # name: (mutation of good arguments, expected message)
    "keys rank": (_pair("keys", "values", lambda t: t[0]), "keys must have 5 dimensions"),
    "values shape": (_set(values=lambda a: a["values"][:, :6]), "values must have the shape of keys"),
    "new rank": (_pair("k_new", "v_new", lambda t: t[0]), "k_new must have 4 dimensions"),
    "v_new shape": (_set(v_new=lambda a: a["v_new"][:, :3]), "v_new must have the shape of k_new"),
    "new heads": (_pair("k_new", "v_new", lambda t: t[:, :, :1]), r"k_new must have shape \[B, F \* P, H, D\]"),
    "F*P mismatch": (_pair("k_new", "v_new", lambda t: t[:, :4]), "must be a multiple of the 3 tokens"),
    "F > window": (_pair("k_new", "v_new", lambda t: torch.cat([t, t], 1)), "between 1 and window"),
    "odd head dim": (_set(**{n: (lambda a, n=n: a[n][..., :7].contiguous()) for n in ("keys", "values", "k_new",
                                                                                        "v_new")}), "must be even"),
    "dtype mismatch": (_set(v_new=lambda a: a["v_new"].half()), "v_new must have the dtype of keys"),
    "int buffers": (_pair("keys", "values", lambda t: t.int()), "keys must be float32, float16, bfloat16 or float64"),
    "table dtype": (_set(cos=lambda a: a["cos"].double()), "cos must be (torch.)?float32"),
    "table shape": (_set(sin=lambda a: a["sin"][:-1]), r"sin must have shape \[N \* P, D / 2\]"),
    "non-contiguous keys": (_set(keys=lambda a: a["keys"].transpose(3, 4).contiguous().transpose(3, 4)),
                            "keys must be contiguous"),
    "non-contiguous cos": (_set(cos=lambda a: a["cos"].t().contiguous().t()), "cos must be contiguous"),
    "alpha > 1": (_set(alpha=lambda a: 1.5), r"alpha must be in \[0, 1\]"),
    "alpha nan": (_set(alpha=lambda a: float("nan")), r"alpha must be in \[0, 1\]"),
    "alpha -inf": (_set(alpha=lambda a: float("-inf")), r"alpha must be in \[0, 1\]"),
    "occupied > S + W": (_set(occupied=lambda a: 6), r"occupied must be in \[0, sink_size \+ window\]"),
    "occupied < 0": (_set(occupied=lambda a: -1), r"occupied must be in \[0, sink_size \+ window\]"),
    "S + W > N": (_set(window=lambda a: 6), "sink_size \\+ window <= N"),
    "sink_size < 0": (_set(sink_size=lambda a: -1), "sink_size >= 0"),
    "window 0": (_set(window=lambda a: 0), "window >= 1"),
}


def _bad_args(device, mutate):
    args = _good_args(device)
    mutate(args)
    return args


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise(device, case):
    mutate, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        rotated_cache_advance(**_bad_args(device, mutate))


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_in_kernel(device, case):
    """The C++ entry points check the same things (for direct torch.ops calls)."""
    if not use_kernel("rotated_cache_advance", device.type):
        pytest.skip(f"no {device.type} kernel")
    mutate, match = BAD_INPUTS[case]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.stream_r1_fast.rotated_cache_advance(*_bad_args(device, mutate).values())


@pytest.mark.parametrize("name, value", [("alpha", "0.5"), ("alpha", None), ("occupied", 1.0), ("sink_size", None),
                                         ("window", True), ("k_new", [1.0]), ("cos", 0.5)])
def test_wrong_types_name_the_argument(device, name, value):
    args = _good_args(device)
    args[name] = value
    with pytest.raises(TypeError, match=f"^{name} must be"):
        rotated_cache_advance(**args)


@pytest.mark.parametrize("alias", ["values is keys", "k_new inside keys", "cos inside values"])
def test_overlapping_tensors_are_refused(device, alias):
    """The buffers are written in place: one sharing memory with another argument would race
    (kernels) or read half-written data (reference). Inputs that alias each other are fine."""
    args = _good_args(device)
    if alias == "values is keys":
        args["values"] = args["keys"]
    elif alias == "k_new inside keys":
        args["k_new"] = args["keys"].view(-1)[: args["k_new"].numel()].view(args["k_new"].shape)
    else:
        args["cos"] = args["values"].view(-1)[: args["cos"].numel()].view(args["cos"].shape)
    with pytest.raises(ValueError, match="must not share memory"):
        rotated_cache_advance(**args)
    good = _good_args(device)
    good["v_new"], good["sin"] = good["k_new"], good["cos"]
    rotated_cache_advance(**good)


def test_tensors_requiring_grad_are_refused(device):
    """A no-grad cache op: with grad enabled, an input that requires grad is an error naming
    it; under torch.no_grad (how the cache calls it) the same call runs."""
    args = _good_args(device)
    args["k_new"] = args["k_new"].requires_grad_()
    with pytest.raises(RuntimeError, match="no autograd.*k_new requires grad"):
        rotated_cache_advance(**args)
    with torch.no_grad():
        rotated_cache_advance(**args)


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
@pytest.mark.parametrize("name", ["keys", "values", "k_new", "v_new", "cos", "sin"])
def test_one_meta_tensor_is_refused(name):
    """A direct call mixing meta with CPU tensors dispatches to the fake kernel, which must
    refuse it rather than do nothing."""
    args = _good_args(torch.device("cpu"))
    args[name] = torch.empty_like(args[name], device="meta")
    ref = "values" if name == "keys" else "keys"
    with pytest.raises((RuntimeError, ValueError), match=f"({name}|{ref}) must be on the device of"):
        torch.ops.stream_r1_fast.rotated_cache_advance(*args.values())


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(device, dtype):
    """Schema (the buffers mutated, nothing returned), fake kernel and dispatch. A full buffer,
    so the checked call folds, moves and writes."""
    if not use_kernel("rotated_cache_advance", device.type):
        pytest.skip(f"no {device.type} kernel")
    torch.library.opcheck(torch.ops.stream_r1_fast.rotated_cache_advance.default,
                          tuple(_good_args(device, dtype).values()))


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(keys, values, k_new, v_new, cos, sin, m):
        rotated_cache_advance(keys, values, k_new * 2.0, v_new, cos, sin, m, 2, 3, 0.9)

    args = _good_args(device)
    ref, m = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}, 0
    for _ in range(6):
        k_new = torch.randn_like(args["k_new"])
        step(args["keys"], args["values"], k_new, args["v_new"], args["cos"], args["sin"], m)
        rotated_cache_advance_ref(ref["keys"], ref["values"], k_new * 2.0, ref["v_new"], ref["cos"], ref["sin"],
                                  m, 2, 3, 0.9)
        m = min(m + 2, 5)
    _close(args["keys"], ref["keys"], "keys")
    _close(args["values"], ref["values"], "values")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_replay(dtype):
    """The steady-state advance captured once and replayed chunk after chunk: its decisions
    are the host integers of the capture, the same every steady-state chunk."""
    if not use_kernel("rotated_cache_advance", "cuda"):
        pytest.skip("no CUDA kernel")
    sink, window, chunk = 3, 6, 3
    bufs = Buffers(1, (1, 5), 4, 40, sink, window, chunk, dtype, "cuda", torch.Generator().manual_seed(0))
    ref = Buffers(1, (1, 5), 4, 40, sink, window, chunk, dtype, "cuda")
    ref.keys.copy_(bufs.keys)
    ref.values.copy_(bufs.values)
    k_in, v_in = (torch.zeros(1, chunk * 5, 4, 40, dtype=dtype, device="cuda") for _ in "kv")
    full, side = sink + window, torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, on scratch buffers
        scratch = (bufs.keys.clone(), bufs.values.clone())
        rotated_cache_advance(*scratch, k_in, v_in, bufs.cos, bufs.sin, full, sink, window, 0.999)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rotated_cache_advance(*bufs.args(k_in, v_in, full, 0.999))
    for _ in range(8):
        k_in.copy_(torch.randn_like(k_in))
        v_in.copy_(torch.randn_like(v_in))
        graph.replay()
        rotated_cache_advance_ref(*ref.args(k_in, v_in, full, 0.999))
    torch.cuda.synchronize()
    _close(bufs.keys, ref.keys, "keys")
    _close(bufs.values, ref.values, "values")


def test_the_cache_advances_through_the_op_once_per_block(monkeypatch):
    """RotatedSinkKVCache.update is one call of the op per block per refresh, with the host
    integers of the cache (occupied, sink, window, alpha) and its own tables."""
    from stream_r1_fast.cache import CachePolicy, RotatedSinkKVCache
    from stream_r1_fast.cache import rotated_cache as module

    calls = []

    def spy(*args):
        calls.append(args[6:])
        rotated_cache_advance(*args)

    monkeypatch.setattr(module, "rotated_cache_advance", spy)
    cache = RotatedSinkKVCache(2, 1, (1, 3), 1, 64, CachePolicy(2, 3, 0.8), chunk_frames=2)
    for _ in range(4):
        for layer in range(2):
            k = torch.randn(1, 2 * 3, 1, 64)
            cache.update(layer, k, k)
    assert calls == [(m, 2, 3, 0.8) for m in (0, 2, 4, 5) for _ in range(2)]
    assert cache.occupied == 5 and compute_dtype(cache.keys[0].dtype) == cache._cos.dtype

