// The body of the tensor-core kernel (see gemm_mma.cuh for the design) and its launcher. Include only from the
// gemm_mma_<bits>bit.cu files that instantiate it.
#pragma once
#include "cuda/gemm_mma.cuh"
#include "cuda/mma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// Dequantizing straight into B fragments. The thread with fragment coordinates (g, t) holds, for each 16-row
// step of K, B[2t..2t+1][g] and B[2t+8..2t+9][g]: for the column of its fragment row g, the value pairs
// (j, j + 1) with j = 16 KH + 8 E + 2t of a 32-row block (KH: which half of the block, E: which register). Each
// pair becomes q - zero in one fp16x2/bf16x2 register: a byte permute and a mask put the two values into the
// mantissas of a pair of magic numbers, the second value possibly shifted up (kHighShift bits: the permute moves
// bytes, not bits), and one fused multiply-add removes the magic numbers, the shift and the zero point exactly:
// (magic + 2^s q1) 2^-s - (magic 2^-s + zero) = q1 - zero. Three instructions per pair, plus a shift or a word
// select for some bit widths (SASS of the 4-bit fp16 kernel: PRMT, LOP3, HFMA2). The scale is applied to the fp32
// accumulators when the group changes, as in the GEMV kernel, so the products x (q - zero) are exact and the
// scales may have any dtype. Needs q < 2^kMantissaBits: 8-bit weights under bf16 decode in fp32 instead.
template <typename T, int BITS>
struct FragmentDecode {
  using Magic = MagicPair<T>;
  // Whether the register decode applies: 8-bit values need more than bf16's 7 mantissa bits.
  static constexpr bool kAvailable = BITS != 8 || Magic::kHalf;
  // How far up the second value of a pair sits in its half. 4-bit bf16 cannot hold 16 q1 (<= 240) in 7 mantissa
  // bits, so it pays one shift per word to bring q1 down instead.
  static constexpr int kHighShift = BITS == 8 ? 0 : (BITS == 4 && !Magic::kHalf) ? 0 : BITS;
  static_assert(BITS + kHighShift <= Magic::kMantissaBits || BITS == 8, "q1 must fit the magic mantissa");

  uint32_t selector;  // byte permute selecting this lane's bytes (4- and 8-bit)
  int t;              // fragment column t = lane % 4

  __device__ __forceinline__ explicit FragmentDecode(int lane_t) : t(lane_t) {
    if constexpr (BITS == 4) {
      // fp16: byte t of the word into all four bytes (q0 in bits 0-3, q1 in bits 20-23 after the mask);
      // bf16: byte t of the word and byte t of the word shifted down 4 bits into bytes 0 and 2.
      selector = Magic::kHalf ? 0x1111u * static_cast<uint32_t>(t) : static_cast<uint32_t>(t) | (t + 4u) << 8;
    } else if constexpr (BITS == 8) {
      // Bytes 2(t % 2) and 2(t % 2) + 1 of the word into bytes 0 and 2, magic bytes 0x64 (byte 5) above them.
      selector = (t % 2) ? 0x7352u : 0x7150u;
    } else {
      selector = 0u;
    }
  }

  // Pair (j, j + 1), j = 16 KH + 8 E + 2t, of the block in w, as magic + q0 (low half) and
  // magic + 2^kHighShift q1 (high half).
  template <int KH, int E>
  __device__ __forceinline__ uint32_t magic_pair(const uint32_t (&w)[BITS]) const {
    constexpr uint32_t kValueMask = (1u << BITS) - 1u;
    constexpr uint32_t kMask = kValueMask | (kValueMask << kHighShift) << 16;
    if constexpr (BITS == 2) {
      // Word KH holds values 16 KH..16 KH + 15; the pair's 4 bits are at 16 E + 4t.
      const uint32_t v = w[KH] >> (4 * t);
      return and_or(__byte_perm(v, 0u, E ? 0x3232u : 0x1010u), kMask, Magic::kBits);
    } else if constexpr (BITS == 4) {
      // Word 2 KH + E holds values 16 KH + 8 E..+7; the pair is its byte t.
      const uint32_t word = w[2 * KH + E];
      const uint32_t second = Magic::kHalf ? word : word >> 4;
      return and_or(__byte_perm(word, second, selector), kMask, Magic::kBits);
    } else if constexpr (BITS == 8) {
      // Words 4 KH + 2 E and the next hold values 16 KH + 8 E..+7; the pair is in the first for t < 2.
      const uint32_t word = t >= 2 ? w[4 * KH + 2 * E + 1] : w[4 * KH + 2 * E];
      return __byte_perm(word, Magic::kBits, selector);
    } else {
      // 3-bit: the pair's 6 bits start at stream bit o = 48 KH + 24 E + 6t, in word o / 32, which is the first
      // candidate word c or (for larger t) the next; a pair that straddles two words takes the funnel shift.
      constexpr int kBase = 48 * KH + 24 * E, kWord = kBase / 32;
      constexpr bool kMayAdvance = (kBase + 6 * 3) / 32 > kWord;  // t <= 3; without it, no word select
      const int o = kBase + 6 * t;
      const bool next = kMayAdvance && o / 32 > kWord;
      const uint32_t lo = next ? w[kWord + 1 < BITS ? kWord + 1 : BITS - 1] : w[kWord];
      const uint32_t hi = next ? w[kWord + 2 < BITS ? kWord + 2 : BITS - 1] : w[kWord + 1 < BITS ? kWord + 1 : BITS - 1];
      const uint32_t v = __funnelshift_r(lo, hi, static_cast<unsigned>(o % 32));
      return and_or(__byte_perm(v, 0u, 0x1010u), kMask, Magic::kBits);
    }
  }

