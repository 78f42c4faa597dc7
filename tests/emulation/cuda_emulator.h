// A CPU emulator for the package's CUDA kernels, so that their index maths, pipelines and edge cases are tested
// on machines without a GPU. The kernel sources compile unchanged as C++ with this header forced in first
// (g++ -x c++ -include cuda_emulator.h csrc/cuda/<file>.cu): GPTQ_LAUNCH, dynamic_shared_memory, cp.async,
// ldmatrix and mma.sync route here under GPTQ_KERNELS_EMULATION (csrc/cuda/common.cuh, gemm_mma_kernel.cuh).
//
// Model: every CUDA thread of a CTA is a fiber (ucontext) with its own stack; CTAs run one after another. A fiber
// runs until it reaches a synchronisation point and then yields:
//   * __syncthreads: released when every live thread of the CTA has arrived;
//   * warp collectives (__shfl_sync, __shfl_xor_sync, __all_sync, __any_sync, __ballot_sync, mma.sync,
//     ldmatrix): released when every lane named in the mask waits in the same collective; results are computed
//     (and ldmatrix reads shared memory) at release;
//   * cp.async: each copy lands when its group is waited for (the latest moment the hardware allows), or at
//     issue with eager_async_copies (the earliest), so a stage read before its wait, or refilled while still
//     being read, gives a wrong result in one of the two modes;
//   * wgmma (sm_90a): a warpgroup collective (the 4 warps of threads 128q..128q+127); the multiply reads its A
//     registers and its shared-memory B tile, and writes its accumulators, when a wait_group covers its group, or
//     at issue with eager_async_copies. In between, the emulator holds pointers to the registers, so an A fragment
//     or accumulator touched before the wait, or a tile refilled before it, gives a wrong result. B is located
//     from its matrix descriptor as the hardware does (K-major, 128-byte swizzle, the only layout modelled), in a
//     shared window where dynamic shared memory starts at kSharedWindowBase, which is not 1024-byte aligned.
// The scheduler always resumes the first runnable thread, first to last or (reverse_order) last to first, and
// releases a warp collective as soon as its lanes have arrived: each warp runs as far ahead of the next as the
// barriers allow, so a missing barrier between a write and another warp's read shows up in one of the orders. Any
// misuse (a lane missing from a collective, a barrier that can never release, too much shared memory) throws
// gptq_emulation::Error from the launch. Memory errors are left to AddressSanitizer: build with
// -fsanitize=address and allocate every buffer separately, and every global or shared access out of bounds is
// reported; dynamic shared memory is a fresh heap block of exactly the launch size, filled with 0xff bytes
// (NaN as fp16, bf16 and fp32) so a read of something never written shows.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The CUDA headers, included by a host compiler, define __shared__ as nothing. Here a __shared__ array is a
// static local of the kernel function: one copy shared by all fibers, which run one CTA at a time.
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define GPTQ_KERNELS_EMULATION 1

namespace gptq_emulation {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  bool reverse_order = false;       // run the threads of a CTA last to first between synchronisation points
  bool eager_async_copies = false;  // cp.async lands, and wgmma runs, at issue instead of at its wait
  size_t max_dynamic_shared = 227 * 1024;  // opt-in limit per CTA on sm_90 (cudaFuncSetAttribute)
};
inline Options& options() {
  static Options o;
  return o;
}

enum class MmaType { kHalf, kBFloat16 };

