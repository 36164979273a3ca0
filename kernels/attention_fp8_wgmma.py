"""fp8 (e4m3) attention for Hopper written in Gluon, with asynchronous wgmma.

Triton's attention kernel (kernels/attention_fp8.py) waits for every MMA before it starts
the softmax (Triton 3.6 emits `wgmma.wait_group 0` only), so the tensor cores idle while
the exponentials run. Here the MMAs are issued by hand (FlashAttention-3's intra-warpgroup
pipeline): S_j = Q·K_jᵀ and O += P_{j-1}·V_{j-1} go out together, the kernel waits for
S_j alone (`wait_group 1`), and the softmax of S_j runs while P_{j-1}·V_{j-1} is still on
the tensor cores. K and V tiles arrive by TMA into a ring of STAGES buffers.

The operands are those of cuDNN's fp8 attention (engine/optimization/cudnn_fp8.py): q8,
k8 (B, S, H, D) e4m3 with one scale each, keys optionally zero-padded past kv_len; V
transposed, vt8 (B, H, D, S_kv), since fp8 wgmma reads both operands K-major and P·V
reduces over the sequence. P goes to e4m3 as exp2(s - m)·448 (cuDNN's scale_s), the row
sum is taken in fp32 from the same values, so the 448 cancels. The output is bf16 in V's
quantized units (the caller multiplies by V's per-channel scale, as for cuDNN's output).

Not on the engine's path: on an H200 it runs at 0.82x (FLUX) and 0.88x (Wan) cuDNN's fp8
attention, latency-bound with two warps per scheduler (BENCHMARKS.md, Engine, seventh
round). attention_fp8_wgmma_ws.py runs the same loop warp-specialized, a little faster.
Measured and not kept (eighth round): exponentials partly on the FMA pipe (slower), tree row
reductions (within noise), row sums on the tensor cores (+3 %, less accurate than cuDNN):
the loop is bound by latency with two warps per scheduler, not by MUFU or instruction count.
Kernel tests need a Hopper GPU (tests/kernels/test_attention_fp8_wgmma.py); there is no
interpreter for Gluon.
"""

from __future__ import annotations

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
LOG2_FP8_MAX = gl.constexpr(math.log2(448.0))
BLOCK_M = 64
BLOCK_N = 128
STAGES = 3
NUM_WARPS = 4


@gluon.jit
def _issue_tile(desc, smem, bars, tile, row, col, STAGES: gl.constexpr):
    stage = tile % STAGES
    bar = bars.index(stage)
    mbarrier.expect(bar, desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], bar, smem.index(stage))