  // q - zero for both values of the pair, exactly, in T: pair * multiplier + offset with multiplier =
  // (1, 2^-kHighShift) and offset = (-(magic + zero), -(magic 2^-kHighShift + zero)), built per group.
  template <int KH, int E>
  __device__ __forceinline__ uint32_t decode(const uint32_t (&w)[BITS], uint32_t multiplier, uint32_t offset) const {
    return magic_fma<T>(magic_pair<KH, E>(w), multiplier, offset);
  }
};

// Where word `word` (of BITS) of a block of tile column `column` is stored in the swizzled shared-memory tile of
// fragment-ordered weights: the lanes of a warp, which read different words of a block (lane t: the word
// FragmentOrderDecode::lane_word(t)), then hit 32 different banks. XOR 8w keeps 4-column copy chunks whole.
__device__ __forceinline__ int swizzled_column(int column, int word) { return column ^ (8 * word); }

// FRAGMENT: qweight in fragment order (2- and 4-bit); its shared-memory tile is swizzled (swizzled_column).
template <typename T, int BITS, int MT, bool FRAGMENT>
__global__ void __launch_bounds__(kMmaThreads, kMmaCtasPerSm) gemm_mma_kernel(const FusedGemmParams p) {
  constexpr int BM = 16 * MT;
  constexpr int NT = mma_n8_tiles(MT);                         // n8 tiles per warp
  constexpr int BN = mma_columns(MT);                          // columns per CTA: kMmaWarps * 8 * NT
  constexpr int kPackedRows = kMmaTileBlocks * BITS;           // packed words per column per K tile
  constexpr int kXStageElems = BM * kMmaRowStride;             // x tile [BM][72]
  constexpr int kWStageWords = kPackedRows * BN;               // packed tile [2 * BITS][BN]
  constexpr int kXChunksPerRow = kMmaTileK * 2 / 16;           // 16-byte chunks per x tile row: 8
  constexpr int kWChunksPerRow = BN * 4 / 16;                  // 16-byte chunks per packed row
  constexpr unsigned kFullMask = 0xffffffffu;
  using Decode = std::conditional_t<FRAGMENT, FragmentOrderDecode<T, BITS>, FragmentDecode<T, BITS>>;
  constexpr int kOffsets = FRAGMENT ? 2 : 1;  // offset pairs per column (FragmentOrderDecode: shift 0 and kHighShift)

  unsigned char* smem_raw = dynamic_shared_memory();
  T* xs = reinterpret_cast<T*>(smem_raw);                                     // [stages][BM][72]
  uint32_t* ws = reinterpret_cast<uint32_t*>(xs + kMmaStages * kXStageElems);  // [stages][2 * BITS][BN]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int row0 = blockIdx.x * BM;
  const int n_tile = blockIdx.y * BN;
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  const int tiles = (kb_end - kb_begin + kMmaTileBlocks - 1) / kMmaTileBlocks;
  const T* x = static_cast<const T*>(p.x);

  // The copies of the K tiles. Each thread copies the same 16-byte chunks of every tile (compile-time counts),
  // so their addresses are computed once here and advance by one tile per load. Rows of x past M, blocks past
  // this CTA's K range and columns past N are zero-filled (nothing is read for them).
  constexpr int kXCopies = BM * kXChunksPerRow / kMmaThreads;  // MT
  constexpr int kWChunks = kPackedRows * kWChunksPerRow;
  constexpr int kWCopies = (kWChunks + kMmaThreads - 1) / kMmaThreads;
  static_assert(kXCopies * kMmaThreads == BM * kXChunksPerRow, "x tile chunks must spread evenly");
  const T* x_src[kXCopies];
  int x_dst[kXCopies], x_block[kXCopies];  // smem offset in a stage, block of the K tile
  bool x_row[kXCopies];                    // row of x inside M
#pragma unroll
  for (int i = 0; i < kXCopies; ++i) {
    const int c = tid + i * kMmaThreads, r = c / kXChunksPerRow, kc = c % kXChunksPerRow;
    x_row[i] = row0 + r < p.m;
    x_src[i] = x + static_cast<int64_t>(x_row[i] ? row0 + r : 0) * p.ldx +
               static_cast<int64_t>(kb_begin) * core::kBlockValues + kc * 8;
    x_dst[i] = r * kMmaRowStride + kc * 8;
    x_block[i] = kc * 8 / core::kBlockValues;
  }
  const uint32_t* w_src[kWCopies];
  int w_dst[kWCopies], w_block[kWCopies];
  bool w_column[kWCopies];  // chunk inside N (and, for 3-bit, a chunk at all)
  const int64_t w_tile_stride = static_cast<int64_t>(kMmaTileBlocks) * BITS * p.n;
#pragma unroll
  for (int i = 0; i < kWCopies; ++i) {
    const int c = tid + i * kMmaThreads, r = c / kWChunksPerRow, nc = c % kWChunksPerRow;
    w_column[i] = c < kWChunks && n_tile + nc * 4 < p.n;
    w_src[i] = p.qweight + (w_column[i] ? (static_cast<int64_t>(kb_begin) * BITS + r) * p.n + n_tile + nc * 4 : 0);
    w_dst[i] = r * BN + (FRAGMENT ? swizzled_column(nc * 4, r % BITS) : nc * 4);
    w_block[i] = r / BITS;
  }
  // Issues the copies of the next K tile (tiles are loaded in order) into stage `stage`; `tile` is its index.
  auto load_tile = [&](int stage, int tile) {
    const int blocks = kb_end - kb_begin - tile * kMmaTileBlocks;  // valid blocks of the tile: 1 or 2
#pragma unroll
    for (int i = 0; i < kXCopies; ++i) {
      const bool valid = x_row[i] && x_block[i] < blocks;
      cp_async_16(xs + stage * kXStageElems + x_dst[i], valid ? x_src[i] : x, valid);
      x_src[i] += kMmaTileK;
    }
#pragma unroll
    for (int i = 0; i < kWCopies; ++i) {
      if (kWChunks % kMmaThreads != 0 && tid + i * kMmaThreads >= kWChunks) break;
      const bool valid = w_column[i] && w_block[i] < blocks;
      cp_async_16(ws + stage * kWStageWords + w_dst[i], valid ? w_src[i] : p.qweight, valid);
      w_src[i] += w_tile_stride;
    }
  };

  const int fg = lane / 4, ft = lane % 4;  // fragment coordinates (see MmaOps)
  const int warp_n = n_tile + warp * 8 * NT;
  // This thread's columns: of its B fragments (row g of each n8 tile: zero points) and of its accumulators
  // (2t and 2t + 1: scales). Columns past N (zero-filled words) use a valid column's; they are never written.
  int b_column[NT], d_column[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    b_column[nt] = min(warp_n + nt * 8 + fg, p.n - 1);
    d_column[nt] = min(warp_n + nt * 8 + 2 * ft, p.n - 2);
  }
  const Decode decoder(ft);
  constexpr float kHighScale = 1.f / static_cast<float>(1 << Decode::kHighShift);
  const uint32_t multiplier = MmaOps<T>::pack2(1.f, kHighScale);
  const uint32_t multipliers[2] = {MmaOps<T>::pack2(1.f, 1.f), MmaOps<T>::pack2(kHighScale, kHighScale)};
  // Fragment order: this lane's word of each block (among its BITS words), and where the word of column
  // b_column sits in the swizzled tile.
  int lane_word = 0, lane_column[NT];
  if constexpr (FRAGMENT) lane_word = Decode::lane_word(ft);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) lane_column[nt] = swizzled_column(warp * 8 * NT + nt * 8 + fg, lane_word);
  int current_group = -1;
  float2 scale[NT];        // the current group's scales of columns d_column, d_column + 1
  float zero[NT];          // kMagicFloat + the current group's zero point of column b_column (fp32 decode)
  uint32_t offset[NT][kOffsets];  // the register decode's offset pairs for that zero point (Decode::decode)
  float acc[MT][NT][4];    // sum of x (q - zero) within the current group
  float out[MT][NT][4];    // sum over finished groups of scale * acc, plus the blocks that mix groups
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = out[mt][nt][i] = 0.f;
    }
  }
  // out += scale * acc, acc = 0: at the end of each group.
  auto finish_group = [&]() {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          out[mt][nt][i] = fmaf(i % 2 ? scale[nt].y : scale[nt].x, acc[mt][nt][i], out[mt][nt][i]);
          acc[mt][nt][i] = 0.f;
        }
      }
    }
  };
  // target += x tile (block blk of the K tile in `stage`) x the block's B fragments.
  auto multiply = [&](int stage, int blk, const uint32_t (&frag)[2][NT][2], float (&target)[MT][NT][4]) {
    const T* xa = xs + stage * kXStageElems;
#pragma unroll
    for (int kh = 0; kh < 2; ++kh) {
      const int k0 = (blk * 2 + kh) * 16;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // Lanes 8i..8i+7 address the rows of 8x8 matrix i: rows 0-7 / 8-15 (i odd), columns 0-7 / 8-15 (i >= 2).
        uint32_t a[4];
        ldmatrix_x4(a, xa + (mt * 16 + (lane / 8 % 2) * 8 + lane % 8) * kMmaRowStride + k0 + (lane / 16) * 8);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) MmaOps<T>::mma(target[mt][nt], a, frag[kh][nt][0], frag[kh][nt][1]);
      }
    }
  };

  // Value of row j (0..31) of block `blk` of the tile in `stage`, column `column` of the tile.
  auto packed_value = [&](int stage, int blk, int column, int j) -> uint32_t {
    const uint32_t* block = ws + stage * kWStageWords + blk * BITS * BN;
    if constexpr (FRAGMENT) {
      const int pos = core::fragment_position(j), w = core::word_of(pos, BITS);
      return (block[w * BN + swizzled_column(column, w)] >> core::shift_of(pos, BITS)) & core::value_mask(BITS);
    } else {
      return core::extract(block + column, BN, j, BITS);
    }
  };

  // Block `blk` of the K tile in `stage`: decodes the warp's B fragments straight from the packed words in shared
  // memory and multiplies them with the x tile. lane_group: the group of row `lane` of the block, or with
  // block_group set, the group of the whole block.
  auto multiply_block = [&](int stage, int blk, int lane_group, bool block_group) {
    const uint32_t* words = ws + stage * kWStageWords + blk * BITS * BN + warp * 8 * NT + fg;  // + 8 nt
    int g = lane_group;
    bool one_group = true;
    if (!block_group) {
      g = __shfl_sync(kFullMask, lane_group, 0);
      one_group = __all_sync(kFullMask, lane_group == g);
    }
    uint32_t frag[2][NT][2];  // [16-row step][n8 tile][register]
    if (one_group) {
      if (g != current_group) {
        if (current_group >= 0) finish_group();
        current_group = g;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int64_t row = static_cast<int64_t>(g) * p.n;
          scale[nt] = make_float2(load_float(p.scales, row + d_column[nt], p.scale_type),
                                  load_float(p.scales, row + d_column[nt] + 1, p.scale_type));
          zero[nt] = magic_zero<BITS>(p.qzeros, g, p.n, b_column[nt]);
          const float z = zero[nt] - kMagicFloat, magic = MagicPair<T>::kValue;
          if constexpr (FRAGMENT) {
            offset[nt][0] = MmaOps<T>::pack2(-(magic + z), -(magic + z));
            offset[nt][1] = MmaOps<T>::pack2(-(magic * kHighScale + z), -(magic * kHighScale + z));
          } else {
            offset[nt][0] = MmaOps<T>::pack2(-(magic + z), -(magic * kHighScale + z));
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if constexpr (FRAGMENT) {
          const uint32_t* block = ws + stage * kWStageWords + (blk * BITS + lane_word) * BN;
          const uint32_t lane_values = decoder.lane_values(block[lane_column[nt]]);
          frag[0][nt][0] = decoder.template decode<0>(lane_values, multipliers, offset[nt]);
          frag[0][nt][1] = decoder.template decode<1>(lane_values, multipliers, offset[nt]);
          frag[1][nt][0] = decoder.template decode<2>(lane_values, multipliers, offset[nt]);
          frag[1][nt][1] = decoder.template decode<3>(lane_values, multipliers, offset[nt]);
        } else if constexpr (Decode::kAvailable) {
          uint32_t w[BITS];
#pragma unroll
          for (int i = 0; i < BITS; ++i) w[i] = words[nt * 8 + i * BN];
          frag[0][nt][0] = decoder.template decode<0, 0>(w, multiplier, offset[nt][0]);
          frag[0][nt][1] = decoder.template decode<0, 1>(w, multiplier, offset[nt][0]);
          frag[1][nt][0] = decoder.template decode<1, 0>(w, multiplier, offset[nt][0]);
          frag[1][nt][1] = decoder.template decode<1, 1>(w, multiplier, offset[nt][0]);
        } else {  // 8-bit weights under bf16: q - zero in fp32 (exact: |q - zero| < 2^8), then to bf16 (exact too)
#pragma unroll
          for (int kh = 0; kh < 2; ++kh) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int j = 16 * kh + 8 * e + 2 * ft;
              const uint32_t* column = words + nt * 8;
              frag[kh][nt][e] = MmaOps<T>::pack2(magic_float(core::extract(column, BN, j, BITS)) - zero[nt],
                                                 magic_float(core::extract(column, BN, j + 1, BITS)) - zero[nt]);
            }
          }
        }
      }
      multiply(stage, blk, frag, acc);
    } else {
      // Rows of different groups (unsorted act-order g_idx, group sizes not a multiple of 32): each value looks
      // its group up (lane r of the warp holds the group of row r of the block) and is dequantized with its
      // scale, rounded once to T, into `out`. A rolled loop over the pairs keeps the registers of this rare path
      // from raising the kernel's register count.
#pragma unroll 1
      for (int i = 0; i < 4 * NT; ++i) {
        const int kh = i / (2 * NT), nt = i / 2 % NT, e = i % 2;
        int n = b_column[0];
#pragma unroll
        for (int c = 1; c < NT; ++c) n = nt == c ? b_column[c] : n;  // register indices must be compile-time
        const int column = warp * 8 * NT + nt * 8 + fg;  // in the tile
        float v[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int j = 16 * kh + 8 * e + 2 * ft + h;
          const int gj = __shfl_sync(kFullMask, lane_group, j);
          const float s = load_float(p.scales, static_cast<int64_t>(gj) * p.n + n, p.scale_type);
          const float z = magic_zero<BITS>(p.qzeros, gj, p.n, n);
          v[h] = (magic_float(packed_value(stage, blk, column, j)) - z) * s;
        }
        const uint32_t pair = MmaOps<T>::pack2(v[0], v[1]);
#pragma unroll
        for (int d = 0; d < 4 * NT; ++d) {
          if (d == i) frag[d / (2 * NT)][d / 2 % NT][d % 2] = pair;
        }
      }
      multiply(stage, blk, frag, out);
    }
  };

  // Without g_idx and with groups that start on 32-row blocks (the common case: QuantLinear passes no g_idx
  // for sorted act-order layers either), every block lies in one group, counted forward per block: no
  // per-lane lookup and no vote. (Not for 8-bit weights at MT = 2: that kernel would spill 4-8 bytes.)
  const bool block_groups = (BITS != 8 || MT != 2) && p.g_idx == nullptr &&
                            (p.group_size == -1 || p.group_size % core::kBlockValues == 0);
  // The group of the next block, and the first block of the group after it (group_size re-read from the
  // parameters when it is reached: the kernel is at its register cap).
  int block_group = 0, next_group_block = kblocks;
  if (block_groups && p.group_size != -1) {
    block_group = kb_begin / (p.group_size / core::kBlockValues);
    next_group_block = (block_group + 1) * (p.group_size / core::kBlockValues);
  }
  // Otherwise the group of row `lane` of each block of a K tile: read from g_idx a tile ahead (the load's
  // latency hides behind a tile of work), or counted forward without g_idx (tiles are visited in order).
  GroupCursor cursor(static_cast<int64_t>(kb_begin) * core::kBlockValues + lane, p.group_size, p.groups);
  auto tile_groups = [&](int tile, int (&groups)[kMmaTileBlocks]) {
#pragma unroll
    for (int blk = 0; blk < kMmaTileBlocks; ++blk) {
      const int b = kb_begin + tile * kMmaTileBlocks + blk;
      const int64_t row = static_cast<int64_t>(b) * core::kBlockValues + lane;
      groups[blk] = b < kb_end ? cursor.group_of(p.g_idx, row, p.group_size) : 0;
    }
  };
  int groups_now[kMmaTileBlocks] = {}, groups_next[kMmaTileBlocks] = {};
  if (!block_groups) tile_groups(0, groups_now);

  // Multistage pipeline: tile t + kMmaStages - 1 is requested while tile t is decoded and multiplied. One copy
  // group is committed per iteration (empty near the end) so that wait_group counts stay uniform.
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < tiles) load_tile(s, s);
    cp_async_commit();
  }
  for (int tile = 0; tile < tiles; ++tile) {
    if (!block_groups && tile + 1 < tiles) tile_groups(tile + 1, groups_next);
    cp_async_wait<kMmaStages - 2>();  // this thread's copies of `tile` have landed
    // Everyone's copies of `tile` are visible, and every warp is done with the previous tile, whose stage is
    // refilled next.
    __syncthreads();
    const int next = tile + kMmaStages - 1;
    if (next < tiles) load_tile(next % kMmaStages, next);
    cp_async_commit();
#pragma unroll
    for (int blk = 0; blk < kMmaTileBlocks; ++blk) {
      const int b = kb_begin + tile * kMmaTileBlocks + blk;
      if (b >= kb_end) break;  // the last tile may hold one block
      multiply_block(tile % kMmaStages, blk, block_groups ? block_group : groups_now[blk], block_groups);
      if (b + 1 == next_group_block) ++block_group, next_group_block += p.group_size / core::kBlockValues;
    }
#pragma unroll
    for (int blk = 0; blk < kMmaTileBlocks; ++blk) groups_now[blk] = groups_next[blk];
  }
  cp_async_wait<0>();
  if (current_group >= 0) finish_group();

  // Epilogue straight from the accumulators: two neighbouring columns per store.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = row0 + mt * 16 + fg + half * 8;
        const int n = warp_n + nt * 8 + 2 * ft;  // even; N is a multiple of 32, so n + 1 < N too
        if (m >= p.m || n >= p.n) continue;
        float v0 = out[mt][nt][2 * half], v1 = out[mt][nt][2 * half + 1];
        if (gridDim.z == 1) {
          if (p.bias != nullptr) {
            v0 += load_float(p.bias, n, p.bias_type);
            v1 += load_float(p.bias, n + 1, p.bias_type);
          }
          *reinterpret_cast<uint32_t*>(static_cast<T*>(p.y) + static_cast<int64_t>(m) * p.n + n) =
              MmaOps<T>::pack2(v0, v1);
        } else {
          *reinterpret_cast<float2*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n) =
              make_float2(v0, v1);
        }
      }
    }
  }
}

