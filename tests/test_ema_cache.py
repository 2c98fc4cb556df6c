"""ema_cache_update: kernels against the reference, and both against an independent
list-of-frames model of the EMA-Sink cache (the group-mean fold at every chunk / sink length);
schema, compile, CUDA graph and input checks."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops.ema_cache import ema_cache_update, new_sink_cache
from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref
from tolerances import assert_exact_close

HAS_EXTENSION = backend_info().name == "extension"
# The device fixture is function scoped but stateless: every example builds its own tensors.
FIXTURE_OK = settings(
    suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
)


def fold_members(i: int, evicted: int, sink: int) -> list[int]:
    """Indices (oldest first) of the evicted frames whose mean sink frame i folds in: the rule
    as stated (consecutive groups; at least one frame each), independent of the op's code."""
    first = (i * evicted) // sink
    last = max(((i + 1) * evicted) // sink, first + 1)
    return list(range(evicted))[first:last]


class FrameListCache:
    """The EMA-Sink cache kept the plain way: a list of sink frames and a deque of window
    frames in time order, each frame a [B, P, H, D] tensor; evicted frames folded by the
    group-mean rule (float32 sum in order, divided by the count; a lone frame as it is)."""

    def __init__(self, sink_size: int, window: int, alpha: float):
        self.sink_size, self.window, self.alpha = sink_size, window, alpha
        self.sink = {"k": [], "v": []}
        self.ring = {"k": collections.deque(), "v": collections.deque()}
        self.last_evicted = 0

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        for kv, new in (("k", k_new), ("v", v_new)):
            self._update(self.sink[kv], self.ring[kv], [new[:, f] for f in range(new.shape[1])])

    def _update(self, sink: list, ring: collections.deque, frames: list) -> None:
        while frames and len(sink) < self.sink_size:
            sink.append(frames.pop(0))
        evicted = []
        for frame in frames:
            if len(ring) == self.window:
                evicted.append(ring.popleft())
            ring.append(frame)
        self.last_evicted = len(evicted)
        if evicted and sink:
            folded = []
            for i, old in enumerate(sink):
                members = [evicted[j].float() for j in fold_members(i, len(evicted), len(sink))]
                total = members[0]
                for m in members[1:]:
                    total = total + m
                mean = total if len(members) == 1 else total / torch.full_like(total, len(members))
                folded.append((self.alpha * old.float() + (1.0 - self.alpha) * mean).to(old.dtype))
            sink[:] = folded

    def tensors(self, kv: str, like: torch.Tensor):
        """(sink, window) as [B, n, P, H, D] tensors in time order."""
        empty = like[:, :0]
        stack = lambda frames: torch.stack(list(frames), 1) if frames else empty  # noqa: E731
        return stack(self.sink[kv]), stack(self.ring[kv])


def gather_by_age(cache: torch.Tensor, cache_pos: torch.Tensor, sink_size: int):
    """(sink, window) frames of a ring cache in time order, read through cache_pos."""
    pos = cache_pos.cpu()
    sink_slots = [s for s in range(sink_size) if pos[s] >= 0]
    ring_slots = [s for s in range(sink_size, pos.numel()) if pos[s] >= 0]
    ring_slots.sort(key=lambda s: int(pos[s]))
    # Positions must be exactly 0.. for the sink, then consecutive for the window.
    assert [int(pos[s]) for s in sink_slots] == list(range(len(sink_slots)))
    assert [int(pos[s]) for s in ring_slots] == list(range(len(sink_slots), len(sink_slots) + len(ring_slots)))
    return cache[:, sink_slots], cache[:, ring_slots]


@st.composite
def cache_cases(draw):
    sink_size = draw(st.integers(0, 3))
    window = draw(st.integers(1, 5))
    fixed_fn = draw(st.integers(1, window))
    if sink_size and sink_size <= window and draw(st.booleans()):
        fixed_fn = sink_size  # the EMA-Sink setting: every eviction folds
    slots = sink_size + window
    n = 3 * slots + draw(st.integers(0, 3))  # the ring wraps several times
    if draw(st.booleans()):
        fns = [fixed_fn] * n
    else:
        fns = draw(st.lists(st.integers(1, window), min_size=n, max_size=n))
    return dict(
        batch=draw(st.sampled_from([1, 2, 3])),
        tokens=draw(st.sampled_from([1, 3, 5, 7])),
        heads=draw(st.integers(1, 9)),
        head_dim=draw(st.integers(8, 40)),
        sink_size=sink_size,
        window=window,
        fns=fns,
        alpha=draw(st.one_of(st.sampled_from([0.999, 0.99, 1.0, 0.0]), st.floats(0.0, 1.0))),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        seed=draw(st.integers(0, 2**16)),
    )


def _chunk(case, fn, gen, device):
    shape = (case["batch"], fn * case["tokens"], case["heads"], case["head_dim"])
    k = torch.randn(shape, generator=gen).to(device=device, dtype=case["dtype"])
    v = torch.randn(shape, generator=gen).to(device=device, dtype=case["dtype"])
    return k, v


@FIXTURE_OK
@given(case=cache_cases())
def test_matches_reference_and_frame_model(device, case):
    sink_size, alpha = case["sink_size"], case["alpha"]
    cache = new_sink_cache(
        case["batch"], sink_size, case["window"], case["tokens"], case["heads"], case["head_dim"],
        dtype=case["dtype"], device=device,
    )
    ref = [t.clone() for t in cache]
    model = FrameListCache(sink_size, case["window"], alpha)
    gen = torch.Generator().manual_seed(case["seed"])
    shape5 = lambda t: t.reshape(case["batch"], -1, *cache[0].shape[2:])  # noqa: E731
    for step, fn in enumerate(case["fns"]):
        k_new, v_new = _chunk(case, fn, gen, device)
        ema_cache_update(*cache, k_new, v_new, sink_size, alpha)
        ema_cache_update_ref(*ref, k_new, v_new, sink_size, alpha)
        model.update(shape5(k_new), shape5(v_new))
        what = f"step {step} (Fn={fn})"
        assert torch.equal(cache[2], ref[2]), f"{what}: cache_pos {cache[2].tolist()} != {ref[2].tolist()}"
        assert torch.equal(cache[3], ref[3]), f"{what}: state {cache[3].tolist()} != {ref[3].tolist()}"
        _assert_matches_model(cache, model, sink_size, what)
        for i, name in ((0, "k_cache"), (1, "v_cache")):
            assert_exact_close(cache[i], ref[i], f"{what}: {name} vs reference")


def _assert_matches_model(cache, model, sink_size, what):
    for i, kv in ((0, "k"), (1, "v")):
        sink, window = gather_by_age(cache[i], cache[2], sink_size)
        want_sink, want_window = model.tensors(kv, cache[i])
        assert_exact_close(sink, want_sink, f"{what}: {kv}_cache sink vs frame model")
        assert_exact_close(window, want_window, f"{what}: {kv}_cache window vs frame model")
    filled = len(model.sink["k"]) + len(model.ring["k"])
    assert cache[3][3].item() == filled, f"{what}: next_pos {cache[3].tolist()}"


@pytest.mark.parametrize("window", [3, 5, 6])
@pytest.mark.parametrize("sink_size", [1, 2, 3, 6])
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_fold_at_every_sink_length(device, impl, sink_size, window):
    """Chunks of 3 frames against sinks of 1, 2, 3 and 6 frames and windows of 3, 5 and 6 (so
    1, 2 or 3 frames are evicted at a time) over 14 chunks: the op (the kernel of the device
    where there is one) and the reference both follow the list-of-frames model step by step."""
    chunk, chunks, alpha = 3, 14, 0.7
    case = dict(batch=2, tokens=3, heads=2, head_dim=8, dtype=torch.float32)
    cache = new_sink_cache(2, sink_size, window, 3, 2, 8, dtype=torch.float32, device=device)
    update = ema_cache_update if impl == "op" else ema_cache_update_ref
    model = FrameListCache(sink_size, window, alpha)
    gen = torch.Generator().manual_seed(sink_size * 10 + window)
    evictions = set()
    for step in range(chunks):
        k_new, v_new = _chunk(case, chunk, gen, device)
        update(*cache, k_new, v_new, sink_size, alpha)
        model.update(k_new.reshape(2, chunk, 3, 2, 8), v_new.reshape(2, chunk, 3, 2, 8))
        evictions.add(model.last_evicted)
        _assert_matches_model(cache, model, sink_size, f"{impl}, step {step}")
    assert evictions - {0}, "the sequence never evicted"


def test_sink_two_chunk_three_folds_by_group_mean(device):
    """Worked example, sink 2, W 3, chunks of 3, alpha 0.5, one scalar per frame. The old rule
    (fold only when the evicted count equals the sink length) dropped both evictions."""
    cache = new_sink_cache(1, 2, 3, 1, 1, 1, dtype=torch.float32, device=device)

    def step(values):
        new = torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        ema_cache_update(*cache, new, -new, 2, 0.5)
        sink, window = gather_by_age(cache[0], cache[2], 2)
        neg_sink, neg_window = gather_by_age(cache[1], cache[2], 2)
        assert torch.equal(neg_sink, -sink) and torch.equal(neg_window, -window)
        return sink.flatten().tolist(), window.flatten().tolist()

    assert step([1, 2, 3]) == ([1, 2], [3])
    # 1 evicted (3), shared by both sink frames: 0.5*1 + 0.5*3, 0.5*2 + 0.5*3.
    assert step([4, 5, 6]) == ([2, 2.5], [4, 5, 6])
    # 3 evicted (4, 5, 6): groups {4} and {5, 6} -> 0.5*2 + 0.5*4, 0.5*2.5 + 0.5*5.5.
    assert step([7, 8, 9]) == ([3, 4], [7, 8, 9])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equal_lengths_fold_is_the_one_frame_ema_bit_for_bit(device, dtype):
    """Evicted count == sink length (the default EMA-Sink setting): sink frame j becomes
    round(alpha * sink_j + (1 - alpha) * evicted_j) computed in float32, exactly as before."""
    sink, window, alpha = 3, 3, 0.999
    case = dict(batch=2, tokens=5, heads=3, head_dim=16, dtype=dtype)
    cache = new_sink_cache(2, sink, window, 5, 3, 16, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):  # fill the sink, then the window
        ema_cache_update(*cache, *_chunk(case, sink, gen, device), sink, alpha)
    for _ in range(4):
        before_sink = cache[0][:, :sink].clone(), cache[1][:, :sink].clone()
        order = [s for s in range(sink, sink + window)]
        order.sort(key=lambda s: int(cache[2][s]))
        evicted = cache[0][:, order].clone(), cache[1][:, order].clone()
        ema_cache_update(*cache, *_chunk(case, sink, gen, device), sink, alpha)
        for i in range(2):
            want = (alpha * before_sink[i].float() + (1.0 - alpha) * evicted[i].float()).to(dtype)
            assert torch.equal(cache[i][:, :sink], want)


def test_no_sink_is_a_sliding_window(device):
    cache = new_sink_cache(1, 0, 4, 1, 1, 1, dtype=torch.float32, device=device)
    for start in range(0, 30, 3):
        new = torch.arange(start, start + 3, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        ema_cache_update(*cache, new, new, 0, 0.5)
    _, window = gather_by_age(cache[0], cache[2], 0)
    assert window.flatten().tolist() == [26, 27, 28, 29]


def test_worked_example(device):
    """sink 2, W 2, one scalar per frame: fill, append, fold (2 evicted), fold of one evicted
    frame into both sink frames, fold of 2 in age order."""
    cache = new_sink_cache(1, 2, 2, 1, 1, 1, dtype=torch.float32, device=device)

    def step(values, alpha=0.5):
        new = torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        ema_cache_update(*cache, new, -new, 2, alpha)
        return cache[0].flatten().tolist(), cache[1].flatten().tolist(), cache[2].tolist(), cache[3].tolist()

    assert step([1, 2]) == ([1, 2, 0, 0], [-1, -2, 0, 0], [0, 1, -1, -1], [2, 0, 0, 2])
    assert step([3, 4]) == ([1, 2, 3, 4], [-1, -2, -3, -4], [0, 1, 2, 3], [2, 0, 2, 4])
    assert step([5, 6]) == ([2, 3, 5, 6], [-2, -3, -5, -6], [0, 1, 2, 3], [2, 0, 2, 4])
    # One evicted frame (5) is the group of both sink frames: 0.5*2 + 0.5*5, 0.5*3 + 0.5*5.
    assert step([7]) == ([3.5, 4, 7, 6], [-3.5, -4, -7, -6], [0, 1, 3, 2], [2, 1, 2, 4])
    # Oldest first: slot 3 (6) folds into sink 0, slot 2 (7) into sink 1; 8 and 9 follow in time.
    assert step([8, 9], alpha=0.25) == (
        [5.375, 6.25, 9, 8], [-5.375, -6.25, -9, -8], [0, 1, 3, 2], [2, 1, 2, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_storage(device, dtype):
    """Caches starting one element past an aligned address take the narrow-access path."""
    b, sink, window, p, h, d = 2, 2, 3, 3, 2, 8
    s = sink + window
    cache = new_sink_cache(b, sink, window, p, h, d, dtype=dtype, device=device)
    shifted = []
    for t in cache[:2]:
        buf = torch.zeros(t.numel() + 1, dtype=dtype, device=device)
        shifted.append(buf[1:].view(t.shape))
    cache = (*shifted, *cache[2:])
    ref = [t.clone() for t in cache]
    gen = torch.Generator().manual_seed(0)
    case = dict(batch=b, tokens=p, heads=h, head_dim=d, dtype=dtype)
    for _ in range(3 * s):
        k_new, v_new = _chunk(case, sink, gen, device)
        ema_cache_update(*cache, k_new, v_new, sink, 0.9)
        ema_cache_update_ref(*ref, k_new, v_new, sink, 0.9)
    for got, want, name in zip(cache, ref, ("k_cache", "v_cache", "cache_pos", "state")):
        assert_exact_close(got.float(), want.float(), name)


def _good_args(device, dtype=torch.float32):
    k, v, pos, state = new_sink_cache(1, 2, 3, 3, 2, 8, dtype=dtype, device=device)
    k_new = torch.randn(1, 2 * 3, 2, 8, dtype=dtype, device=device)
    return dict(k_cache=k, v_cache=v, cache_pos=pos, state=state, k_new=k_new, v_new=k_new.clone(),
                sink_size=2, alpha=0.99)


def _set(**changes):
    return lambda args: args.update({k: f(args) for k, f in changes.items()})


def _pair(which, fn):
    """Apply ``fn`` to both k_<which> and v_<which>."""
    return _set(**{f"{kv}_{which}": (lambda a, key=f"{kv}_{which}": fn(a[key])) for kv in "kv"})


BAD_INPUTS = {  # name: (mutation of good arguments, expected message)
    "cache rank": (_pair("cache", lambda t: t[0]), "k_cache must have 5 dimensions"),
    "v_cache shape": (_set(v_cache=lambda a: a["v_cache"][:, :4]), "v_cache must have the shape of k_cache"),
    "new rank": (_pair("new", lambda t: t[0]), "k_new must have 4 dimensions"),
    "v_new shape": (_set(v_new=lambda a: a["v_new"][:, :3]), "v_new must have the shape of k_new"),
    "new heads": (_pair("new", lambda t: t[:, :, :1]), r"k_new must have shape \[B, Fn \* P, H, D\]"),
    "Fn*P mismatch": (_pair("new", lambda t: t[:, :4]), "must be a multiple of the 3 tokens"),
    "Fn > W": (_pair("new", lambda t: torch.cat([t, t], 1)), "between 1 and W"),
    "dtype mismatch": (_set(v_new=lambda a: a["v_new"].half()), "v_new must have the dtype of k_cache"),
    "int cache": (_pair("cache", lambda t: t.int()), "k_cache must be float32, float16 or bfloat16"),
    "state dtype": (_set(state=lambda a: a["state"].long()), "state must be int32"),
    "state shape": (_set(state=lambda a: a["state"][:3]), r"state must have shape \[4\]"),
    "cache_pos shape": (_set(cache_pos=lambda a: a["cache_pos"][:4]), r"cache_pos must have shape \[5\]"),
    "non-contiguous cache": (
        _set(k_cache=lambda a: a["k_cache"].transpose(3, 4).contiguous().transpose(3, 4)),
        "k_cache must be contiguous",
    ),
    "alpha > 1": (_set(alpha=lambda a: 1.5), r"alpha must be in \[0, 1\]"),
    "alpha nan": (_set(alpha=lambda a: float("nan")), r"alpha must be in \[0, 1\]"),
    "sink_size >= S": (_set(sink_size=lambda a: 5), r"sink_size must be in \[0, S\)"),
    "sink_size < 0": (_set(sink_size=lambda a: -1), r"sink_size must be in \[0, S\)"),
}


def _bad_args(device, mutate):
    args = _good_args(device)
    mutate(args)
    return args


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise(device, case):
    mutate, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        ema_cache_update(**_bad_args(device, mutate))


@pytest.mark.parametrize("name, value", [("alpha", "0.5"), ("alpha", None), ("sink_size", None),
                                         ("sink_size", 2.0), ("sink_size", True), ("k_new", [1.0])])
def test_wrong_types_name_the_argument(device, name, value):
    args = _good_args(device)
    args[name] = value
    with pytest.raises(TypeError, match=f"^{name} must be"):
        ema_cache_update(**args)


@pytest.mark.parametrize("alias", ["v_cache is k_cache", "k_new inside k_cache", "state inside cache_pos"])
def test_overlapping_tensors_are_refused(device, alias):
    """The update is in place: an output sharing memory with another argument would race
    (kernels) or read half-written data (reference). Views of one buffer that do not overlap,
    and inputs that alias each other (k_new is v_new), are fine."""
    args = _good_args(device)
    if alias == "v_cache is k_cache":
        args["v_cache"] = args["k_cache"]
    elif alias == "k_new inside k_cache":
        args["k_new"] = args["k_cache"].view(-1)[: args["k_new"].numel()].view(args["k_new"].shape)
    else:
        buf = torch.full((6,), -1, dtype=torch.int32, device=device)
        args["cache_pos"], args["state"] = buf[:5], buf[2:6]
    with pytest.raises(ValueError, match="must not share memory"):
        ema_cache_update(**args)
    packed = torch.zeros(2, *args["k_cache"].shape, device=device)
    good = _good_args(device)
    good["k_cache"], good["v_cache"] = packed[0], packed[1]
    good["v_new"] = good["k_new"]
    ema_cache_update(**good)


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
@pytest.mark.parametrize("name", ["k_cache", "v_cache", "cache_pos", "state", "k_new", "v_new"])
def test_one_meta_tensor_is_refused(name):
    """A direct call mixing meta with CPU tensors dispatches to the fake kernel, which must
    refuse it rather than do nothing."""
    args = _good_args(torch.device("cpu"))
    args[name] = torch.empty_like(args[name], device="meta")
    ref = "v_cache" if name == "k_cache" else "k_cache"
    with pytest.raises((RuntimeError, ValueError), match=f"({name}|{ref}) must be on the device of"):
        torch.ops.stream_r1_fast.ema_cache_update(*args.values())


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_in_kernel(device, case):
    """The C++ entry points check the same things (for direct torch.ops calls)."""
    if not use_kernel("ema_cache_update", device.type):
        pytest.skip(f"no {device.type} kernel")
    mutate, match = BAD_INPUTS[case]
    args = _bad_args(device, mutate)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.stream_r1_fast.ema_cache_update(*args.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_mismatch_raises():
    args = _good_args(torch.device("cuda"))
    args["state"] = args["state"].cpu()
    with pytest.raises(ValueError, match="state must be on the device of k_cache"):
        ema_cache_update(**args)
    if use_kernel("ema_cache_update", "cuda"):
        with pytest.raises(RuntimeError, match="state must be on the device of k_cache"):
            torch.ops.stream_r1_fast.ema_cache_update(*args.values())


@pytest.mark.skipif(not use_kernel("ema_cache_update", "cpu"), reason="no CPU kernel")
def test_cpu_kernel_rejects_inconsistent_state():
    args = _good_args(torch.device("cpu"))
    args["state"] = torch.tensor([0, 0, 2, 2], dtype=torch.int32)  # ring frames, empty sink
    with pytest.raises(RuntimeError, match="is inconsistent with sink_size"):
        ema_cache_update(**args)


@pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
def test_opcheck(device):
    if not use_kernel("ema_cache_update", device.type):
        pytest.skip(f"no {device.type} kernel")
    for dtype in (torch.float32, torch.bfloat16):
        args = _good_args(device, dtype)
        # A full ring, so the checked call evicts and folds.
        args["state"].copy_(torch.tensor([2, 1, 3, 5], dtype=torch.int32))
        args["k_cache"].normal_()
        args["v_cache"].normal_()
        torch.library.opcheck(torch.ops.stream_r1_fast.ema_cache_update.default, tuple(args.values()))


def test_torch_compile_fullgraph(device):
    if not use_kernel("ema_cache_update", device.type):
        pytest.skip(f"no {device.type} kernel (the reference reads state on the host)")
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(k, v, pos, state, k_new, v_new):
        ema_cache_update(k, v, pos, state, k_new * 2.0, v_new, 2, 0.9)

    args = _good_args(device)
    ref = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    for _ in range(6):
        k_new = torch.randn_like(args["k_new"])
        step(args["k_cache"], args["v_cache"], args["cache_pos"], args["state"], k_new, args["v_new"])
        ema_cache_update_ref(ref["k_cache"], ref["v_cache"], ref["cache_pos"], ref["state"],
                             k_new * 2.0, ref["v_new"], 2, 0.9)
    for name in ("k_cache", "v_cache", "cache_pos", "state"):
        assert_exact_close(args[name].float(), ref[name].float(), name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_replay(dtype):
    """One captured update replayed chunk after chunk: all decisions come from device state."""
    if not use_kernel("ema_cache_update", "cuda"):
        pytest.skip("no CUDA kernel")
    b, sink, window, p, h, d = 1, 3, 6, 5, 4, 40
    cache = new_sink_cache(b, sink, window, p, h, d, dtype=dtype, device="cuda")
    ref = [t.clone() for t in cache]
    k_in = torch.zeros(b, sink * p, h, d, dtype=dtype, device="cuda")
    v_in = torch.zeros_like(k_in)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, on a scratch copy
        scratch = [t.clone() for t in cache]
        ema_cache_update(*scratch, k_in, v_in, sink, 0.999)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ema_cache_update(*cache, k_in, v_in, sink, 0.999)
    for _ in range(4 * (sink + window)):
        k_in.copy_(torch.randn_like(k_in))
        v_in.copy_(torch.randn_like(v_in))
        graph.replay()
        ema_cache_update_ref(*ref, k_in, v_in, sink, 0.999)
    torch.cuda.synchronize()
    for got, want, name in zip(cache, ref, ("k_cache", "v_cache", "cache_pos", "state")):
        assert_exact_close(got.float(), want.float(), name)


def test_new_sink_cache():
    k, v, pos, state = new_sink_cache(2, 3, 6, 5, 4, 8, dtype=torch.float16)
    assert k.shape == v.shape == (2, 9, 5, 4, 8) and k.dtype == torch.float16
    assert pos.tolist() == [-1] * 9 and pos.dtype == torch.int32
    assert state.tolist() == [0, 0, 0, 0] and state.dtype == torch.int32
    with pytest.raises(ValueError, match="window >= 1"):
        new_sink_cache(1, 3, 0, 5, 4, 8)
