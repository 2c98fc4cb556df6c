// The one place where the schemas of stream_r1_fast's ops are defined. Backends register
// their kernels beside the kernels themselves (TORCH_LIBRARY_IMPL in <op>_cpu.cpp /
// <op>_cuda.cpp / <op>_plan.cpp); fake kernels and autograd are registered from Python
// (stream_r1_fast/ops/<op>.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(stream_r1_fast, m) {
  // Current chunk's queries attend densely to [occupied cache slots | current chunk].
  // q, k, v: [B, Lq, H, D] pre-RoPE, Lq = Fq * grid_h * grid_w.
  // k_cache, v_cache: [B, S, grid_h * grid_w, H, D] pre-RoPE, one latent frame per slot.
  // cache_pos: int32 [S], temporal RoPE position of each slot, < 0 for an empty slot.
  // q_pos: int32 [1], temporal position of the chunk's first frame.
  // Returns out [B, Lq, H, D] (dtype of q) and lse [B, H, Lq] (float32, natural log of the
  // softmax denominator of the scaled scores; consumed by the backward).
  m.def(
      "sink_attention(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, "
      "Tensor cache_pos, Tensor q_pos, int grid_h, int grid_w, float scale, "
      "float rope_theta) -> (Tensor, Tensor)");

  // In place, once per chunk: fill the sink, then the window ring; once the ring is full,
  // evict its oldest frames, fold them into a full sink by EMA whatever their number (sink
  // frame i takes the mean of its group of evicted frames, ema_fold_group of
  // ema_cache/ema_cache.h; no sink: dropped), write k_new/v_new in their place and rewrite
  // cache_pos with window-relative positions.
  // state: int32 [4] = (sink_filled, ring_start, ring_count, next_pos).
  m.def(
      "ema_cache_update(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) cache_pos, "
      "Tensor(d!) state, Tensor k_new, Tensor v_new, int sink_size, float alpha) -> ()");

  // In place, once per chunk, on one block's buffers of RotatedSinkKVCache ([B, N, P, H, D],
  // age ordered, keys stored rotated at their slot): with m = occupied frames and F chunk
  // frames, E = max(0, m + F - sink_size - window) evicted (slots [S, S + E)) are EMA-folded
  // into the sink in rotated space (ema_fold_group's groups; keys turned to the sink frame's
  // position), the survivors [S + E, m) move to [S, m - E) with their temporal RoPE pairs
  // turned by -E, and the chunk (k_new pre-RoPE, [B, F * P, H, D]) is written at
  // [m - E, m - E + F), keys rotated there. cos, sin: [N * P, D / 2] tables of every slot's
  // 3-D RoPE angles in the compute dtype (float32; float64 for float64 buffers).
  m.def(
      "rotated_cache_advance(Tensor(a!) keys, Tensor(b!) values, Tensor k_new, Tensor v_new, "
      "Tensor cos, Tensor sin, int occupied, int sink_size, int window, float alpha) -> ()");

  // Reward-gradient saliency -> spatio-temporal loss weights on the latent grid.
  // saliency: per-axis pixel gradients [A, B, T, C, H, W], or one fused map [B, T, H, W].
  // axis_weights: float [A] or [B, A] (ignored, and may be empty, for a fused map).
  // Returns weights [B, F, h, w], tau [B, F], sigma [B, F, h, w], all float32.
  m.def(
      "saliency_weights(Tensor saliency, Tensor axis_weights, str mode, int temporal_factor, "
      "int spatial_factor, float tau_floor, float sigma_floor, float gamma_t, float gamma_s) "
      "-> (Tensor, Tensor, Tensor)");

  // Dense attention without a mask: out = softmax(q k^T * scale) v.
  // q [B, Lq, H, D], k, v [B, Lk, H, D], each with any batch / row / head strides and a
  // contiguous last dimension (the rotated cache passes prefixes of its storage).
  // Returns out [B, Lq, H, D] (dtype of q, contiguous) and lse [B, H, Lq] (float32, natural log
  // of the softmax denominator of the scaled scores; consumed by the backward).
  m.def("dense_attention(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");

  // Wan's q/k RMSNorm (across all heads) and 3-D RoPE of one chunk, in one pass.
  // q, k: [B, F, P, H, D] (the to_q / to_k outputs viewed per frame, token and head), one dtype.
  // weight_q, weight_k: [H * D], q's dtype or the compute dtype (float32; float64 for float64).
  // cos, sin: [N * P, D / 2] RoPE tables in the compute dtype (row s * P + p: token p of the
  // frame at position s); the chunk's frame f uses the rows of position frame_offset + f.
  // Returns (q_out, k_out) [B, F, P, H, D] (q's dtype, contiguous): x * rsqrt(mean(x^2) + eps)
  // * weight over each token's H * D elements, then adjacent pairs rotated, rounded once.
  m.def(
      "qk_norm_rope(Tensor q, Tensor k, Tensor weight_q, Tensor weight_k, Tensor cos, Tensor sin, "
      "int frame_offset, float eps) -> (Tensor, Tensor)");

  // Private, for the NVRTC launcher (stream_r1_fast/nvrtc/_launch.py): per op, <op>_plan takes
  // the op's arguments, checks them and prepares the call as the nvcc launcher does, and
  // returns (outputs, buffers that must outlive the launches, the params struct as uint8
  // bytes, the launches flattened as [kernel, grid x y z, block x y z, smem] each);
  // <op>_kernels returns (the kernels' NVRTC name expressions, sizeof(Params)).
  m.def(
      "sink_attention_plan(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, "
      "Tensor cache_pos, Tensor q_pos, int grid_h, int grid_w, float scale, float rope_theta) "
      "-> (Tensor[], Tensor[], Tensor, int[])");
  m.def(
      "ema_cache_update_plan(Tensor k_cache, Tensor v_cache, Tensor cache_pos, Tensor state, "
      "Tensor k_new, Tensor v_new, int sink_size, float alpha) "
      "-> (Tensor[], Tensor[], Tensor, int[])");
  m.def(
      "saliency_weights_plan(Tensor saliency, Tensor axis_weights, str mode, "
      "int temporal_factor, int spatial_factor, float tau_floor, float sigma_floor, "
      "float gamma_t, float gamma_s) -> (Tensor[], Tensor[], Tensor, int[])");
  m.def(
      "rotated_cache_advance_plan(Tensor keys, Tensor values, Tensor k_new, Tensor v_new, "
      "Tensor cos, Tensor sin, int occupied, int sink_size, int window, float alpha) "
      "-> (Tensor[], Tensor[], Tensor, int[])");
  m.def(
      "dense_attention_plan(Tensor q, Tensor k, Tensor v, float scale) "
      "-> (Tensor[], Tensor[], Tensor, int[])");
  m.def(
      "qk_norm_rope_plan(Tensor q, Tensor k, Tensor weight_q, Tensor weight_k, Tensor cos, Tensor sin, "
      "int frame_offset, float eps) -> (Tensor[], Tensor[], Tensor, int[])");
  m.def("sink_attention_kernels() -> (str[], int)");
  m.def("ema_cache_update_kernels() -> (str[], int)");
  m.def("saliency_weights_kernels() -> (str[], int)");
  m.def("rotated_cache_advance_kernels() -> (str[], int)");
  m.def("dense_attention_kernels() -> (str[], int)");
  m.def("qk_norm_rope_kernels() -> (str[], int)");
}

// Importing `stream_r1_fast._C` runs the static registrations above; the module itself is
// empty. No pybind11: the ops are reached through torch.ops.stream_r1_fast.*.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