namespace detail {

enum class Wait { kRunnable, kBarrier, kCollective, kDone };
enum class Collective { kShfl, kShflXor, kAll, kAny, kBallot, kMma, kLdmatrix, kWgmma, kWgmmaCommit, kWgmmaWait };
// Collectives of a whole warpgroup rather than of a warp.
inline bool warpgroup_collective(Collective op) {
  return op == Collective::kWgmma || op == Collective::kWgmmaCommit || op == Collective::kWgmmaWait;
}

// Dynamic shared memory's first byte in the emulated shared window (what cvta.to.shared returns for it).
constexpr uint32_t kSharedWindowBase = 0x410;

// One wgmma of a warpgroup: its shape and operands, per thread of the warpgroup.
struct WgmmaOp {
  int n;
  MmaType type;
  uint64_t desc;
  float* d[128];
  const uint32_t* a[128];
};
struct WarpgroupState {
  std::vector<WgmmaOp> open;                    // issued since the last commit
  std::deque<std::vector<WgmmaOp>> committed;  // oldest first
};

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;  // src_bytes < bytes: the rest of dst is zero-filled
};

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 thread_idx;
  Wait wait = Wait::kRunnable;
  // The collective this fiber waits in, its operands and (after release) its result.
  Collective op;
  unsigned mask;
  uint32_t value;
  int lane_arg;
  uint32_t result;
  MmaType mma_type;
  uint32_t a[4], b[2];  // mma operands; a also receives ldmatrix's four registers
  float d[4];
  const unsigned char* row_address;  // ldmatrix: the 16-byte row this lane supplies
  float* wg_d;                       // wgmma: this thread's accumulators, A registers and the B descriptor
  const uint32_t* wg_a;
  uint64_t wg_desc;
  int wg_n;
  std::vector<AsyncCopy> uncommitted;
  std::deque<std::vector<AsyncCopy>> groups;  // committed, oldest first
};

inline void land(const AsyncCopy& c) {
  if (c.src_bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
}

inline float bits_to_float(uint16_t h, MmaType type) {
  if (type == MmaType::kHalf) {
    __half_raw raw;
    raw.x = h;
    return __half2float(__half(raw));
  }
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

// The CTA scheduler. One instance; launches do not nest.
class Runtime {
 public:
  static constexpr size_t kStackBytes = 256 * 1024;

  static Runtime& get() {
    static Runtime runtime;
    return runtime;
  }

  uint3 block_idx{0, 0, 0};
  dim3 grid_dim{1, 1, 1}, block_dim{1, 1, 1};
  std::map<const void*, int> max_dynamic_shared;  // kernel -> its cudaFuncAttributeMaxDynamicSharedMemorySize

  Fiber& self() { return fibers_[current_]; }
  unsigned char* dynamic_shared() { return dynamic_shared_.get(); }

  // The shared-window address of a pointer into dynamic shared memory, and back (with a bounds check).
  uint32_t shared_address(const void* p) const {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (dynamic_shared_ == nullptr || c < dynamic_shared_.get() || c > dynamic_shared_.get() + dynamic_bytes_) {
      throw Error("shared_address of a pointer outside the CTA's dynamic shared memory");
    }
    return kSharedWindowBase + static_cast<uint32_t>(c - dynamic_shared_.get());
  }
  const unsigned char* shared_at(uint32_t address, size_t bytes) const {
    if (address < kSharedWindowBase || address - kSharedWindowBase + bytes > dynamic_bytes_) {
      throw Error("wgmma reads shared address " + std::to_string(address) + " outside dynamic shared memory");
    }
    return dynamic_shared_.get() + (address - kSharedWindowBase);
  }

  // Suspends the calling fiber until the scheduler releases it.
  void yield(Wait wait) {
    Fiber& f = self();
    f.wait = wait;
    swapcontext(&f.context, &scheduler_);
    sync_builtins();  // the scheduler ran other threads: restore this one's threadIdx
  }

  void fail(const std::string& message) {
    if (error_.empty()) error_ = message;
  }

  void run(const void* kernel, dim3 grid, dim3 block, size_t dynamic_bytes, std::function<void()> body);

 private:
  Runtime() = default;
  void run_block(int threads);
  // A fresh context for fiber i. Not inlined: getcontext returns twice, like swapcontext.
  __attribute__((noinline)) void prepare(int i) {
    Fiber& f = fibers_[i];
    f.thread_idx = uint3{static_cast<unsigned>(i % block_dim.x), static_cast<unsigned>(i / block_dim.x % block_dim.y),
                         static_cast<unsigned>(i / (block_dim.x * block_dim.y))};
    f.wait = Wait::kRunnable;
    f.uncommitted.clear();
    f.groups.clear();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &scheduler_;
    makecontext(&f.context, &Runtime::trampoline, 0);
  }
  // Runs fiber i until it yields or finishes. Not inlined: swapcontext returns twice, and the caller's loop
  // variables must not live across it.
  __attribute__((noinline)) void resume(int i) {
    current_ = i;
    swapcontext(&scheduler_, &fibers_[i].context);
  }
  void release_collective(int warp, int threads, bool strict);
  void resolve(std::vector<Fiber*>& lanes, int warp);
  void release_warpgroup(int group, int threads, bool strict);
  void run_wgmma(const WgmmaOp& op);
  void sync_builtins();
  static void trampoline();

  std::vector<Fiber> fibers_;
  int current_ = 0;
  ucontext_t scheduler_;
  std::function<void()> body_;
  std::string error_;
  struct FreeAligned {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(16)); }
  };
  std::unique_ptr<unsigned char[], FreeAligned> dynamic_shared_;
  size_t dynamic_bytes_ = 0;
  std::vector<WarpgroupState> warpgroups_;
};

}  // namespace detail

