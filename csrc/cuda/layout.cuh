// Element-wise layout kernels: pack, unpack, permute_rows and dequantize. One thread owns one 32-row block of one column:
// it reads or writes that block's `bits` words (consecutive threads = consecutive columns, so every word
// access is coalesced across the warp) and the block's 32 values. These ops run once per layer (loading,
// the large-batch gemm path), not per token, so simplicity wins over the last few percent of bandwidth.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kLayoutThreads = 128;       // columns per CTA
constexpr int kLayoutMaxGridBlocks = 8192;  // CTAs along K; larger K is covered by a grid-stride loop

struct DequantParams {
  const uint32_t* qweight;  // [k * bits / 32, n]
  const uint32_t* qzeros;   // [groups, n * bits / 32]
  const void* scales;       // [groups, n] of scale_type
  FloatType scale_type;
  const int32_t* g_idx;     // [k] or nullptr (then g = k / group_size)
  int group_size;           // -1: one group
  int groups;
  bool fragment_order;      // qweight in fragment order (core/fragment_order.h; 2- and 4-bit only)
  int64_t k, n;
};

// out[k, n] (row-major [K, N] of out_type) = scale * (q - zero). The caller checks the launch.
void launch_dequantize(const DequantParams& p, int bits, FloatType out_type, void* out, cudaStream_t stream);

// values int32 [k, n] (k a multiple of 32) <-> packed [k * bits / 32, n]. pack keeps the low `bits` bits of
// each value: range checking would need the values on the host, which the CUDA ops never wait for.
void launch_pack(const int32_t* values, uint32_t* packed, int64_t k, int64_t n, int bits, cudaStream_t stream);
void launch_unpack(const uint32_t* packed, int32_t* values, int64_t k, int64_t n, int bits, cudaStream_t stream);
// out row r of the unpacked [k, n] matrix = row perm[r] of packed's (perm entries clamped to [0, k)).
void launch_permute_rows(const uint32_t* packed, const int64_t* perm, uint32_t* out, int64_t k, int64_t n, int bits,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
