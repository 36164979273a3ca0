"""The Gluon fp8 attention of attention_fp8_wgmma.py, warp-specialized.

One CTA holds 2 x BLOCK_M query rows: two consumer warpgroups, one per BLOCK_M rows, share
each K/V tile, and one loading warp keeps the ring of K/V tiles full. The consumers run
the same loop as attention_fp8_wgmma (S_j and P_{j-1}·V_{j-1} issued together, the
softmax of S_j under P·V) but issue no loads: they wait on a tile's "full" barrier and
arrive on its "empty" barrier when their MMAs have read it. Registers are reallocated
between the partitions (the loading warp needs few). The output is the plain kernel's to
the bit.

From 8,192 keys a warp skips the accumulator's rescale in tiles where none of its rows' max
moved (`_rescale`). On an H200 it runs at 0.84x (FLUX) and 0.93x (Wan) cuDNN's fp8 attention,
3-6 % faster than the plain kernel (BENCHMARKS.md, Engine, eighth round); cuDNN stays on the
engine's path.
"""

from __future__ import annotations

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

from kernels.attention_fp8_wgmma import (
    _as_operand,
    _softmax_tile,
    _store_rows,
    checked_operands,
    kernel_args,
)

BLOCK_M = 64
BLOCK_N = 128
STAGES = 2  # 3 measured the same (H200: Wan 7.65 / 7.70 ms, FLUX 0.346 / 0.344)
CONSUMER_REGS = 240
LOADER_REGS = 24
MAXNREG = 168
LAZY_RESCALE_MIN_KEYS = 8192
"""A warp's 16 rows all keep their max in a tile with odds that grow with the tile count
(a new row max in tile t of i.i.d. scores has probability about 1/t): skipping pays at Wan's
32,760 keys (+3 %, H200) and costs at FLUX's 4,608 (-2 %)."""


@gluon.jit
def _load_partition(descs, bufs, bars, coords, STAGES: gl.constexpr):
    q_desc, k_desc, vt_desc = descs
    q_smem, k_smem, v_smem = bufs
    q_bars, k_full, k_empty, v_full, v_empty = bars
    q_row, kv_row, vt_row, col, n_tiles = coords
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    for w in gl.static_range(2):
        mbarrier.expect(q_bars.index(w), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(
            q_desc, [q_row + w * BLOCK_M, col], q_bars.index(w), q_smem.index(w)
        )
    for j in range(n_tiles):
        stage = j % STAGES
        phase = (j // STAGES) & 1
        # A fresh mbarrier counts as having completed the phase before 0: the first round
        # of waits on the empty barriers passes at once.
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_full.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(
            k_desc, [kv_row + j * BLOCK_N, col], k_full.index(stage), k_smem.index(stage)
        )
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_full.index(stage), vt_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(
            vt_desc, [vt_row, j * BLOCK_N], v_full.index(stage), v_smem.index(stage)
        )


@gluon.jit
def _pinned(x):
    # An identity the compiler may not move (a side-effecting asm).
    return gl.inline_asm_elementwise(
        "mov.b32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=False, pack=1
    )


def _rescale_asm(n: int = 64) -> str:
    # PTX over one thread's n accumulator values: $0.. out, $n.. in, $2n.. each one's alpha.
    # Values 0 and 2 belong to the thread's two rows (r and r + 8) of the wgmma accumulator.
    return "\n".join(
        [
            "{",
            ".reg .pred %p<3>;",
            f"setp.neu.f32 %p0, ${2 * n}, 0f3F800000;",
            f"setp.neu.f32 %p1, ${2 * n + 2}, 0f3F800000;",
            "or.pred %p0, %p0, %p1;",
            "vote.sync.any.pred %p2, %p0, 0xffffffff;",
            *(f"mov.b32 ${k}, ${n + k};" for k in range(n)),
            "@!%p2 bra.uni SKIP${:uid};",
            *(f"mul.f32 ${k}, ${k}, ${2 * n + k};" for k in range(n)),
            "SKIP${:uid}:",
            "}",
        ]
    )


RESCALE_ASM = gl.constexpr(_rescale_asm())
RESCALE_CONSTRAINTS = gl.constexpr(",".join(["=r"] * 64 + ["r"] * 128))
"""One thread's 64 accumulator values (64 query rows by a head dim of 128, 128 threads)."""


@gluon.jit
def _rescale(acc, alpha):
    # acc * alpha per row, skipped by a whole warp when none of its rows' max moved (the
    # usual case after the first tiles): a vote and a uniform branch, in PTX.
    acc, alpha = gl.broadcast(acc, gl.expand_dims(alpha, 1))
    return gl.inline_asm_elementwise(
        RESCALE_ASM, RESCALE_CONSTRAINTS, [acc, alpha], dtype=gl.float32, is_pure=True, pack=64
    )


@gluon.jit
def _consumer_step(
    j,
    p,
    m_i,
    l_i,
    acc,
    ctx,
    MASK: gl.constexpr,
    s_layout: gl.constexpr,
    o_layout: gl.constexpr,
    LAZY_RESCALE: gl.constexpr,
):
    q, bufs, bars, qk_scale, kv_len = ctx
    q_smem, k_smem, v_smem = bufs
    q_bars, k_full, k_empty, v_full, v_empty = bars
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    BLOCK_M: gl.constexpr = q.shape[0]
    stage = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_full.index(stage), (j // STAGES) & 1)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    p_op = _as_operand(p, o_layout)
    mbarrier.wait(v_full.index(prev), ((j - 1) // STAGES) & 1)
    s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    acc = warpgroup_mma(p_op, v_smem.index(prev).permute((1, 0)), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s, k_smem.index(stage)))[0]
    mbarrier.arrive(k_empty.index(stage), count=1)  # K_j is read
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, j * BLOCK_N, kv_len, MASK, s_layout)
    # The wait for the next V tile (the next step's first wait, as good as free here) is a
    # loop, so the wgmma wait below starts a new basic block: ptxas hoists a wgmma wait to
    # the top of its block, which would put it above the softmax. `_pinned` keeps LLVM from
    # sinking the softmax below that loop.
    p = _pinned(p)
    mbarrier.wait(v_full.index(stage), (j // STAGES) & 1)
    acc = warpgroup_mma_wait(0, deps=(acc, v_smem.index(prev)))[0]
    mbarrier.arrive(v_empty.index(prev), count=1)
    alpha = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    if LAZY_RESCALE:
        acc = _rescale(acc, alpha)
    else:
        acc = acc * gl.expand_dims(alpha, 1)
    return p, m_i, l_i, acc


@gluon.jit
def _consumer(bufs, bars, out_args, qk_scale, kv_len, W: gl.constexpr, LAZY_RESCALE: gl.constexpr):
    q_smem, k_smem, v_smem = bufs
    q_bars, k_full, k_empty, v_full, v_empty = bars
    out, row0, n_tiles = out_args
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    HEAD_D: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 32]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_D, 32]
    )
    q = q_smem.index(W)
    m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)

    mbarrier.wait(q_bars.index(W), 0)
    mbarrier.wait(k_full.index(0), 0)
    s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s, q, k_smem.index(0)))[0]
    mbarrier.arrive(k_empty.index(0), count=1)
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, 0, kv_len, True, s_layout)
    ctx = (q, bufs, bars, qk_scale, kv_len)
    for j in range(1, n_tiles - 1):
        p, m_i, l_i, acc = _consumer_step(
            j, p, m_i, l_i, acc, ctx, False, s_layout, o_layout, LAZY_RESCALE
        )
    if n_tiles > 1:
        p, m_i, l_i, acc = _consumer_step(
            n_tiles - 1, p, m_i, l_i, acc, ctx, True, s_layout, o_layout, LAZY_RESCALE
        )
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_full.index(last), ((n_tiles - 1) // STAGES) & 1)
    p_op = _as_operand(p, o_layout)
    acc = warpgroup_mma(p_op, v_smem.index(last).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc, v_smem.index(last)))[0]
    mbarrier.arrive(v_empty.index(last), count=1)

    _store_rows(acc, l_i, out, row0 + W * BLOCK_M)