inline unsigned char* dynamic_shared_memory() { return detail::Runtime::get().dynamic_shared(); }

// kernel<<<grid, block, dynamic_bytes>>>(args...), run to completion on the CPU.
template <typename... Params>
struct Launch {
  dim3 grid, block;
  size_t dynamic_bytes;
  void (*kernel)(Params...);

  template <typename... Args>
  void operator()(Args&&... args) const {
    // Converted to the parameter types once, as a launch copies its arguments; each thread gets the same values.
    const std::tuple<std::decay_t<Params>...> bound(std::forward<Args>(args)...);
    auto k = kernel;
    detail::Runtime::get().run(reinterpret_cast<const void*>(kernel), grid, block, dynamic_bytes,
                               [k, &bound] { std::apply(k, bound); });
  }
};
template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, size_t dynamic_bytes, void (*kernel)(Params...)) {
  return Launch<Params...>{grid, block, dynamic_bytes, kernel};
}

inline void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  const detail::AsyncCopy copy{dst, src, bytes, src_bytes};
  if (reinterpret_cast<uintptr_t>(dst) % static_cast<uintptr_t>(bytes) != 0 ||
      (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(bytes) != 0)) {
    throw Error("cp.async of " + std::to_string(bytes) + " bytes with a misaligned address");
  }
  if (options().eager_async_copies) {
    detail::land(copy);
  } else {
    detail::Runtime::get().self().uncommitted.push_back(copy);
  }
}
inline void cp_async_commit_group() {
  detail::Fiber& f = detail::Runtime::get().self();
  f.groups.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}
