"""Tables and the chart of the engine benchmark's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float | int):
        return format(v, spec)
    return str(v)


def flux_table(res: dict[str, Any]) -> list[str]:
    rows = {r["variant"]: r for r in res.get("rows", [])}
    lines = [
        "| variant | ms/step | ms/step in pipeline | x eager | x compile | TFLOP/s | % of bf16 floor | pipeline s | compile s | peak GB | rel L2 | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * 10)
            continue
        # Step caching only shows inside the pipeline: turbo compares pipeline-effective times.
        key = "ms_step_pipeline" if name == "turbo" else "ms_step"
        ms = r.get(key)
        eager = rows.get("eager", {}).get(key)
        comp = rows.get("compile", {}).get(key)
        fast = rows.get("fast", {}).get(key)
        d = r.get("drift") or {}
        xf = f" ({fast / ms:.2f}x fast)" if name == "turbo" and fast and ms else ""
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name,
                fmt(r.get("ms_step") if name != "turbo" else None),
                fmt(r.get("ms_step_pipeline")),
                fmt(eager / ms if eager and ms else None, ".2f") + xf,
                fmt(comp / ms if comp and ms else None, ".2f"),
                fmt(r.get("tflops"), ".0f"),
                fmt(r.get("pct_floor"), ".0f"),
                fmt(r.get("pipeline_s"), ".2f"),
                fmt(r.get("compile_s"), ".1f"),
                fmt(r.get("peak_gb"), ".1f"),
                fmt(d.get("rel_l2"), ".4f"),
                fmt(d.get("cosine"), ".5f"),
            )
        )
    return lines


def wan_table(res: dict[str, Any]) -> list[str]:
    rows = {r["variant"]: r for r in res.get("rows", [])}
    eager = rows.get("eager", {}).get("ms_step")
    lines = [
        "| variant | ms/call | x eager | TFLOP/s | % of bf16 floor | compile s | peak GB | call cosine | pipeline s (steps) | latents cosine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * 8)
            continue
        ms = r.get("ms_step")
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name,
                fmt(ms),
                fmt(eager / ms if eager and ms else None, ".2f"),
                fmt(r.get("tflops"), ".0f"),
                fmt(r.get("pct_floor"), ".0f"),
                fmt(r.get("compile_s"), ".1f"),
                fmt(r.get("peak_gb"), ".1f"),
                fmt((r.get("drift_call") or {}).get("cosine"), ".5f"),
                f"{fmt(r.get('pipeline_s'), '.1f')} ({r.get('pipeline_steps', '-')})",
                fmt((r.get("drift") or {}).get("cosine"), ".5f"),
            )
        )
    return lines


def blocks_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | ms (1 double + 1 single) | eager ms | compile s | rel L2 vs eager | optimize() arguments |",
        "|---|---|---|---|---|---|",
    ]
    for r in res.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} | | | | |")
            continue
        kw = json.dumps(r.get("kwargs", r.get("kernels", {})))
        lines.append(
            f"| {r['variant']} | {fmt(r['ms'], '.3f')} | {fmt(r['eager_ms'], '.3f')} | {fmt(r['compile_s'])} | {fmt(r['drift']['rel_l2'], '.4f')} | `{kw}` |"
        )
    return lines


def profile_table(res: dict[str, Any]) -> list[str]:
    classes = ["matmul", "attention", "fused elementwise (inductor)", "other"]
    lines = [
        "| mode | ms/step | " + " | ".join(classes) + " | idle between kernels | step − kernels |",
        "|---" * (len(classes) + 4) + "|",
    ]
    for r in res.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} |")
            continue
        c = r["classes_ms"]
        lines.append(
            f"| {r['mode']} | {fmt(r['ms_step'])} | "
            + " | ".join(fmt(c.get(k, 0.0)) for k in classes)
            + f" | {fmt(r.get('idle_ms'))} | {fmt(r['gaps_ms'])} |"
        )
    return lines


def cache_table(res: dict[str, Any]) -> list[str]:
    runs = res.get("runs", {})
    lines = [
        "| process | first call s (compile) | ms/step | fx-graph cache hits | process wall s |",
        "|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        hits = (r.get("inductor_counters") or {}).get("fxgraph_cache_hit")
        lines.append(
            f"| {label} | {fmt(r.get('first_call_s'))} | {fmt(r.get('ms_step'))} | {fmt(hits, 'd') if hits is not None else '-'} | {fmt(r.get('process_wall_s'))} |"
        )
    lora = next((r for r in runs.values() if r.get("swaps")), {})
    for s in lora.get("swaps", []):
        lines.append(
            f"| LoRA swap rank {s['rank']} | swap {s['swap_ms']:.1f} ms | next call {s['next_call_ms']:.1f} ms | changed rel {s['changed']:.3f} | |"
        )
    if "recompiles_after_swaps" in lora:
        lines.append(
            f"| LoRA recompiles after swaps | {lora['recompiles_after_swaps']} | graph vs plain cos {fmt((lora.get('graph_vs_plain') or {}).get('cosine'), '.6f')} | | |"
        )
    return lines


def print_tables(results: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for res in results:
        env = res.get("env", {})
        head = f"{res.get('model') or res.get('part')} on {env.get('gpu', env.get('device'))}, torch {env.get('torch')}, diffusers {env.get('diffusers')}"
        out.append(f"\n{head}")
        if res.get("peaks"):
            out.append(
                "peaks: "
                + ", ".join(f"{k} {v:.0f}" for k, v in res["peaks"].items() if isinstance(v, float))
            )
        if res.get("part") == "attn":
            from bench.enginebench.attn import attn_table

            out += attn_table(res)
        elif res.get("part") == "attn-cudnn":
            from bench.enginebench.attn_cudnn import attn_cudnn_table

            out += attn_cudnn_table(res)
        elif res.get("part") == "attn-wgmma":
            from bench.enginebench.attn_wgmma import attn_wgmma_table

            out += attn_wgmma_table(res)
        elif res.get("part") == "blocks":
            out += blocks_table(res)
        elif res.get("part") == "profile":
            out += profile_table(res)
        elif res.get("part") == "cache":
            out += cache_table(res)
        elif res.get("part") == "power":
            from bench.enginebench.power import power_table

            out += power_table(res)
        elif res.get("part") == "gelu-epilogue":
            from bench.enginebench.gelu_epilogue import gelu_epilogue_table

            out += gelu_epilogue_table(res)
        elif res.get("part") == "timeline":
            from bench.enginebench.timeline import timeline_table

            out.append(timeline_table(res))
        elif str(res.get("model", "")).startswith("Wan"):
            out += wan_table(res)
        else:
            out += flux_table(res)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def chart(results: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    flux = next((r for r in results if str(r.get("model", "")).startswith("FLUX")), None)
    if not flux:
        return None
    names, values = [], []
    for r in flux.get("rows", []):
        ms = r.get("ms_step_pipeline") if r.get("variant") == "turbo" else r.get("ms_step")
        if ms:
            names.append(r["variant"])
            values.append(ms)
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    palette = {"eager": "#999", "compile": "#777", "exact": "#4a7", "fast": "#27a", "turbo": "#a52"}
    ax.bar(names, values, color=[palette.get(n, "#555") for n in names])
    floor = next((r.get("floor_ms") for r in flux["rows"] if r.get("floor_ms")), None)
    if floor:
        ax.axhline(
            floor, color="k", linestyle="--", linewidth=1, label=f"bf16 floor {floor:.0f} ms"
        )
        ax.legend()
    ax.set_ylabel("ms per denoising step")
    ax.set_title(
        f"FLUX.1-dev {flux['resolution'][0]}x{flux['resolution'][1]} on {flux['env'].get('gpu', '?')}"
    )
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
