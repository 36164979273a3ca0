"""fp8 (e4m3) row-wise dynamic quantization and the row-wise-scaled fp8 matmul of the ``fast`` mode.

API:
    quantize_fp8_rowwise(x) -> (x_fp8, scale)
        x: (..., K) bf16, fp16 or fp32. Per row: amax = max|x| (floored at 1e-12),
        x_fp8 = round_e4m3(clamp(x * (448 / amax), -448, 448)) as torch.float8_e4m3fn, and
        scale = amax / 448 in fp32 shaped (..., 1), so that x ~= x_fp8.float() * scale.
        One read of x, one write of x_fp8 (half its bytes) and of the scales.
    quantize_gelu_fp8_rowwise(x) -> (gelu_fp8, scale)
        The same for gelu(x) (tanh approximation, in fp32; tanh on the GPU's SFU), computed
        in the same pass: the input of a feed-forward's down projection straight from its up
        projection's output, without writing the activation in bf16 first. Rows wider than
        WIDE_ROW are held as two power-of-two segments (8,960 pads to 9,216, not 16,384).
    quantize_cat_gelu_fp8_rowwise(a, b) -> (cat_fp8, scale)
        The same for torch.cat([a, gelu_tanh(b)], -1), read from a and b in one pass: the
        input of a FLUX single block's output projection (attention output beside the MLP
        branch) without writing the concatenation.
    requantize_fp8_rowwise(x8, col_scale) -> (x_fp8, scale)
        The same for bf16(x8 · col_scale), x8 (B, S, K) e4m3 with fp32 scales per batch and
        column (B, 1, K): an fp8 attention's output, in V's per-channel units, straight to
        the output projection's input without writing it in bf16.
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
WIDE_ROW = 4096
"""Rows wider than this are held as power-of-two segments, one row per program."""


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
def _round_to_bf16(v):
    # Rounds fp32 to the nearest bf16 value, ties to even (finite values), for the
    # interpreter, whose cast to bf16 truncates like its cast to e4m3.
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32, bitcast=True)


@triton.jit
def _gelu_tanh(x, HW_TANH: tl.constexpr):
    # 0.5·x·(1 + tanh(u)), u = sqrt(2/pi)·(x + 0.044715·x³). On the GPU tanh is the SFU's
    # tanh.approx (absolute error about 2**-11, far inside e4m3's 2**-4 half step): one special
    # function per element instead of exp and a division, which made the wide feed-forward
    # rows compute-bound (Wan 8,960-wide: 480 -> 341 us; H100). The interpreter has no inline
    # assembly and takes x·sigmoid(2u), whose exp overflowing to inf for very negative x gives
    # the right limit (-0).
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    if HW_TANH:
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32, is_pure=True, pack=1
        )
        y = 0.5 * x * (1.0 + t)
    else:
        y = x / (1.0 + tl.exp(-2.0 * u))
    return y


@triton.jit
def _row_scales(amax):
    # (448 / amax, amax / 448) per row, amax floored; correctly rounded divisions, as torch
    # does them, so scales match bit for bit.
    amax = tl.maximum(amax, 1e-12)
    inv = tl.math.div_rn(tl.full(amax.shape, 448.0, tl.float32), amax)
    return inv, tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))


@triton.jit
def _store_e4m3(Q, offsets, mask, x, inv, PRE_ROUND: tl.constexpr):
    q = tl.clamp(x * inv[:, None], -448.0, 448.0)
    if PRE_ROUND:
        q = _round_to_e4m3(q)
    tl.store(Q + offsets, q.to(Q.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_rows_kernel(
    X, Q, S, C, M, N, ROWS_PER_C,
    PRE_ROUND: tl.constexpr, GELU: tl.constexpr, HW_TANH: tl.constexpr, COL_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    mask = rmask[:, None] & (cols < N)[None, :]
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    if COL_SCALE:  # x in per-column units, one row of scales per ROWS_PER_C rows; to bf16 first
        c = tl.load(C + (rows // ROWS_PER_C)[:, None] * N + cols[None, :], mask=mask, other=0.0)
        x = x * c
        if PRE_ROUND:
            x = _round_to_bf16(x)
        x = x.to(tl.bfloat16).to(tl.float32)
    if GELU:
        x = _gelu_tanh(x, HW_TANH)
    inv, scale = _row_scales(tl.max(tl.abs(x), axis=1))
    _store_e4m3(Q, off, mask, x, inv, PRE_ROUND)
    tl.store(S + rows, scale, mask=rmask)


@triton.jit
def _load_segment(P, row, start, n, SEG: tl.constexpr):
    cols = start + tl.arange(0, SEG)[None, :]
    mask = cols < n
    return tl.load(P + row * n + cols, mask=mask, other=0.0).to(tl.float32), cols, mask


@triton.jit
def _from_columns(x, C, c_row, n, cols, mask, PRE_ROUND: tl.constexpr):
    # x in per-column units (an e4m3 attention output): rescaled by its row of scales and
    # rounded to bf16, the values the bf16 output would have held.
    x = x * tl.load(C + c_row * n + cols, mask=mask, other=0.0)
    if PRE_ROUND:
        x = _round_to_bf16(x)
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _quantize_segments_kernel(
    A, B, Q, S, C, NA, NB, ROWS_PER_C,
    PRE_ROUND: tl.constexpr, HW_TANH: tl.constexpr, A_COLUMNS: tl.constexpr,
    SA0: tl.constexpr, SA1: tl.constexpr, SB0: tl.constexpr, SB1: tl.constexpr,
):
    # One row per program: cat([A row, gelu(B row)]) held in registers as up to four
    # power-of-two segments (SA0 + SA1 >= NA, SB0 + SB1 >= NB; 0 = absent), so that a row of
    # 8,960 pads to 9,216 lanes instead of 16,384. A_COLUMNS: A in per-column units C, one
    # row of C per ROWS_PER_C rows.
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((1,), tl.float32)
    if SA0 > 0:
        a0, ca0, ma0 = _load_segment(A, row, 0, NA, SA0)
        if A_COLUMNS:
            a0 = _from_columns(a0, C, row // ROWS_PER_C, NA, ca0, ma0, PRE_ROUND)
        amax = tl.maximum(amax, tl.max(tl.abs(a0), axis=1))
    if SA1 > 0:
        a1, ca1, ma1 = _load_segment(A, row, SA0, NA, SA1)
        if A_COLUMNS:
            a1 = _from_columns(a1, C, row // ROWS_PER_C, NA, ca1, ma1, PRE_ROUND)
        amax = tl.maximum(amax, tl.max(tl.abs(a1), axis=1))
    if SB0 > 0:
        b0, cb0, mb0 = _load_segment(B, row, 0, NB, SB0)
        b0 = _gelu_tanh(b0, HW_TANH)
        amax = tl.maximum(amax, tl.max(tl.abs(b0), axis=1))
    if SB1 > 0:
        b1, cb1, mb1 = _load_segment(B, row, SB0, NB, SB1)
        b1 = _gelu_tanh(b1, HW_TANH)
        amax = tl.maximum(amax, tl.max(tl.abs(b1), axis=1))
    inv, scale = _row_scales(amax)
    out = Q + row * (NA + NB)
    if SA0 > 0:
        _store_e4m3(out, ca0, ma0, a0, inv, PRE_ROUND)
    if SA1 > 0:
        _store_e4m3(out, ca1, ma1, a1, inv, PRE_ROUND)
    if SB0 > 0:
        _store_e4m3(out + NA, cb0, mb0, b0, inv, PRE_ROUND)
    if SB1 > 0:
        _store_e4m3(out + NA, cb1, mb1, b1, inv, PRE_ROUND)
    tl.store(S + row + tl.arange(0, 1), scale)


def _segments(n: int) -> tuple[int, int]:
    """n columns as at most two power-of-two segments (the second one masked at its end)."""
    if n == 0:
        return 0, 0
    high = 1 << (n.bit_length() - 1)
    return (n, 0) if high == n else (high, triton.next_power_of_2(n - high))


def _quantize_segments(a: torch.Tensor | None, b: torch.Tensor, a_columns=None, rows_per_c=1):
    # Rows of cat([a, gelu(b)]): a (M, NA) or None, b (M, NB), both contiguous; a_columns
    # (M / rows_per_c, NA): a's per-column units.
    m, nb = b.shape
    na = 0 if a is None else a.shape[1]
    q = b.new_empty((m, na + nb), dtype=FP8_DTYPE)
    s = b.new_empty((m, 1), dtype=torch.float32)
    if m:
        (sa0, sa1), (sb0, sb1) = _segments(na), _segments(nb)
        # 2 warps up to ~10k columns, 8 beyond. Wan's 8,960: 265 / 300 / 326 us at 2 / 4 / 8
        # warps on an H200, 320 / 320 / 347 on an H100; FLUX's 12,288 on the H100: 77 / 67 /
        # 64 us (and 3,072 + 12,288 faster at 8).
        _quantize_segments_kernel[(m,)](
            b if a is None else a, b, q, s, b if a_columns is None else a_columns, na, nb,
            rows_per_c, PRE_ROUND=INTERPRETING, HW_TANH=not INTERPRETING,
            A_COLUMNS=a_columns is not None,
            SA0=sa0, SA1=sa1, SB0=sb0, SB1=sb1, num_warps=2 if na + nb <= 10240 else 8,
        )
    return q, s


def quantize_fp8_rowwise_launch(
    x: torch.Tensor, q_out: torch.Tensor, scale_out: torch.Tensor,
    block_m: int | None = None, num_warps: int | None = None, pre_round: bool | None = None,
    gelu: bool = False,
    col_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of x (of gelu(x) with `gelu`) into preallocated fp8 and fp32 outputs.

    col_scale (B, 1, K) fp32: x is (B, S, K) in per-column units; each row is first rescaled
    by its batch's scales and rounded to bf16.
    """
    n = x.shape[-1]
    x2 = x.contiguous()
    m = x2.numel() // n if n else 0
    assert q_out.shape == x.shape and q_out.dtype == FP8_DTYPE and q_out.is_contiguous()
    assert scale_out.numel() == m and scale_out.dtype == torch.float32 and scale_out.is_contiguous()
    if m == 0:
        return q_out, scale_out
    block_m, block_n, warps = row_block(n, block_m, num_warps)
    if col_scale is not None:
        assert col_scale.shape == (x.shape[0], 1, n) and col_scale.dtype == torch.float32
        col_scale = col_scale.contiguous()
    _quantize_rows_kernel[(triton.cdiv(m, block_m),)](
        x2, q_out, scale_out, x2 if col_scale is None else col_scale, m, n,
        m if col_scale is None else m // x.shape[0],
        PRE_ROUND=INTERPRETING if pre_round is None else pre_round, GELU=gelu,
        HW_TANH=not INTERPRETING, COL_SCALE=col_scale is not None,
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


def _check_columns(x8: torch.Tensor, col_scale: torch.Tensor, name: str, scale_name: str):
    if x8.dim() != 3 or x8.dtype != FP8_DTYPE:
        raise ValueError(
            f"{name} must be (B, S, K) float8_e4m3fn, got {tuple(x8.shape)} {x8.dtype}"
        )
    if col_scale.shape != (x8.shape[0], 1, x8.shape[2]) or col_scale.dtype != torch.float32:
        raise ValueError(
            f"{scale_name} must be (B, 1, K) = {(x8.shape[0], 1, x8.shape[2])} float32, "
            f"got {tuple(col_scale.shape)} {col_scale.dtype}"
        )


def requantize_fp8_rowwise_reference(
    x8: torch.Tensor, col_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """requantize_fp8_rowwise in plain torch."""
    return quantize_fp8_rowwise_reference((x8.float() * col_scale).to(torch.bfloat16))


@torch.library.custom_op("mediagate::requantize_fp8_rowwise", mutates_args=())
def requantize_fp8_rowwise(
    x8: torch.Tensor, col_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 of bf16(x8 · col_scale) for x8 (B, S, K) e4m3 and col_scale (B, 1, K) fp32.

    One pass from an e4m3 tensor with per-column scales (an fp8 attention's output, V's
    per-channel scales) to the next fp8 linear's input, without writing the bf16 values.
    """
    _check_columns(x8, col_scale, "x8", "col_scale")
    if not use_triton(x8):
        q, s = requantize_fp8_rowwise_reference(x8, col_scale)
        return q.contiguous(), s.contiguous()
    q = x8.new_empty(x8.shape, dtype=FP8_DTYPE)
    s = x8.new_empty((*x8.shape[:-1], 1), dtype=torch.float32)
    # One row per program at 4 warps: 46-49 us on Wan's 32,760 x 1,536 (H200), against 55-72
    # us for 2-8 rows per program and 142-146 us for inductor's dequantize + quantize.
    return quantize_fp8_rowwise_launch(x8, q, s, block_m=1, num_warps=4, col_scale=col_scale)


@requantize_fp8_rowwise.register_fake
def _requantize_fp8_rowwise_fake(x8, col_scale):
    return (
        x8.new_empty(x8.shape, dtype=FP8_DTYPE),
        x8.new_empty((*x8.shape[:-1], 1), dtype=torch.float32),
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
    n = x.shape[-1]
    if n > WIDE_ROW:
        q, s = _quantize_segments(None, x.reshape(-1, n).contiguous())
        return q.view(x.shape), s.view(*x.shape[:-1], 1)
    q = x.new_empty(x.shape, dtype=FP8_DTYPE)
    s = x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return quantize_fp8_rowwise_launch(x, q, s, gelu=True)


@quantize_gelu_fp8_rowwise.register_fake
def _quantize_gelu_fp8_rowwise_fake(x):
    return _quantize_fp8_rowwise_fake(x)


@torch.library.custom_op("mediagate::quantize_cat_gelu_fp8_rowwise", mutates_args=())
def quantize_cat_gelu_fp8_rowwise(
    a: torch.Tensor, b: torch.Tensor, a_col_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantization of cat([a, gelu_tanh(b)], -1), one pass over a and b.

    a_col_scale (B, 1, NA) fp32: a is (B, S, NA) e4m3 in per-column units (an fp8
    attention's output, V's per-channel scales), taken as bf16(a · a_col_scale).
    """
    if a_col_scale is not None:
        _check_columns(a, a_col_scale, "a", "a_col_scale")
    if not use_triton(a):
        if a_col_scale is not None:
            a = (a.float() * a_col_scale).to(torch.bfloat16)
        q, s = quantize_fp8_rowwise_reference(torch.cat([a.float(), gelu_tanh_reference(b)], -1))
        return q.contiguous(), s.contiguous()
    na, nb, m = a.shape[-1], b.shape[-1], a.shape[:-1].numel()
    a2, b2 = a.reshape(m, na).contiguous(), b.reshape(m, nb).contiguous()
    if a_col_scale is None:
        q, s = _quantize_segments(a2, b2)
    else:
        q, s = _quantize_segments(a2, b2, a_col_scale.contiguous(), a.shape[1])
    return q.view(*a.shape[:-1], na + nb), s.view(*a.shape[:-1], 1)


@quantize_cat_gelu_fp8_rowwise.register_fake
def _quantize_cat_gelu_fp8_rowwise_fake(a, b, a_col_scale=None):
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
