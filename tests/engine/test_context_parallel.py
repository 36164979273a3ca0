"""`optimize(..., context_parallel=N)`: its checks, and Ulysses over two real CPU ranks.

The checks run in this process, which has no process group. The two-rank test launches
`bench/engine.py --part cp` under torchrun on gloo, so the same hooks and packed
exchange that split FLUX and Wan over two GPUs run here on tiny configs, eager and
compiled, against diffusers' own dispatch and with fp8 attention.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.optimization import optimize, report_of  # noqa: E402
from engine.pipelines import build_flux_transformer, build_sdxl_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _flux():
    return build_flux_transformer("tiny", device="cpu", dtype=torch.float32, seed=0)


def test_without_a_process_group_the_error_says_how_to_launch():
    assert not torch.distributed.is_initialized()
    model = _flux()
    with pytest.raises(RuntimeError, match="torch.distributed initialised with 2 ranks"):
        optimize(model, "exact", compile=False, context_parallel=2)
    # Checked before anything is applied: the model is left as it was.
    assert report_of(model) is None
    assert not getattr(model.transformer_blocks[0].attn, "fused_projections", False)


def test_heads_that_do_not_divide_are_refused():
    model = _flux()
    heads = model.config.num_attention_heads
    with pytest.raises(ValueError, match=f"{heads} heads do not divide"):
        optimize(model, "exact", compile=False, context_parallel=heads + 1)


@pytest.mark.parametrize("degree", [1, 0, "2", True])
def test_degree_must_be_an_int_of_at_least_two(degree):
    with pytest.raises(ValueError, match="int >= 2"):
        optimize(_flux(), "exact", compile=False, context_parallel=degree)


def test_turbo_and_models_without_a_plan_are_refused():
    with pytest.raises(ValueError, match="not 'turbo'"):
        optimize(_flux(), "turbo", compile=False, context_parallel=2)
    unet = build_sdxl_unet("tiny", device="cpu", dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="no context-parallel plan"):
        optimize(unet, "exact", compile=False, context_parallel=2)


@pytest.mark.timeout(240)
def test_two_cpu_ranks_match_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "bench" / "engine.py"),
        "--part",
        "cp",
        "--size",
        "tiny",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--cp-modes",
        "eager,exact,exact-dispatch,fast-fp8attn",
        "--cp-wan",
        "--wan-variants",
        "exact",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "engine-cp-tiny.json").read_text())
    split = {r["mode"]: r for r in result["flux"]["rows"] if r["gpus"] == 2}
    assert list(split) == ["eager", "exact", "exact-dispatch", "fast-fp8attn"], split
    wan = [r for r in result["wan"]["rows"] if r["gpus"] == 2]
    for row in [*split.values(), *wan]:
        assert "error" not in row, row
        # The same precision on both sides: the split changes only the order of roundings.
        assert row["drift_vs_1gpu_same_mode"]["cosine"] > 0.9999, row
        assert row["drift_vs_1gpu_same_mode"]["rel_l2"] < 1e-2, row
    assert split["exact"]["context_parallel"] == "ulysses:2"
    # Our processors with the packed exchange, fp8 attention among them; diffusers'
    # dispatch only when asked for. Wan's text cross attention runs without an exchange.
    assert split["exact"]["attention_backend"].startswith("sdpa_bshd:"), split["exact"]
    assert split["fast-fp8attn"]["attention_backend"].startswith("sdpa_bshd:fp8"), split
    assert not (split["exact-dispatch"]["attention_backend"] or "").startswith("sdpa_bshd")
    assert wan[0]["attention_backend"].startswith("sdpa_bshd:"), wan