@gluon.jit
def _softmax_tile(
    s, m_i, l_i, qk_scale, kv_start, kv_len, MASK: gl.constexpr, layout: gl.constexpr
):
    # Scores in log2 units; P = exp2(s - m)·448 in e4m3, l sums the same fp32 values. The
    # scale rides in the exponent's FMA (it is positive, so the row max commutes with it).
    if MASK:
        cols = kv_start + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, layout))
        s = gl.where(gl.expand_dims(cols < kv_len, 0), s, -float("inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(gl.fma(s, qk_scale, -gl.expand_dims(m_new - LOG2_FP8_MAX, 1)))
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _as_operand(p, o_layout: gl.constexpr):
    # P's columns in the order `transpose_v` gives V's keys: within each 32 keys the
    # accumulator gives a thread columns {2q, 2q+1, 8+2q, 9+2q, ...} and the e4m3 operand
    # wants {4q..4q+3, ...}, so swapping those two index bits makes the conversion a renaming
    # of registers, with no data moved between threads (done in fp32, before the e4m3 cast).
    BM: gl.constexpr = p.shape[0]
    BN: gl.constexpr = p.shape[1]
    p = gl.reshape(
        gl.permute(gl.reshape(p, [BM, BN // 32, 2, 2, 4, 2]), [0, 1, 2, 4, 3, 5]), [BM, BN]
    )
    p = gl.convert_layout(p, gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4))
    return p.to(gl.float8e4nv)


@gluon.jit
def _step(
    j,
    p,
    m_i,
    l_i,
    acc,
    bufs,
    tiles,
    MASK: gl.constexpr,
    STAGES: gl.constexpr,
    s_layout: gl.constexpr,
    o_layout: gl.constexpr,
):
    # One KV tile: S_j = Q·K_jᵀ and O += P_{j-1}·V_{j-1} go to the tensor cores together;
    # the softmax of S_j runs while P_{j-1}·V_{j-1} is still in flight.
    q_smem, k_smem, v_smem, k_bars, v_bars, k_desc, vt_desc, s_zero = bufs
    qk_scale, kv_len, n_tiles, kv_row, vt_row, col = tiles
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    stage = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_bars.index(stage), (j // STAGES) & 1)
    s = warpgroup_mma(
        q_smem, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True
    )
    p_op = _as_operand(p, o_layout)
    mbarrier.wait(v_bars.index(prev), ((j - 1) // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_smem.index(prev).permute((1, 0)), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s, k_smem.index(stage)))[0]
    if j + STAGES < n_tiles:  # K_j is read: its buffer takes tile j + STAGES
        _issue_tile(
            k_desc, k_smem, k_bars, j + STAGES, kv_row + (j + STAGES) * BLOCK_N, col, STAGES
        )
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, j * BLOCK_N, kv_len, MASK, s_layout)
    # V_{j-2} was read by the last iteration's P·V: its buffer takes tile j - 2 + STAGES. The
    # branch also ends the basic block, which keeps ptxas from hoisting the wait below above
    # the softmax (it hoists a wgmma wait to the top of its block).
    if (j >= 2) & (j - 2 + STAGES < n_tiles):
        _issue_tile(
            vt_desc, v_smem, v_bars, j - 2 + STAGES, vt_row, (j - 2 + STAGES) * BLOCK_N, STAGES
        )
    acc = warpgroup_mma_wait(0, deps=(acc, v_smem.index(prev)))[0]
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
    return p, m_i, l_i, acc


@gluon.jit
def _store_rows(acc, l_i, out, row0):
    # O / l in bf16 for the query rows row0.. of (b, h), the rows past S_q left out.
    o_ptr, b, h, S_q, stride_ob, stride_os, stride_oh = out
    layout: gl.constexpr = acc.type.layout
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, layout))
    o = (acc / gl.expand_dims(l_o, 1)).to(gl.bfloat16)
    rows = row0 + gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
    offs = (
        b * stride_ob
        + gl.expand_dims(rows, 1) * stride_os
        + h * stride_oh
        + gl.expand_dims(cols, 0)
    )
    gl.store(o_ptr + offs, o, mask=gl.expand_dims(rows < S_q, 1))


@gluon.jit
def _attn_fwd_kernel(
    q_desc,
    k_desc,
    vt_desc,
    o_ptr,
    descale_q,
    descale_k,
    S_q,
    S_kv,
    H,
    kv_len,
    sm_scale,
    stride_ob,
    stride_os,
    stride_oh,
    HEAD_D: gl.constexpr,
    STAGES: gl.constexpr,
    num_warps: gl.constexpr,
):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_row = b * S_q + pid_m * BLOCK_M
    kv_row = b * S_kv
    vt_row = pid_bh * HEAD_D
    col = h * HEAD_D
    n_tiles = gl.cdiv(kv_len, BLOCK_N)
    qk_scale = gl.load(descale_q) * gl.load(descale_k) * sm_scale

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD_D, 32]
    )
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(
        k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout
    )
    v_smem = gl.allocate_shared_memory(
        vt_desc.dtype, [STAGES] + vt_desc.block_type.shape, vt_desc.layout
    )
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, col], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        if i < n_tiles:
            _issue_tile(k_desc, k_smem, k_bars, i, kv_row + i * BLOCK_N, col, STAGES)
            _issue_tile(vt_desc, v_smem, v_bars, i, vt_row, i * BLOCK_N, STAGES)

    m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s, q_smem, k_smem.index(0)))[0]
    if STAGES < n_tiles:
        _issue_tile(k_desc, k_smem, k_bars, STAGES, kv_row + STAGES * BLOCK_N, col, STAGES)
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, 0, kv_len, True, s_layout)
    bufs = (q_smem, k_smem, v_smem, k_bars, v_bars, k_desc, vt_desc, s_zero)
    tiles = (qk_scale, kv_len, n_tiles, kv_row, vt_row, col)
    # Only the last tile can hold padded keys, so only it is masked.
    for j in range(1, n_tiles - 1):
        p, m_i, l_i, acc = _step(
            j, p, m_i, l_i, acc, bufs, tiles, False, STAGES, s_layout, o_layout
        )
    if n_tiles > 1:
        p, m_i, l_i, acc = _step(
            n_tiles - 1, p, m_i, l_i, acc, bufs, tiles, True, STAGES, s_layout, o_layout
        )
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_bars.index(last), ((n_tiles - 1) // STAGES) & 1)
    p_op = _as_operand(p, o_layout)
    acc = warpgroup_mma(p_op, v_smem.index(last).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc, v_smem.index(last)))[0]

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))

    _store_rows(acc, l_i, (o_ptr, b, h, S_q, stride_ob, stride_os, stride_oh), pid_m * BLOCK_M)


