"""Our Triton kernels inside a compiled FLUX block against inductor's code."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from bench.enginebench.common import (
    drift,
    env_info,
    free,
    optimize,
    run_variant,
    save_partial,
    sync,
    time_calls,
)

# ---------------------------------------------------------------------------- kernels in blocks


def blocks_part(args: argparse.Namespace) -> dict[str, Any]:
    """FLUX with one double and one single block at full width: our kernels vs inductor's code."""
    from diffusers import FluxTransformer2DModel

    from engine.pipelines import configs, flux_transformer_inputs
    from engine.pipelines._build import random_model

    device = torch.device(args.device)
    cfg = dict(
        configs.FLUX_DEV_TRANSFORMER if args.size == "dev" else configs.FLUX_TINY_TRANSFORMER
    )
    cfg.update(num_layers=1, num_single_layers=1)
    res = args.resolution
    result: dict[str, Any] = {
        "env": env_info(device),
        "part": "blocks",
        "config": "FLUX.1-dev width, 1 double + 1 single block",
    }
    variants = (
        [(v["name"], v["mode"], v.get("kwargs", {})) for v in json.loads(args.block_variants)]
        if args.block_variants
        else [
            ("exact/inductor", "exact", {"kernels": []}),
            ("exact/qk_rmsnorm_rope", "exact", {"kernels": ["qk_rmsnorm_rope"]}),
            ("fast/inductor", "fast", {"kernels": []}),
            ("fast/fp8_linear", "fast", {"kernels": ["fp8_linear"]}),
        ]
    )
    rows = []
    ref = None
    for name, mode, kw in variants:

        def one(mode=mode, kw=kw):
            nonlocal ref
            torch._dynamo.reset()
            free(device)
            model = random_model(
                FluxTransformer2DModel, cfg, device=device, dtype=torch.bfloat16, seed=0
            )
            inp = flux_transformer_inputs(model, height=res, width=res)
            with torch.no_grad():
                eager_out = model(**inp)[0].float()
                eager_ms = time_calls(lambda: model(**inp), device, iters=args.iters, warmup=1)
            optimize(model, mode, **{"cuda_graphs": False, "cache_dir": args.cache_dir, **kw})
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model(**inp)[0].float()
                sync(device)
                first = time.perf_counter() - t0
                ms = time_calls(lambda: model(**inp), device, iters=args.iters, warmup=2)
            return {
                "mode": mode,
                "kwargs": kw,
                "ms": ms,
                "eager_ms": eager_ms,
                "compile_s": first,
                "drift": drift(out, eager_out),
            }

        rows.append(run_variant(name, one))
        save_partial(args, "blocks", {**result, "rows": rows})
    result["rows"] = rows
    return result