template <typename T, int BITS, int MT, bool FRAGMENT>
cudaError_t launch_mma_order(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = mma_smem_bytes(BITS, MT);
  auto kernel = gemm_mma_kernel<T, BITS, MT, FRAGMENT>;
  // Above 48 KB of dynamic shared memory a kernel must opt in (a host-side attribute, no synchronisation).
  if (smem > 48 * 1024) {
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (error != cudaSuccess) return error;
  }
  GPTQ_LAUNCH(grid, kMmaThreads, smem, stream, kernel)(p);
  return cudaSuccess;
}

template <typename T, int BITS, int MT>
cudaError_t launch_mma_typed(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  if constexpr (core::has_fragment_order(BITS)) {
    if (p.fragment_order) return launch_mma_order<T, BITS, MT, true>(p, grid, stream);
  }
  return launch_mma_order<T, BITS, MT, false>(p, grid, stream);
}

template <int BITS>
cudaError_t launch_mma(const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream) {
  if (type == ActType::kHalf) {
    switch (mt) {
      case 1: return launch_mma_typed<__half, BITS, 1>(p, grid, stream);
      case 2: return launch_mma_typed<__half, BITS, 2>(p, grid, stream);
      default: return launch_mma_typed<__half, BITS, 4>(p, grid, stream);
    }
  }
  switch (mt) {
    case 1: return launch_mma_typed<__nv_bfloat16, BITS, 1>(p, grid, stream);
    case 2: return launch_mma_typed<__nv_bfloat16, BITS, 2>(p, grid, stream);
    default: return launch_mma_typed<__nv_bfloat16, BITS, 4>(p, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