inline void cp_async_wait_group(int pending) {
  detail::Fiber& f = detail::Runtime::get().self();
  while (static_cast<int>(f.groups.size()) > pending) {
    for (const detail::AsyncCopy& c : f.groups.front()) detail::land(c);
    f.groups.pop_front();
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: d += A B for the warp's fragments.
inline void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  detail::Runtime& rt = detail::Runtime::get();
  detail::Fiber& f = rt.self();
  f.op = detail::Collective::kMma;
  f.mask = 0xffffffffu;
  f.mma_type = type;
  std::memcpy(f.a, a, sizeof f.a);
  f.b[0] = b0;
  f.b[1] = b1;
  std::memcpy(f.d, d, sizeof f.d);
  rt.yield(detail::Wait::kCollective);
  std::memcpy(d, rt.self().d, sizeof f.d);
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8i..8i+7 supply the addresses of the eight 16-byte rows of
// matrix i; register i of lane l receives the two elements of row l / 4 of matrix i at columns 2 (l % 4) and
// 2 (l % 4) + 1 (PTX ISA, "ldmatrix"). Shared memory is read when the whole warp has arrived.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) throw Error("ldmatrix with a row address not 16-byte aligned");
  detail::Runtime& rt = detail::Runtime::get();
  detail::Fiber& f = rt.self();
  f.op = detail::Collective::kLdmatrix;
  f.mask = 0xffffffffu;
  f.row_address = static_cast<const unsigned char*>(row);
  rt.yield(detail::Wait::kCollective);
  std::memcpy(r, rt.self().a, sizeof r);
}

// cvta.to.shared for a pointer into dynamic shared memory (the only shared memory a wgmma operand lives in here).
inline uint32_t shared_address(const void* p) { return detail::Runtime::get().shared_address(p); }

// wgmma.fence: orders register accesses around wgmmas on a GPU; here every wgmma reads its registers through
// pointers when it runs, so there is nothing to order.
inline void wgmma_fence() {}

namespace detail {
inline uint32_t collective(Collective op, unsigned mask, uint32_t value, int lane_arg);  // below
}  // namespace detail

// wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16} with A from registers: queued for the warpgroup (run now
// with eager_async_copies).
inline void wgmma_m64nNk16(MmaType type, int n, float* d, const uint32_t (&a)[4], uint64_t desc) {
  detail::Fiber& f = detail::Runtime::get().self();
  f.mma_type = type;
  f.wg_d = d;
  f.wg_a = a;
  f.wg_desc = desc;
  f.wg_n = n;
  detail::collective(detail::Collective::kWgmma, 0xffffffffu, 0, 0);
}
// wgmma.commit_group and wgmma.wait_group N (N at most 7).
inline void wgmma_commit_group() { detail::collective(detail::Collective::kWgmmaCommit, 0xffffffffu, 0, 0); }
inline void wgmma_wait_group(int pending) {
  detail::collective(detail::Collective::kWgmmaWait, 0xffffffffu, 0, pending);
}

namespace detail {

// Enters a collective: records the operands, waits for the release, returns the result.
inline uint32_t collective(Collective op, unsigned mask, uint32_t value, int lane_arg) {
  Runtime& rt = Runtime::get();
  Fiber& f = rt.self();
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.lane_arg = lane_arg;
  rt.yield(Wait::kCollective);
  return rt.self().result;
}

template <typename T>
uint32_t to_word(T v) {
  static_assert(sizeof(T) == 4, "the emulator shuffles 32-bit values only");
  uint32_t w;
  std::memcpy(&w, &v, 4);
  return w;
}
template <typename T>
T from_word(uint32_t w) {
  T v;
  std::memcpy(&v, &w, 4);
  return v;
}

inline void Runtime::trampoline() {
  Runtime& rt = get();
  rt.sync_builtins();
  try {
    rt.body_();
  } catch (const std::exception& e) {
    rt.fail(e.what());
  }
  rt.self().wait = Wait::kDone;  // returning resumes the scheduler (uc_link)
}

inline void Runtime::run(const void* kernel, dim3 grid, dim3 block, size_t dynamic_bytes, std::function<void()> body) {
  const long long threads = static_cast<long long>(block.x) * block.y * block.z;
  if (threads < 1 || threads > 1024 || block.z > 64) throw Error("invalid block size");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) throw Error("invalid grid size");
  if (dynamic_bytes > 48 * 1024) {
    const auto it = max_dynamic_shared.find(kernel);
    if (it == max_dynamic_shared.end() || static_cast<size_t>(it->second) < dynamic_bytes) {
      throw Error("launch with " + std::to_string(dynamic_bytes) +
                  " bytes of dynamic shared memory without raising the kernel's limit (cudaFuncSetAttribute)");
    }
  }
  if (dynamic_bytes > options().max_dynamic_shared) throw Error("too much dynamic shared memory");
  while (fibers_.size() < static_cast<size_t>(threads)) {
    fibers_.emplace_back();
    void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) throw std::bad_alloc();
    fibers_.back().stack = static_cast<char*>(stack);
  }
  grid_dim = grid;
  block_dim = block;
  body_ = std::move(body);
  error_.clear();
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        block_idx = uint3{x, y, z};
        dynamic_shared_.reset();
        dynamic_bytes_ = dynamic_bytes;
        if (dynamic_bytes > 0) {
          dynamic_shared_.reset(static_cast<unsigned char*>(::operator new[](dynamic_bytes, std::align_val_t(16))));
          std::memset(dynamic_shared_.get(), 0xff, dynamic_bytes);
        }
        run_block(static_cast<int>(threads));
        if (!error_.empty()) {
          throw Error(error_ + " (CTA " + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")");
        }
      }
    }
  }
  dynamic_shared_.reset();
}

