"""Triton kernels for the diffusion-transformer hot paths, each beside its plain-torch reference.

Every op is a ``torch.library`` custom op (namespace ``mediagate``) with a fake
implementation, so torch.compile traces through it. CUDA tensors run the Triton kernels;
CPU tensors run them in Triton's interpreter when this process interprets (no CUDA device,
or TRITON_INTERPRET=1 set before Triton's import), and the torch reference otherwise.
"""

# _utils goes first: it decides on Triton's interpreter before any module imports Triton.
from kernels import _utils  # noqa: F401  isort: skip
from kernels.adaln_fp8 import (
    adaln_layernorm_fp8,
    adaln_layernorm_fp8_reference,
    residual_adaln_layernorm_fp8,
    residual_adaln_layernorm_fp8_reference,
)
from kernels.adaln_norm import adaln_layernorm, adaln_layernorm_reference
from kernels.attention_fp8 import attention_fp8, attention_fp8_reference, quantize_qkv_fp8
from kernels.attention_fp8_producer import (
    attention_fp8_norm_rope,
    norm_rope_quantize_fp8,
    norm_rope_quantize_fp8_reference,
)
from kernels.fp8 import (
    fp8_linear,
    fp8_linear_reference,
    quantize_fp8_rowwise,
    quantize_fp8_rowwise_reference,
    quantize_weight_fp8_rowwise,
)
from kernels.gated_residual import (
    gated_residual,
    gated_residual_adaln,
    gated_residual_adaln_reference,
    gated_residual_reference,
)
from kernels.gelu import (
    gelu_tanh_bias,
    gelu_tanh_bias_reference,
    linear_gelu_tanh,
    linear_gelu_tanh_reference,
)
from kernels.qk_norm import qk_rmsnorm, qk_rmsnorm_reference, rmsnorm_reference
from kernels.rope import (
    apply_rope,
    apply_rope_reference,
    qk_rmsnorm_rope,
    qk_rmsnorm_rope_reference,
)

__all__ = [
    "adaln_layernorm",
    "adaln_layernorm_fp8",
    "adaln_layernorm_fp8_reference",
    "residual_adaln_layernorm_fp8",
    "residual_adaln_layernorm_fp8_reference",
    "adaln_layernorm_reference",
    "apply_rope",
    "apply_rope_reference",
    "attention_fp8",
    "attention_fp8_norm_rope",
    "attention_fp8_reference",
    "fp8_linear",
    "fp8_linear_reference",
    "gated_residual",
    "gated_residual_adaln",
    "gated_residual_adaln_reference",
    "gated_residual_reference",
    "gelu_tanh_bias",
    "gelu_tanh_bias_reference",
    "linear_gelu_tanh",
    "linear_gelu_tanh_reference",
    "norm_rope_quantize_fp8",
    "norm_rope_quantize_fp8_reference",
    "qk_rmsnorm",
    "qk_rmsnorm_reference",
    "qk_rmsnorm_rope",
    "qk_rmsnorm_rope_reference",
    "quantize_fp8_rowwise",
    "quantize_fp8_rowwise_reference",
    "quantize_qkv_fp8",
    "quantize_weight_fp8_rowwise",
    "rmsnorm_reference",
]
