"""The streaming KV cache with keys stored *rotated*, attended by one dense SDPA call.

Same semantics as :class:`~stream_r1_fast.cache.SinkKVCache` (the fused-op cache: every
:class:`~stream_r1_fast.cache.CachePolicy`, the group-mean EMA fold, window-relative RoPE
positions; docs/method.md, section 2), a different storage ("How the cache is stored" in
docs/method.md):

* Per block one buffer of ``N = S + W + C`` latent frames (S sink, W window, C the largest
  chunk) in *age order*: sink frames first, then the window oldest first, then room for the
  chunk. A frame's RoPE position is its slot index, so the occupied frames always form the
  prefix ``[0, m)`` and a chunk sits at ``[m, m + C)``.
* Keys are stored already rotated at their current position (values as they are). A chunk's
  q and k are normalised and rotated once per forward from a precomputed cos/sin table
  (float32 math, float64 angles, result in the input dtype), both by one call of the fused
  :func:`~stream_r1_fast.ops.qk_norm_rope` (:meth:`RotatedSinkKVCache.attend_inputs`, which
  the model's chunk forward calls with the projections before Wan's q/k norms), its K/V are written
  at slot ``m`` and attention is one dense call ``attention(q, K[:m+C], V[:m+C])``: no mask,
  no rotation inside the attention, on the backend measured fastest for the shape
  (:mod:`stream_r1_fast.ops.dense_attention`: SDPA, cuDNN, flash, FlashAttention-3 / -2).
* The refresh (:meth:`update`) advances the buffer. With E = max(0, m + C - S - W) frames
  to evict (the oldest window frames, slots ``[S, S + E)``): they are EMA-folded into the
  sink in rotated space (evicted frame j, at position S + j, turned to sink frame i's
  position by ``R(i - S - j)`` before the group mean; rotation is linear, so this is the
  pre-RoPE fold seen through RoPE), the surviving window frames move down E slots with
  their temporal pairs re-rotated by -E, and the chunk is written at ``[m - E, m - E + C)``
  rotated at its final positions. Only the temporal pairs (22 of 64 at head dim 128) change
  on a move; the spatial ones are copied. All of it is one call of the fused op
  :func:`~stream_r1_fast.ops.rotated_cache_advance` per block (its semantics:
  ``ops/rotated_cache_ref.py``).

Everything that decides the layout is one host integer, ``m`` (frames occupied before the
chunk), which follows ``m <- min(m + C, S + W)`` chunk after chunk, exactly the fill and
eviction pattern of ``ema_cache_update`` (the sink fills first; a window that is not a
multiple of the chunk evicts fewer frames on its first overflow, e.g. window 5, chunk 3:
1 then 3). No device value is read on the host, no ``.item()``, the buffers never change
size, and every slice is host-known, so a chunk step is CUDA-graph friendly and traces with
``torch.compile(fullgraph=True)``; since ``m`` is a Python int, the step specialises on it:
one compile per distinct ``m`` (:meth:`fill_lengths`: 3 at the defaults, key lengths of 3, 6
and 9 frames), then the steady state reuses the last one.

Precision: the stored keys are rounded to the cache dtype after each rotation, and a window
frame is re-rotated once per slide, so in bf16 the keys differ from the pre-RoPE cache's
on-the-fly rotation by a few bf16 roundings (float32: ~1e-6); tests/test_rotated_cache.py
states the tolerances.

Not yet here (a later step): a FlashAttention-2-class kernel of our own. (The advance is the
fused :func:`~stream_r1_fast.ops.rotated_cache_advance`, one call per block per refresh; the
chunk step's CUDA-graph capture is ``cuda_graphs=True``, inference/graphs.py.)
"""

from __future__ import annotations

import torch

from stream_r1_fast.cache.base import CachePolicy, StreamingKVCache
from stream_r1_fast.ops.dense_attention import attention, choose_backend
from stream_r1_fast.ops.rope import compute_dtype, rope_tables
from stream_r1_fast.ops.rotated_cache import rotated_cache_advance
from stream_r1_fast.ops.rotated_cache_ref import evicted_frames, rotate_rows