// Always resumes the first runnable thread in the current order, and releases a warp collective the moment its
// last lane arrives: warp 0 runs as far ahead as its barriers allow before warp 1 starts (or the last warp first,
// in reverse order). That maximal skew between warps is what makes a missing barrier show.
inline void Runtime::run_block(int threads) {
  for (int i = 0; i < threads; ++i) prepare(i);
  warpgroups_.assign(static_cast<size_t>((threads + 127) / 128), WarpgroupState{});
  for (;;) {
    int next = -1;
    for (int j = 0; j < threads && next < 0; ++j) {
      const int i = options().reverse_order ? threads - 1 - j : j;
      if (fibers_[i].wait == Wait::kRunnable) next = i;
    }
    if (next >= 0) {
      resume(next);
      if (!error_.empty()) return;
      if (fibers_[next].wait == Wait::kCollective) {
        if (warpgroup_collective(fibers_[next].op)) {
          release_warpgroup(next / 128, threads, false);
        } else {
          release_collective(next / 32, threads, false);
        }
        if (!error_.empty()) return;
      }
      continue;
    }
    bool live = false, all_at_barrier = true;
    for (int i = 0; i < threads; ++i) {
      if (fibers_[i].wait == Wait::kDone) continue;
      live = true;
      if (fibers_[i].wait != Wait::kBarrier) all_at_barrier = false;
    }
    if (!live) {
      for (const WarpgroupState& wg : warpgroups_) {
        if (!wg.open.empty() || !wg.committed.empty()) fail("a wgmma is still in flight when the CTA exits");
      }
      return;
    }
    if (!all_at_barrier) {
      // A collective still waits although nothing else can run: report the lane it waits for.
      for (int warp = 0; warp * 32 < threads; ++warp) release_collective(warp, threads, true);
      for (int group = 0; group * 128 < threads; ++group) release_warpgroup(group, threads, true);
      fail("deadlock: some threads wait at __syncthreads while others wait in a warp collective");
      return;
    }
    for (int i = 0; i < threads; ++i) fibers_[i].wait = fibers_[i].wait == Wait::kDone ? Wait::kDone : Wait::kRunnable;
  }
}

// Releases the collective that lanes of `warp` wait in once every lane of its mask has arrived. With `strict`
// (nothing else can run), a lane of the mask that exited or waits elsewhere is an error: on a GPU the collective
// would hang or be undefined.
inline void Runtime::release_collective(int warp, int threads, bool strict) {
  Fiber* first = nullptr;
  for (int l = 0; l < 32 && warp * 32 + l < threads && first == nullptr; ++l) {
    if (fibers_[warp * 32 + l].wait == Wait::kCollective) first = &fibers_[warp * 32 + l];
  }
  if (first == nullptr || warpgroup_collective(first->op)) return;
  std::vector<Fiber*> lanes(32, nullptr);
  for (int l = 0; l < 32; ++l) {
    if ((first->mask >> l & 1u) == 0) continue;
    Fiber* f = warp * 32 + l < threads ? &fibers_[warp * 32 + l] : nullptr;
    if (f == nullptr || f->wait != Wait::kCollective || f->op != first->op || f->mask != first->mask) {
      if (strict || (f != nullptr && f->wait == Wait::kCollective)) {
        fail("warp " + std::to_string(warp) + ": lane " + std::to_string(l) +
             " is named in a collective's mask but does not take part in it");
      }
      return;
    }
    lanes[l] = f;
  }
  resolve(lanes, warp);
  for (Fiber* f : lanes) {
    if (f != nullptr) f->wait = Wait::kRunnable;
  }
}

