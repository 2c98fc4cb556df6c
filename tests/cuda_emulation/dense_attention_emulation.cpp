// dense_attention's CUDA kernels run on the CPU: every block of one planned launch in turn, its
// threads as fibers (ucontext) that run until their next warp- or block-wide operation
// (ldmatrix, mma.sync, a shuffle, __syncthreads), which the emulator then runs for every warp
// at once, with the fragment layouts of the PTX ISA, failing on an ldmatrix phase whose rows
// share a bank. The device code is the kernel header as it is; only the PTX wrappers
// (dense_attention/dense_attention_ptx.cuh here) and the CUDA built-ins (common/cuda_utils.h
// here) are host stand-ins. For tests/test_cuda_emulation.py.
#include <ucontext.h>

#include <cstdlib>
#include <type_traits>
#include <vector>

#include "dense_attention/dense_attention_kernels.cuh"

namespace srf::dense_attention {

alignas(16) unsigned char smem_raw[256 * 1024];

namespace {
using Kernel = void (*)(Params);
const Kernel kKernels[] = {&fwd_kernel<__half, 64>, &fwd_kernel<__half, 128>,
                           &fwd_kernel<__nv_bfloat16, 64>, &fwd_kernel<__nv_bfloat16, 128>};
static_assert(sizeof(kKernels) / sizeof(kKernels[0]) == sizeof(kKernelNames) / sizeof(char*));

struct Copy {
  uint32_t dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  emu::Post post{};
  std::vector<std::vector<Copy>> groups;  // committed, oldest first
  std::vector<Copy> open;
};

ucontext_t scheduler;
std::vector<Fiber> fibers;
int current = 0;
bool early = false;
Kernel kernel = nullptr;
Params params;
const char* failure = nullptr;

void land(const Copy& c) {
  if (c.valid)
    std::memcpy(smem_raw + c.dst, c.src, 16);
  else
    std::memset(smem_raw + c.dst, 0, 16);
}

void entry() {
  kernel(params);
  fibers[current].done = true;
  swapcontext(&fibers[current].ctx, &scheduler);
}

uint32_t lane_pair(const uint16_t* row, int col) { return row[col] | (static_cast<uint32_t>(row[col + 1]) << 16); }

void run_warp_op(int w) {
  Fiber* lane = &fibers[32 * w];
  const emu::Op op = lane[0].post.op;
  for (int l = 0; l < 32; ++l)
    if (lane[l].post.op != op) failure = "the lanes of a warp reached different operations";
  if (op == emu::Op::kShfl) {
    for (int l = 0; l < 32; ++l) lane[l].post.result = lane[l ^ lane[l].post.lane_mask].post.value;
  } else if (op == emu::Op::kLdmatrix || op == emu::Op::kLdmatrixTrans) {
    uint32_t out[32][4];
    for (int j = 0; j < 4; ++j) {
      // One matrix is one shared-memory phase: its 8 rows of 16 bytes must cover the 32 banks.
      const uint16_t* rows[8];
      unsigned bank_groups = 0;
      for (int r = 0; r < 8; ++r) {
        const uint32_t addr = lane[8 * j + r].post.addr;
        if (addr % 16 != 0) failure = "ldmatrix row address not 16-byte aligned";
        bank_groups |= 1u << (addr / 16 % 8);
        rows[r] = reinterpret_cast<const uint16_t*>(smem_raw + addr);
      }
      if (bank_groups != 0xffu) failure = "an ldmatrix phase with a shared-memory bank conflict";
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        out[l][j] = op == emu::Op::kLdmatrix
                        ? lane_pair(rows[g], 2 * t)
                        : (rows[2 * t][g] | (static_cast<uint32_t>(rows[2 * t + 1][g]) << 16));
      }
    }
    for (int l = 0; l < 32; ++l) std::memcpy(lane[l].post.out, out[l], sizeof out[l]);
  } else if (op == emu::Op::kMma) {
    float A[16][16], B[16][8], C[16][8];
    const bool bf16 = lane[0].post.bf16;
    auto lo = [&](uint32_t x) { return bits_float(static_cast<uint16_t>(x & 0xffff), bf16); };
    auto hi = [&](uint32_t x) { return bits_float(static_cast<uint16_t>(x >> 16), bf16); };
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      const emu::Post& p = lane[l].post;
      const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int i = 0; i < 4; ++i) {
        A[ar[i]][ac[i]] = lo(p.a[i]);
        A[ar[i]][ac[i] + 1] = hi(p.a[i]);
      }
      B[2 * t][g] = lo(p.b0);
      B[2 * t + 1][g] = hi(p.b0);
      B[2 * t + 8][g] = lo(p.b1);
      B[2 * t + 9][g] = hi(p.b1);
      C[g][2 * t] = p.c[0];
      C[g][2 * t + 1] = p.c[1];
      C[g + 8][2 * t] = p.c[2];
      C[g + 8][2 * t + 1] = p.c[3];
    }
    float D[16][8];
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        float acc = C[m][n];
        for (int k = 0; k < 16; ++k) acc += A[m][k] * B[k][n];
        D[m][n] = acc;
      }
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      float* c = lane[l].post.c;
      c[0] = D[g][2 * t];
      c[1] = D[g][2 * t + 1];
      c[2] = D[g + 8][2 * t];
      c[3] = D[g + 8][2 * t + 1];
    }
  }
}
}  // namespace

