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


def _is_default(s: dict) -> bool:
    from kernels.attention_fp8 import DEFAULT_VARIANT

    return all(s[k] == v for k, v in DEFAULT_VARIANT._asdict().items())


def _variants(device, skv, quick=False):
    """(config, variant) pairs: the tuning set as shipped, wider configs, then the
    exponential offload (25/50/12.5 %), lazy rescale and imprecise-accumulation variants."""
    from kernels.attention_fp8 import (
        ATTN_CONFIGS,
        DEFAULT_VARIANT,
        SWEEP_CONFIGS,
        Fp8AttnVariant,
    )

    if device.type != "cuda" or quick:
        return [(c, DEFAULT_VARIANT) for c in ATTN_CONFIGS[: 1 if device.type != "cuda" else None]]
    out = [(c, Fp8AttnVariant()) for c in SWEEP_CONFIGS]
    if skv < 2048:
        return out
    main = [(128, 64, 4, 4), (128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2)]
    out += [(c, Fp8AttnVariant(ex2_poly=p)) for c in main for p in (1, 2, 3)]
    out += [(c, Fp8AttnVariant(lazy_tau=t)) for c in main[::2] for t in (2.0, 4.0)]
    out += [(c, Fp8AttnVariant(ex2_poly=1, lazy_tau=2.0)) for c in main[::2]]
    out += [(c, Fp8AttnVariant(imprecise=32)) for c in main[::2]]
    return out


def _fp8_totals(row, q, k, v, exact, flop, device) -> None:
    from kernels.attention_fp8 import attention_fp8

    row["fp8_drift"] = drift(attention_fp8(q, k, v), exact)
    ms = _bench(lambda: attention_fp8(q, k, v), device)
    row["fp8_total_ms"] = ms
    row["fp8_total_tflops"] = flop / ms / 1e9
    row["speedup_vs_cudnn"] = row["bf16_cudnn_ms"] / ms


def _one_shape(name, b, sq, skv, h, d, device, cudnn, quick=False) -> dict[str, Any]:
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
    _cudnn_fp8(row, q, k, v, exact, flop, device)
    row["quant_ms"] = None
    row["sweep"] = []
    if not use_triton(q):
        # Triton was imported without its interpreter and there is no GPU: the op runs
        # its torch reference, and only that is measured.
        _fp8_totals(row, q, k, v, exact, flop, device)
        return row
    qkv = quantize_qkv_fp8(q, k, v)
    row["quant_ms"] = _bench(lambda: quantize_qkv_fp8(q, k, v), device)
    sweep = []
    for cfg, var in _variants(device, skv, quick):
        try:

            def call(cfg=cfg, var=var):
                return attention_fp8_launch(q, k, v, config=cfg, qkv=qkv, variant=var)

            ms = _bench(call, device)
            dr = drift(call(), exact)
            sweep.append(
                {"config": cfg, **var._asdict(), "ms": ms, "tflops": flop / ms / 1e9, **dr}
            )
        except Exception as exc:  # noqa: BLE001  (a variant that does not compile is skipped)
            sweep.append({"config": cfg, **var._asdict(), "error": str(exc)[:200]})
    row["sweep"] = sweep
    ok = [s for s in sweep if "ms" in s]
    if ok:
        shipped = (s for s in ok if s["config"] in ATTN_CONFIGS and _is_default(s))
        best = min(shipped, key=lambda s: s["ms"], default=None)
        row["fp8_kernel_ms"] = best["ms"] if best else None
        row["fp8_kernel_tflops"] = best["tflops"] if best else None
        row["fp8_config"] = best["config"] if best else None
    _fp8_totals(row, q, k, v, exact, flop, device)
    return row


