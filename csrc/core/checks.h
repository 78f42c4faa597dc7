// Input validation shared by every op and every device: each message names the op, the argument,
// what it got and what it expected, so a user can fix the call without reading the kernel.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace gptq_kernels {
namespace core {

// The shape of one quantized weight, derived from (and checked against) its packed tensors.
struct QuantGeometry {
  int64_t k;           // input features (rows of the dequantized [K, N] matrix)
  int64_t n;           // output features
  int64_t groups;      // G = ceil(K / group_size), or 1 when group_size == -1
  int64_t bits;
  int64_t group_size;  // -1 means one group per output channel
};

void check_bits(const char* op, int64_t bits);
void check_group_size(const char* op, int64_t group_size);

// qweight [K*bits/32, N] int32, qzeros [G, N*bits/32] int32, scales [G, N] float, g_idx [K] int32,
// all contiguous and on the same device. Does not read tensor values (safe on any device).
QuantGeometry check_quantized_weight(const char* op, const at::Tensor& qweight, const at::Tensor& qzeros,
                                     const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                                     int64_t bits, int64_t group_size);

// x [..., K] of float16/bfloat16/float32 on the weight's device; bias [N] of a float type.
void check_activations(const char* op, const at::Tensor& x, const QuantGeometry& geometry,
                       const at::Tensor& qweight);
void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const QuantGeometry& geometry,
                const at::Tensor& qweight);

// pack's values: int32 [K, N] with K a multiple of 32; unpack's input: int32 [K*bits/32, N]. Both also check
// bits. They do not read values (the CPU pack range-checks them itself).
void check_pack_values(const char* op, const at::Tensor& values, int64_t bits);
void check_packed(const char* op, const at::Tensor& packed, int64_t bits);

// permute_rows' arguments: packed as check_packed, perm int64 [K] (K = packed.size(0) / bits * 32) on
// packed's device. Does not read values; check_permutation_values does, for host memory (CPU op).
// bits has a fragment order (core/fragment_order.h): 2 or 4.
void check_fragment_order_bits(const char* op, int64_t bits);
void check_permute_rows_args(const char* op, const at::Tensor& packed, const at::Tensor& perm, int64_t bits);
void check_permutation_values(const char* op, const at::Tensor& perm);

// gptq_block's arguments: weight [rows, B] and hinv [B, B] float32, scale and zero both given ([rows, B]
// float32) or both absent (then group_size > 0 and column_offset a multiple of it), all on weight's device.
// Returns true when the op fits the grids itself (scale and zero absent).
bool check_gptq_block_args(const char* op, const at::Tensor& weight, const at::Tensor& hinv, int64_t bits,
                           int64_t group_size, int64_t column_offset, const c10::optional<at::Tensor>& scale,
                           const c10::optional<at::Tensor>& zero);

// Reads g_idx and checks every entry is a valid group index. Host memory only (CPU ops).
void check_group_index_values(const char* op, const at::Tensor& g_idx, int64_t groups);

}  // namespace core
}  // namespace gptq_kernels
