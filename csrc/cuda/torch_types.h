// Glue between ATen tensors and the ATen-free kernel headers of csrc/cuda.
//
// The CUDA sources include c10/cuda headers only, not ATen/cuda/CUDAContext.h: that one pulls in cuBLAS and
// cuSPARSE headers, which minimal CUDA toolkits (like the CPU-only build machine's) do not ship.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/layout.cuh"

namespace gptq_kernels {
namespace cuda {

inline FloatType float_type_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return FloatType::kHalf;
    case at::kBFloat16: return FloatType::kBFloat16;
    case at::kFloat: return FloatType::kFloat;
    default: TORCH_CHECK(false, "gptq_kernels: no CUDA kernel for element type ", t);
  }
}

// group_size as the kernels take it (an int): any group_size >= K means one group, like K itself.
inline int kernel_group_size(const core::QuantGeometry& geo) {
  return static_cast<int>(geo.group_size == -1 ? -1 : std::min(geo.group_size, geo.k));
}

// What the launch heuristics need to know about a device, read once per process (no synchronisation, so it is
// also safe during CUDA graph capture).
struct DeviceInfo {
  int multiprocessors;
  int major, minor;  // compute capability
};

inline const DeviceInfo& device_info(c10::DeviceIndex device) {
  static const std::vector<DeviceInfo> infos = [] {
    std::vector<DeviceInfo> all(c10::cuda::device_count());
    for (size_t i = 0; i < all.size(); ++i) {
      const int d = static_cast<int>(i);
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&all[i].multiprocessors, cudaDevAttrMultiProcessorCount, d));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&all[i].major, cudaDevAttrComputeCapabilityMajor, d));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&all[i].minor, cudaDevAttrComputeCapabilityMinor, d));
    }
    return all;
  }();
  return infos.at(device);
}

inline DequantParams dequant_params(const core::QuantGeometry& geo, const at::Tensor& qweight,
                                    const at::Tensor& qzeros, const at::Tensor& scales,
                                    const c10::optional<at::Tensor>& g_idx) {
  DequantParams p{};
  p.qweight = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  p.scales = scales.data_ptr();
  p.scale_type = float_type_of(scales.scalar_type());
  p.g_idx = g_idx.has_value() ? g_idx->data_ptr<int32_t>() : nullptr;
  p.group_size = kernel_group_size(geo);
  p.groups = static_cast<int>(geo.groups);
  p.k = geo.k;
  p.n = geo.n;
  return p;
}

}  // namespace cuda
}  // namespace gptq_kernels