def _descriptor(t2d: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.float8e4nv)
    return TensorDescriptor(t2d, list(t2d.shape), list(t2d.stride()), block, layout)


def transpose_v(v8: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) -> (B, H, D, S) contiguous, the keys reordered within each 32.

    fp8 wgmma reads both operands K-major and P·V reduces over the keys, so V goes in
    transposed. P·V is the same for any order of the keys applied to both P and V; in this
    order the softmax's registers already hold P as the MMA's operand (see `_as_operand`).
    S must be a multiple of 32 (keys are padded to KV_ALIGN).
    """
    b, s, h, d = v8.shape
    vt = v8.permute(0, 2, 3, 1).reshape(b, h, d, s // 32, 2, 2, 4, 2)
    return vt.permute(0, 1, 2, 3, 4, 6, 5, 7).reshape(b, h, d, s).contiguous()


def checked_operands(q8, k8, vt8, kv_len: int) -> tuple:
    """(q8, k8, vt8, kv_len) contiguous and checked, kv_len 0 read as all keys."""
    b, s_q, h, d = q8.shape
    s_kv = k8.shape[1]
    kv_len = kv_len or s_kv
    if d not in (64, 128) or k8.shape != (b, s_kv, h, d) or vt8.shape != (b, h, d, s_kv):
        raise ValueError(f"shapes q {tuple(q8.shape)}, k {tuple(k8.shape)}, vt {tuple(vt8.shape)}")
    if s_kv % 32 or not 0 < kv_len <= s_kv:
        raise ValueError(f"keys {s_kv} (pad them to a multiple of 32), kv_len {kv_len}")
    if any(t.dtype != torch.float8_e4m3fn for t in (q8, k8, vt8)):
        raise ValueError("q8, k8 and vt8 must be float8_e4m3fn")
    q8, k8, vt8 = (t if t.is_contiguous() else t.contiguous() for t in (q8, k8, vt8))
    return q8, k8, vt8, kv_len


def kernel_args(q8, k8, vt8, descale_q, descale_k, kv_len: int, block_m: int, block_n: int):
    """(out, the kernels' positional arguments up to the strides of out) for checked operands."""
    b, s_q, h, d = q8.shape
    s_kv = k8.shape[1]
    out = torch.empty(b, s_q, h, d, device=q8.device, dtype=torch.bfloat16)
    args = (
        _descriptor(q8.reshape(b * s_q, h * d), [block_m, d]),
        _descriptor(k8.reshape(b * s_kv, h * d), [block_n, d]),
        _descriptor(vt8.reshape(b * h * d, s_kv), [d, block_n]),
        out,
        descale_q,
        descale_k,
        s_q,
        s_kv,
        h,
        kv_len,
        LOG2E / math.sqrt(d),
        out.stride(0),
        out.stride(1),
        out.stride(2),
    )
    return out, args


def attention_fp8_wgmma(
    q8: torch.Tensor,
    k8: torch.Tensor,
    vt8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    kv_len: int = 0,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
    stages: int = STAGES,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """softmax(q kᵀ·descale_q·descale_k/sqrt(d)) v for q8, k8 (B, S, H, D) and vt8 (B, H, D, S_kv).

    kv_len > 0: only the first kv_len keys are real. Returns (B, S_q, H, D) bf16.
    """
    q8, k8, vt8, kv_len = checked_operands(q8, k8, vt8, kv_len)
    out, args = kernel_args(q8, k8, vt8, descale_q, descale_k, kv_len, block_m, block_n)
    b, s_q, h, d = q8.shape
    grid = (triton.cdiv(s_q, block_m), b * h)
    _attn_fwd_kernel[grid](*args, HEAD_D=d, STAGES=stages, num_warps=num_warps)
    return out