inline void Runtime::resolve(std::vector<Fiber*>& lanes, int warp) {
  const Collective op = [&] {
    for (Fiber* f : lanes) {
      if (f != nullptr) return f->op;
    }
    return Collective::kAll;
  }();
  if (op == Collective::kMma) {
    // Fragment layouts of m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4;
    // in each 32-bit register the element with the lower column (A, D) or row (B) index is in the low half.
    float A[16][16], B[16][8], C[16][8];
    const MmaType type = lanes[0]->mma_type;
    for (int lane = 0; lane < 32; ++lane) {
      const Fiber& f = *lanes[lane];
      if (f.mma_type != type) {
        fail("warp " + std::to_string(warp) + ": lanes disagree on the mma's element type");
        return;
      }
      const int g = lane / 4, t = lane % 4;
      for (int r = 0; r < 4; ++r) {
        const int row = g + (r % 2) * 8, col = 2 * t + (r / 2) * 8;
        A[row][col] = bits_to_float(static_cast<uint16_t>(f.a[r] & 0xffffu), type);
        A[row][col + 1] = bits_to_float(static_cast<uint16_t>(f.a[r] >> 16), type);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + r * 8][g] = bits_to_float(static_cast<uint16_t>(f.b[r] & 0xffffu), type);
        B[2 * t + r * 8 + 1][g] = bits_to_float(static_cast<uint16_t>(f.b[r] >> 16), type);
      }
      for (int r = 0; r < 2; ++r) {
        C[g + r * 8][2 * t] = f.d[2 * r];
        C[g + r * 8][2 * t + 1] = f.d[2 * r + 1];
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int r = 0; r < 4; ++r) {
        const int row = g + (r / 2) * 8, col = 2 * t + r % 2;
        double sum = 0.0;  // the products are exact in fp32; the hardware's summation order is unspecified
        for (int kk = 0; kk < 16; ++kk) sum += static_cast<double>(A[row][kk]) * B[kk][col];
        lanes[lane]->d[r] = static_cast<float>(sum + C[row][col]);
      }
    }
    return;
  }
  if (op == Collective::kLdmatrix) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        std::memcpy(&lanes[lane]->a[i], lanes[8 * i + lane / 4]->row_address + 4 * (lane % 4), 4);
      }
    }
    return;
  }
  uint32_t vote_all = 1, vote_any = 0, ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (lanes[l] == nullptr) continue;
    const bool p = lanes[l]->value != 0;
    vote_all &= p ? 1u : 0u;
    vote_any |= p ? 1u : 0u;
    ballot |= (p ? 1u : 0u) << l;
  }
  for (int l = 0; l < 32; ++l) {
    Fiber* f = lanes[l];
    if (f == nullptr) continue;
    switch (op) {
      case Collective::kShfl:
      case Collective::kShflXor: {
        const int src = op == Collective::kShfl ? (f->lane_arg & 31) : (l ^ (f->lane_arg & 31));
        if (lanes[src] == nullptr) {
          fail("warp " + std::to_string(warp) + ": lane " + std::to_string(l) + " reads lane " +
               std::to_string(src) + ", which is not in the shuffle's mask");
          return;
        }
        f->result = lanes[src]->value;
        break;
      }
      case Collective::kAll: f->result = vote_all; break;
      case Collective::kAny: f->result = vote_any; break;
      default: f->result = ballot;
    }
  }
}