def _cudnn_fp8(row, q, k, v, exact, flop, device) -> None:
    """cuDNN's fp8 attention: the op on quantized operands, and with its quantization in
    eager torch and compiled (inductor fuses the quantization passes)."""
    from engine.optimization.cudnn_fp8 import (
        attention_fp8_cudnn,
        cudnn_attention_fp8,
        cudnn_fp8_attention_available,
        quantize_for_cudnn,
    )

    if device.type != "cuda" or not cudnn_fp8_attention_available(device.index or 0):
        return
    q8, k8, v8, dq, dk, _ = quantize_for_cudnn(q, k, v)
    ms = _bench(lambda: cudnn_attention_fp8(q8, k8, v8, dq, dk), device)
    row["cudnn_fp8_kernel_ms"] = ms
    row["cudnn_fp8_kernel_tflops"] = flop / ms / 1e9
    row["cudnn_fp8_eager_ms"] = _bench(lambda: attention_fp8_cudnn(q, k, v), device)
    compiled = torch.compile(attention_fp8_cudnn, fullgraph=True)
    row["cudnn_fp8_compiled_ms"] = _bench(lambda: compiled(q, k, v), device)
    row["cudnn_fp8_drift"] = drift(compiled(q, k, v), exact)
    row["cudnn_fp8_speedup_vs_cudnn"] = row["bf16_cudnn_ms"] / row["cudnn_fp8_compiled_ms"]


def attn_part(args: argparse.Namespace) -> dict[str, Any]:
    """Per shape: ms and TFLOP/s of cuDNN bf16 and of the fp8 kernel (each config), and accuracy."""
    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "model": "attention", "rows": []}
    shapes = DEV_SHAPES if args.size == "dev" else TINY_SHAPES
    cudnn = "_native_cudnn" if device.type == "cuda" else "native"
    for name, b, sq, skv, h, d in shapes:
        row = _one_shape(name, b, sq, skv, h, d, device, cudnn, getattr(args, "attn_quick", False))
        log(name, {k_: v_ for k_, v_ in row.items() if k_ != "sweep"})
        result["rows"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["producer"] = _producer_rows(device, args.size)
    log("producer", result["producer"])
    return result


def _producer_rows(device, size) -> list[dict[str, Any]]:
    """FLUX's joint attention from the projections' output: norm + RoPE, then attention.

    bf16: our QK RMSNorm+RoPE kernel per stream, the concatenation, cuDNN. fp8 separate: the
    same, then quantize + fp8 kernel. fp8 fused: the producer kernel (norm, RoPE and
    quantization in one pass, text stream read in place) + fp8 kernel.
    """
    from engine.optimization.sdpa import sdpa_bshd
    from kernels.attention_fp8 import attention_fp8, attention_fp8_quantized
    from kernels.attention_fp8_producer import attention_fp8_norm_rope, norm_rope_quantize_fp8
    from kernels.rope import qk_rmsnorm_rope

    b, st, si, h, d = (1, 512, 4096, 24, 128) if size == "dev" else (1, 40, 110, 2, 64)
    g = torch.Generator(device=device).manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, device=device, generator=g)

    def views(s):
        fused = r(b, s, 3 * h * d).to(torch.bfloat16)
        return [t.unflatten(-1, (h, d)) for t in fused.chunk(3, dim=-1)]

    qi, ki, vi = views(si)
    qt, kt, vt = views(st)
    # Norm weights away from 1, k's larger: keys of a larger scale than queries.
    w = [(1 + 0.3 * r(d)).to(torch.bfloat16) for _ in range(4)]
    w[1], w[3] = w[1] + 1.0, w[3] + 1.0
    theta = r(st + si, d // 2).repeat_interleave(2, dim=-1)
    cos, sin = theta.cos(), theta.sin()
    cudnn = "_native_cudnn" if device.type == "cuda" else "native"

    def normed():
        tq, tk = qk_rmsnorm_rope(qt, kt, w[2], w[3], cos[:st], sin[:st], 1e-6, 1)
        iq, ik = qk_rmsnorm_rope(qi, ki, w[0], w[1], cos[st:], sin[st:], 1e-6, 1)
        return torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([vt, vi], 1)

    def bf16():
        return sdpa_bshd(*normed(), cudnn)

    def fp8_separate():
        return attention_fp8(*normed())

    def fp8_fused():
        return attention_fp8_norm_rope(
            qi, ki, vi, w[0], w[1], cos, sin, 1e-6, qt, kt, vt, w[2], w[3]
        )

    def fp8_fused_nosmooth():
        qkv = norm_rope_quantize_fp8(
            qi, ki, vi, w[0], w[1], cos, sin, text=(qt, kt, vt, w[2], w[3]), smooth_k=False
        )
        return attention_fp8_quantized(qkv, st + si, st + si, torch.bfloat16)

    qn, kn, vn = normed()
    exact = _exact(qn, kn, vn, device)
    rows = []
    compiled = _compiled_joint_attention(device, (qi, ki, vi, qt, kt, vt), w, cos, sin)
    for name, fn in [
        *compiled,
        ("norm+rope+cat", normed),
        ("bf16 cuDNN, with norm+rope", bf16),
        ("fp8 separate (norm+rope, quantize, kernel)", fp8_separate),
        ("fp8 fused producer + kernel", fp8_fused),
        ("fp8 fused producer without K smoothing + kernel", fp8_fused_nosmooth),
        (
            "producer alone",
            lambda: norm_rope_quantize_fp8(
                qi, ki, vi, w[0], w[1], cos, sin, text=(qt, kt, vt, w[2], w[3])
            ),
        ),
    ]:
        try:
            row = {"variant": name, "ms": _bench(fn, device)}
            out = fn()
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] == st + si:
                row.update(drift(out, exact))
        except Exception as exc:  # noqa: BLE001
            row = {"variant": name, "error": str(exc)[:300]}
        rows.append(row)
    return rows


