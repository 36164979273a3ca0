"""Context parallel (Ulysses) over the ranks of one host against one GPU.

Launch one process per GPU:

    torchrun --nproc_per_node 2 bench/engine.py --part cp
    torchrun --nproc_per_node 2 bench/engine.py --part cp --size tiny --device cpu   # gloo

Per mode (diffusers eager bf16, `exact`, `fast`) every rank first runs the model alone on
its own GPU (the one-GPU figure; rank 0 reports it), then the same model split over all
ranks. ms/step is the transformer call with FLUX.1-dev's inputs at the given resolution
(median of CUDA-event timings on rank 0; the collectives keep the ranks in step). Drift is
the context-parallel output against the one-GPU output of the same mode and against
one-GPU eager, same weights and inputs. Wan 2.1 1.3B (832x480, 81 frames) follows when
`--wan-variants` names modes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench.enginebench.common import drift, env_info, free, log, optimize, peak_gb, time_calls

CP_VARIANTS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    # name: (mode, optimize kwargs, variant whose one-GPU run stands in for this one's)
    "eager": ("eager", {}, None),
    "exact": ("exact", {}, None),
    "exact-dispatch": ("exact", {"attention_op": False}, "exact"),
    "fast": ("fast", {}, None),
    "fast-dispatch": ("fast", {"attention_op": False}, "fast"),
    "fast-fp8attn": ("fast", {"attention": "fp8"}, None),
    "fast-fp8attn-graphs": ("fast", {"attention": "fp8", "cuda_graphs": "always"}, "fast-fp8attn"),
}
"""`--cp-modes` names. "-dispatch" keeps diffusers' Ulysses (one all-to-all per q, k, v
and one back) against our packed exchange; its one-GPU run is the same model, so only the
split runs again. "-graphs" asks for CUDA graphs (FLUX captures them by default, Wan not)."""


def _init(device_arg: str) -> tuple[torch.device, int, int]:
    if not dist.is_initialized():
        backend = "nccl" if device_arg.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device_arg.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return torch.device("cpu"), rank, world


def prepare(model, variant: str, degree: int | None, args):
    """Apply `variant` (with context parallel over `degree` ranks, if given) to `model`, a
    transformer or a whole pipeline; returns the optimization report as a dict, if any."""
    mode, variant_kwargs, _ = CP_VARIANTS[variant]
    if mode == "eager":
        if degree:
            from engine.optimization.parallel import (
                check_context_parallel,
                enable_context_parallel,
            )

            denoiser = getattr(model, "transformer", model)
            check_context_parallel(denoiser, degree)
            enable_context_parallel(denoiser, degree)
        return None
    kwargs: dict[str, Any] = {"cache_dir": args.cache_dir}
    if model.device.type == "cpu":
        kwargs["compile_backend"] = "aot_eager"
    kwargs.update(variant_kwargs)
    kwargs.update(json.loads(args.optimize_kwargs) if args.optimize_kwargs else {})
    if model.device.type == "cpu":
        kwargs["cuda_graphs"] = False
    optimize(model, mode, context_parallel=degree, **kwargs)
    from engine.optimization import report_of

    report = report_of(model)
    return report.to_dict() if report is not None else None


def _measure(
    build, make_inputs, mode: str, degree: int | None, args, device, out_of
) -> dict[str, Any]:
    torch._dynamo.reset()
    free(device)
    model = build()
    inputs = make_inputs(model)
    row: dict[str, Any] = {"mode": mode, "gpus": degree or 1}
    t0 = time.perf_counter()
    report = prepare(model, mode, degree, args)
    with torch.no_grad():
        out = out_of(model(**inputs))
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["first_call_s"] = time.perf_counter() - t0
        dist.barrier()
        row["ms_step"] = time_calls(lambda: model(**inputs), device, iters=args.iters, warmup=1)
        if args.cp_profile and device.type == "cuda":
            row["profile"] = _profile(model, inputs, row["ms_step"])
    row["peak_gb"] = peak_gb(device)
    if report:
        row["attention_backend"] = report.get("attention_backend")
        row["cuda_graphs"] = report.get("cuda_graphs")
        row["context_parallel"] = report.get("context_parallel")
    row["_out"] = out.detach().float().cpu()
    return row


def _profile(model, inputs, ms_step: float) -> dict[str, Any]:
    # Every rank profiles (the collectives keep them in step); rank 0's is the one kept.
    from torch.profiler import ProfilerActivity, profile

    from bench.enginebench.profile import kernel_breakdown

    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            model(**inputs)
        torch.cuda.synchronize()
    return kernel_breakdown(prof, calls=3, ms_step=ms_step)


def _series(name, build, make_inputs, out_of, modes, args, device, world, saved) -> dict[str, Any]:
    rank = dist.get_rank()
    rows: list[dict[str, Any]] = []
    one_gpu: dict[str, torch.Tensor] = {}
    for mode in modes:
        stand_in = CP_VARIANTS[mode][2]
        if stand_in in one_gpu:
            single = next(r for r in rows if r["mode"] == stand_in and r["gpus"] == 1)
            one_gpu[mode] = one_gpu[stand_in]
            rows.append({**single, "mode": mode, "one_gpu_of": stand_in})
        for degree in (None, world):
            if degree is None and mode in one_gpu:
                continue
            tag = f"{name} {mode} x{degree or 1}"
            if rank == 0:
                log("---", tag)
            try:
                row = _measure(build, make_inputs, mode, degree, args, device, out_of)
            except Exception as exc:  # noqa: BLE001  (one failed variant must not lose the others)
                import traceback

                traceback.print_exc()
                row = {"mode": mode, "gpus": degree or 1, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                # A rank that failed alone would leave the other in a collective: stop here.
                break
            out = row.pop("_out")
            if degree is None:
                one_gpu[mode] = out
            else:
                if mode in one_gpu:
                    row["drift_vs_1gpu_same_mode"] = drift(out, one_gpu[mode])
                    single = next(r for r in rows if r["mode"] == mode and r["gpus"] == 1)
                    row["speedup"] = single["ms_step"] / row["ms_step"]
                if "eager" in one_gpu:
                    row["drift_vs_1gpu_eager"] = drift(out, one_gpu["eager"])
            if rank == 0:
                log(tag, {k: v for k, v in row.items() if not isinstance(v, dict)})
            rows.append(row)
            saved({"model": name, "rows": rows})
        else:
            continue
        break
    return {"model": name, "rows": rows}


def cp_part(args: argparse.Namespace) -> dict[str, Any] | None:
    from engine.pipelines import (
        build_flux_transformer,
        build_wan_transformer,
        flux_transformer_inputs,
        wan_transformer_inputs,
    )

    device, rank, world = _init(args.device)
    dtype = torch.bfloat16
    res = args.resolution
    result: dict[str, Any] = {"part": "cp", "env": env_info(device), "ranks": world}
    result["optimize_kwargs"] = args.optimize_kwargs or None
    result["env"]["gpus"] = world
    modes = [m for m in args.cp_modes.split(",") if m]
    unknown = [m for m in modes if m not in CP_VARIANTS]
    if unknown:
        raise SystemExit(f"--cp-modes: unknown {unknown}; choose from {list(CP_VARIANTS)}")
    flux_size = args.size
    save = lambda key: lambda series: _save(args, rank, {**result, key: series})  # noqa: E731
    result["flux"] = _series(
        f"FLUX.1-{flux_size} {res}x{res}",
        lambda: build_flux_transformer(flux_size, device=device, dtype=dtype, seed=0),
        lambda m: flux_transformer_inputs(m, height=res, width=res),
        lambda o: o[0],
        modes,
        args,
        device,
        world,
        save("flux"),
    )
    _save(args, rank, result)
    wan_modes = [m for m in args.wan_variants.split(",") if m in CP_VARIANTS]
    if wan_modes and args.cp_wan:
        size = "1.3b" if args.size == "dev" else "tiny"
        hw, frames = ((480, 832), 81) if size == "1.3b" else ((32, 32), 5)
        result["wan"] = _series(
            f"Wan2.1-T2V-{size} {hw[1]}x{hw[0]}x{frames}",
            lambda: build_wan_transformer(size, device=device, dtype=dtype, seed=0),
            lambda m: wan_transformer_inputs(m, height=hw[0], width=hw[1], num_frames=frames),
            lambda o: o[0],
            wan_modes,
            args,
            device,
            world,
            save("wan"),
        )
        _save(args, rank, result)
    if args.cp_pipeline:
        from bench.enginebench.cp_pipeline import pipeline_rows

        try:
            result["pipeline"] = pipeline_rows(args.cp_pipeline, args, device, world)
        except Exception as exc:  # noqa: BLE001  (the transformer rows are kept)
            import traceback

            traceback.print_exc()
            result["pipeline"] = [
                {"variant": args.cp_pipeline, "error": f"{type(exc).__name__}: {exc}"}
            ]
        _save(args, rank, result)
    if rank == 0:
        print(cp_table(result), flush=True)
    _finish()
    return result if rank == 0 else None


def _finish(timeout_s: float = 20.0) -> None:
    # A process whose captured CUDA graphs hold NCCL work was seen to hang in its final
    # barrier; the results are written by now, so a stuck teardown must not hold the run.
    import threading

    done = threading.Event()

    def teardown():
        dist.barrier()
        dist.destroy_process_group()
        done.set()

    threading.Thread(target=teardown, daemon=True).start()
    if not done.wait(timeout_s):
        log(f"rank {dist.get_rank()}: teardown still waiting after {timeout_s:.0f} s; exiting")
        os._exit(0)


def _save(args, rank: int, result: dict[str, Any]) -> None:
    if rank != 0:
        return
    name = f"engine-cp{'-tiny' if args.size == 'tiny' else ''}.json"
    payload = json.dumps(result, indent=2, default=str)
    from bench.enginebench.common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(payload)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / name).write_text(payload)


def cp_table(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"context parallel, {result['ranks']} ranks on {env.get('gpu', env.get('device'))}, "
        f"torch {env.get('torch')}, diffusers {env.get('diffusers')}"
    ]
    for key in ("flux", "wan"):
        series = result.get(key)
        if not series:
            continue
        lines += [
            "",
            series["model"],
            "| mode | GPUs | ms/step | speed-up | first call s | peak GB | rel L2 / cosine vs 1 GPU | vs 1-GPU eager |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in series["rows"]:
            if "error" in r:
                lines.append(f"| {r['mode']} | {r['gpus']} | error: {r['error'][:80]} |||||")
                continue
            same = r.get("drift_vs_1gpu_same_mode")
            eager = r.get("drift_vs_1gpu_eager")
            fmt = lambda d: f"{d['rel_l2']:.4f} / {d['cosine']:.5f}" if d else "–"  # noqa: E731
            speedup = f"{r['speedup']:.2f}×" if "speedup" in r else "–"
            lines.append(
                f"| {r['mode']} | {r['gpus']} | {r['ms_step']:.1f} | {speedup} | "
                f"{r['first_call_s']:.1f} | {r['peak_gb'] or 0:.1f} | {fmt(same)} | {fmt(eager)} |"
            )
    if result.get("pipeline"):
        from bench.enginebench.cp_pipeline import pipeline_table

        lines += pipeline_table(result["pipeline"])
    return "\n".join(lines)
