"""cuDNN's fp8 attention, plan by plan and layout by layout, at FLUX's and Wan's shapes.

The engine runs cuDNN's first heuristic choice on sequence-major (B, S, H, D) operands.
This part times every plan cuDNN builds (heuristic modes A and B and the fallback), on
those operands and on head-major (B, H, S, D) copies, and Wan's self attention at 32,760
tokens beside 32,768 (whether an unaligned sequence costs anything).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.enginebench.attn import _bench, _inputs
from bench.enginebench.common import drift, env_info, log

# (name, batch, tokens, heads, head_dim): self attention only (fp8 is for long key sequences).
DEV_SHAPES = [
    ("flux 1024^2 joint", 1, 4608, 24, 128),
    ("wan 480p self", 1, 32760, 12, 128),
    ("wan 480p self, 32768 tokens", 1, 32768, 12, 128),
]


def _head_major(t: torch.Tensor) -> torch.Tensor:
    # Same logical (B, S, H, D) tensor, laid out (B, H, S, D) in memory.
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _timed(call, ref, flop, device) -> dict[str, Any]:
    """ms, TFLOP/s and drift against ref of one call, or the error it raised."""
    try:
        ms = _bench(call, device)
        return {"ms": ms, "tflops": flop / ms / 1e9, **drift(call().float(), ref)}
    except Exception as exc:  # noqa: BLE001  (reported, e.g. a plan or mask cuDNN refuses)
        return {"error": str(exc)[:300]}


def _layout_rows(q8, k8, v8, dq, dk, flop, device) -> dict[str, Any]:
    from engine.optimization.cudnn_fp8 import cudnn_attention_fp8, cudnn_fp8_plans, run_cudnn_fp8

    ref = cudnn_attention_fp8(q8, k8, v8, dq, dk).float()
    ms = _bench(lambda: cudnn_attention_fp8(q8, k8, v8, dq, dk), device)
    out: dict[str, Any] = {"default_ms": ms, "default_tflops": flop / ms / 1e9, "plans": []}
    for index, name in cudnn_fp8_plans(q8, k8, v8):
        call = lambda index=index: run_cudnn_fp8(q8, k8, v8, dq, dk, plan=index)  # noqa: E731
        out["plans"].append({"index": index, "name": name, **_timed(call, ref, flop, device)})
    return out


def _padded_rows(q8, k8, v8, dq, dk, flop, device) -> dict[str, Any]:
    """An unaligned sequence padded with zeros to KV_ALIGN tokens: queries only (exact: the
    extra rows are dropped), keys only (timing only: zero keys still take softmax weight),
    and both with cuDNN's padding mask (exact)."""
    from engine.optimization.cudnn_fp8 import KV_ALIGN, cudnn_attention_fp8, run_cudnn_fp8

    s = q8.shape[1]
    pad = -s % KV_ALIGN

    def padded(t):
        return torch.nn.functional.pad(t.view(torch.uint8), (0, 0, 0, 0, 0, pad)).view(t.dtype)

    qp, kp, vp = padded(q8), padded(k8), padded(v8)
    ref = cudnn_attention_fp8(q8, k8, v8, dq, dk).float()
    calls = {
        "queries padded": lambda: cudnn_attention_fp8(qp, k8, v8, dq, dk)[:, :s],
        "keys padded (not exact)": lambda: cudnn_attention_fp8(q8, kp, vp, dq, dk),
        "both padded, padding mask": lambda: run_cudnn_fp8(qp, kp, vp, dq, dk, valid=(s, s))[:, :s],
    }
    return {name: _timed(call, ref, flop, device) for name, call in calls.items()}


def attn_cudnn_part(args: argparse.Namespace) -> dict[str, Any]:
    from engine.optimization.cudnn_fp8 import (
        KV_ALIGN,
        cudnn_fp8_attention_available,
        quantize_for_cudnn,
    )

    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "model": "attention", "rows": []}
    if device.type != "cuda" or not cudnn_fp8_attention_available(device.index or 0):
        result["skipped"] = "cuDNN fp8 attention needs a Hopper GPU"
        return result
    for name, b, s, h, d in DEV_SHAPES:
        q, k, v = _inputs(b, s, s, h, d, device, seed=0)
        flop = 4 * b * h * s * s * d
        q8, k8, v8, dq, dk, _ = quantize_for_cudnn(q, k, v)
        row: dict[str, Any] = {"shape": name, "tokens": s, "heads": h}
        row["bshd"] = _layout_rows(q8, k8, v8, dq, dk, flop, device)
        row["bhsd"] = _layout_rows(*map(_head_major, (q8, k8, v8)), dq, dk, flop, device)
        if s % KV_ALIGN:
            row["padded"] = _padded_rows(q8, k8, v8, dq, dk, flop, device)
        log(name, row)
        result["rows"].append(row)
        torch.cuda.empty_cache()
    return result


def attn_cudnn_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| shape | layout | plan | ms | TFLOP/s | cosine vs first choice |",
        "|---|---|---|---|---|---|",
    ]
    if res.get("skipped"):
        return lines + [f"| skipped: {res['skipped']} | | | | | |"]
    for r in res["rows"]:
        for layout in ("bshd", "bhsd"):
            x = r[layout]
            lines.append(
                f"| {r['shape']} | {layout} | first choice | {x['default_ms']:.3f} | {x['default_tflops']:.0f} | |"
            )
            for p in x["plans"]:
                if "ms" in p:
                    lines.append(
                        f"| {r['shape']} | {layout} | {p['index']}: {p['name'][:50]} | {p['ms']:.3f} | {p['tflops']:.0f} | {p['cosine']:.5f} |"
                    )
                else:
                    lines.append(
                        f"| {r['shape']} | {layout} | {p['index']}: {p['name'][:50]} | error: {p['error'][:60]} | | |"
                    )
        for name, x in r.get("padded", {}).items():
            if "ms" in x:
                lines.append(
                    f"| {r['shape']} | {name} | first choice | {x['ms']:.3f} | {x['tflops']:.0f} | {x['cosine']:.5f} |"
                )
            else:
                lines.append(f"| {r['shape']} | {name} | | error: {x['error'][:80]} | | |")
    return lines
