"""Kernel benchmark: each Triton kernel against the eager torch composite and torch.compile of it.

Run on a CUDA machine from the repository root:

    python bench/kernels.py [--out DIR] [--no-compile]

For every op at FLUX.1-dev 1024x1024 sizes (4096 image + 512 text tokens, D=3072, 24 heads
of 128, MLP 12288) and Wan 2.1 1.3B 480p sizes (81 frames: 32760 tokens, D=1536, 12 heads
of 128, FFN 8960) it prints the median time per call, the achieved bandwidth over the fewest
bytes the op must move (each input read once, each output written once), that bandwidth as
a share of the measured device-to-device copy bandwidth, and the speedups over the eager
torch composite and over torch.compile of it. Matmul rows give TFLOP/s instead.

Timing: each contender is captured in a CUDA graph of back-to-back calls and replayed
(median of 10 replays), so host-side dispatch costs none of them anything; the calls cycle
through enough input sets (at least 4x the L2 size together) that every call streams its
operands from DRAM, as the copy that sets the bandwidth ceiling does. Results go to bench/results/kernels.json (and --out), with a PNG chart of
the speedups when matplotlib is there.

``--smoke`` runs every case once at tiny sizes on the CPU (kernels interpreted), to check
the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from bench.kernel_inputs import (  # noqa: E402
    flux_qkv,
    gemv_operands,
    scaled_mm_rowwise,
    wan_qkv,
)
from kernels import adaln_fp8 as adaln8  # noqa: E402
from kernels import (  # noqa: E402
    adaln_layernorm,
    adaln_layernorm_reference,
    apply_rope,
    apply_rope_reference,
    fp8_linear,
    gated_residual,
    gated_residual_adaln,
    gated_residual_adaln_reference,
    gated_residual_reference,
    gelu_tanh_bias,
    gelu_tanh_bias_reference,
    linear_gelu_tanh,
    linear_gelu_tanh_reference,
    qk_rmsnorm,
    qk_rmsnorm_reference,
    qk_rmsnorm_rope,
    qk_rmsnorm_rope_reference,
    quantize_fp8_rowwise,
    quantize_fp8_rowwise_reference,
    quantize_weight_fp8_rowwise,
)
from kernels.cudnn_fp8_operands import (  # noqa: E402
    norm_rope_quantize_for_cudnn,
    norm_rope_quantize_for_cudnn_reference,
)
from kernels.fp8 import (  # noqa: E402
    gelu_tanh_reference,
    quantize_cat_gelu_fp8_rowwise,
    quantize_gelu_fp8_rowwise,
    requantize_fp8_rowwise,
    requantize_fp8_rowwise_reference,
)
from kernels.fp8_gemv import fp8_weight_gemv  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DATE = "2026-11-22"

MODELS = {
    "flux": {"tokens": 4608, "dim": 3072, "heads": 24, "head_dim": 128, "mlp": 12288},
    "wan": {"tokens": 32760, "dim": 1536, "heads": 12, "head_dim": 128, "mlp": 8960},
}
SWEEP_PRODUCER = [(1, 2), (2, 2), (2, 4), (4, 2), (4, 4), (8, 4), (8, 8)]
"""(rows per program, warps) tried for norm_rope_quantize_for_cudnn."""
SWEEP_STATS = [(256, 32, 2), (128, 32, 2), (64, 32, 2), (512, 32, 2), (1024, 32, 2),
               (512, 64, 4), (1024, 64, 4), (256, 32, 4), (512, 32, 1)]  # fmt: skip
"""(tokens per program, rows per step, warps) tried for its statistics pass's V amax."""
SMOKE = {"tokens": 37, "dim": 96, "heads": 3, "head_dim": 32, "mlp": 160}


