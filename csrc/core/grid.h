// The uniform quantization grid of one group (scale and zero point of one output channel), shared by the
// CPU and CUDA GPTQ kernels. It is the rule of gptq_kernels/grid.py, operation for operation, so the
// compiled quantizer and the Python one produce the same integers:
//
//   range   [lo, hi] = [min(w, 0), max(w, 0)]; symmetric: hi = max(|lo|, hi), lo = -hi when lo < 0
//   empty   lo == hi == 0 -> [-1, 1] (an all-zero group still gets a usable scale)
//   scale   (hi - lo) / maxq;  zero = maxq+1 / 2 (symmetric) or round(-lo / scale)
//   lift    the checkpoint stores zero-1, so an asymmetric zero of 0 is not storable: such grids use
//           zero 1 and scale hi / (maxq - 1) instead
//   storage the scale is clamped to the smallest normal of the storage dtype and rounded to it before
//           use, so the integers are exactly those the checkpoint's scales reproduce
#pragma once
#include <cmath>

#include "core/bitpack.h"

namespace gptq_kernels {
namespace core {

struct Grid {
  float scale;  // not yet rounded to the storage dtype
  float zero;
};

GPTQ_HD Grid fit_grid(float lo, float hi, int bits, bool sym) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  lo = fminf(lo, 0.0f);
  hi = fmaxf(hi, 0.0f);
  if (sym) {
    hi = fmaxf(fabsf(lo), hi);
    if (lo < 0.0f) lo = -hi;
  }
  if (lo == 0.0f && hi == 0.0f) {
    lo = -1.0f;
    hi = 1.0f;
  }
  Grid g;
  g.scale = (hi - lo) / maxq;
  if (sym) {
    g.zero = (maxq + 1.0f) / 2.0f;
  } else {
    g.zero = rintf(-lo / g.scale);
    if (g.zero < 1.0f) {
      g.scale = hi / (maxq - 1.0f);
      g.zero = 1.0f;
    }
  }
  return g;
}

// q = clamp(round(w / scale) + zero, 0, maxq); rounding is to nearest even, as torch.round (rintf, not
// nearbyintf: the latter saves and restores the floating-point environment and costs ten times more).
GPTQ_HD float quantize_value(float w, float scale, float zero, int bits) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  return fminf(fmaxf(rintf(w / scale) + zero, 0.0f), maxq);
}

GPTQ_HD float dequantize_value(float q, float scale, float zero) { return scale * (q - zero); }

}  // namespace core
}  // namespace gptq_kernels
