"""Engine benchmark: FLUX.1-dev and Wan 2.1 1.3B through `engine.optimize`, against diffusers.

Run on a CUDA machine from the repository root, one part per process:

    python bench/engine.py --part flux      # eager, diffusers+compile, exact, fast, turbo
    python bench/engine.py --part attn      # fp8 attention kernel vs cuDNN bf16 SDPA, per shape
    python bench/engine.py --part attn-cudnn   # cuDNN fp8 attention: every plan, both layouts
    python bench/engine.py --part attn-wgmma   # our Gluon fp8 attention against cuDNN's
    python bench/engine.py --part blocks    # our Triton kernels inside a compiled block vs inductor
    python bench/engine.py --part cache     # compile time cold / from the disk cache, LoRA hot-swap
    python bench/engine.py --part wan       # Wan 2.1 T2V 1.3B, 832x480, 81 frames
    python bench/engine.py --part options   # exact's inductor options and region sizes, side by side
    python bench/engine.py --part power     # board power and SM clock per FLUX mode (power cap?)
    ... --flux-variants fast,fast-fp8attn,fast-fp8attn-triton,fast-fp8attn-separate / --wan-variants
        eager,fast,fast-fp8attn,fast-fp8attn-triton: fp8 attention (default cuDNN on Hopper; our kernel)
    torchrun --nproc_per_node 2 bench/engine.py --part cp   # context parallel vs one GPU
    torchrun --nproc_per_node 2 bench/engine.py --part alltoall   # the exchange alone
    python bench/engine.py --part timeline  # one pipeline call's wall time, phase by phase
    python bench/engine.py --part gelu-epilogue  # bf16 up projection + GELU: cuBLASLt epilogue
    python bench/engine.py --merge a.json b.json ...   # one table, engine.json and a PNG

Every model is built from its published config with random weights (text encoders too:
T5-XXL and CLIP-L for FLUX, UMT5-XXL for Wan), so whole-pipeline times are honest; the
outputs are not images of anything. Per variant it reports the transformer's ms per step
(median of CUDA-event timings of single calls with the pipeline's own inputs), the
effective ms per step inside the pipeline (GPU time between the first and the last step
callbacks, which is what step caching changes), whole-pipeline seconds, achieved TFLOP/s
against the bf16 matmul peak measured in the same process, compile/warm-up seconds, peak
GPU memory, and the drift of the final latents against eager bf16 with the same seed.

`--size tiny --device cpu` runs every part but `alltoall` (two GPUs) on tiny configs, to
check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.enginebench.alltoall import alltoall_part  # noqa: E402
from bench.enginebench.attn import attn_part  # noqa: E402
from bench.enginebench.attn_cudnn import attn_cudnn_part  # noqa: E402
from bench.enginebench.attn_wgmma import attn_wgmma_part  # noqa: E402
from bench.enginebench.blocks import blocks_part  # noqa: E402
from bench.enginebench.cache import cache_part, probe_part  # noqa: E402
from bench.enginebench.common import RESULTS  # noqa: E402
from bench.enginebench.cp import cp_part  # noqa: E402
from bench.enginebench.flux import flux_part  # noqa: E402
from bench.enginebench.gelu_epilogue import gelu_epilogue_part  # noqa: E402
from bench.enginebench.options import options_part  # noqa: E402
from bench.enginebench.power import power_part  # noqa: E402
from bench.enginebench.profile import profile_part  # noqa: E402
from bench.enginebench.report import chart, print_tables  # noqa: E402
from bench.enginebench.timeline import timeline_part  # noqa: E402
from bench.enginebench.wan import wan_part  # noqa: E402
from engine.process_env import apply_gpu_process_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=[
            "flux",
            "attn",
            "attn-cudnn",
            "attn-wgmma",
            "blocks",
            "cache",
            "probe",
            "wan",
            "profile",
            "cp",
            "options",
            "power",
            "alltoall",
            "timeline",
            "gelu-epilogue",
        ],
        default="flux",
    )
    parser.add_argument(
        "--merge", nargs="*", help="result JSON files to merge into engine.json and print"
    )
    parser.add_argument("--size", choices=["dev", "tiny"], default="dev")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--probe-timeout", type=int, default=240)
    parser.add_argument("--probe-mode", default="fast")
    parser.add_argument("--block-variants", default="", help="JSON list of {name, mode, kwargs}")
    parser.add_argument(
        "--pick-from", default="", help="blocks result JSON: use its fastest kwargs per mode"
    )
    parser.add_argument(
        "--probes", default="", help="JSON list of compile probes (see DEFAULT_PROBES)"
    )
    parser.add_argument(
        "--option-variants", default="", help="--part options: JSON list of {name, options, kwargs}"
    )
    parser.add_argument("--only", default="", help="--part options: variant names to run")
    parser.add_argument("--optimize-kwargs", default="", help="JSON of extra optimize() arguments")
    parser.add_argument("--no-baseline-compile", action="store_true")
    parser.add_argument(
        "--attn-quick", action="store_true", help="--part attn: the tuning set only, no variants"
    )
    parser.add_argument(
        "--profile-modes", default="eager,exact,fast", help="--part profile: modes, or mode-fp8attn"
    )
    parser.add_argument("--profile-model", choices=["flux", "wan"], default="flux")
    parser.add_argument(
        "--profile-graphs", action="store_true", help="--part profile: CUDA graphs on, warm"
    )
    parser.add_argument("--no-peaks", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument(
        "--flux-variants",
        default="exact,fast,turbo",
        help="besides eager (and compile): any of exact, fast, turbo, fast-fp8attn[-cudnn-"
        "separate|-triton|-separate]; A/B suffixes -unaligned, -unfused",
    )
    parser.add_argument(
        "--wan-variants",
        default="eager,exact,fast",
        help="eager, exact, fast, fast-fp8attn; A/B suffixes -unaligned, -unfused",
    )
    parser.add_argument("--wan-steps", type=int, default=4)
    parser.add_argument("--cp-modes", default="eager,exact,fast", help="modes for --part cp")
    parser.add_argument("--cp-wan", action="store_true", help="--part cp: Wan after FLUX")
    parser.add_argument(
        "--cp-pipeline", default="", help="--part cp: whole FLUX pipeline in this variant"
    )
    parser.add_argument("--pipeline-runs", type=int, default=3, help="--part cp pipeline runs")
    parser.add_argument(
        "--cp-profile", action="store_true", help="--part cp: GPU time by kernel class per row"
    )
    parser.add_argument("--timeline-mode", default="fast", help="--part timeline: mode")
    parser.add_argument(
        "--timeline-kwargs", default='{"attention": "fp8"}', help="--part timeline: optimize kwargs"
    )
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument(
        "--torch-cublaslt-workspace",
        action="store_true",
        help="keep torch's cuBLASLt workspace instead of the replica's (engine/process_env.py)",
    )
    args = parser.parse_args()
    if not args.torch_cublaslt_workspace:
        apply_gpu_process_env()  # as a replica runs (before this process's first GEMM)
    if args.size == "tiny" and args.resolution == 1024:
        args.resolution = 64
    if args.part == "cache" and not args.lora_rank:
        args.lora_rank = 64 if args.size == "dev" else 8

    if args.merge is not None and args.merge:
        results = [json.loads(Path(p).read_text()) for p in args.merge]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "engine.json").write_text(
            json.dumps({"results": results}, indent=2, default=str)
        )
        text = print_tables(results)
        (RESULTS / "engine.md").write_text(text + "\n")
        chart(results, RESULTS / "engine.png")
        return

    if args.part == "probe":
        probe_part(args)
        return
    if args.part == "alltoall":
        result = alltoall_part(args)  # under torchrun only rank 0 returns its rows
        if result:
            tuned = {
                k.removeprefix("NCCL_"): v
                for k, v in result.get("nccl_env", {}).items()
                if k not in ("NCCL_VERSION", "NCCL_NVLS_ENABLE")
            }
            tag = "-".join(f"{k}-{v}" for k, v in tuned.items()) or "default"
            tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
            name = f"engine-alltoall-{'nccl-' + tag if result['how'] == 'nccl' else 'peer'}.json"
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / name).write_text(json.dumps(result, indent=2, default=str))
            for row in result["rows"]:
                print(result["how"], row, flush=True)
        return
    if args.part == "cp":
        cp_part(args)  # one process per rank; rank 0 prints and writes the JSON
        return
    part = {
        "flux": flux_part,
        "attn": attn_part,
        "attn-cudnn": attn_cudnn_part,
        "attn-wgmma": attn_wgmma_part,
        "blocks": blocks_part,
        "cache": cache_part,
        "wan": wan_part,
        "profile": profile_part,
        "options": options_part,
        "power": power_part,
        "timeline": timeline_part,
        "gelu-epilogue": gelu_epilogue_part,
    }[args.part]
    result = part(args)
    result.setdefault("part", args.part)
    payload = json.dumps(result, indent=2, default=str)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"engine-{args.part}{'-tiny' if args.size == 'tiny' else ''}.json"
    (RESULTS / name).write_text(payload)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / name).write_text(payload)
    print_tables([result])


if __name__ == "__main__":
    main()
