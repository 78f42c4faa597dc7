// The body of the Hopper kernel (see gemm_wgmma.cuh for the design) and its launcher. Include only from the
// gemm_wgmma_<bits>bit.cu files that instantiate it.
#pragma once
#include <climits>
#include <type_traits>

#include "cuda/gemm_wgmma.cuh"
#include "cuda/lane_decode.cuh"
#include "cuda/mma_ops.cuh"
#include "cuda/wgmma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// 3- and 8-bit weights: lane t's pair P = 2s + h of a block (ThreeBitDecode, EightBitDecode: rows 8t + 2P,
// 8t + 2P + 1) is its A fragment's k16 step s, half h, which the B operand holds at rows 16s + 8h + 2t.. of the
// block. So pair q = 4t + 2s + h of the block's x (rows 2q, 2q + 1) goes to pair 8s + 4h + t of the tile: a rotation
// of the pair index by 2.
__host__ __device__ constexpr int paired_rows_tile_pair(int q) { return (q >> 1 & 1) << 3 | (q & 1) << 2 | q >> 2; }

// TILE_ROWS: batch rows per CTA, the N of every wgmma (64 or 128).
template <typename T, int BITS, int TILE_ROWS>
__global__ void __launch_bounds__(kWgmmaThreads, kWgmmaCtasPerSm) gemm_wgmma_kernel(const FusedGemmParams p) {
#if defined(__CUDA_ARCH__) && !defined(GPTQ_KERNELS_WGMMA_DEVICE)
  __trap();  // a build for another target: plan_gemm never launches this there
#else
  using Decode = std::conditional_t<BITS == 3, ThreeBitDecode<T>,
                                    std::conditional_t<BITS == 8, EightBitDecode<T>, InPlaceDecode<T, BITS>>>;
  constexpr bool kPairedRows = BITS == 3 || BITS == 8;  // lanes decode rows 8t..8t+7: x's pairs are permuted
  constexpr int kRun = Decode::kRun;
  constexpr int kAccum = TILE_ROWS / 2;  // floats per thread of one m64 x TILE_ROWS accumulator
  constexpr int kXBytes = TILE_ROWS * kSwizzleRowBytes;
  constexpr int kLaneBytes = wgmma_lane_block_bytes(BITS);  // a thread's weights of one block
  constexpr int kWBytes = kWgmmaStageBlocks * kWgmmaThreads * kLaneBytes;
  constexpr int kStageBytes = wgmma_stage_bytes(TILE_ROWS, BITS);
  static_assert(kStageBytes == kXBytes + kWBytes && kXBytes % kSwizzleAtomBytes == 0 &&
                    kStageBytes % kSwizzleAtomBytes == 0,
                "every stage's x tile must start on a swizzle atom");
  constexpr int kLookahead = kWgmmaStages - 2;
  constexpr int kPiecesPerRow = kSwizzleRowBytes / 16;                        // 8
  constexpr int kPieces = TILE_ROWS * kPiecesPerRow / kWgmmaThreads;          // x pieces per thread and stage
  static_assert(kPieces * kWgmmaThreads == TILE_ROWS * kPiecesPerRow, "x pieces must spread evenly");
  constexpr int kPairsPerRow = kSwizzleRowBytes / 4;                          // 32 (3, 8 bits: copied one by one)
  constexpr int kPairs = TILE_ROWS * kPairsPerRow / kWgmmaThreads;

  // The stage buffers start on a 1024-byte boundary of the shared window, as the swizzle needs.
  unsigned char* const smem_raw = dynamic_shared_memory();
  unsigned char* const smem =
      smem_raw + (kSwizzleAtomBytes - shared_address(smem_raw) % kSwizzleAtomBytes) % kSwizzleAtomBytes;
  const uint32_t smem_address = shared_address(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int fg = lane / 4, ft = lane % 4;  // fragment coordinates (MmaOps)
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;  // a multiple of kWgmmaStageBlocks (plan_gemm)
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  const int m0 = blockIdx.x * TILE_ROWS;
  // Warps past N (a multiple of 32) redo the last strip of 32 columns and write nothing: the whole warpgroup
  // takes part in every wgmma, and no load needs a guard.
  const int warp_n = blockIdx.y * kWgmmaColumns + warp * 32;
  const bool writes = warp_n < p.n;
  const int n0 = min(warp_n, p.n - 32) + 4 * fg;  // this lane's columns n0..n0+3
  const T* x = static_cast<const T*>(p.x);

  // This lane's words of every block for its 4 columns, copied into the thread's own slot of the stage: the
  // fragment-order word (4-bit: word t; 2-bit: word t / 2, half t % 2), or two words, 16 bytes each: 3-bit, those
  // holding stream bits 24t..24t+23 (ThreeBitDecode); 8-bit, words 2t and 2t + 1.
  const int64_t block_stride = static_cast<int64_t>(BITS) * p.n;  // words from one block to the next
  const uint32_t* const lane_words = p.qweight + static_cast<int64_t>(lane_first_word<BITS>(ft)) * p.n + n0;
  const int64_t second_word = static_cast<int64_t>(lane_second_word_step<BITS>(ft)) * p.n;

  // Copies stage `stage` (counted from kb_begin) into its buffer and commits a group, empty past kb_end so that
  // the group count stays in step. x: piece c of row r at swizzled_piece_offset(r, c) (3- and 8-bit: pair by pair,
  // through paired_rows_tile_pair); rows past M and blocks past kb_end are zero-filled without a read.
  auto copy_stage = [&](int stage) {
    const int first = kb_begin + stage * kWgmmaStageBlocks;
    if (first < kb_end) {
      unsigned char* const buffer = smem + (stage % kWgmmaStages) * kStageBytes;
      const int64_t k_end = static_cast<int64_t>(kb_end) * core::kBlockValues;
      if constexpr (kPairedRows) {
#pragma unroll
        for (int i = 0; i < kPairs; ++i) {
          const int c = tid + i * kWgmmaThreads, r = c / kPairsPerRow, pair = c % kPairsPerRow;
          const int64_t k = static_cast<int64_t>(first) * core::kBlockValues + pair * 2;
          const bool valid = m0 + r < p.m && k < k_end;
          const int byte = 4 * ((pair & ~15) | paired_rows_tile_pair(pair & 15));
          cp_async_4(buffer + swizzled_piece_offset(r, byte / 16) + byte % 16, valid ? x + (m0 + r) * p.ldx + k : x,
                     valid);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kPieces; ++i) {
          const int c = tid + i * kWgmmaThreads, r = c / kPiecesPerRow, piece = c % kPiecesPerRow;
          const int64_t k = static_cast<int64_t>(first) * core::kBlockValues + piece * 8;
          const bool valid = m0 + r < p.m && k < k_end;
          cp_async_16(buffer + swizzled_piece_offset(r, piece), valid ? x + (m0 + r) * p.ldx + k : x, valid);
        }
      }
#pragma unroll
      for (int b = 0; b < kWgmmaStageBlocks; ++b) {
        const bool valid = first + b < kb_end;
        unsigned char* const slot = buffer + kXBytes + (b * kWgmmaThreads + tid) * kLaneBytes;
        const uint32_t* const words = valid ? lane_words + (first + b) * block_stride : p.qweight;
        cp_async_16(slot, words, valid);
        if constexpr (kPairedRows) cp_async_16(slot + 16, valid ? words + second_word : p.qweight, valid);
      }
    }
    cp_async_commit();
  };

  uint32_t multipliers[kRun];
  Decode::multipliers(multipliers);
  uint32_t offset[4][kRun];  // per column of this lane: the decode's offset pairs for the group's zero point
  uint32_t scale2[4];        // per column of this lane: the group's scale in both halves
  auto start_group = [&](const RawGroup& raw) {
    uint32_t h[4];
    lane_zero_points<T, BITS>(raw, n0, h);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float s = raw_scale(raw.scales, c, p.scale_type);
      scale2[c] = MmaOps<T>::pack2(s, s);
      Decode::offsets(h[c], offset[c]);
    }
  };
  GroupWalk<BITS> groups(p, kb_begin, n0);
  start_group(groups.first());

  // Accumulators of A tile j (columns n0 + 2j + h for rows g + 8h of the warp's 16): acc[j][4i + 2h + e] is
  // batch row m0 + 8i + 2t + e.
  float acc[2][kAccum];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int i = 0; i < kAccum; ++i) {
      acc[j][i] = 0.f;
      fence_operand(acc[j][i]);  // else ptxas serializes the wgmmas (C7515) for these movs across the loop
    }
  }
  // Two sets of A fragments, [set][tile j][k16 step s][register]: block b decodes into set b % 2 while block b - 1's
  // wgmmas still read the other.
  uint32_t a[2][2][2][4];

  // Block b, `slot` of the stage in `buffer`, into set SET: group change, decode, 4 wgmmas, and a wait that leaves
  // only this block's group running. A block past kb_end keeps the current group (finite scales) and multiplies
  // zero-filled x.
  auto multiply_block = [&](auto set_constant, int b, int buffer, int slot) {
    constexpr int SET = decltype(set_constant)::value;
    if (groups.starts_at(b) && b < kb_end) {
      start_group(groups.next());
      groups.advance();
    }
    const unsigned char* const lane_slot =
        smem + buffer * kStageBytes + kXBytes + (slot * kWgmmaThreads + tid) * kLaneBytes;
    // The lane's words of its 4 columns (3 and 8 bits: and the second word of each), and column c's values as
    // Decode takes them.
    const uint4 w = *reinterpret_cast<const uint4*>(lane_slot);
    const uint4 u = kPairedRows ? *reinterpret_cast<const uint4*>(lane_slot + 16) : w;
    const uint32_t words[4] = {w.x, w.y, w.z, w.w}, second_words[4] = {u.x, u.y, u.z, u.w};
    uint32_t values[4][Decode::kValueRegs];
#pragma unroll
    for (int c = 0; c < 4; ++c) Decode::lane_values(words[c], second_words[c], ft, values[c]);
    // (q - zero) scale of pair P of column c: pairs 0 and 1 are step 0's registers for rows 2t.. and 2t + 8..,
    // pairs 2 and 3 step 1's; columns 2j and 2j + 1 are A rows g and g + 8 of tile j.
    auto scaled = [&](auto pair, int c) -> uint32_t {
      constexpr int P = decltype(pair)::value;
      if constexpr (Decode::kScalesItself) {
        return Decode::template decode_scaled<P>(values[c], offset[c], scale2[c]);
      } else {
        return magic_fma<T>(Decode::template decode<P>(values[c], multipliers, offset[c]), scale2[c], 0u);
      }
    };
    using P0 = std::integral_constant<int, 0>;
    using P1 = std::integral_constant<int, 1>;
    using P2 = std::integral_constant<int, 2>;
    using P3 = std::integral_constant<int, 3>;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int lo = 2 * j, hi = 2 * j + 1;
      a[SET][j][0][0] = scaled(P0{}, lo), a[SET][j][0][1] = scaled(P0{}, hi);
      a[SET][j][0][2] = scaled(P1{}, lo), a[SET][j][0][3] = scaled(P1{}, hi);
      a[SET][j][1][0] = scaled(P2{}, lo), a[SET][j][1][1] = scaled(P2{}, hi);
      a[SET][j][1][2] = scaled(P3{}, lo), a[SET][j][1][3] = scaled(P3{}, hi);
    }
    // The x tile's k16 slices 2 slot and 2 slot + 1 (32 bytes each into the swizzled rows).
    const uint32_t x_tile = smem_address + static_cast<uint32_t>(buffer * kStageBytes);
    uint64_t desc[2];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      desc[s] = swizzled_k_major_descriptor(x_tile + static_cast<uint32_t>((2 * slot + s) * 32));
      fence_operand(desc[s]);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
