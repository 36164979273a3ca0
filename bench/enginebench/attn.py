"""fp8 attention (kernels/attention_fp8.py) against cuDNN's bf16 SDPA at FLUX and Wan shapes."""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from bench.enginebench.common import drift, env_info, log

# (name, batch, query tokens, key tokens, heads, head_dim)
DEV_SHAPES = [
    ("flux 1024^2 joint", 1, 4608, 4608, 24, 128),
    ("wan 480p self", 1, 32760, 32760, 12, 128),
    ("wan 480p cross", 1, 32760, 512, 12, 128),
]
TINY_SHAPES = [("tiny", 1, 200, 200, 2, 64), ("tiny cross", 1, 130, 40, 2, 64)]


def _inputs(b, sq, skv, h, d, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, device=device, generator=g, dtype=torch.float32)

    # RMS-normalized q and k, as FLUX and Wan hand them to attention, with a per-channel
    # offset on k (the outliers that K smoothing removes) and a few sharp queries.
    q = r(b, sq, h, d) * (1 + 2 * r(1, 1, h, d).abs())
    k = r(b, skv, h, d) + 3 * r(1, 1, h, d)
    v = r(b, skv, h, d)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def _exact(q, k, v, device) -> torch.Tensor:
    # fp32 reference; the memory-efficient kernel, since Wan's fp32 score matrix is 51 GB.
    args = [t.transpose(1, 2).float() for t in (q, k, v)]
    if device.type != "cuda":
        return F.scaled_dot_product_attention(*args).transpose(1, 2)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION):
        return F.scaled_dot_product_attention(*args).transpose(1, 2)


def _bench(fn, device) -> float:
    if device.type != "cuda":
        import time

        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _fp8_totals(row, q, k, v, exact, flop, device) -> None:
    from kernels.attention_fp8 import attention_fp8

    row["fp8_drift"] = drift(attention_fp8(q, k, v), exact)
    ms = _bench(lambda: attention_fp8(q, k, v), device)
    row["fp8_total_ms"] = ms
    row["fp8_total_tflops"] = flop / ms / 1e9
    row["speedup_vs_cudnn"] = row["bf16_cudnn_ms"] / ms


def _one_shape(name, b, sq, skv, h, d, device, cudnn) -> dict[str, Any]:
    from engine.optimization.sdpa import sdpa_bshd
    from kernels._utils import use_triton
    from kernels.attention_fp8 import ATTN_CONFIGS, attention_fp8_launch, quantize_qkv_fp8

    q, k, v = _inputs(b, sq, skv, h, d, device, seed=0)
    flop = 4 * b * h * sq * skv * d
    row: dict[str, Any] = {"shape": name, "b": b, "sq": sq, "skv": skv, "h": h, "d": d}
    exact = _exact(q, k, v, device)
    ms = _bench(lambda: sdpa_bshd(q, k, v, cudnn), device)
    row["bf16_cudnn_ms"] = ms
    row["bf16_cudnn_tflops"] = flop / ms / 1e9
    qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    if device.type == "cuda":
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            ms = _bench(lambda: F.scaled_dot_product_attention(qh, kh, vh), device)
        row["bf16_cudnn_headmajor_ms"] = ms
    row["bf16_drift"] = drift(sdpa_bshd(q, k, v, cudnn), exact)
    row["quant_ms"] = None
    row["sweep"] = []
    if not use_triton(q):
        # Triton was imported without its interpreter and there is no GPU: the op runs
        # its torch reference, and only that is measured.
        _fp8_totals(row, q, k, v, exact, flop, device)
        return row
    qkv = quantize_qkv_fp8(q, k, v)
    row["quant_ms"] = _bench(lambda: quantize_qkv_fp8(q, k, v), device)
    configs = ATTN_CONFIGS if device.type == "cuda" else ATTN_CONFIGS[:1]
    # Each config as shipped, then with a fresh accumulator per KV block and with
    # Triton's warp specialization of the KV loop.
    variants = [(c, False, False) for c in configs]
    variants += [(c, True, False) for c in configs[:2]]
    variants += [(c, False, True) for c in configs] if device.type == "cuda" else []
    sweep = []
    for cfg, fresh, ws in variants:
        try:

            def call(cfg=cfg, fresh=fresh, ws=ws):
                return attention_fp8_launch(
                    q, k, v, config=cfg, fresh_acc=fresh, warp_specialize=ws, qkv=qkv
                )

            ms = _bench(call, device)
            dr = drift(call(), exact)
            sweep.append(
                {
                    "config": cfg,
                    "fresh_acc": fresh,
                    "warp_specialize": ws,
                    "ms": ms,
                    "tflops": flop / ms / 1e9,
                    **dr,
                }
            )
        except Exception as exc:  # noqa: BLE001  (a variant that does not compile is skipped)
            sweep.append(
                {
                    "config": cfg,
                    "fresh_acc": fresh,
                    "warp_specialize": ws,
                    "error": str(exc)[:200],
                }
            )
    row["sweep"] = sweep
    ok = [s for s in sweep if "ms" in s]
    if ok:
        shipped = (s for s in ok if not s["fresh_acc"] and not s["warp_specialize"])
        best = min(shipped, key=lambda s: s["ms"], default=None)
        row["fp8_kernel_ms"] = best["ms"] if best else None
        row["fp8_kernel_tflops"] = best["tflops"] if best else None
        row["fp8_config"] = best["config"] if best else None
    _fp8_totals(row, q, k, v, exact, flop, device)
    return row


