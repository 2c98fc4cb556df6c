// ema_cache_update on the GPU: the host-side launch of the kernels in ema_cache_kernels.cuh
// (stream_r1_fast/nvrtc/ema_cache.py mirrors it for the NVRTC path).
#include <cstdint>

#include "ema_cache/ema_cache_kernels.cuh"

namespace srf {
namespace {

using namespace srf::ema;

// Widest access (<= 16 bytes) that divides the frame size and every base address, so each
// frame of each tensor starts aligned and needs no scalar tail.
int vector_bytes(const EmaCacheParams& prm, int elem_size) {
  uintptr_t bits = static_cast<uintptr_t>(prm.frame_elems) * elem_size;
  bits |= reinterpret_cast<uintptr_t>(prm.k_cache) | reinterpret_cast<uintptr_t>(prm.v_cache) |
          reinterpret_cast<uintptr_t>(prm.k_new) | reinterpret_cast<uintptr_t>(prm.v_new);
  for (int vb = 16; vb > elem_size; vb /= 2) {
    if (bits % vb == 0) return vb;
  }
  return elem_size;
}

template <typename T>
void launch_move(const EmaCacheParams& prm, cudaStream_t stream) {
  const int vb = vector_bytes(prm, static_cast<int>(sizeof(T)));
  const int64_t nvec = prm.frame_elems * static_cast<int64_t>(sizeof(T)) / vb;
  const int64_t rows = 2 * prm.batch;  // (tensor, batch): each thread walks every frame
  const int64_t bx = (nvec + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(bx < kMaxBlocksX ? bx : kMaxBlocksX),
                  static_cast<unsigned>(rows < kMaxBlocksY ? rows : kMaxBlocksY));
  switch (vb) {
    case 16: ema_cache_move_kernel<T, 16><<<grid, kThreads, 0, stream>>>(prm); break;
    case 8: ema_cache_move_kernel<T, 8><<<grid, kThreads, 0, stream>>>(prm); break;
    case 4:
      if constexpr (sizeof(T) <= 4) ema_cache_move_kernel<T, 4><<<grid, kThreads, 0, stream>>>(prm);
      break;
    default:
      if constexpr (sizeof(T) <= 2) ema_cache_move_kernel<T, 2><<<grid, kThreads, 0, stream>>>(prm);
      break;
  }
}

}  // namespace

void launch_ema_cache_update(const EmaCacheParams& prm, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (prm.batch * prm.frame_elems > 0) {
    SRF_DISPATCH_DTYPE(prm.dtype, [&] { launch_move<scalar_t>(prm, stream); });
  }
  ema_cache_state_kernel<<<1, 32, 0, stream>>>(prm.state, prm.cache_pos,
                                               static_cast<int>(prm.slots),
                                               static_cast<int>(prm.sink_size),
                                               static_cast<int>(prm.new_frames));
}

}  // namespace srf