def _compiled_joint_attention(device, qkv, w, cos, sin) -> list[tuple[str, Any]]:
    """FLUX's joint attention as the processors write it (RMSNorm, concatenation, RoPE in
    torch), compiled, with cuDNN bf16 and with cuDNN fp8 (static bounds of the norms)."""
    from engine.optimization.cudnn_fp8 import (
        attention_fp8_cudnn,
        cudnn_fp8_attention_available,
        rmsnorm_bound,
    )
    from engine.optimization.sdpa import sdpa_bshd

    if device.type != "cuda" or not cudnn_fp8_attention_available(device.index or 0):
        return []
    qi, ki, vi, qt, kt, vt = qkv
    norms = [
        torch.nn.RMSNorm(qi.shape[-1], eps=1e-6, device=device, dtype=torch.bfloat16) for _ in w
    ]
    with torch.no_grad():
        for n, wt in zip(norms, w, strict=True):
            n.weight.copy_(wt)
            n.requires_grad_(False)

    def rope(x):
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        rot = torch.stack([-x2, x1], dim=-1).flatten(3)
        return (x.float() * cos[None, :, None] + rot * sin[None, :, None]).to(x.dtype)

    def qkv_normed():
        q = rope(torch.cat([norms[2](qt), norms[0](qi)], 1))
        k = rope(torch.cat([norms[3](kt), norms[1](ki)], 1))
        return q, k, torch.cat([vt, vi], 1)

    def bf16():
        return sdpa_bshd(*qkv_normed(), "_native_cudnn")

    def fp8():
        q, k, v = qkv_normed()
        bq, bk = rmsnorm_bound(norms[0], norms[2]), rmsnorm_bound(norms[1], norms[3])
        return attention_fp8_cudnn(q, k, v, bq, bk)

    return [
        ("compiled torch norm+rope + bf16 cuDNN", torch.compile(bf16, fullgraph=True)),
        (
            "compiled torch norm+rope + cuDNN fp8 (static bounds)",
            torch.compile(fp8, fullgraph=True),
        ),
    ]


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
        if r.get("cudnn_fp8_kernel_ms"):
            lines.append(
                f"| {r['shape']}: cuDNN fp8 | kernel {r['cudnn_fp8_kernel_ms']:.3f} ({r['cudnn_fp8_kernel_tflops']:.0f}) | eager {r['cudnn_fp8_eager_ms']:.3f} | compiled {r['cudnn_fp8_compiled_ms']:.3f} | | {r['cudnn_fp8_speedup_vs_cudnn']:.2f} | {r['cudnn_fp8_drift']['cosine']:.5f} | {r['cudnn_fp8_drift']['rel_l2']:.4f} |"
            )
    for p in res.get("producer", []):
        lines.append(
            f"| producer: {p['variant']} | {p.get('ms', float('nan')):.3f} ms | cos {p.get('cosine', float('nan')):.5f} | {p.get('error', '')[:80]} |"
        )
    for r in res.get("rows", []):
        for s in r.get("sweep", []):
            if "ms" in s:
                lines.append(
                    f"|   {r['shape']} {tuple(s['config'])} poly={s['ex2_poly']} lazy={s['lazy_tau']} imp={s['imprecise']} | | | {s['ms']:.3f} ({s['tflops']:.0f}) | | | {s['cosine']:.5f} | {s['rel_l2']:.4f} |"
                )
            else:
                lines.append(
                    f"|   {r['shape']} {tuple(s['config'])} | error {s['error'][:60]} | | | | | | |"
                )
    return lines
