// Command-line driver of the emulated CUDA kernels (cuda_emulator.h), for tests/test_cuda_emulated.py.
//
//   harness JOB_DIR
//
// JOB_DIR/job.txt holds one "key value" per line (op, shapes, dtypes, emulator options); every array is a raw
// little-endian file JOB_DIR/<name>.bin. The harness loads each array into its own heap block of exactly its
// size (so AddressSanitizer catches any access past it), runs the op through the same launchers and plans as
// the CUDA ops (csrc/cuda/gemm_fused.cu, layout_kernels.cu, gptq_block_kernel.cu, bcq_fused.cu), and writes the
// outputs to JOB_DIR/<name>.bin;
// the plan of a gemm goes to JOB_DIR/plan.txt. Errors go to stderr with exit status 1.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/bcq.cuh"
#include "cuda/gemm_plan.cuh"
#include "cuda/gptq_block.cuh"
#include "cuda/layout.cuh"

using namespace gptq_kernels::cuda;

std::vector<float> run_selftest(const std::string& name);  // selftest_kernels.cu

// The two runtime calls the launchers make, answered as a GPU with sm_90's limits would.
extern "C" cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || static_cast<size_t>(value) > gptq_emulation::options().max_dynamic_shared) {
    return cudaErrorInvalidValue;
  }
  gptq_emulation::detail::Runtime::get().max_dynamic_shared[func] = value;
  return cudaSuccess;
}
extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }

namespace {

struct Buffer {
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(16)); }
  };
  std::unique_ptr<unsigned char[], Free> data;
  size_t bytes = 0;

  explicit Buffer(size_t n = 0) : bytes(n) {
    if (n > 0) data.reset(static_cast<unsigned char*>(::operator new[](n, std::align_val_t(16))));
  }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data.get());
  }
};

class Job {
 public:
  explicit Job(std::string dir) : dir_(std::move(dir)) {
    std::ifstream in(dir_ + "/job.txt");
    if (!in) throw std::runtime_error("cannot read " + dir_ + "/job.txt");
    std::string key, value;
    while (in >> key >> value) values_[key] = value;
  }
  std::string str(const std::string& key, const std::string& fallback = "") const {
    const auto it = values_.find(key);
    if (it != values_.end()) return it->second;
    if (!fallback.empty()) return fallback;
    throw std::runtime_error("job.txt has no " + key);
  }
  int64_t num(const std::string& key) const { return std::stoll(str(key)); }
  int64_t num(const std::string& key, int64_t fallback) const {
    return values_.count(key) ? std::stoll(values_.at(key)) : fallback;
  }
  bool has_array(const std::string& name) const { return std::ifstream(path(name)).good(); }
  Buffer load(const std::string& name) const {
    std::ifstream in(path(name), std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error("missing array " + name);
    Buffer b(static_cast<size_t>(in.tellg()));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(b.data.get()), static_cast<std::streamsize>(b.bytes));
    return b;
  }
  void save(const std::string& name, const Buffer& b) const {
    std::ofstream out(path(name), std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data.get()), static_cast<std::streamsize>(b.bytes));
  }
  void save_text(const std::string& name, const std::string& text) const { std::ofstream(dir_ + "/" + name) << text; }

 private:
  std::string path(const std::string& name) const { return dir_ + "/" + name + ".bin"; }
  std::string dir_;
  std::map<std::string, std::string> values_;
};

FloatType float_type(const std::string& name) {
  if (name == "half") return FloatType::kHalf;
  if (name == "bfloat16") return FloatType::kBFloat16;
  if (name == "float") return FloatType::kFloat;
  throw std::runtime_error("unknown float type " + name);
}
size_t float_bytes(FloatType t) { return t == FloatType::kFloat ? 4 : 2; }

Buffer poisoned(size_t bytes) {
  Buffer b(bytes);
  std::memset(b.data.get(), 0xff, bytes);  // NaN in every float format: an element never written shows
  return b;
}

