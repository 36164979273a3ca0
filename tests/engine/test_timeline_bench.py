"""`bench/engine.py --part timeline` on a tiny FLUX pipeline: its phases add up to the call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_the_phases_of_one_pipeline_call_add_up_to_its_wall_time(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "bench" / "engine.py"), "--part", "timeline",
           "--size", "tiny", "--device", "cpu", "--steps", "3", "--pipeline-runs", "2",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "engine-timeline-tiny.json").read_text())
    phases = result["phases_ms"]
    assert result["step_ms"]["n"] == 3
    parts = (phases["encode_prompt_ms"] + result["steps_total_ms"] + phases["vae_decode_ms"]
             + phases["to_pil_ms"] + phases["between_phases_ms"])
    assert parts == pytest.approx(phases["total_ms"], rel=1e-6)
    assert phases["total_ms"] <= 1e3 * min(result["wall_s"]) * 1.05
    assert "| encode prompt |" in proc.stdout