@gluon.jit
def _attn_fwd_ws_kernel(
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
    CONSUMER_REGS: gl.constexpr,
    LOADER_REGS: gl.constexpr,
    LAZY_RESCALE: gl.constexpr,
    num_warps: gl.constexpr,
):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    row0 = pid_m * 2 * BLOCK_M
    n_tiles = gl.cdiv(kv_len, BLOCK_N)
    qk_scale = gl.load(descale_q) * gl.load(descale_k) * sm_scale

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(
        k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout
    )
    v_smem = gl.allocate_shared_memory(
        vt_desc.dtype, [STAGES] + vt_desc.block_type.shape, vt_desc.layout
    )
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # both consumer warpgroups read each tile
        mbarrier.init(v_empty.index(i), count=2)

    bufs = (q_smem, k_smem, v_smem)
    bars = (q_bars, k_full, k_empty, v_full, v_empty)
    coords = (b * S_q + row0, b * S_kv, pid_bh * HEAD_D, h * HEAD_D, n_tiles)
    out_args = ((o_ptr, b, h, S_q, stride_ob, stride_os, stride_oh), row0, n_tiles)
    gl.warp_specialize(
        [
            (_consumer, (bufs, bars, out_args, qk_scale, kv_len, gl.constexpr(0), LAZY_RESCALE)),
            (_consumer, (bufs, bars, out_args, qk_scale, kv_len, gl.constexpr(1), LAZY_RESCALE)),
            (_load_partition, ((q_desc, k_desc, vt_desc), bufs, bars, coords, STAGES)),
        ],
        [num_warps, 1],
        [CONSUMER_REGS, LOADER_REGS],
    )


def attention_fp8_wgmma_ws(
    q8: torch.Tensor,
    k8: torch.Tensor,
    vt8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    kv_len: int = 0,
    block_n: int = BLOCK_N,
    stages: int = STAGES,
    consumer_regs: int = CONSUMER_REGS,
    loader_regs: int = LOADER_REGS,
    maxnreg: int = MAXNREG,
    lazy_rescale: bool | None = None,
) -> torch.Tensor:
    """attention_fp8_wgmma's result (same operands), from a warp-specialized kernel.

    lazy_rescale: skip the accumulator's rescale in warps whose rows kept their max (None:
    from LAZY_RESCALE_MIN_KEYS keys on).
    """
    q8, k8, vt8, kv_len = checked_operands(q8, k8, vt8, kv_len)
    b, s_q, h, d = q8.shape
    if lazy_rescale is None:
        lazy_rescale = kv_len >= LAZY_RESCALE_MIN_KEYS and d == 128
    if lazy_rescale and d != 128:
        raise ValueError(f"lazy_rescale needs a head dim of 128, not {d}")
    out, args = kernel_args(q8, k8, vt8, descale_q, descale_k, kv_len, BLOCK_M, block_n)
    grid = (triton.cdiv(s_q, 2 * BLOCK_M), b * h)
    _attn_fwd_ws_kernel[grid](
        *args,
        HEAD_D=d,
        STAGES=stages,
        CONSUMER_REGS=consumer_regs,
        LOADER_REGS=loader_regs,
        LAZY_RESCALE=lazy_rescale,
        num_warps=4,
        maxnreg=maxnreg,
    )
    return out
