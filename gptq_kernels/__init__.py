"""GPTQ quantization for PyTorch with fused low-bit dequantize+matmul kernels.

Public API:
  QuantLinear                  drop-in nn.Linear replacement holding GPTQ-packed weights
  QuantizedWeight, quantize_rtn    one layer's packed tensors; round-to-nearest quantization
  quantize_weight, GPTQWeight      GPTQ for one layer given its Hessian
  ops                          the compiled ops (torch.ops.gptq_kernels.*) with typed wrappers
  reference                    pure-PyTorch reference of the layout and the matmul
"""
from . import format, ops, reference
from .nn import QuantLinear
from .quantized import QuantizedWeight, quantize_rtn
from .gptq import GPTQWeight, quantize_weight

__all__ = ["QuantLinear", "QuantizedWeight", "quantize_rtn", "GPTQWeight", "quantize_weight", "ops", "reference", "format"]
__version__ = "0.1.0"
