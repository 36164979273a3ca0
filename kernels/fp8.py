"""fp8 (e4m3) row-wise dynamic quantization and the row-wise-scaled fp8 matmul of the ``fast`` mode.

API:
    quantize_fp8_rowwise(x) -> (x_fp8, scale)
        x: (..., K) bf16, fp16 or fp32. Per row: amax = max|x| (floored at 1e-12),
        x_fp8 = round_e4m3(clamp(x * (448 / amax), -448, 448)) as torch.float8_e4m3fn, and
        scale = amax / 448 in fp32 shaped (..., 1), so that x ~= x_fp8.float() * scale.
        One read of x, one write of x_fp8 (half its bytes) and of the scales.
    quantize_gelu_fp8_rowwise(x) -> (gelu_fp8, scale)
        The same for gelu(x) (tanh approximation, in fp32), computed in the same pass: the
        input of a feed-forward's down projection straight from its up projection's output,
        without writing the activation in bf16 first.
    quantize_cat_gelu_fp8_rowwise(a, b) -> (cat_fp8, scale)
        The same for torch.cat([a, gelu_tanh(b)], -1), read from a and b in one pass: the
        input of a FLUX single block's output projection (attention output beside the MLP
        branch) without writing the concatenation.
    quantize_weight_fp8_rowwise(w) -> (w_fp8, w_scale)
        The same for a (N, K) nn.Linear weight: one scale per output channel, (N, 1) fp32.
    fp8_linear(x, w_fp8, w_scale, bias=None, out_dtype=torch.bfloat16) -> Tensor
        x @ W.T + bias for x (..., K) in bf16/fp16: quantizes x per row with the kernel here,
        then torch._scaled_mm (cuBLASLt's fp8 tensor-core path) with the row scales of x
        and of W applied in its epilogue, the bias too. K and N must be multiples of 16.
        cuBLASLt's row-wise path writes bf16; another out_dtype costs one cast.
    quantize_fp8_rowwise_reference / fp8_linear_reference: plain torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import INTERPRETING, row_block, use_triton

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_FLOOR = 1e-12


@triton.jit
def _round_to_e4m3(v):
    # Rounds fp32 values within +-448 to the nearest e4m3 value, ties to even, so that the
    # cast after it is exact. Only the interpreter needs it: it casts by truncating the
    # mantissa, where the GPU's cast (cvt.rn.satfinite) already rounds this way.
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    a = tl.abs(v)
    # Below 2**-6 e4m3 is subnormal with a fixed step of 2**-9: the fp32 spacing at 2**14.
    # The sign goes back on as a bit, so values that round to zero keep it (-0.0).
    sub = ((a + 16384.0) - 16384.0).to(tl.int32, bitcast=True) | (bits & -0x80000000)
    return tl.where(a < 0.015625, sub.to(tl.float32, bitcast=True), normal)


@triton.jit
def _gelu_tanh(x):
    # 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = sqrt(2/pi)·(x + 0.044715·x³); exp overflowing
    # to inf for very negative x gives the right limit (-0).
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _quantize_rows_kernel(
    X, Q, S, M, N,
    PRE_ROUND: tl.constexpr, GELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    mask = rmask[:, None] & (cols < N)[None, :]
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        x = _gelu_tanh(x)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12)
    # Correctly rounded divisions, as torch does them, so scales match bit for bit.
    inv = tl.math.div_rn(tl.full(amax.shape, 448.0, tl.float32), amax)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))
    q = tl.clamp(x * inv[:, None], -448.0, 448.0)
    if PRE_ROUND:
        q = _round_to_e4m3(q)
    tl.store(Q + off, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + rows, scale, mask=rmask)


@triton.jit
def _quantize_cat_gelu_rows_kernel(
    A, B, Q, S, M, NA, NB,
    PRE_ROUND: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One row per program: columns [0, NA) from A as they are, [NA, NA + NB) gelu(B).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    in_a = cols < NA
    in_b = (cols >= NA) & (cols < NA + NB)
    a = tl.load(A + row * NA + cols, mask=in_a, other=0.0).to(tl.float32)
    b = tl.load(B + row * NB + (cols - NA), mask=in_b, other=0.0).to(tl.float32)
    x = tl.where(in_a, a, _gelu_tanh(b))
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)
    inv = tl.math.div_rn(448.0, amax)
    q = tl.clamp(x * inv, -448.0, 448.0)
    if PRE_ROUND:
        q = _round_to_e4m3(q)
    tl.store(Q + row * (NA + NB) + cols, q.to(Q.dtype.element_ty), mask=in_a | in_b)
    tl.store(S + row, tl.math.div_rn(amax, 448.0))


def quantize_fp8_rowwise_launch(
    x: torch.Tensor, q_out: torch.Tensor, scale_out: torch.Tensor,
    block_m: int | None = None, num_warps: int | None = None, pre_round: bool | None = None,
    gelu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of x (of gelu(x) with `gelu`) into preallocated fp8 and fp32 outputs."""
    n = x.shape[-1]
    x2 = x.contiguous()
    m = x2.numel() // n if n else 0
    assert q_out.shape == x.shape and q_out.dtype == FP8_DTYPE and q_out.is_contiguous()
    assert scale_out.numel() == m and scale_out.dtype == torch.float32 and scale_out.is_contiguous()
    if m == 0:
        return q_out, scale_out
    block_m, block_n, warps = row_block(n, block_m, num_warps)
    _quantize_rows_kernel[(triton.cdiv(m, block_m),)](
        x2, q_out, scale_out, m, n,
        PRE_ROUND=INTERPRETING if pre_round is None else pre_round, GELU=gelu,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return q_out, scale_out


def quantize_fp8_rowwise_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantization in plain torch."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR)
    # Tensor-by-tensor divisions: with a Python scalar on either side torch multiplies by a
    # reciprocal, which can land one ulp off the correctly rounded quotient.
    fp8_max = torch.full_like(amax, FP8_MAX)
    q = (xf * (fp8_max / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, amax / fp8_max


@torch.library.custom_op("mediagate::quantize_fp8_rowwise", mutates_args=())
def quantize_fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic e4m3 quantization: (x_fp8, fp32 scale per row shaped (..., 1))."""
    if not use_triton(x):
        q, s = quantize_fp8_rowwise_reference(x)
        return q.contiguous(), s.contiguous()
    q = x.new_empty(x.shape, dtype=FP8_DTYPE)
    s = x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return quantize_fp8_rowwise_launch(x, q, s)


@quantize_fp8_rowwise.register_fake
def _quantize_fp8_rowwise_fake(x):
    return (
        x.new_empty(x.shape, dtype=FP8_DTYPE),
        x.new_empty((*x.shape[:-1], 1), dtype=torch.float32),
    )


def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    """The kernel's activation in fp32 torch: GELU with the tanh approximation."""
    return torch.nn.functional.gelu(x.float(), approximate="tanh")


@torch.library.custom_op("mediagate::quantize_gelu_fp8_rowwise", mutates_args=())
def quantize_gelu_fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic e4m3 quantization of gelu_tanh(x), the activation taken in fp32."""
    if not use_triton(x):
        q, s = quantize_fp8_rowwise_reference(gelu_tanh_reference(x))
        return q.contiguous(), s.contiguous()
    q = x.new_empty(x.shape, dtype=FP8_DTYPE)
    s = x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return quantize_fp8_rowwise_launch(x, q, s, gelu=True)


@quantize_gelu_fp8_rowwise.register_fake
def _quantize_gelu_fp8_rowwise_fake(x):
    return _quantize_fp8_rowwise_fake(x)


@torch.library.custom_op("mediagate::quantize_cat_gelu_fp8_rowwise", mutates_args=())
def quantize_cat_gelu_fp8_rowwise(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantization of cat([a, gelu_tanh(b)], -1), one pass over a and b."""
    if not use_triton(a):
        q, s = quantize_fp8_rowwise_reference(torch.cat([a.float(), gelu_tanh_reference(b)], -1))
        return q.contiguous(), s.contiguous()
    na, nb = a.shape[-1], b.shape[-1]
    a2, b2 = a.reshape(-1, na).contiguous(), b.reshape(-1, nb).contiguous()
    m = a2.shape[0]
    q = a.new_empty((*a.shape[:-1], na + nb), dtype=FP8_DTYPE)
    s = a.new_empty((*a.shape[:-1], 1), dtype=torch.float32)
    if m:
        block_n = triton.next_power_of_2(na + nb)
        _quantize_cat_gelu_rows_kernel[(m,)](
            a2, b2, q, s, m, na, nb,
            PRE_ROUND=INTERPRETING, BLOCK_N=block_n, num_warps=max(1, min(16, block_n // 1024)),
        )
    return q, s


@quantize_cat_gelu_fp8_rowwise.register_fake
def _quantize_cat_gelu_fp8_rowwise_fake(a, b):
    return (
        a.new_empty((*a.shape[:-1], a.shape[-1] + b.shape[-1]), dtype=FP8_DTYPE),
        a.new_empty((*a.shape[:-1], 1), dtype=torch.float32),
    )


def quantize_weight_fp8_rowwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize an (N, K) linear weight per output channel: (w_fp8, w_scale of (N, 1))."""
    if w.dim() != 2:
        raise ValueError(f"expected an (N, K) weight, got {tuple(w.shape)}")
    return quantize_fp8_rowwise(w)


def fp8_linear(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """x @ W.T (+ bias) through fp8 tensor cores with per-row scales of x and W."""
    k = x.shape[-1]
    n = w_fp8.shape[0]
    xq, xs = quantize_fp8_rowwise(x.reshape(-1, k))
    out = torch._scaled_mm(
        xq,
        w_fp8.t(),
        scale_a=xs,
        scale_b=w_scale.reshape(1, n).float(),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
        use_fast_accum=True,
    )
    if out_dtype != torch.bfloat16:
        out = out.to(out_dtype)
    return out.view(*x.shape[:-1], n)


def fp8_linear_reference(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """fp8_linear in fp32 arithmetic: quantize x, dequantize both, matmul, add bias."""
    xq, xs = quantize_fp8_rowwise_reference(x)
    w = w_fp8.float() * w_scale.reshape(-1, 1).float()
    out = (xq.float() * xs) @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