def attn_part(args: argparse.Namespace) -> dict[str, Any]:
    """Per shape: ms and TFLOP/s of cuDNN bf16 and of the fp8 kernel (each config), and accuracy."""
    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "model": "attention", "rows": []}
    shapes = DEV_SHAPES if args.size == "dev" else TINY_SHAPES
    cudnn = "_native_cudnn" if device.type == "cuda" else "native"
    for name, b, sq, skv, h, d in shapes:
        row = _one_shape(name, b, sq, skv, h, d, device, cudnn)
        log(name, {k_: v_ for k_, v_ in row.items() if k_ != "sweep"})
        result["rows"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def attn_table(res: dict[str, Any]) -> list[str]:
    """One line per shape, then the config sweep."""
    lines = [
        "| shape | cuDNN bf16 ms (TFLOP/s) | fp8 total ms (TFLOP/s) | fp8 kernel ms (TFLOP/s) | quantize ms | x cuDNN | cosine bf16 / fp8 | rel L2 fp8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res.get("rows", []):
        lines.append(
            "| {} | {:.3f} ({:.0f}) | {:.3f} ({:.0f}) | {} | {:.3f} | {:.2f} | {:.5f} / {:.5f} | {:.4f} |".format(
                r["shape"],
                r["bf16_cudnn_ms"],
                r["bf16_cudnn_tflops"],
                r["fp8_total_ms"],
                r["fp8_total_tflops"],
                f"{r['fp8_kernel_ms']:.3f} ({r['fp8_kernel_tflops']:.0f})"
                if r.get("fp8_kernel_ms")
                else "-",
                r["quant_ms"] or float("nan"),
                r["speedup_vs_cudnn"],
                r["bf16_drift"]["cosine"],
                r["fp8_drift"]["cosine"],
                r["fp8_drift"]["rel_l2"],
            )
        )
    for r in res.get("rows", []):
        for s in r.get("sweep", []):
            if "ms" in s:
                lines.append(
                    f"|   {r['shape']} {tuple(s['config'])} fresh_acc={s['fresh_acc']} ws={s['warp_specialize']} | | | {s['ms']:.3f} ({s['tflops']:.0f}) | | | {s['cosine']:.5f} | {s['rel_l2']:.4f} |"
                )
            else:
                lines.append(
                    f"|   {r['shape']} {tuple(s['config'])} | error {s['error'][:60]} | | | | | | |"
                )
    return lines