class RotatedSinkKVCache(StreamingKVCache):
    """KV cache of all blocks of a :class:`~stream_r1_fast.models.CausalWanTransformer` for a
    batch of streams (the :class:`~stream_r1_fast.models.KVCache` protocol), keys stored
    rotated in an age-ordered buffer, attention one dense call on the measured-fastest backend.

    Tensors (fixed size, allocated once): ``keys``/``values``, lists of one [B, N, P, heads,
    head_dim] tensor per block with ``N = sink + window + chunk_frames``; slot ``s`` of every
    block holds the frame at RoPE position ``s``. (Separate tensors per block rather than one
    [L, ...] tensor: under torch.compile + Inductor a block's in-place writes then stay in place;
    with one shared tensor Inductor materialised whole-cache temporaries.) ``chunk_frames``
    (default: the window) is the largest chunk the cache takes. Host state: :attr:`occupied`
    (frames held, the same for every block between chunks). :meth:`nbytes` counts the K/V
    buffers; the RoPE tables (shared by :meth:`snapshot` copies, never written) add
    ``2 * N * P * head_dim / 2`` compute-dtype values.

    Protocol use (as ``forward_chunk`` does it): any number of :meth:`attend` calls per chunk,
    then on the refresh one :meth:`update` per block, blocks in order 0..L-1; the chunk counts
    as entered after the last block's update.
    """

    impl_name = "rotated"
    _state = ("keys", "values")

    def _allocate(self, batch_size: int, heads: int, head_dim: int, dtype: torch.dtype, device, *,
                  chunk_frames: int | None = None, rope_theta: float = 10000.0) -> None:
        policy = self.policy
        self.chunk_frames = policy.check_chunk(policy.window_frames if chunk_frames is None else chunk_frames)
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head_dim must be even and >= 6 (Wan's 3-D RoPE), got {head_dim}")
        self.rope_theta = float(rope_theta)
        n = policy.slots + self.chunk_frames
        self.capacity = n
        shape = (batch_size, n, self.tokens_per_frame, heads, head_dim)
        # One tensor per block (not one [L, ...] tensor): under torch.compile each block's
        # in-place writes then touch its own graph input only, which Inductor keeps in place.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.num_layers)]
        self.occupied = 0  # frames held before the current chunk (host int, never read from the device)
        self._next_update = 0  # the block whose update comes next on a refresh
        # RoPE tables, once: every slot's full angles (a chunk's q/k; their temporal part at row
        # n * P is also the move of a frame by n slots), cos/sin in the compute dtype.
        self._cos, self._sin = rope_tables(n, *self.grid, head_dim, self.rope_theta, dtype, self.keys[0].device)
        # The attention backend of every (occupied, chunk) shape a stream of full chunks meets,
        # measured once per process and shape (ops/dense_attention.py); others use SDPA's choice.
        f, p = self.chunk_frames, self.tokens_per_frame
        self._attention = {(lk - f, f): choose_backend(batch_size, f * p, lk * p, heads, head_dim, dtype,
                                                       self.keys[0].device)
                           for lk in self.fill_lengths()}

    @classmethod
    def _model_options(cls, model, policy: CachePolicy, chunk_frames: int | None) -> dict:
        """Chunks of at most ``chunk_frames`` (default: the window); the model's RoPE theta."""
        return dict(chunk_frames=chunk_frames, rope_theta=getattr(model, "rope_theta", 10000.0))

    # ------------------------------------------------------------------ host-side plan

    def evicted(self, frames: int | None = None) -> int:
        """Frames the next refresh of ``frames`` (default: chunk_frames) frames evicts."""
        f = self.chunk_frames if frames is None else frames
        return evicted_frames(self.occupied, f, self.policy.sink_frames, self.policy.window_frames)

    def fill_lengths(self, frames: int | None = None) -> list[int]:
        """The key lengths (in frames, the chunk included) chunks of ``frames`` frames attend to,
        in order, until the steady state (the last entry): one compile each under torch.compile."""
        f = self.chunk_frames if frames is None else frames
        out, m = [], 0
        while True:
            out.append(m + f)
            if m == self.policy.slots:
                return out
            m = min(m + f, self.policy.slots)

    def _frames(self, t: torch.Tensor) -> int:
        p = self.tokens_per_frame
        if t.dim() != 4 or t.shape[1] % p:
            raise ValueError(f"expected [B, F * {p}, heads, head_dim] (whole latent frames), got {tuple(t.shape)}")
        f = t.shape[1] // p
        if f > self.chunk_frames:
            raise ValueError(f"a chunk of {f} frames does not fit a cache made for chunks of {self.chunk_frames}")
        return f

    def _rope(self, x: torch.Tensor, first: int, frames: int) -> torch.Tensor:
        """x [B, frames * P, H, D] rotated at positions first..first+frames-1 (result in x.dtype)."""
        p = self.tokens_per_frame
        cd = compute_dtype(x.dtype)
        rows = slice(first * p, (first + frames) * p)
        return rotate_rows(x, self._cos[rows].to(cd), self._sin[rows].to(cd), 0)

    # ------------------------------------------------------------------ the KVCache protocol

    def begin_chunk(self) -> None:
        """Nothing to do on the device: the chunk's slots are known from :attr:`occupied`."""
        if self._next_update:
            raise RuntimeError(
                f"the previous chunk's refresh stopped after block {self._next_update - 1}: every block "
                "must be updated once per refresh"
            )

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s chunk queries against its cached frames and the chunk: [B, Lq, heads, D],
        from normalised pre-RoPE q and k (the KVCache protocol; the model's chunk forward calls
        :meth:`attend_inputs`, which fuses the norms with the rotation)."""
        m, f = self.occupied, self._frames(q)
        return self._attend_rotated(layer, self._rope(q, m, f), self._rope(k, m, f), v, m, f)

    def attend_inputs(self, layer: int, inputs) -> torch.Tensor:
        """:meth:`attend` from the chunk's
        :class:`~stream_r1_fast.models.wan_blocks.SelfAttentionInputs` (q / k projections before
        their RMSNorms): norms and RoPE of q and k in one call of the fused
        :func:`~stream_r1_fast.ops.qk_norm_rope` (differentiable: training forwards use it too)."""
        m, f = self.occupied, self._frames(inputs.v)
        cd = compute_dtype(inputs.q.dtype)
        cos = self._cos if self._cos.dtype == cd else self._cos.to(cd)
        sin = self._sin if self._sin.dtype == cd else self._sin.to(cd)
        qr, kr = inputs.rotated(cos, sin, m, self.tokens_per_frame)
        return self._attend_rotated(layer, qr, kr, inputs.v, m, f)

    def _attend_rotated(self, layer: int, qr: torch.Tensor, kr: torch.Tensor, v: torch.Tensor, m: int,
                        f: int) -> torch.Tensor:
        """The attention of rotated chunk queries / keys ([B, f * P, heads, D], at slots m ..).

        Without grad the chunk's rotated K/V are written into the buffer's free slots and the
        attention reads one contiguous prefix; with grad (a training forward) they are joined
        with ``torch.cat`` instead, so the buffer is not written and autograd sees no in-place op.
        """
        keys_all, values_all = self.keys[layer], self.values[layer]
        b, _, p, h, d = keys_all.shape
        if torch.is_grad_enabled() and (qr.requires_grad or kr.requires_grad or v.requires_grad):
            keys = torch.cat([keys_all[:, :m].flatten(1, 2), kr.to(keys_all.dtype)], dim=1)
            values = torch.cat([values_all[:, :m].flatten(1, 2), v.to(values_all.dtype)], dim=1)
        else:
            keys_all[:, m : m + f].copy_(kr.reshape(b, f, p, h, d))
            values_all[:, m : m + f].copy_(v.reshape(b, f, p, h, d))
            keys = keys_all[:, : m + f].flatten(1, 2)
            values = values_all[:, : m + f].flatten(1, 2)
            return attention(qr, keys.to(qr.dtype), values.to(qr.dtype), self._attention.get((m, f), "sdpa"))
        return attention(qr, keys.to(qr.dtype), values.to(qr.dtype))  # with grad: SDPA's own choice

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Enter a chunk's K/V [B, Fq * P, heads, D] into block ``layer``'s buffer, in place:
        fold and drop the evicted frames, move the survivors down, write the chunk; one call of
        the fused :func:`~stream_r1_fast.ops.rotated_cache_advance` (the kernel of the device,
        else its PyTorch reference)."""
        if layer != self._next_update:
            raise RuntimeError(f"update of block {layer} out of order (block {self._next_update} is next)")
        m, f = self.occupied, self._frames(k)
        policy = self.policy
        keys, values = self.keys[layer], self.values[layer]
        rotated_cache_advance(keys, values, k.to(keys.dtype).contiguous(), v.to(values.dtype).contiguous(),
                              self._cos, self._sin, m, policy.sink_frames, policy.window_frames,
                              float(policy.alpha))
        self._next_update += 1
        if self._next_update == self.num_layers:
            self._next_update = 0
            self.occupied = min(m + f, policy.slots)

    # ------------------------------------------------------------------ housekeeping

    def reset(self) -> None:
        """Empty the cache (a new video), keeping the storage."""
        self.occupied = 0
        self._next_update = 0

    def clear_window(self) -> None:
        """Empty the window, keeping the sink's K/V (frames are age-ordered, the sink first): the
        next refresh writes the window from the first slot after the sink."""
        self.occupied = min(self.occupied, self.policy.sink_frames)
        self._next_update = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]
