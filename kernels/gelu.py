"""GELU (tanh approximation) with bias: alone, and fused into the epilogue of the MLP's up projection.

API:
    gelu_tanh_bias(x, bias) -> Tensor
        gelu_tanh(x + bias); x: (..., N) bf16 or fp16, bias: (N,). fp32 arithmetic, x's dtype
        out, contiguous.
    linear_gelu_tanh(x, weight, bias, fused_epilogue=False) -> Tensor
        gelu_tanh(x @ weight.T + bias); x: (..., K), weight: (N, K) as nn.Linear stores it,
        bias: (N,). By default a cuBLAS matmul followed by gelu_tanh_bias (one extra read
        and write of the activation). With fused_epilogue=True, one Triton matmul whose
        epilogue adds the bias and applies the GELU, so the activation is written once;
        on an H200 at FLUX and Wan MLP sizes that matmul runs at three quarters of cuBLAS's
        rate (509 against 676 TFLOP/s: no TMA loads or warp specialization), which costs
        more than the pass it saves; BENCHMARKS.md has the figures.
    gelu_tanh_bias_reference / linear_gelu_tanh_reference: plain torch.

gelu_tanh(x) = 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as
x * sigmoid(2u), which needs one exp and no tanh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._utils import INTERPRETING, use_triton


@triton.jit
def _gelu_tanh_f32(x):
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    # exp overflows to inf for very negative x, which gives the right limit (-0).
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _gelu_bias_kernel(
    X, BIAS, OUT, M, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    y = _gelu_tanh_f32(x + bias[None, :])
    tl.store(OUT + off, y.to(OUT.dtype.element_ty), mask=mask)


def gelu_tanh_bias_launch(x: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x + bias) into a preallocated contiguous ``out``."""
    assert out.shape == x.shape and out.is_contiguous() and bias.numel() == x.shape[-1]
    n = x.shape[-1]
    x2 = x.contiguous()
    m = x2.numel() // n if n else 0
    if m == 0:
        return out
    block_n = min(triton.next_power_of_2(n), 1024)
    block_m = max(1, 4096 // block_n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gelu_bias_kernel[grid](
        x2, bias.contiguous(), out, m, n, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4
    )
    return out


def gelu_tanh_bias_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.gelu(x + bias, approximate='tanh') in plain torch."""
    return F.gelu(x + bias, approximate="tanh")


@torch.library.custom_op("mediagate::gelu_tanh_bias", mutates_args=())
def gelu_tanh_bias(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x + bias) in one pass."""
    if not use_triton(x):
        return gelu_tanh_bias_reference(x, bias).contiguous()
    return gelu_tanh_bias_launch(x, bias, x.new_empty(x.shape))


@gelu_tanh_bias.register_fake
def _gelu_tanh_bias_fake(x, bias):
    return x.new_empty(x.shape)


# Matmul with the bias + GELU epilogue. Hopper-sized tiles; wgmma is chosen by the compiler
# for 8-warp programs whose tiles are multiples of 64.
_GPU_BLOCK_K = 64  # one BLOCK_K for every config, so EVEN_K is known before tuning
_MATMUL_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": _GPU_BLOCK_K, "GROUP_M": 8},
                  num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": _GPU_BLOCK_K, "GROUP_M": 8},
                  num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": _GPU_BLOCK_K, "GROUP_M": 8},
                  num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": _GPU_BLOCK_K, "GROUP_M": 16},
                  num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": _GPU_BLOCK_K, "GROUP_M": 8},
                  num_warps=4, num_stages=4),
]


@triton.jit
def _linear_gelu_kernel(
    A, W, BIAS, C, M, N, K, stride_am, stride_wn, stride_cm,
    APPLY_GELU: tl.constexpr,
    UPCAST: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row-blocks share each column-block of W while it is in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows and columns wrap onto valid ones (their results are never stored),
    # which keeps M and N masks out of the inner loop.
    offs_am = offs_m % M
    offs_wn = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + offs_am[:, None] * stride_am + offs_k[None, :]
    w_ptrs = W + offs_wn[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if UPCAST:
            # Triton's interpreter multiplies bf16 operands as raw 16-bit integers; fp32
            # operands give it the tensor cores' arithmetic (exact products, fp32 sums).
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    nmask = offs_n < N
    acc += tl.load(BIAS + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if APPLY_GELU:
        acc = _gelu_tanh_f32(acc)
    c_ptrs = C + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=(offs_m < M)[:, None] & nmask[None, :])


_linear_gelu_tuned = _linear_gelu_kernel if INTERPRETING else triton.autotune(
    configs=_MATMUL_CONFIGS, key=["M", "N", "K"]
)(_linear_gelu_kernel)


def linear_gelu_tanh_launch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
    apply_gelu: bool = True,
) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias) into a preallocated contiguous ``out`` of (..., N)."""
    k = x.shape[-1]
    n = weight.shape[0]
    assert weight.shape[1] == k and bias.numel() == n and out.is_contiguous()
    a = x.reshape(-1, k)
    if a.stride(-1) != 1:
        a = a.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    m = a.shape[0]
    if m == 0 or n == 0:
        return out
    assert m * max(a.stride(0), n) < 2**31, "int32 offsets"
    c = out.view(m, n)
    grid = lambda meta: (  # noqa: E731
        triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),
    )
    if INTERPRETING:
        meta = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
        _linear_gelu_tuned[grid(meta)](
            a, w, bias, c, m, n, k, a.stride(0), w.stride(0), n, apply_gelu, True, k % 32 == 0, **meta
        )
    else:
        _linear_gelu_tuned[grid](
            a, w, bias, c, m, n, k, a.stride(0), w.stride(0), n, apply_gelu, False, k % _GPU_BLOCK_K == 0
        )
    return out


def linear_gelu_tanh_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """F.gelu(F.linear(x, weight, bias), approximate='tanh') in plain torch."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


@torch.library.custom_op("mediagate::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fused_epilogue: bool = False
) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias): cuBLAS then gelu_tanh_bias, or one Triton matmul."""
    if not use_triton(x):
        return linear_gelu_tanh_reference(x, weight, bias).contiguous()
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    if fused_epilogue:
        return linear_gelu_tanh_launch(x, weight, bias, out)
    return gelu_tanh_bias_launch(F.linear(x, weight), bias, out)


@linear_gelu_tanh.register_fake
def _linear_gelu_tanh_fake(x, weight, bias, fused_epilogue=False):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