// Releases the warpgroup collective that the 128 threads of `group` wait in once all have arrived (with `strict`,
// a thread missing from it is an error), and runs what it asks for.
inline void Runtime::release_warpgroup(int group, int threads, bool strict) {
  if ((group + 1) * 128 > threads) {
    for (int i = group * 128; i < threads; ++i) {
      if (fibers_[i].wait == Wait::kCollective && warpgroup_collective(fibers_[i].op)) {
        fail("a wgmma instruction in a CTA whose threads do not fill whole warpgroups");
        return;
      }
    }
    return;
  }
  Fiber* const first = &fibers_[group * 128];
  bool any = false, all = true;
  for (int i = 0; i < 128; ++i) {
    const Fiber& f = fibers_[group * 128 + i];
    const bool here = f.wait == Wait::kCollective && warpgroup_collective(f.op);
    any = any || here;
    all = all && here && f.op == first->op;
  }
  if (!all) {
    if (strict && any) {
      fail("warpgroup " + std::to_string(group) + ": a thread does not take part in the warpgroup's wgmma instruction");
    }
    return;
  }
  WarpgroupState& state = warpgroups_[static_cast<size_t>(group)];
  if (first->op == Collective::kWgmma) {
    WgmmaOp op;
    op.n = first->wg_n;
    op.type = first->mma_type;
    op.desc = first->wg_desc;
    for (int i = 0; i < 128; ++i) {
      const Fiber& f = fibers_[group * 128 + i];
      if (f.wg_n != op.n || f.mma_type != op.type || f.wg_desc != op.desc) {
        fail("warpgroup " + std::to_string(group) + ": threads disagree on a wgmma's shape, type or descriptor");
        return;
      }
      op.d[i] = f.wg_d;
      op.a[i] = f.wg_a;
    }
    if (options().eager_async_copies) {
      run_wgmma(op);
    } else {
      state.open.push_back(op);
    }
  } else if (first->op == Collective::kWgmmaCommit) {
    state.committed.push_back(std::move(state.open));
    state.open.clear();
  } else {
    while (static_cast<int>(state.committed.size()) > first->lane_arg) {
      for (const WgmmaOp& op : state.committed.front()) run_wgmma(op);
      state.committed.pop_front();
    }
  }
  for (int i = 0; i < 128; ++i) fibers_[group * 128 + i].wait = Wait::kRunnable;
}

// D (64 x n) += A (64 x 16) B (16 x n). A: thread 32 w + 4 g + t holds rows 16 w + g (+ 8) in the m16n8k16 A
// layout (registers 0-3: row g cols 2t, 2t+1; row g+8; row g cols 2t+8, 2t+9; row g+8 cols 2t+8, 2t+9). D: its
// d[4i + 2h + e] is row 16 w + g + 8 h, column 8 i + 2 t + e. B from the descriptor (PTX ISA, "Matrix Descriptor
// Format"): start address, leading byte offset, stride byte offset (bits 0-13, 16-29, 32-45, in 16-byte units),
// base offset (bits 49-51) and swizzle mode (bits 62-63, 1 = 128 bytes). K-major, 128-byte swizzle: column n of
// B (its 16 values of K) starts at start + (n / 8) SBO + (n % 8) 128, and the swizzle XORs address bits 4-6 with
// bits 7-9 of the shared address.
inline void Runtime::run_wgmma(const WgmmaOp& op) {
  const uint32_t start = static_cast<uint32_t>(op.desc & 0x3fffu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((op.desc >> 32) & 0x3fffu) << 4;
  if ((op.desc >> 62) != 1 || ((op.desc >> 49) & 7u) != 0) {
    fail("the emulator models wgmma B tiles in the 128-byte swizzle with base offset 0 only");
    return;
  }
  if (start % 128 + 32 > 128) {
    fail("a wgmma k16 slice of a 128-byte swizzled B tile must lie within its 128-byte row");
    return;
  }
  if (op.n % 8 != 0 || op.n < 8 || op.n > 256) {
    fail("invalid wgmma N");
    return;
  }
  float A[64][16];
  for (int i = 0; i < 128; ++i) {
    const int w = i / 32, g = i % 32 / 4, t = i % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * w + g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
      A[row][col] = bits_to_float(static_cast<uint16_t>(op.a[i][r] & 0xffffu), op.type);
      A[row][col + 1] = bits_to_float(static_cast<uint16_t>(op.a[i][r] >> 16), op.type);
    }
  }
  std::vector<float> B(static_cast<size_t>(16 * op.n));  // [k][n]
  for (int n = 0; n < op.n; ++n) {
    for (int k = 0; k < 16; ++k) {
      const uint32_t logical = start + static_cast<uint32_t>(n / 8) * sbo + static_cast<uint32_t>(n % 8) * 128 +
                               static_cast<uint32_t>(2 * k);
      const uint32_t physical = logical ^ (((logical >> 7) & 7u) << 4);
      uint16_t bits;
      std::memcpy(&bits, shared_at(physical, 2), 2);
      B[static_cast<size_t>(k * op.n + n)] = bits_to_float(bits, op.type);
    }
  }
  for (int i = 0; i < 128; ++i) {
    const int w = i / 32, g = i % 32 / 4, t = i % 4;
    for (int c = 0; c < op.n / 8; ++c) {
      for (int h = 0; h < 2; ++h) {
        for (int e = 0; e < 2; ++e) {
          const int row = 16 * w + g + 8 * h, col = 8 * c + 2 * t + e;
          double sum = 0.0;  // exact products; the hardware's summation order is unspecified
          for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * B[static_cast<size_t>(k * op.n + col)];
          float& d = op.d[i][4 * c + 2 * h + e];
          d = static_cast<float>(sum + d);
        }
      }
    }
  }
}

}  // namespace detail
}  // namespace gptq_emulation

