// Host stand-ins for csrc/dense_attention/dense_attention_ptx.cuh (which they shadow by coming
// first on the include path), for dense_attention_emulation.cpp: the per-thread operations run
// in the calling thread; the warp-wide ones (ldmatrix, mma.sync) post the thread's operands
// and yield to the emulator, which runs them for all 32 lanes of the warp at once with the PTX
// ISA's fragment layouts. cp.async copies are queued per thread and land at the wait (or at
// issue: Emu::early_copies), both legal schedules.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/cuda_utils.h"

namespace srf::dense_attention {

extern unsigned char smem_raw[];

namespace emu {
enum class Op { kSync, kShfl, kLdmatrix, kLdmatrixTrans, kMma };
// What a thread hands to the emulator at a warp- or block-wide operation.
struct Post {
  Op op;
  uint32_t addr;        // ldmatrix: this lane's row address (bytes into shared memory)
  uint32_t* out;        // ldmatrix: the lane's 4 registers
  float value, result;  // shuffle
  int lane_mask;
  float* c;             // mma: accumulators, A fragment, B fragment
  const uint32_t* a;
  uint32_t b0, b1;
  bool bf16;
};
Post& post();       // the calling thread's slot
void collective();  // yields until the emulator has run the posted operation
void cp_async(uint32_t dst, const void* src, bool valid);
void commit();
void wait(int pending);
}  // namespace emu

inline float neg_inf() { return -INFINITY; }
inline uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - smem_raw);
}
inline void cp_async16(uint32_t dst, const void* src, bool valid) { emu::cp_async(dst, src, valid); }
inline void cp_async_commit() { emu::commit(); }
template <int N>
inline void cp_async_wait() { emu::wait(N); }

inline void ldmatrix_post(emu::Op op, uint32_t addr, uint32_t (&r)[4]) {
  emu::Post& p = emu::post();
  p.op = op;
  p.addr = addr;
  p.out = r;
  emu::collective();
}
inline void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) { ldmatrix_post(emu::Op::kLdmatrix, addr, r); }
inline void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  ldmatrix_post(emu::Op::kLdmatrixTrans, addr, r);
}
inline float fast_exp2(float x) { return std::exp2(x); }

inline uint16_t bf16_bits(float x) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline uint16_t half_bits(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
inline float bits_float(uint16_t b, bool bf16) {
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}

template <typename T>
inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::Post& p = emu::post();
  p.op = emu::Op::kMma;
  p.c = c;
  p.a = a;
  p.b0 = b0;
  p.b1 = b1;
  p.bf16 = std::is_same_v<T, __nv_bfloat16>;
  emu::collective();
}

template <typename T>
inline uint32_t pack(float lo, float hi) {
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const uint32_t l = bf16 ? bf16_bits(lo) : half_bits(lo), h = bf16 ? bf16_bits(hi) : half_bits(hi);
  return l | (h << 16);
}

}  // namespace srf::dense_attention
