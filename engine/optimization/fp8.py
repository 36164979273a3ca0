"""fp8 (e4m3) linears: row-wise weight scales, row-wise dynamic activation scales.

`FP8Linear` replaces an `nn.Linear` on one model instance. Its forward quantizes the
activation per row (one amax per token) and runs `torch._scaled_mm` with both scale
vectors applied in the GEMM epilogue, bias included. Written in plain torch, so that
inductor fuses the activation quantization into whatever produced the activation (the
modulated LayerNorm, GELU, attention's output reshape) instead of a separate pass; the
Triton quantizer of `kernels.fp8` can be chosen instead (`backend="kernels"`).

Inputs of at most `GEMV_MAX_ROWS` rows (adaLN modulation: silu(temb), one row per sample)
skip the activation quantization: such a linear only streams its weight, so the e4m3 weight
goes through `kernels.fp8_gemv` with the activation kept in bf16, which is more accurate
and faster than the tensor-core path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kernels._utils import HALF_DTYPES
from kernels.fp8_gemv import GEMV_MAX_ROWS, fp8_weight_gemv, fp8_weight_gemv_reference

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_FLOOR = 1e-12


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_fp8, fp32 scale per row shaped (..., 1)) with x ~= x_fp8 * scale."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR)
    q = (xf * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, amax / FP8_MAX


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x.float(), approximate="tanh")


class FP8Linear(nn.Module):
    """Drop-in for `nn.Linear` computing x @ W.T + b on fp8 tensor cores."""

    def __init__(
        self,
        weight_fp8: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        out_dtype: torch.dtype,
        backend: str = "torch",
        fast_accum: bool = True,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        # Buffers, not parameters: nothing trains them, and ModelMixin.dtype keeps
        # reporting the compute dtype (it looks at parameters first).
        self.register_buffer("weight", weight_fp8)
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1).float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))
        self.out_dtype = out_dtype
        self.backend = backend
        self.fast_accum = fast_accum
        # "gelu_tanh": the input is a pre-activation, and GELU runs inside the quantizer
        # (kernels.fp8.quantize_gelu_fp8_rowwise). Set by `fuse_gelu_into_fp8`.
        self.activation: str | None = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, backend: str = "torch", fast_accum: bool = True
    ) -> FP8Linear:
        """Quantize a linear's weight per output channel and wrap it."""
        w = linear.weight.detach()
        w_fp8, w_scale = quantize_rowwise(w)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(w_fp8, w_scale, bias, out_dtype=w.dtype, backend=backend, fast_accum=fast_accum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.activation is None and x2.shape[0] <= GEMV_MAX_ROWS:
            return self.forward_gemv(x2, x.shape[:-1])
        if self.activation == "gelu_tanh" and x2.is_cuda:
            from kernels.fp8 import quantize_gelu_fp8_rowwise

            xq, xs = quantize_gelu_fp8_rowwise(x2)
        elif self.activation == "gelu_tanh":
            # Off the GPU the same math in torch (Triton's interpreter is for kernel tests).
            xq, xs = quantize_rowwise(_gelu_tanh(x2))
        elif self.backend == "kernels":
            from kernels.fp8 import quantize_fp8_rowwise

            xq, xs = quantize_fp8_rowwise(x2)
        else:
            xq, xs = quantize_rowwise(x2)
        return self.matmul_fp8(xq, xs, x.shape[:-1])

    def forward_gemv(self, x2: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """The linear of a few rows (M, K), the activation unquantized: weight-only fp8."""
        xh = x2 if x2.dtype in HALF_DTYPES else x2.to(torch.bfloat16)
        if xh.is_cuda:
            out = fp8_weight_gemv(xh, self.weight, self.weight_scale, self.bias)
        else:
            # Off the GPU the same math in torch (Triton's interpreter is for kernel tests).
            out = fp8_weight_gemv_reference(xh, self.weight, self.weight_scale, self.bias)
            out = out.to(xh.dtype)
        if self.out_dtype != out.dtype:
            out = out.to(self.out_dtype)
        return out.reshape(*lead, self.out_features)

    def forward_cat_gelu(
        self, a: torch.Tensor, b: torch.Tensor, a_col_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """self(cat([a, gelu_tanh(b)], -1)), without writing the concatenation or gelu(b).

        a_col_scale (B, 1, NA): a is e4m3 in per-column units (cuDNN's fp8 attention output),
        read as bf16(a · a_col_scale) by the same quantizer.
        """
        if a.is_cuda:
            from kernels.fp8 import quantize_cat_gelu_fp8_rowwise

            xq, xs = quantize_cat_gelu_fp8_rowwise(a, b, a_col_scale)
        else:
            # Off the GPU the same math in torch (Triton's interpreter is for kernel tests).
            if a_col_scale is not None:
                a = (a.float() * a_col_scale).to(torch.bfloat16)
            xq, xs = quantize_rowwise(torch.cat([a.float(), _gelu_tanh(b)], dim=-1))
        return self.matmul_fp8(xq.flatten(0, -2), xs.flatten(0, -2), a.shape[:-1])

    def matmul_fp8(self, xq: torch.Tensor, xs: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """The linear of an input already quantized by rows: xq (M, K) e4m3, xs (M, 1) fp32."""
        out = torch._scaled_mm(
            xq,
            self.weight.t(),
            scale_a=xs,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=self.fast_accum,
        )
        if self.out_dtype != torch.bfloat16:
            out = out.to(self.out_dtype)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"backend={self.backend}{act}"
        )


def is_plain_fp8(linear: object) -> bool:
    """An FP8Linear reading its input as it is (no LoRA wrapper, no activation moved in):
    one whose input may be handed over as fp8 rows (`FP8Linear.matmul_fp8`)."""
    return type(linear) is FP8Linear and linear.activation is None


def _eligible(linear: nn.Linear) -> bool:
    # _scaled_mm needs K and N in multiples of 16 on the tensor-core path; an emptied
    # weight is a projection that QKV fusion made dead.
    return (
        linear.in_features % 16 == 0 and linear.out_features % 16 == 0 and linear.weight.numel() > 0
    )


def quantize_linears(
    model: nn.Module,
    *,
    include: Callable[[str, nn.Linear], bool],
    backend: str = "torch",
    fast_accum: bool = True,
) -> list[str]:
    """Replace the `nn.Linear`s of `model` that `include` accepts with `FP8Linear`s, in place.

    LoRA adapter matrices (peft's `lora_A` / `lora_B`) stay in bf16: they are tiny, and a
    hot-swap writes new values into them. The base layer under a LoRA wrapper is quantized.
    """
    # Collect names only: holding the modules themselves would keep every replaced bf16
    # weight alive until the end, doubling peak memory while a 12B model is converted.
    targets = [
        (name, child_name)
        for name, module in model.named_modules()
        for child_name, child in module.named_children()
        if type(child) is nn.Linear
    ]
    replaced: list[str] = []
    for name, child_name in targets:
        full = f"{name}.{child_name}" if name else child_name
        parts = full.split(".")
        if "lora_A" in parts or "lora_B" in parts or "lora_magnitude_vector" in parts:
            continue
        parent = model.get_submodule(name)
        child = getattr(parent, child_name)
        if not _eligible(child) or not include(full, child):
            continue
        setattr(
            parent, child_name, FP8Linear.from_linear(child, backend=backend, fast_accum=fast_accum)
        )
        del child
        replaced.append(full)
    return replaced