// The arrays both fused gemm ops take besides their weights: x, bias, and the poisoned output and split-K workspace.
struct FusedArrays {
  Buffer x, bias, y, workspace;
  FusedArrays(const Job& job, FloatType act, int64_t splits) : x(job.load("x")) {
    const int64_t mn = job.num("m") * job.num("n");
    if (job.has_array("bias")) bias = job.load("bias");
    y = poisoned(static_cast<size_t>(mn) * float_bytes(act));
    if (splits > 1) workspace = poisoned(static_cast<size_t>(splits * mn) * 4);
  }
};

// The fields FusedGemmParams and BcqGemvParams share: x, the shapes, the output, the bias and the workspace.
template <typename Params>
void fill_shared_fields(Params& p, const Job& job, FusedArrays& a, int64_t blocks_per_cta) {
  p.x = a.x.data.get();
  p.ldx = job.num("ldx", job.num("k"));
  p.m = static_cast<int>(job.num("m"));
  p.k = static_cast<int>(job.num("k"));
  p.n = static_cast<int>(job.num("n"));
  p.blocks_per_cta = static_cast<int>(blocks_per_cta);
  p.y = a.y.data.get();
  p.bias = a.bias.bytes > 0 ? a.bias.data.get() : nullptr;
  p.bias_type = float_type(job.str("bias_type", "float"));
  p.workspace = a.workspace.as<float>();
}

// The quantized weight of a GPTQ op (qweight, qzeros, scales, optional g_idx) and its grouping.
struct WeightArrays {
  Buffer qweight, qzeros, scales, g_idx;
  explicit WeightArrays(const Job& job)
      : qweight(job.load("qweight")), qzeros(job.load("qzeros")), scales(job.load("scales")) {
    if (job.has_array("g_idx")) g_idx = job.load("g_idx");
  }
};

// The weight fields FusedGemmParams and DequantParams share.
template <typename Params>
void fill_weight_fields(Params& p, const Job& job, const WeightArrays& w) {
  p.qweight = w.qweight.as<uint32_t>();
  p.qzeros = w.qzeros.as<uint32_t>();
  p.scales = w.scales.data.get();
  p.scale_type = float_type(job.str("scale_type"));
  p.g_idx = w.g_idx.bytes > 0 ? w.g_idx.as<int32_t>() : nullptr;
  p.group_size = static_cast<int>(job.num("group_size"));
  p.groups = static_cast<int>(job.num("groups"));
  p.fragment_order = job.num("fragment_order", 0) != 0;
}

const char* path_name(GemmPath path) {
  switch (path) {
    case GemmPath::kGemv: return "gemv";
    case GemmPath::kGemvTensorCore: return "gemv_tc";
    case GemmPath::kMma: return "mma";
    case GemmPath::kWgmma: return "wgmma";
    default: return "dequantize_then_gemm";
  }
}

void run_gemm(const Job& job) {
  const int64_t m = job.num("m"), k = job.num("k"), n = job.num("n"), bits = job.num("bits");
  const FloatType act = float_type(job.str("act"));
  GemmProblem problem{};
  problem.m = m;
  problem.k = k;
  problem.n = n;
  problem.half_activations = true;
  problem.weight_aligned = true;
  problem.x_aligned = job.num("x_aligned", 1) != 0;
  problem.mma_available = job.num("mma", 1) != 0;
  problem.sms = job.num("sms");
  problem.mma_min_rows = job.num("mma_min_rows", kAutoMmaMinRows);
  problem.bits = static_cast<int>(bits);
  problem.fragment_order = job.num("fragment_order", 0) != 0;
  problem.has_g_idx = job.has_array("g_idx");
  problem.group_size = job.num("group_size");
  problem.scales_aligned = true;  // every array is its own 16-byte aligned heap block
  problem.tensor_core_gemv = job.num("gemv_tc", 1) != 0;
  problem.wgmma_available = job.num("wgmma", 0) != 0;
  const GemmPlan plan = plan_gemm(problem);
  std::ostringstream text;
  text << "path " << path_name(plan.path) << "\nsplits " << plan.splits << "\nblocks_per_cta " << plan.blocks_per_cta
       << "\nrows_per_cta " << plan.rows_per_cta << "\nmma_tiles " << plan.mma_tiles
       << "\nwgmma_tile_rows " << plan.wgmma_tile_rows << "\ngrid " << plan.grid.x
       << "," << plan.grid.y << "," << plan.grid.z << "\n";
  job.save_text("plan.txt", text.str());
  if (plan.path == GemmPath::kDequantizeThenGemm) return;

  const WeightArrays weight(job);
  FusedArrays arrays(job, act, plan.splits);
  FusedGemmParams p{};
  fill_shared_fields(p, job, arrays, plan.blocks_per_cta);
  fill_weight_fields(p, job, weight);
  const ActType type = act == FloatType::kHalf ? ActType::kHalf : ActType::kBFloat16;
  if (launch_fused_gemm(plan, static_cast<int>(bits), p, type, nullptr) != cudaSuccess) {
    throw std::runtime_error("launch_fused_gemm failed");
  }
  job.save("y", arrays.y);
}