@dataclass
class Row:
    op: str
    model: str
    shape: str
    ms: float
    eager_ms: float
    compile_ms: float | None
    gbytes: float = 0.0
    gbps: float | None = None
    pct_copy: float | None = None
    tflops: float | None = None
    x_eager: float = 0.0
    x_compile: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Bench:
    """Times callables and collects rows."""

    def __init__(self, device: str, compile_refs: bool, smoke: bool):
        self.device = device
        self.compile_refs = compile_refs and not smoke
        self.smoke = smoke
        self.rows: list[Row] = []
        self.copy_gbps = float("nan")
        self.copy_detail: dict = {}
        self.ops: set[str] = set()
        """Ops to run (all when empty)."""

    def time_ms(self, fn: Callable, arg_sets: list[tuple] | None = None) -> float:
        """Median milliseconds per call of fn(*args), cycling over arg_sets."""
        calls = [lambda a=a: fn(*a) for a in (arg_sets or [()])]

        def run_all():
            for call in calls:
                call()

        if self.smoke:
            run_all()
            t0 = time.perf_counter()
            run_all()
            return (time.perf_counter() - t0) * 1e3 / len(calls)
        # Warm-up off the capture: compilation, autotuning, allocator pools.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run_all()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_all()
        end.record()
        end.synchronize()
        reps = max(1, min(500, int(25.0 / max(start.elapsed_time(end), 1e-3))))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                run_all()
        graph.replay()
        times = []
        for _ in range(10):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        del graph
        return statistics.median(times) / (reps * len(calls))

    def input_sets(self, make: Callable[[], tuple], nbytes: int) -> list[tuple]:
        """Enough independent input sets that together they are at least 4x the L2."""
        if self.smoke:
            return [make()]
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        return [make() for _ in range(min(8, max(1, math.ceil(4 * l2 / nbytes))))]

    def measure_copy(self) -> None:
        """The bandwidth ceiling: the fastest of three ways to time a 512 MiB device copy.

        A copy captured in a CUDA graph becomes a memcpy node that the copy engines run,
        slower than the SM copy kernel that eager copy_ launches; so the ceiling is timed
        eagerly, back to back and with the L2 flushed, and the graph figure is kept as a note.
        """
        n = (1 << 28) if not self.smoke else (1 << 12)  # 512 MiB of bf16
        src = torch.randn(n, dtype=torch.bfloat16, device=self.device)
        dst = torch.empty_like(src)
        nbytes = 2 * src.numel() * src.element_size()
        if self.smoke:
            self.copy_gbps = nbytes / self.time_ms(lambda: dst.copy_(src)) / 1e6
            return
        import triton

        for _ in range(5):
            dst.copy_(src)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(40):
            dst.copy_(src)
        end.record()
        end.synchronize()
        back_to_back = start.elapsed_time(end) / 40
        flushed = triton.testing.do_bench(
            lambda: dst.copy_(src), warmup=100, rep=200, return_mode="median"
        )
        graph = self.time_ms(lambda: dst.copy_(src))
        self.copy_detail = {
            "back_to_back_gbps": nbytes / back_to_back / 1e6,
            "l2_flushed_gbps": nbytes / flushed / 1e6,
            "cuda_graph_memcpy_node_gbps": nbytes / graph / 1e6,
        }
        self.copy_gbps = nbytes / min(back_to_back, flushed) / 1e6

    def compiled(self, fn: Callable, sets: list[tuple]) -> float | None:
        """Time torch.compile of fn (compiled and warmed up before the clock starts)."""
        if not self.compile_refs:
            return None
        torch._dynamo.reset()
        cfn = torch.compile(fn, dynamic=False)
        cfn(*sets[0])
        return self.time_ms(cfn, sets)

    def memory_bound(self, op, model, shape, nbytes, kernel, reference, make, note=""):
        if self.ops and op not in self.ops:
            return
        sets = self.input_sets(make, nbytes)
        comp = self.compiled(reference, sets)
        ms = self.time_ms(kernel, sets)
        eager = self.time_ms(reference, sets)
        gbps = nbytes / ms / 1e6
        row = Row(
            op=op, model=model, shape=shape, ms=ms, eager_ms=eager, compile_ms=comp,
            gbytes=nbytes / 1e9, gbps=gbps, pct_copy=100 * gbps / self.copy_gbps,
            x_eager=eager / ms, x_compile=None if comp is None else comp / ms, note=note,
            extra={"input_sets": len(sets)},
        )
        self.rows.append(row)
        print(_fmt(row), flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(_fmt(row), flush=True)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _fmt(r: Row) -> str:
    bw = f"{r.gbps:8.0f} {r.pct_copy:5.1f}%" if r.gbps is not None else f"{'':8} {'':6}"
    tf = f" {r.tflops:6.0f} TFLOP/s" if r.tflops is not None else ""
    xc = f"{r.x_compile:5.2f}x" if r.x_compile is not None else "  -   "
    return (
        f"{r.op:<24} {r.model:<5} {r.shape:<28} {r.ms * 1e3:9.1f} us {bw} "
        f"{r.x_eager:5.2f}x {xc}{tf} {r.note}"
    )


def run_memory_bound(b: Bench, model: str, cfg: dict, dtype: torch.dtype) -> None:
    dev = b.device
    t, d, h, dh, mlp = cfg["tokens"], cfg["dim"], cfg["heads"], cfg["head_dim"], cfg["mlp"]
    act = t * d * dtype.itemsize  # one (1, T, D) activation

    def r(*shape, scale=1.0):
        return torch.randn(*shape, dtype=dtype, device=dev) * scale

    def tables():
        angles = torch.rand(t, dh, device=dev) * 6.28
        return angles.cos(), angles.sin()

    # adaLN norm: x (1, T, D), per-sample shift/scale (1, D).
    b.memory_bound(
        "adaln_layernorm", model, f"x(1, {t}, {d})", 2 * act,
        adaln_layernorm, adaln_layernorm_reference,
        lambda: (r(1, t, d), r(1, d), r(1, d, scale=0.3)),
    )
    # Gated residual, and fused with the next adaLN norm.
    b.memory_bound(
        "gated_residual", model, f"x(1, {t}, {d})", 3 * act,
        gated_residual, gated_residual_reference,
        lambda: (r(1, t, d), r(1, d), r(1, t, d)),
    )
    b.memory_bound(
        "gated_residual_adaln", model, f"x(1, {t}, {d})", 4 * act,
        gated_residual_adaln, gated_residual_adaln_reference,
        lambda: (r(1, t, d), r(1, d), r(1, t, d), r(1, d), r(1, d, scale=0.3)),
    )
    # QK RMSNorm: FLUX per head (B, H, S, Dh); Wan across heads (B, S, H * Dh).
    if model == "wan":
        qk_shape, wn = (1, t, h * dh), h * dh
    else:
        qk_shape, wn = (1, h, t, dh), dh
    b.memory_bound(
        "qk_rmsnorm", model, f"q,k{qk_shape}", 4 * t * h * dh * dtype.itemsize,
        qk_rmsnorm, qk_rmsnorm_reference,
        lambda: (r(*qk_shape), r(*qk_shape), r(wn) + 1, r(wn) + 1),
    )
    # RoPE with fp32 (S, Dh) tables, and fused with the per-head QK norm (FLUX).
    head_act = t * h * dh * dtype.itemsize
    b.memory_bound(
        "apply_rope", model, f"x(1, {h}, {t}, {dh})", 2 * head_act + 2 * t * dh * 4,
        apply_rope, apply_rope_reference,
        lambda: (r(1, h, t, dh), *tables()),
    )
    if model == "flux":
        b.memory_bound(
            "qk_rmsnorm_rope", model, f"q,k(1, {h}, {t}, {dh})", 4 * head_act + 2 * t * dh * 4,
            qk_rmsnorm_rope, qk_rmsnorm_rope_reference,
            lambda: (r(1, h, t, dh), r(1, h, t, dh), r(dh) + 1, r(dh) + 1, *tables()),
        )
    # GELU(tanh) with bias over the MLP activation (1, T, mlp).
    b.memory_bound(
        "gelu_tanh_bias", model, f"x(1, {t}, {mlp})", 2 * t * mlp * dtype.itemsize,
        gelu_tanh_bias, gelu_tanh_bias_reference,
        lambda: (r(1, t, mlp), r(mlp)),
    )
    # fp8 row-wise quantization of a (T, D) activation: 2 bytes in, 1 byte + a scale out.
    b.memory_bound(
        "quantize_fp8_rowwise", model, f"x({t}, {d})", act + t * d + 4 * t,
        quantize_fp8_rowwise, quantize_fp8_rowwise_reference,
        lambda: (r(t, d),),
    )
    # An fp8 attention's e4m3 output in V's per-channel units to the output projection's
    # row-quantized input: 1 byte in, 1 byte + a scale out.
    b.memory_bound(
        "requantize_fp8_rowwise", model, f"x8(1, {t}, {d})", 2 * t * d + 4 * t + 4 * d,
        requantize_fp8_rowwise, requantize_fp8_rowwise_reference,
        lambda: (
            (r(1, t, d) * 60).clamp(-448, 448).to(torch.float8_e4m3fn),
            torch.rand(1, 1, d, device=dev) + 1e-3,
        ),
    )
    if model in ("wan", "smoke"):
        # Wan's QK RMSNorm (over H·D) + RoPE + cuDNN's fp8 operands from the fused QKV
        # projection: q, k, v read once and V again for its amax, three e4m3 tensors written.
        b.memory_bound(
            "norm_rope_quant_cudnn", model, f"qkv(1, {t}, 3x{h}x{dh})", 4 * act + 3 * t * d,
            norm_rope_quantize_for_cudnn, norm_rope_quantize_for_cudnn_reference,
            lambda: wan_qkv(t, h, dh, dtype, dev),
        )
    # The feed-forward's down-projection input: gelu of the up projection's output,
    # quantized per row in one pass; FLUX single blocks: cat([attention, gelu(mlp)]).
    b.memory_bound(
        "quantize_gelu_fp8", model, f"x({t}, {mlp})", 3 * t * mlp + 4 * t,
        quantize_gelu_fp8_rowwise,
        lambda x: quantize_fp8_rowwise_reference(gelu_tanh_reference(x)),
        lambda: (r(t, mlp, scale=3.0),),
    )
    if model == "flux":
        b.memory_bound(
            "quantize_cat_gelu_fp8", model, f"a({t}, {d}), b({t}, {mlp})",
            3 * t * (d + mlp) + 4 * t,
            quantize_cat_gelu_fp8_rowwise,
            lambda a, x: quantize_fp8_rowwise_reference(
                torch.cat([a.float(), gelu_tanh_reference(x)], -1)
            ),
            lambda: (r(t, d), r(t, mlp, scale=3.0)),
        )
    tx = min(512, t // 2) if model in ("flux", "smoke") else 0  # FLUX's text tokens lead
    b.memory_bound(
        "adaln_layernorm_fp8", model, f"prefix(1, {tx}, {d}) + x(1, {t - tx}, {d})",
        3 * t * d + 4 * t, adaln8.adaln_layernorm_fp8, adaln8.adaln_layernorm_fp8_reference,
        lambda: (r(1, t - tx, d), *r(1, 3 * d).chunk(3, dim=1)[:2], 1e-6, r(1, tx, d) if tx else None),
    )
    b.memory_bound(  # an output joins the stream, whose next norm feeds an fp8 linear
        "residual_adaln_fp8", model, f"x, y(1, {t}, {d})", 7 * t * d + 4 * t,
        adaln8.residual_adaln_layernorm_fp8, adaln8.residual_adaln_layernorm_fp8_reference,
        lambda: (r(1, t, d), r(1, t, d), *r(1, 3 * d).chunk(3, dim=1), 1e-6),
    )
    if model in ("flux", "smoke"):
        # FLUX's adaLN modulation, one row through an e4m3 weight: against what FP8Linear ran
        # before, the row quantized to e4m3 and torch._scaled_mm.
        for n in (6 * d, 3 * d):
            b.memory_bound(
                "fp8_weight_gemv", model, f"x(1, {d}) @ w8({n}, {d})", n * d + 8 * n + 2 * d,
                fp8_weight_gemv, scaled_mm_rowwise, lambda n=n: gemv_operands(1, d, n, dev),
            )


def run_matmuls(b: Bench, model: str, cfg: dict, dtype: torch.dtype) -> None:
    dev = b.device
    t, d, mlp = cfg["tokens"], cfg["dim"], cfg["mlp"]
    cases = [("up", d, mlp)] + ([("down", mlp, d)] if model == "flux" else [])
    for name, k, n in cases:
        x = torch.randn(t, k, dtype=dtype, device=dev)
        w = torch.randn(n, k, dtype=dtype, device=dev) / math.sqrt(k)
        bias = torch.randn(n, dtype=dtype, device=dev)
        flops = 2 * t * k * n
        shape = f"{t}x{k} @ {k}x{n}"

        bf16 = b.time_ms(lambda x=x, w=w, bias=bias: F.linear(x, w, bias))
        w_fp8, w_scale = quantize_weight_fp8_rowwise(w)
        fp8 = b.time_ms(lambda x=x, w_fp8=w_fp8, w_scale=w_scale, bias=bias: fp8_linear(
            x, w_fp8, w_scale, bias))
        xq, xs = quantize_fp8_rowwise(x)
        mm_only = b.time_ms(lambda xq=xq, xs=xs, w_fp8=w_fp8, w_scale=w_scale, bias=bias: (
            torch._scaled_mm(xq, w_fp8.t(), scale_a=xs, scale_b=w_scale.view(1, -1),
                             bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True)))
        b.add(Row(
            op="fp8_linear", model=model, shape=shape + f" ({name})", ms=fp8, eager_ms=bf16,
            compile_ms=None, tflops=flops / fp8 / 1e9, x_eager=bf16 / fp8,
            note=f"vs bf16 F.linear {flops / bf16 / 1e9:.0f} TFLOP/s; scaled_mm alone "
                 f"{mm_only * 1e3:.1f} us",
            extra={"bf16_ms": bf16, "scaled_mm_ms": mm_only, "bf16_tflops": flops / bf16 / 1e9},
        ))

        if name != "up":
            continue
        comp = b.compiled(linear_gelu_tanh_reference, [(x, w, bias)])
        fused = b.time_ms(lambda x=x, w=w, bias=bias: linear_gelu_tanh(x, w, bias, True))
        split = b.time_ms(lambda x=x, w=w, bias=bias: linear_gelu_tanh(x, w, bias))
        eager = b.time_ms(lambda x=x, w=w, bias=bias: linear_gelu_tanh_reference(x, w, bias))
        for label, ms in (("cuBLAS + gelu_tanh_bias", split), ("fused Triton epilogue", fused)):
            b.add(Row(
                op="linear_gelu_tanh", model=model, shape=shape, ms=ms, eager_ms=eager,
                compile_ms=comp, tflops=flops / ms / 1e9, x_eager=eager / ms,
                x_compile=None if comp is None else comp / ms, note=label,
            ))
        del x, w, w_fp8, xq


# (BLOCK_M, num_warps) for row kernels by BLOCK_N; (BLOCK_M, BLOCK_N, num_warps) for 2-D tiles.
SWEEP_ROW = {
    4096: [(1, 8), (1, 4), (1, 8, True), (1, 4, True), (1, 16, True)],
    2048: [(1, 8), (2, 8), (2, 16), (4, 16)],
    256: [(8, 4), (16, 8)],
    128: [(16, 4), (8, 2), (16, 2), (32, 4)],
}
SWEEP_2D = [(4, 1024, 4), (4, 1024, 8), (8, 1024, 8), (8, 512, 4)]


def sweep(b: Bench, model: str, cfg: dict, dtype: torch.dtype) -> list[dict]:
    """Time each launch configuration of the memory-bound kernels; returns one dict per try."""
    from kernels.adaln_norm import adaln_layernorm_launch
    from kernels.cudnn_fp8_operands import _launch as producer_launch
    from kernels.fp8 import FP8_DTYPE, quantize_fp8_rowwise_launch
    from kernels.gated_residual import gated_residual_adaln_launch, gated_residual_launch
    from kernels.qk_norm import qk_launch

    dev = b.device
    t, d, h, dh = cfg["tokens"], cfg["dim"], cfg["heads"], cfg["head_dim"]
    act, head_act = t * d * dtype.itemsize, t * h * dh * dtype.itemsize

    def r(*shape):
        return torch.randn(*shape, dtype=dtype, device=dev)

    def e(*shape):
        return torch.empty(*shape, dtype=dtype, device=dev)

    row_cfgs = SWEEP_ROW[1 << (d - 1).bit_length()]
    qk_cfgs = SWEEP_ROW[128]
    cases = [
        ("adaln_layernorm", row_cfgs, 2 * act,
         lambda: (r(1, t, d), r(1, d), r(1, d), e(1, t, d)),
         lambda c, x, sh, sc, o: adaln_layernorm_launch(x, sh, sc, 1e-6, o, *c)),
        ("gated_residual_adaln", row_cfgs, 4 * act,
         lambda: (r(1, t, d), r(1, d), r(1, t, d), r(1, d), r(1, d), e(1, t, d), e(1, t, d)),
         lambda c, x, g, y, sh, sc, o1, o2: gated_residual_adaln_launch(
             x, g, y, sh, sc, 1e-6, o1, o2, *c)),
        ("quantize_fp8_rowwise", row_cfgs, act + t * d,
         lambda: (r(t, d), torch.empty(t, d, dtype=FP8_DTYPE, device=dev),
                  torch.empty(t, 1, device=dev)),
         lambda c, x, q8, s8: quantize_fp8_rowwise_launch(x, q8, s8, *c[:2])),
        ("gated_residual", SWEEP_2D, 3 * act,
         lambda: (r(1, t, d), r(1, d), r(1, t, d), e(1, t, d)),
         lambda c, x, g, y, o: gated_residual_launch(x, g, y, o, *c)),
        ("qk_rmsnorm", qk_cfgs, 4 * head_act,
         lambda: (r(1, h, t, dh), r(1, h, t, dh), r(dh), e(1, h, t, dh), e(1, h, t, dh)),
         lambda c, q, k, w, qo, ko: qk_launch(q, k, w, w, None, None, 1e-6, qo, ko, 2, *c)),
    ]
    qkv = {"wan": wan_qkv, "flux": flux_qkv}.get(model)
    if model == "wan":
        cases.append(
            ("norm_rope_quant_cudnn", SWEEP_PRODUCER, 4 * act + 3 * t * d,
             lambda: wan_qkv(t, h, dh, dtype, dev),
             lambda c, *a: producer_launch(*a, True, 128, None, *c)))
    if qkv is not None:  # the statistics pass's V amax tiles, the whole producer timed
        cases.append(
            ("norm_rope_quant_cudnn_stats", SWEEP_STATS, 4 * act + 3 * t * d,
             lambda: qkv(t, h, dh, dtype, dev),
             lambda c, *a: producer_launch(*a[:8], True, 128, *(a[8:] or (None,)), None, c)))
    # RoPE runs on (positions, heads) tiles sized by kernels.qk_norm.rope_tile_sizes.
    tries = []
    for op, cfgs, nbytes, make, launch in cases:
        if b.ops and op not in b.ops:
            continue
        sets = b.input_sets(make, nbytes)
        for c in cfgs:
            ms = b.time_ms(lambda *a, launch=launch, c=c: launch(c, *a), sets)
            gbps = nbytes / ms / 1e6
            tries.append({"op": op, "model": model, "config": list(c), "ms": ms, "gbps": gbps,
                          "pct_copy": 100 * gbps / b.copy_gbps})
        mine = tries[-len(cfgs):]
        best = min(mine, key=lambda tr: tr["ms"])
        line = "  ".join(f"{tuple(tr['config'])}:{tr['pct_copy']:.0f}%" for tr in mine)
        print(f"sweep {op:<22} {model:<5} best {tuple(best['config'])} "
              f"{best['ms'] * 1e3:.1f} us | {line}", flush=True)
        del sets
    return tries


def chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [
        f"{r.op}\n{r.model}" + (f" ({r.note.split()[0]})" if r.op == "linear_gelu_tanh" else "")
        for r in rows
    ]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 4.5))
    ax.bar([i - 0.2 for i in xs], [r.x_eager for r in rows], width=0.4, label="x eager")
    ax.bar([i + 0.2 for i in xs], [r.x_compile or 0 for r in rows], width=0.4,
           label="x torch.compile")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup of the Triton kernel")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    import triton  # after `kernels`, which picks Triton's interpreter on a machine without a GPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--only", choices=["memory", "matmul"], default=None)
    parser.add_argument("--sweep", action="store_true", help="time launch configurations first")
    parser.add_argument("--sweep-only", action="store_true", help="the sweep and nothing else")
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    args = parser.parse_args()

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA device (or --smoke)")
    device = "cpu" if args.smoke else "cuda"
    b = Bench(device, compile_refs=not args.no_compile, smoke=args.smoke)
    b.ops = set(filter(None, args.ops.split(",")))
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    b.measure_copy()
    print(f"{gpu}; torch {torch.__version__}; triton {triton.__version__}; "
          f"device-to-device copy {b.copy_gbps:.0f} GB/s (read + write) {b.copy_detail}")
    header = (
        f"{'op':<24} {'model':<5} {'shape':<28} {'time':>12} {'GB/s':>8} {'%copy':>6} "
        f"{'xeager':>6} {'xcomp':>6}"
    )
    print(header)
    print("-" * len(header))
    models = {"smoke": SMOKE} if args.smoke else MODELS
    sweeps: list[dict] = []
    if args.sweep or args.sweep_only:
        for model, cfg in models.items():
            sweeps += sweep(b, model, cfg, torch.bfloat16)
    if args.sweep_only:
        models = {}
    for model, cfg in models.items():
        if args.only in (None, "memory"):
            run_memory_bound(b, model, cfg, torch.bfloat16)
        if args.only in (None, "matmul"):
            run_matmuls(b, model, cfg, torch.bfloat16)
        report = {
            "gpu": gpu, "date": DATE, "torch": torch.__version__, "triton": triton.__version__,
            "copy_gbps": b.copy_gbps, "copy_detail": b.copy_detail, "dtype": "bfloat16",
            "kernels_interpreted": kernels._utils.INTERPRETING,
            "rows": [asdict(r) for r in b.rows], "sweep": sweeps,
        }
        # Written after each model so a run cut short still leaves its numbers.
        for folder in filter(None, [RESULTS, args.out]):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "kernels.json").write_text(json.dumps(report, indent=1))
    for folder in filter(None, [RESULTS, args.out]):
        if chart(b.rows, folder / "kernels.png"):
            print(f"chart: {folder / 'kernels.png'}")


if __name__ == "__main__":
    main()
