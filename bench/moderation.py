"""Moderation benchmark: prompt check, image check on one core, hash matching at scale.

Run from the repository root: `python bench/moderation.py` (about two minutes; `--quick`
for a smoke run). Prints a table, writes `bench/results/moderation.json` and
`bench/results/moderation.png`.

- Prompt check: `analyze_text` (normalisation, term lists and combination rules, the
  classifier) over every prompt of the labelled corpus, many rounds; per-call latency.
- Image check: `analyze_media` on 1024x1024 PNG and JPEG outputs (read, SHA-256, decode,
  PDQ with its eight dihedral variants, match against 1,000,000 hashes, NSFW detector),
  pinned to one CPU core with one ONNX and one OpenCV thread.
- Hash match: the multi-index against random lists of 10k to 4M PDQ hashes with planted
  near-duplicates (up to 31 bits flipped); one hash per query, and the eight dihedral
  hashes of an image per query. Recall is checked against the planted entries.

The machine is shared and noisy: every figure is a median or a p99 over many runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def stats(values_ms: list[float]) -> dict[str, float]:
    return {"n": len(values_ms), "median_ms": pct(values_ms, 50), "p90_ms": pct(values_ms, 90),
            "p99_ms": pct(values_ms, 99), "mean_ms": statistics.fmean(values_ms),
            "max_ms": max(values_ms)}


def corpus() -> list[str]:
    prompts = []
    for name in ("prompts.tsv", "prompts_evasions.tsv"):
        for line in (ROOT / "tests/moderation/data" / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                prompts.append(line.split("\t")[2])
    return prompts


def bench_prompts(rounds: int) -> dict[str, object]:
    from moderation.text.check import analyze_text

    prompts = corpus()
    negative = "blurry, low quality, watermark, text, deformed hands, extra fingers"
    for p in prompts:  # warm: term index, classifier, caches
        analyze_text([p, negative])
    times, cpu = [], []
    for _ in range(rounds):
        for p in prompts:
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            analyze_text([p, negative])
            cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
            times.append((time.perf_counter_ns() - started) / 1e6)
    long_prompt = corpus()[0] + ", " + ", ".join(["highly detailed landscape painting"] * 60)
    long_times = []
    for _ in range(300):
        started = time.perf_counter_ns()
        analyze_text([long_prompt, negative])
        long_times.append((time.perf_counter_ns() - started) / 1e6)
    return {"prompts": len(prompts), "rounds": rounds, "per_call": stats(times),
            "per_call_cpu": stats(cpu),
            "long_prompt_chars": len(long_prompt), "long_prompt": stats(long_times),
            "samples_ms": times[:: max(1, len(times) // 4000)],
            "samples_cpu_ms": cpu[:: max(1, len(cpu) // 4000)]}


def random_list(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def flip_bits(row: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(row)
    bits[rng.choice(256, k, replace=False)] ^= 1
    return np.packbits(bits)


def bench_hash_index(sizes: list[int], queries: int) -> list[dict[str, object]]:
    from moderation.images.hashing import HashIndex

    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        hashes = random_list(n, seed=n)
        started = time.perf_counter()
        index = HashIndex(hashes)
        build_s = time.perf_counter() - started
        memory = index.hashes.nbytes + index._order.nbytes + index._offsets.nbytes
        single, dihedral, found = [], [], 0
        for _ in range(queries):
            target = int(rng.integers(0, n))
            query = flip_bits(hashes[target], int(rng.integers(0, 32)), rng)
            started = time.perf_counter_ns()
            hits, _ = index.query(query, 31)
            single.append((time.perf_counter_ns() - started) / 1e6)
            found += target in hits
            eight = np.stack([query] + [flip_bits(query, 128, rng) for _ in range(7)])
            started = time.perf_counter_ns()
            index.query(eight, 31)
            dihedral.append((time.perf_counter_ns() - started) / 1e6)
        out.append({"size": n, "build_s": build_s, "index_mib": memory / 2**20,
                    "single": stats(single), "dihedral8": stats(dihedral),
                    "recall": found / queries})
        print(f"  index {n:>9,}: single p50 {pct(single, 50):.3f} ms, p99 {pct(single, 99):.3f} ms; "
              f"8 hashes p50 {pct(dihedral, 50):.3f} ms; build {build_s:.2f} s", flush=True)
    return out


def bench_images(runs: int, list_size: int) -> dict[str, object]:
    import cv2
    from PIL import Image

    from moderation.images.check import analyze_media
    from moderation.images.hashing import HashRegistry
    from moderation.images.nsfw import get_detector

    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    sys.path.insert(0, str(ROOT / "tests" / "moderation"))
    from imagegen import nsfw_figure, scene

    registry = HashRegistry([("csam/bench.npy", "csam", random_list(list_size, seed=99))])
    detector = get_detector(threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="moderation-bench-"))
    files = {}
    for i in range(4):
        img = scene(100 + i) if i < 3 else nsfw_figure()
        Image.fromarray(img).save(tmp / f"{i}.png")
        Image.fromarray(img).save(tmp / f"{i}.jpg", quality=90)
        files.setdefault("png", []).append(tmp / f"{i}.png")
        files.setdefault("jpeg", []).append(tmp / f"{i}.jpg")
    result: dict[str, object] = {"cpu": cpu, "list_size": list_size}
    for fmt, paths in files.items():
        for p in paths:  # warm
            analyze_media(p, registry=registry, detector=detector, nsfw_threshold=0.6,
                          max_file_bytes=1 << 30, max_pixels=10**8, video_frames=8)
        totals: list[float] = []
        cpu: list[float] = []
        stages: dict[str, list[float]] = {}
        for r in range(runs):
            path = paths[r % len(paths)]
            started, started_cpu = time.perf_counter_ns(), time.process_time_ns()
            findings, _ = analyze_media(path, registry=registry, detector=detector, nsfw_threshold=0.6,
                                        max_file_bytes=1 << 30, max_pixels=10**8, video_frames=8)
            cpu.append((time.process_time_ns() - started_cpu) / 1e6)
            totals.append((time.perf_counter_ns() - started) / 1e6)
            for k, v in findings.timings_ms.items():
                if k != "total":
                    stages.setdefault(k, []).append(v)
        result[fmt] = {"total": stats(totals), "cpu": stats(cpu), "stages_median_ms": {k: pct(v, 50) for k, v in stages.items()},
                       "bytes": int(statistics.fmean(p.stat().st_size for p in paths))}
        print(f"  {fmt}: median {pct(totals, 50):.1f} ms, p99 {pct(totals, 99):.1f} ms, "
              f"CPU median {pct(cpu, 50):.1f} ms "
              f"({', '.join(f'{k} {pct(v, 50):.1f}' for k, v in stages.items())})", flush=True)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return result


def chart(payload: dict[str, object], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    prompt = payload["prompt"]
    bins = np.linspace(0, 2.0, 81)
    axes[0].hist(np.clip(prompt["samples_ms"], 0, 2.0), bins=bins, alpha=0.6, label="wall clock")
    axes[0].hist(np.clip(prompt["samples_cpu_ms"], 0, 2.0), bins=bins, alpha=0.6, label="CPU time")
    axes[0].axvline(prompt["per_call"]["p99_ms"], color="#c44e52", ls="--",
                    label=f"wall p99 {prompt['per_call']['p99_ms']:.3f} ms")
    axes[0].axvline(prompt["per_call_cpu"]["p99_ms"], color="#55a868", ls="--",
                    label=f"CPU p99 {prompt['per_call_cpu']['p99_ms']:.3f} ms")
    axes[0].axvline(1.0, color="#222", ls=":", label="target 1 ms")
    axes[0].set(title="Prompt check latency (clipped at 2 ms)", xlabel="ms per call", ylabel="calls",
                yscale="log")
    axes[0].legend(fontsize=8)

    images = payload["image"]
    fmts = [f for f in ("png", "jpeg") if f in images]
    stage_names = ["decode", "pdq", "hash_match", "nsfw"]
    bottom = np.zeros(len(fmts))
    for stage in stage_names:
        vals = np.array([images[f]["stages_median_ms"].get(stage, 0.0) for f in fmts])
        axes[1].bar(fmts, vals, bottom=bottom, label=stage)
        bottom += vals
    axes[1].plot(fmts, [images[f]["cpu"]["median_ms"] for f in fmts], "kD", label="CPU time, whole check")
    axes[1].axhline(60, color="#222", ls=":", label="target 60 ms")
    axes[1].set(title="Image check, 1024x1024, one core (median wall clock)", ylabel="ms")
    axes[1].legend(fontsize=8)

    rows = payload["hash_index"]
    sizes = [r["size"] for r in rows]
    axes[2].plot(sizes, [r["single"]["median_ms"] for r in rows], "o-", label="1 hash, p50")
    axes[2].plot(sizes, [r["single"]["p99_ms"] for r in rows], "o--", label="1 hash, p99")
    axes[2].plot(sizes, [r["dihedral8"]["median_ms"] for r in rows], "s-", label="8 hashes, p50")
    axes[2].axhline(5, color="#222", ls=":", label="target 5 ms")
    axes[2].set(xscale="log", title="PDQ match vs list size", xlabel="hashes in list", ylabel="ms")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"mediagate moderation · {payload['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script")
    args = parser.parse_args()
    quick = args.quick
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    load_before = os.getloadavg()
    print(f"moderation benchmark on {machine}, load average {load_before[0]:.2f}", flush=True)

    print("prompt check", flush=True)
    prompt = bench_prompts(rounds=2 if quick else 20)
    pc = prompt["per_call"]
    print(f"  {prompt['prompts']} prompts x {prompt['rounds']}: median {pc['median_ms']:.3f} ms, "
          f"p99 {pc['p99_ms']:.3f} ms", flush=True)

    print("hash index", flush=True)
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000, 4_000_000]
    index = bench_hash_index(sizes, queries=50 if quick else 400)

    print("image check (one core)", flush=True)
    image = bench_images(runs=8 if quick else 60, list_size=100_000 if quick else 1_000_000)

    payload = {"machine": machine, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "quick": quick, "load_before": load_before, "load_after": os.getloadavg(), "prompt": prompt, "hash_index": index, "image": image}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "moderation.json").write_text(json.dumps(payload, indent=2))
    drew = chart(payload, RESULTS / "moderation.png")

    million = next((r for r in index if r["size"] == 1_000_000), index[-1])
    print()
    print(f"{'measure (wall clock unless CPU)':<52} {'median':>10} {'p99':>10} {'target':>10}")
    print(f"{'prompt check (prompt + negative prompt)':<52} {pc['median_ms']:>8.3f}ms {pc['p99_ms']:>8.3f}ms {'p99 1 ms':>10}")
    pcc = prompt["per_call_cpu"]
    print(f"{'  same, CPU time':<52} {pcc['median_ms']:>8.3f}ms {pcc['p99_ms']:>8.3f}ms {'':>10}")
    lp = prompt["long_prompt"]
    print(f"{'prompt check, ' + str(prompt['long_prompt_chars']) + '-char prompt':<52} {lp['median_ms']:>8.3f}ms {lp['p99_ms']:>8.3f}ms {'':>10}")
    for fmt in ("png", "jpeg"):
        t = image[fmt]["total"]
        c = image[fmt]["cpu"]
        print(f"{'image check 1024x1024 ' + fmt + ', 1 core':<52} {t['median_ms']:>8.1f}ms {t['p99_ms']:>8.1f}ms {'p50 60 ms':>10}")
        print(f"{'  same, CPU time':<52} {c['median_ms']:>8.1f}ms {c['p99_ms']:>8.1f}ms {'':>10}")
    s, d = million["single"], million["dihedral8"]
    print(f"{'hash match, 1 hash vs ' + format(million['size'], ',') + ' hashes':<52} {s['median_ms']:>8.3f}ms {s['p99_ms']:>8.3f}ms {'5 ms':>10}")
    print(f"{'hash match, 8 dihedral hashes vs ' + format(million['size'], ','):<52} {d['median_ms']:>8.3f}ms {d['p99_ms']:>8.3f}ms {'':>10}")
    after = payload["load_after"]
    print(f"\nload average before {load_before[0]:.2f}, after {after[0]:.2f} (2 cores, shared)")
    print(f"wrote {RESULTS / 'moderation.json'}" + (f" and {RESULTS / 'moderation.png'}" if drew else ""))


if __name__ == "__main__":
    main()
