"""GPTQ quantization for PyTorch with fused low-bit dequantize+matmul kernels.

Public API:
  QuantLinear                  drop-in nn.Linear replacement holding GPTQ-packed weights
  QuantizedWeight, quantize_rtn    one layer's packed tensors; round-to-nearest quantization
  quantize_weight, GPTQWeight      GPTQ for one layer given its Hessian
  quantize_weight_gptqt, BCQWeight GPTQT (binary-coded weights) for one layer; fit_binary_coding: its step 2
  quantize_model, quantize_model_rtn   GPTQ / GPTQT / round-to-nearest over a transformers decoder model
  evaluate_perplexity              perplexity over non-overlapping windows
  save_quantized, load_quantized   GPTQ-format checkpoints (safetensors + config.json), AutoGPTQ/GPTQModel's too
  patch_transformers           AutoModelForCausalLM.from_pretrained on GPTQ checkpoints uses these layers
  BCQLinear                    binary-coded (GPTQT) layer
  ops                          the compiled ops (torch.ops.gptq_kernels.*) with typed wrappers
  reference                    pure-PyTorch reference of the layout and the matmul
"""
from . import format, ops, reference
from .nn import QuantLinear
from .quantized import QuantizedWeight, quantize_rtn
from .gptq import GPTQWeight, PreparedHessian, prepare_hessian, quantize_weight
from .bcq_fit import fit_binary_coding
from .gptqt import BCQWeight, quantize_weight_gptqt
from .driver import LayerReport, quantize_model
from .evaluate import evaluate_perplexity
from .checkpoint import CheckpointError, load_quantized, save_quantized
from .hf_integration import patch_transformers, unpatch_transformers
from .bcq_linear import BCQLinear


def quantize_model_rtn(model, **kwargs):
    """Round-to-nearest baseline over the same layers as quantize_model (no calibration data)."""
    return quantize_model(model, None, method="rtn", **kwargs)


__all__ = ["QuantLinear", "QuantizedWeight", "quantize_rtn", "GPTQWeight", "quantize_weight", "prepare_hessian", "PreparedHessian",
           "quantize_weight_gptqt", "BCQWeight", "fit_binary_coding",
           "quantize_model", "quantize_model_rtn", "LayerReport", "evaluate_perplexity", "save_quantized",
           "load_quantized", "CheckpointError", "patch_transformers", "unpatch_transformers", "BCQLinear", "ops", "reference", "format"]
__version__ = "0.1.0"
