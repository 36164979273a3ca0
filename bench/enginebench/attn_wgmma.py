"""Our Gluon fp8 attention against cuDNN's fp8 attention: the plain kernel
(kernels/attention_fp8_wgmma.py) in several tile configurations and the warp-specialized one
(kernels/attention_fp8_wgmma_ws.py).

Both run on the same quantized operands (engine/optimization/cudnn_fp8.py's recipe, keys
padded to KV_ALIGN and masked); each kernel configuration is timed side by side with
cuDNN's first choice, and both outputs are compared with fp32 attention on the bf16 inputs.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.enginebench.attn import _bench, _exact, _inputs
from bench.enginebench.common import drift, env_info, log

DEV_SHAPES = [
    ("flux 1024^2 joint", 1, 4608, 24, 128),
    ("wan 480p self", 1, 32760, 12, 128),
]
# (BLOCK_M, BLOCK_N, STAGES, num_warps)
CONFIGS = [(128, 128, 3, 8), (128, 128, 2, 8), (64, 128, 3, 4), (64, 128, 2, 4), (128, 64, 3, 8)]
WS_STAGES = [2, 3]


def _shape_row(name, b, s, h, d, device) -> dict[str, Any]:
    from functools import partial

    from engine.optimization.cudnn_fp8 import (
        FP8_MAX,
        KV_ALIGN,
        cudnn_attention_fp8,
        quantize_for_cudnn,
    )
    from kernels.attention_fp8_wgmma import attention_fp8_wgmma, transpose_v
    from kernels.attention_fp8_wgmma_ws import attention_fp8_wgmma_ws

    q, k, v = _inputs(b, s, s, h, d, device, seed=0)
    exact = _exact(q, k, v, device).float()
    flop = 4 * b * h * s * s * d
    q8, k8, v8, dq, dk, v_amax = quantize_for_cudnn(q, k, v, kv_align=KV_ALIGN)
    kv_len = s if k8.shape[1] != s else 0
    unit = v_amax / FP8_MAX
    cudnn = partial(cudnn_attention_fp8, q8, k8, v8, dq, dk, kv_len)
    vt8 = transpose_v(v8)
    plain = partial(attention_fp8_wgmma, q8, k8, vt8, dq, dk, kv_len)
    row: dict[str, Any] = {"shape": name, "tokens": s, "heads": h, "configs": []}
    ms = _bench(cudnn, device)
    row["cudnn"] = {"ms": ms, "tflops": flop / ms / 1e9, **drift(cudnn().float() * unit, exact)}
    ws = partial(attention_fp8_wgmma_ws, q8, k8, vt8, dq, dk, kv_len)
    calls = [("wgmma " + "×".join(map(str, c)), partial(plain, *c)) for c in CONFIGS]
    calls += [(f"warp-specialized, {n} stages", partial(ws, stages=n)) for n in WS_STAGES]
    calls += [
        (f"warp-specialized, 2 stages, rescale {how}", partial(ws, stages=2, lazy_rescale=lazy))
        for how, lazy in (("skipped where no max moved", True), ("every tile", False))
    ]
    for label, call in calls:
        cfg: dict[str, Any] = {"kernel": label}
        try:
            out = call().float()
            cfg.update(drift(out * unit, exact))
            cfg["cosine_vs_cudnn"] = drift(out, cudnn().float())["cosine"]
            ms_ours, ms_cudnn = _bench(call, device), _bench(cudnn, device)
            cfg.update(ms=ms_ours, cudnn_ms=ms_cudnn, tflops=flop / ms_ours / 1e9)
        except Exception as exc:  # noqa: BLE001  (reported: a config that does not build)
            cfg["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["configs"].append(cfg)
    return row


def attn_wgmma_part(args: argparse.Namespace) -> dict[str, Any]:
    from engine.optimization.cudnn_fp8 import cudnn_fp8_attention_available

    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "model": "attention", "rows": []}
    if device.type != "cuda" or not cudnn_fp8_attention_available(device.index or 0):
        result["skipped"] = "needs a Hopper GPU with cuDNN fp8 attention"
        return result
    for name, b, s, h, d in DEV_SHAPES:
        row = _shape_row(name, b, s, h, d, device)
        log(name, row)
        result["rows"].append(row)
        torch.cuda.empty_cache()
    return result


def attn_wgmma_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| shape | kernel | ms | cuDNN ms (same run) | TFLOP/s | cosine vs fp32 | cosine vs cuDNN |",
        "|---|---|---|---|---|---|---|",
    ]
    if res.get("skipped"):
        return lines + [f"| skipped: {res['skipped']} | | | | | | |"]
    for r in res["rows"]:
        c = r["cudnn"]
        lines.append(
            f"| {r['shape']} | cuDNN fp8 | {c['ms']:.3f} | | {c['tflops']:.0f} | {c['cosine']:.5f} | |"
        )
        for x in r["configs"]:
            name = x.get("kernel") or "wgmma " + "×".join(map(str, x["config"]))
            if "error" in x:
                lines.append(f"| {r['shape']} | {name} | error: {x['error'][:80]} | | | | |")
                continue
            lines.append(
                f"| {r['shape']} | {name} | {x['ms']:.3f} | {x['cudnn_ms']:.3f} | "
                f"{x['tflops']:.0f} | {x['cosine']:.5f} | {x['cosine_vs_cudnn']:.5f} |"
            )
    return lines