// The device built-ins the kernels use, in the global namespace as on a GPU. threadIdx and friends are plain
// variables that the scheduler sets whenever a fiber resumes.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline void gptq_emulation::detail::Runtime::sync_builtins() {
  ::threadIdx = self().thread_idx;
  ::blockIdx = block_idx;
  ::blockDim = block_dim;
  ::gridDim = grid_dim;
}

// The typed overload of the runtime call (cuda_runtime.h declares it for nvcc only); the C function itself is
// defined by the program that links the kernels (harness.cpp).
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

inline void __syncthreads() { gptq_emulation::detail::Runtime::get().yield(gptq_emulation::detail::Wait::kBarrier); }

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  if (width != 32) throw gptq_emulation::Error("the emulator supports full-warp shuffles only");
  using namespace gptq_emulation::detail;
  return from_word<T>(collective(Collective::kShfl, mask, to_word(var), src_lane));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  if (width != 32) throw gptq_emulation::Error("the emulator supports full-warp shuffles only");
  using namespace gptq_emulation::detail;
  return from_word<T>(collective(Collective::kShflXor, mask, to_word(var), lane_mask));
}
inline int __all_sync(unsigned mask, int predicate) {
  using namespace gptq_emulation::detail;
  return static_cast<int>(collective(Collective::kAll, mask, predicate != 0, 0));
}
inline int __any_sync(unsigned mask, int predicate) {
  using namespace gptq_emulation::detail;
  return static_cast<int>(collective(Collective::kAny, mask, predicate != 0, 0));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using namespace gptq_emulation::detail;
  return collective(Collective::kBallot, mask, predicate != 0, 0);
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
// PRMT in its default mode: byte i of the result is byte (selector nibble i & 7) of the 8 bytes {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned selector) {
  const uint64_t bytes = static_cast<uint64_t>(y) << 32 | x;
  unsigned result = 0;
  for (int i = 0; i < 4; ++i) {
    result |= static_cast<unsigned>(bytes >> (8 * ((selector >> (4 * i)) & 7)) & 0xffu) << (8 * i);
  }
  return result;
}
// SHF.R: the 64-bit value hi:lo shifted right by shift mod 32, low word.
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>((static_cast<uint64_t>(hi) << 32 | lo) >> (shift & 31));
}
// HFMA2 / HFMA2.BF16 (declared by the CUDA headers for nvcc only): a * b + c on each half, rounded once. The
// product of two 16-bit floats is exact in double; the sum, rounded to double and then to 16 bits, can differ
// from a single rounding only when the operands are some 2^30 apart in magnitude.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  auto one = [](__half x, __half y, __half z) {
    return __double2half(static_cast<double>(__half2float(x)) * __half2float(y) + __half2float(z));
  };
  return __halves2half2(one(a.x, b.x, c.x), one(a.y, b.y, c.y));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  auto one = [](__nv_bfloat16 x, __nv_bfloat16 y, __nv_bfloat16 z) {
    return __double2bfloat16(static_cast<double>(__bfloat162float(x)) * __bfloat162float(y) + __bfloat162float(z));
  };
  return __halves2bfloat162(one(a.x, b.x, c.x), one(a.y, b.y, c.y));
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