void run_dequantize(const Job& job) {
  const int64_t k = job.num("k"), n = job.num("n");
  const WeightArrays weight(job);
  const FloatType out_type = float_type(job.str("out_type"));
  Buffer out = poisoned(static_cast<size_t>(k * n) * float_bytes(out_type));
  DequantParams p{};
  fill_weight_fields(p, job, weight);
  p.k = k;
  p.n = n;
  launch_dequantize(p, static_cast<int>(job.num("bits")), out_type, out.data.get(), nullptr);
  job.save("out", out);
}

void run_layout(const Job& job, const std::string& op) {
  const int64_t k = job.num("k"), n = job.num("n");
  const int bits = static_cast<int>(job.num("bits"));
  if (op == "pack") {
    const Buffer values = job.load("values");
    Buffer packed = poisoned(static_cast<size_t>(k * bits / 32 * n) * 4);
    launch_pack(values.as<int32_t>(), packed.as<uint32_t>(), k, n, bits, nullptr);
    job.save("packed", packed);
  } else if (op == "unpack") {
    const Buffer packed = job.load("packed");
    Buffer values = poisoned(static_cast<size_t>(k * n) * 4);
    launch_unpack(packed.as<uint32_t>(), values.as<int32_t>(), k, n, bits, nullptr);
    job.save("values", values);
  } else {
    const Buffer packed = job.load("packed"), perm = job.load("perm");
    Buffer out = poisoned(static_cast<size_t>(k * bits / 32 * n) * 4);
    launch_permute_rows(packed.as<uint32_t>(), perm.as<int64_t>(), out.as<uint32_t>(), k, n, bits, nullptr);
    job.save("packed_out", out);
  }
}

// gptq_block on the transposed working copy: w [width, rows] (updated in place), u [width, width]; the grids
// come in as scale/zero [width, rows] when fit is 0.
void run_gptq_block(const Job& job) {
  const int64_t rows = job.num("rows"), width = job.num("width");
  const bool fit = job.num("fit") != 0;
  Buffer w = job.load("w");
  const Buffer u = job.load("u");
  const size_t cells = static_cast<size_t>(rows * width);
  Buffer q = poisoned(cells * 4), deq = poisoned(cells * 4), err = poisoned(cells * 4);
  Buffer scale = fit ? poisoned(cells * 4) : job.load("scale");
  Buffer zero = fit ? poisoned(cells * 4) : job.load("zero");
  const GptqBlockParams p{w.as<float>(), u.as<float>(), q.as<int32_t>(), deq.as<float>(), err.as<float>(),
                          scale.as<float>(), zero.as<float>(), rows, static_cast<int>(width),
                          static_cast<int>(job.num("bits")), job.num("sym") != 0, fit,
                          fit ? job.num("group_size") : 1, job.num("column_offset")};
  const std::string kind = job.str("scale_dtype");
  const ScaleKind scale_kind =
      kind == "half" ? ScaleKind::kHalf : kind == "bfloat16" ? ScaleKind::kBFloat16 : ScaleKind::kFloat;
  launch_gptq_block(p, scale_kind, nullptr);
  job.save("q", q);
  job.save("deq", deq);
  job.save("err", err);
  job.save("scale", scale);
  job.save("zero", zero);
}

