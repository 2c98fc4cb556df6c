// qk_norm_rope's CUDA kernels run on the CPU: every block of one planned launch in turn, its
// threads as fibers (ucontext) that run until their next warp- or block-wide operation (a
// __shfl_xor_sync of the row's sum, a __syncthreads), which the emulator then completes for
// the whole block: a shuffle for every warp at once (each lane gets its partner's value),
// a barrier once every thread has reached it. Threads run in launch order or reversed (a
// result that depended on the order between two collectives would differ). The device code is
// the kernel header as it is; the CUDA built-ins are the host stand-ins of
// common/cuda_utils.h here, and the 16-bit types convert by round-to-nearest-even below. For
// tests/test_cuda_emulation.py.
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cuda_utils.h"

// The 16-bit conversions of csrc/common/cuda_utils.h (__half2float, __float2half_rn, ...) on
// the stand-in types' bits: fp16 through the host's _Float16, bf16 by rounding the float's bits.
namespace srf {
template <>
inline float to_float<__half>(__half x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, 2);
  return static_cast<float>(h);
}
template <>
inline __half from_float<__half>(float x) {
  const _Float16 h = static_cast<_Float16>(x);  // round to nearest even
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}
template <>
inline float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  __nv_bfloat16 out;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out.bits = 0x7fc0;  // NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    out.bits = static_cast<uint16_t>(u >> 16);
  }
  return out;
}
}  // namespace srf

#include "qk_norm_rope/qk_norm_rope_kernels.cuh"

namespace srf::qk_norm_rope {

alignas(16) unsigned char smem_raw[64 * 1024];

namespace {
using Kernel = void (*)(Params);
// In the order of kKernelNames.
const Kernel kKernels[] = {
    &norm_rope_kernel<float, 16>,          &norm_rope_kernel<float, 8>,          &norm_rope_kernel<float, 4>,
    &norm_rope_kernel<__half, 16>,         &norm_rope_kernel<__half, 8>,         &norm_rope_kernel<__half, 4>,
    &norm_rope_kernel<__half, 2>,          &norm_rope_kernel<__nv_bfloat16, 16>, &norm_rope_kernel<__nv_bfloat16, 8>,
    &norm_rope_kernel<__nv_bfloat16, 4>,   &norm_rope_kernel<__nv_bfloat16, 2>,  &norm_rope_kernel<double, 16>,
    &norm_rope_kernel<double, 8>,
};
static_assert(sizeof(kKernels) / sizeof(kKernels[0]) == sizeof(kKernelNames) / sizeof(char*));

enum class Op { kNone, kShfl, kSync };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  Op op = Op::kNone;
  double value = 0, result = 0;  // a shuffle's operand and result (floats are exact in double)
  int lane_mask = 0;
};

ucontext_t scheduler;
std::vector<Fiber> fibers;
int current = 0;
Kernel kernel = nullptr;
Params params;
const char* failure = nullptr;

void entry() {
  kernel(params);
  fibers[current].done = true;
  swapcontext(&fibers[current].ctx, &scheduler);
}

double shuffle(double value, int lane_mask) {
  Fiber& f = fibers[current];
  f.op = Op::kShfl;
  f.value = value;
  f.lane_mask = lane_mask;
  swapcontext(&f.ctx, &scheduler);
  return fibers[current].result;
}
}  // namespace
}  // namespace srf::qk_norm_rope

using namespace srf::qk_norm_rope;

float __shfl_xor_sync(unsigned, float value, int lane_mask) { return static_cast<float>(shuffle(value, lane_mask)); }
double __shfl_xor_sync(unsigned, double value, int lane_mask) { return shuffle(value, lane_mask); }
void __syncthreads() {
  fibers[current].op = Op::kSync;
  swapcontext(&fibers[current].ctx, &scheduler);
}

// Runs one planned launch; nullptr when it ran, else what went wrong.
extern "C" const char* emulate_launch(const void* raw, int k, int64_t gx, int64_t gy, int threads, int smem,
                                      int reversed) {
  params = *static_cast<const Params*>(raw);
  kernel = kKernels[k];
  failure = nullptr;
  if (threads % 32 != 0 || threads > kMaxThreads || smem > static_cast<int>(sizeof smem_raw)) return "bad launch";
  fibers.assign(threads, Fiber{});
  for (Fiber& f : fibers) f.stack.resize(1 << 16);
  gridDim = {static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1};
  blockDim = {static_cast<unsigned>(threads), 1, 1};
  for (int64_t y = 0; y < gy; ++y)
    for (int64_t x = 0; x < gx; ++x) {
      blockIdx = {static_cast<unsigned>(x), static_cast<unsigned>(y), 0};
      std::memset(smem_raw, 0xff, smem);  // NaN-ish garbage: an unwritten read shows
      for (Fiber& f : fibers) {
        f.done = false;
        f.op = Op::kNone;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, entry, 0);
      }
      while (true) {
        int running = 0;
        for (int n = 0; n < threads; ++n) {
          const int i = reversed ? threads - 1 - n : n;
          if (fibers[i].done) continue;
          current = i;
          threadIdx = {static_cast<unsigned>(i), 0, 0};
          swapcontext(&scheduler, &fibers[i].ctx);
          running += !fibers[i].done;
        }
        if (running == 0) break;
        if (running != threads) return "some threads finished while others wait at a collective";
        const Op op = fibers[0].op;
        for (const Fiber& f : fibers)
          if (f.op != op) return "threads of a block reached different collectives";
        if (op == Op::kShfl) {
          for (int w = 0; w < threads / 32; ++w) {
            Fiber* lane = &fibers[32 * w];
            for (int l = 0; l < 32; ++l)
              if (lane[l].lane_mask != lane[0].lane_mask) return "the lanes of a warp shuffled with different masks";
            for (int l = 0; l < 32; ++l) lane[l].result = lane[l ^ lane[l].lane_mask].value;
          }
        }
        for (Fiber& f : fibers) f.op = Op::kNone;
      }
    }
  return failure;
}
