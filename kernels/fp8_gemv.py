"""Weight-only fp8 matrix-vector product for linears applied to a few rows (adaLN modulation).

A linear of one row (FLUX's per-block modulation: silu(temb) through 3,072 x 18,432 and
3,072 x 9,216 weights) is a GEMV: its time is the time to stream the weight from memory,
and the tensor-core path (quantize the row to e4m3, then torch._scaled_mm) reached 1.84 TB/s
of an H100's 3.35. Here the weight stays e4m3 (half the bytes of bf16) while the activation
stays in bf16/fp16: fewer roundings than quantizing it too, at no cost, since the op waits on
the weight either way.

API:
    fp8_weight_gemv(x, weight, weight_scale, bias=None) -> out
        x: (M, K) bf16 or fp16, 1 <= M <= GEMV_MAX_ROWS (0 rows give an empty output).
        weight: (N, K) float8_e4m3fn, K contiguous; weight_scale: N fp32 elements, any shape
        ((1, N) as FP8Linear keeps it); bias: (N,) or None.
        out[m, n] = sum_k x[m, k] · weight[n, k] · weight_scale[n] + bias[n], accumulated in
        fp32, written in x's dtype, shaped (M, N).
    fp8_weight_gemv_reference(x, weight, weight_scale, bias=None): the same in plain torch
        (fp32 math), the kernel's result without its final rounding to x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import HALF_DTYPES, INTERPRETING, use_triton
from kernels.fp8 import FP8_DTYPE, _round_to_bf16

GEMV_MAX_ROWS = 16
"""Most rows the GEMV takes: one tensor-core tile's worth (M padded to 16)."""
LAUNCH = {1: (8, 512, 2), 16: (32, 256, 4)}
"""(BLOCK_N, BLOCK_K, num_warps) by ROWS (1: one row; 16: 2 to 16 rows through tl.dot). From a
sweep on an H100 over FLUX's 3,072 x 18,432 and 3,072 x 9,216 weights: one row 21.3 / 12.1 us
(89% / 78% of copy bandwidth; inductor's quantization + torch._scaled_mm 29.3 / 16.4 us),
16 rows 25.1 / 16.7 us (32.0 / 16.5)."""


# fmt: off
@triton.jit
def _weight_tile(w_rows, nmask, k0, K, BLOCK_K: tl.constexpr):
    rk = k0 + tl.arange(0, BLOCK_K)
    kmask = rk < K
    return tl.load(w_rows + rk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0), rk, kmask


@triton.jit
def _gemv_kernel(
    X, W, S, B, OUT, M, N, K, stride_xm, stride_wn, stride_om,
    ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_N rows of the weight per program, streamed in (BLOCK_N, BLOCK_K) tiles with K
    # contiguous; each tile meets all M activation rows while in registers.
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, ROWS)
    nmask = rn < N
    w_rows = W + rn.to(tl.int64)[:, None] * stride_wn
    if ROWS == 1:
        # x as a plain vector: the same sum with x as a (1, BLOCK_K) tile went from 21 to 29 us
        # on the 18,432-row weight (BLOCK_N 16, 4 warps; H100), from the layouts Triton picks.
        acc1 = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w, rk, kmask = _weight_tile(w_rows, nmask, k0, K, BLOCK_K)
            x = tl.load(X + rk, mask=kmask, other=0.0).to(tl.float32)
            acc1 += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        acc = acc1[None, :]
    else:
        # With M multiply-adds per weight element the CUDA cores fall behind the memory
        # (M=4: 42 us against 25 here on the 18,432-row weight, H100); the tensor cores take
        # the padded rows for free. e4m3 values are exact in bf16 and fp16. The
        # interpreter's dot misreads bf16 operands: it gets them in fp32, the same products.
        acc = tl.zeros((ROWS, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w, rk, kmask = _weight_tile(w_rows, nmask, k0, K, BLOCK_K)
            xmask = (rm < M)[:, None] & kmask[None, :]
            x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=xmask, other=0.0)
            if INTERPRET:
                wt = tl.trans(w.to(tl.float32))
                acc = tl.dot(x.to(tl.float32), wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    # The weight's row scale is constant along K, so it goes on once, after the sum.
    acc = acc * tl.load(S + rn, mask=nmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(B + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if INTERPRET:
        if OUT.dtype.element_ty == tl.bfloat16:  # the interpreter's cast truncates
            acc = _round_to_bf16(acc)
    out = OUT + rm[:, None] * stride_om + rn[None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=(rm < M)[:, None] & nmask[None, :])
# fmt: on


def _check(x, weight, weight_scale, bias) -> None:
    if x.dim() != 2 or x.dtype not in HALF_DTYPES:
        raise ValueError(f"x must be (M, K) bf16 or fp16, got {tuple(x.shape)} {x.dtype}")
    if x.shape[0] > GEMV_MAX_ROWS:
        raise ValueError(f"x has {x.shape[0]} rows; the GEMV takes at most {GEMV_MAX_ROWS}")
    if weight.dim() != 2 or weight.dtype != FP8_DTYPE:
        raise ValueError(
            f"weight must be (N, K) float8_e4m3fn, got {tuple(weight.shape)} {weight.dtype}"
        )
    n, k = weight.shape
    if x.shape[1] != k:
        raise ValueError(f"x has K={x.shape[1]} columns, weight K={k}")
    if weight.stride(1) != 1:
        raise ValueError("weight must have K contiguous (row-major (N, K))")
    if weight_scale.numel() != n or weight_scale.dtype != torch.float32:
        raise ValueError(
            f"weight_scale must hold N={n} float32 values, got {tuple(weight_scale.shape)} "
            f"{weight_scale.dtype}"
        )
    if bias is not None and (bias.shape != (n,) or not bias.is_floating_point()):
        raise ValueError(
            f"bias must be ({n},) floating point, got {tuple(bias.shape)} {bias.dtype}"
        )


def _launch(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor | None, out: torch.Tensor,
    block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
) -> torch.Tensor:
    """Run the kernel into a preallocated (M, N) out of x's dtype; launch sizes for sweeps."""
    m, k = x.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        return out
    rows = 1 if m == 1 else GEMV_MAX_ROWS
    default = LAUNCH[rows]
    block_n, block_k = block_n or default[0], block_k or default[1]
    x = x if x.stride(1) == 1 else x.contiguous()
    scale = weight_scale.reshape(n).contiguous()
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, scale, scale if bias is None else bias, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        ROWS=rows, HAS_BIAS=bias is not None, INTERPRET=INTERPRETING,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps or default[2],
    )
    return out


def fp8_weight_gemv_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ (weight · weight_scale).T + bias in fp32 torch; returns fp32."""
    w = weight.float() * weight_scale.reshape(-1, 1).float()
    out = x.float() @ w.t()
    return out if bias is None else out + bias.float()


@torch.library.custom_op("mediagate::fp8_weight_gemv", mutates_args=())
def fp8_weight_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (M <= GEMV_MAX_ROWS, K) times an e4m3 weight with per-row scales, fp32 accumulation."""
    _check(x, weight, weight_scale, bias)
    if not use_triton(x):
        return fp8_weight_gemv_reference(x, weight, weight_scale, bias).to(x.dtype)
    out = x.new_empty((x.shape[0], weight.shape[0]))
    return _launch(x, weight, weight_scale, bias, out)


@fp8_weight_gemv.register_fake
def _fp8_weight_gemv_fake(x, weight, weight_scale, bias=None):
    _check(x, weight, weight_scale, bias)
    return x.new_empty((x.shape[0], weight.shape[0]))