// The binary-coded weight (qplanes, alpha, offset) and its grouping, for the two BCQ ops.
struct BcqWeightArrays {
  Buffer qplanes, alpha, offset;
  explicit BcqWeightArrays(const Job& job)
      : qplanes(job.load("qplanes")), alpha(job.load("alpha")), offset(job.load("offset")) {}
};

template <typename Params>
void fill_bcq_weight_fields(Params& p, const Job& job, const BcqWeightArrays& w) {
  p.qplanes = w.qplanes.as<uint32_t>();
  p.alpha = w.alpha.data.get();
  p.alpha_type = float_type(job.str("alpha_type"));
  p.offset = w.offset.data.get();
  p.offset_type = float_type(job.str("offset_type"));
  p.group_size = static_cast<int>(job.num("group_size"));
  p.groups = static_cast<int>(job.num("groups"));
}

// bcq_gemm's lookup-table path, planned as the CUDA op plans it (2 or 3 planes, groups on 32-input boundaries).
void run_bcq_gemm(const Job& job) {
  const int64_t m = job.num("m"), k = job.num("k"), n = job.num("n");
  const FloatType act = float_type(job.str("act"));
  const BcqGemvPlan plan = plan_bcq_gemv(m, k, n, job.num("sms"));
  job.save_text("plan.txt", "splits " + std::to_string(plan.splits) + "\nrows_per_cta " +
                                std::to_string(plan.rows_per_cta) + "\n");
  const BcqWeightArrays weight(job);
  FusedArrays arrays(job, act, plan.splits);
  BcqGemvParams p{};
  fill_shared_fields(p, job, arrays, plan.blocks_per_cta);
  fill_bcq_weight_fields(p, job, weight);
  if (launch_bcq_fused(plan, static_cast<int>(job.num("planes")), p, act, nullptr) != cudaSuccess) {
    throw std::runtime_error("launch_bcq_fused failed");
  }
  job.save("y", arrays.y);
}

void run_bcq_dequantize(const Job& job) {
  const int64_t k = job.num("k"), n = job.num("n");
  const BcqWeightArrays weight(job);
  const FloatType out_type = float_type(job.str("out_type"));
  Buffer out = poisoned(static_cast<size_t>(k * n) * float_bytes(out_type));
  BcqDequantParams p{};
  fill_bcq_weight_fields(p, job, weight);
  p.planes = static_cast<int>(job.num("planes"));
  p.k = k;
  p.n = n;
  launch_bcq_dequantize(p, out_type, out.data.get(), nullptr);
  job.save("out", out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: harness JOB_DIR\n";
    return 2;
  }
  try {
    const Job job(argv[1]);
    gptq_emulation::options().reverse_order = job.num("reverse_order", 0) != 0;
    gptq_emulation::options().eager_async_copies = job.num("eager_async_copies", 0) != 0;
    const std::string op = job.str("op");
    if (op == "gemm") {
      run_gemm(job);
    } else if (op == "dequantize") {
      run_dequantize(job);
    } else if (op == "selftest") {
      const std::vector<float> out = run_selftest(job.str("case"));
      Buffer b(out.size() * 4);
      std::memcpy(b.data.get(), out.data(), b.bytes);
      job.save("out", b);
    } else if (op == "bcq_gemm") {
      run_bcq_gemm(job);
    } else if (op == "bcq_dequantize") {
      run_bcq_dequantize(job);
    } else if (op == "gptq_block") {
      run_gptq_block(job);
    } else if (op == "pack" || op == "unpack" || op == "permute_rows") {
      run_layout(job, op);
    } else {
      throw std::runtime_error("unknown op " + op);
    }
  } catch (const std::exception& e) {
    std::cerr << "harness: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