#pragma unroll
        for (int r = 0; r < 4; ++r) fence_operand(a[SET][j][s][r]);
      }
    }
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < 2; ++s) {
#pragma unroll
      for (int j = 0; j < 2; ++j) WgmmaOps<T>::template mma<TILE_ROWS>(acc[j], a[SET][j][s], desc[s]);
    }
    wgmma_commit();
    wgmma_wait<1>();
  };

  const int stages = (kb_end - kb_begin + kWgmmaStageBlocks - 1) / kWgmmaStageBlocks;
#pragma unroll
  for (int s = 0; s < kLookahead; ++s) copy_stage(s);
#pragma unroll 1
  for (int stage = 0; stage < stages; ++stage) {
    cp_async_wait<kLookahead - 1>();  // this thread's copies of the stage have landed
    fence_proxy_async_shared();      // ... and are visible to the wgmmas' reads
    // Everyone's copies are in, and every warp's wgmmas of stage - 2 completed (the wait after each block), so
    // that buffer is refilled next.
    __syncthreads();
    copy_stage(stage + kLookahead);
    const int buffer = stage % kWgmmaStages, b = kb_begin + stage * kWgmmaStageBlocks;
    // Both blocks even when the second is past kb_end (an odd block count): its x and weights were zero-filled, so
    // it adds exact zeros. A branch around it would make ptxas serialize every wgmma (C7513).
    multiply_block(std::integral_constant<int, 0>{}, b, buffer, 0);
    multiply_block(std::integral_constant<int, 1>{}, b + 1, buffer, 1);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int i = 0; i < kAccum; ++i) fence_operand(acc[j][i]);
  }

  // Lane (g, t) holds columns n0..n0+3 of batch rows m0 + 8i + 2t + e.
  if (!writes) return;
  float bias[4] = {0.f, 0.f, 0.f, 0.f};  // added here unless K is split (then by the reduction)
  if (gridDim.z == 1 && p.bias != nullptr) {
#pragma unroll
    for (int c = 0; c < 4; ++c) bias[c] = load_float(p.bias, n0 + c, p.bias_type);
  }