namespace emu {
Post& post() { return fibers[current].post; }
void collective() { swapcontext(&fibers[current].ctx, &scheduler); }
void cp_async(uint32_t dst, const void* src, bool valid) {
  if (dst % 16 != 0) failure = "cp.async destination not 16-byte aligned";
  if (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0) failure = "cp.async source not 16-byte aligned";
  if (early)
    land(Copy{dst, src, valid});
  else
    fibers[current].open.push_back(Copy{dst, src, valid});
}
void commit() {
  fibers[current].groups.push_back(std::move(fibers[current].open));
  fibers[current].open.clear();
}
void wait(int pending) {
  auto& groups = fibers[current].groups;
  while (static_cast<int>(groups.size()) > pending) {
    for (const Copy& c : groups.front()) land(c);
    groups.erase(groups.begin());
  }
}
}  // namespace emu
}  // namespace srf::dense_attention

using namespace srf::dense_attention;

float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  emu::Post& p = emu::post();
  p.op = emu::Op::kShfl;
  p.value = value;
  p.lane_mask = lane_mask;
  emu::collective();
  return emu::post().result;
}
void __syncthreads() {
  emu::post().op = emu::Op::kSync;
  emu::collective();
}

// Runs one planned launch; nullptr when it ran, else what went wrong. early_copies: cp.async
// lands at issue instead of at the wait.
extern "C" const char* emulate_launch(const void* raw, int k, int64_t gx, int64_t gy, int64_t gz, int threads,
                                      int smem, int early_copies) {
  params = *static_cast<const Params*>(raw);
  kernel = kKernels[k];
  early = early_copies != 0;
  failure = nullptr;
  if (threads % 32 != 0 || smem > static_cast<int>(sizeof smem_raw)) return "bad launch";
  fibers.assign(threads, Fiber{});
  gridDim = {static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)};
  blockDim = {static_cast<unsigned>(threads), 1, 1};
  for (int64_t z = 0; z < gz; ++z)
    for (int64_t y = 0; y < gy; ++y)
      for (int64_t x = 0; x < gx; ++x) {
        blockIdx = {static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)};
        std::memset(smem_raw, 0xff, smem);  // NaN-ish garbage: an unwritten read shows
        for (int i = 0; i < threads; ++i) {
          Fiber& f = fibers[i];
          f = Fiber{};
          f.stack.resize(1 << 18);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, entry, 0);
        }
        while (true) {
          int running = 0;
          for (int i = 0; i < threads; ++i) {
            if (fibers[i].done) continue;
            current = i;
            threadIdx = {static_cast<unsigned>(i), 0, 0};
            swapcontext(&scheduler, &fibers[i].ctx);
            running += !fibers[i].done;
          }
          if (running == 0) break;
          if (running != threads) return "some threads finished while others wait at a barrier";
          const emu::Op op = fibers[0].post.op;
          for (int i = 0; i < threads; ++i)
            if ((fibers[i].post.op == emu::Op::kSync) != (op == emu::Op::kSync))
              return "threads of a block reached different barriers";
          if (op != emu::Op::kSync)
            for (int w = 0; w < threads / 32; ++w) run_warp_op(w);
          if (failure) return failure;
        }
        for (const Fiber& f : fibers) {  // (empty groups may stay pending)
          bool pending = !f.open.empty();
          for (const auto& g : f.groups) pending = pending || !g.empty();
          if (pending) return "cp.async copies left pending at exit";
        }
      }
  return failure;
}