#pragma unroll
  for (int i = 0; i < TILE_ROWS / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int m = m0 + 8 * i + 2 * ft + e;
      if (m >= p.m) continue;
      float v[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) v[c] = acc[c / 2][4 * i + 2 * (c % 2) + e] + bias[c];
      if (gridDim.z == 1) {
        uint2 packed;
        packed.x = MmaOps<T>::pack2(v[0], v[1]);
        packed.y = MmaOps<T>::pack2(v[2], v[3]);
        *reinterpret_cast<uint2*>(static_cast<T*>(p.y) + static_cast<int64_t>(m) * p.n + n0) = packed;
      } else {
        *reinterpret_cast<float4*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n0) =
            make_float4(v[0], v[1], v[2], v[3]);
      }
    }
  }
#endif
}

template <typename T, int BITS, int TILE_ROWS>
cudaError_t launch_gemm_wgmma_tile(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = wgmma_shared_bytes(TILE_ROWS, BITS);
  auto kernel = gemm_wgmma_kernel<T, BITS, TILE_ROWS>;
  // Above 48 KB of dynamic shared memory a kernel must opt in (a host-side attribute, no synchronisation).
  const cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (error != cudaSuccess) return error;
  GPTQ_LAUNCH(grid, kWgmmaThreads, smem, stream, kernel)(p);
  return cudaSuccess;
}

template <typename T, int BITS>
cudaError_t launch_gemm_wgmma_typed(const FusedGemmParams& p, int tile_rows, dim3 grid, cudaStream_t stream) {
  if constexpr (BITS == 3 || BITS == 8) {
    return launch_gemm_wgmma_tile<T, BITS, 64>(p, grid, stream);  // wgmma_tile_rows: 64 rows only
  } else {
    return tile_rows == 64 ? launch_gemm_wgmma_tile<T, BITS, 64>(p, grid, stream)
                           : launch_gemm_wgmma_tile<T, BITS, 128>(p, grid, stream);
  }
}

template <int BITS>
cudaError_t launch_gemm_wgmma(const FusedGemmParams& p, ActType type, int tile_rows, dim3 grid,
                              cudaStream_t stream) {
  static_assert(BITS == 2 || BITS == 3 || BITS == 4 || BITS == 8, "the Hopper kernel reads 2/3/4/8-bit weights");
  return type == ActType::kHalf ? launch_gemm_wgmma_typed<__half, BITS>(p, tile_rows, grid, stream)
                                : launch_gemm_wgmma_typed<__nv_bfloat16, BITS>(p, tile_rows, grid, stream);
}

}  // namespace cuda
}  // namespace gptq_kernels
