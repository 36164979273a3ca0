"""The flux-dev partner example: manifest and schema parse, setup() optimizes, predict() bills."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine import Prediction  # noqa: E402
from engine.manifest import parse_manifest  # noqa: E402
from engine.optimization import report_of  # noqa: E402
from engine.schema import inputs_schema  # noqa: E402
from engine.sdk.model import RequestContext, bind_request, unbind_request  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flux-dev"


def test_manifest_and_inputs_schema():
    manifest = parse_manifest((EXAMPLE / "mediagate.toml").read_text())
    assert manifest.name == "flux-dev" and manifest.entrypoint == "predict:Predictor"
    assert manifest.billable_unit == "megapixels" and manifest.license_tier == "revenue_share"
    assert manifest.hardware.gpu == "H100" and manifest.hardware.gpu_count == 1
    schema = inputs_schema((EXAMPLE / "predict.py").read_text(), "Predictor")
    assert list(schema["properties"]) == ["prompt", "steps", "guidance", "seed"]
    assert schema["properties"]["steps"]["maximum"] == 50


def test_predictor_runs_the_optimized_pipeline(monkeypatch):
    monkeypatch.setenv("FLUX_SIZE", "tiny")
    spec = importlib.util.spec_from_file_location("flux_dev_predict", EXAMPLE / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predictor = module.Predictor()
    predictor.setup()
    report = report_of(predictor.pipe)
    assert report.mode == "fast" and report.fp8_linears > 0 and report.warmup_seconds is not None
    events: list[dict] = []
    token = bind_request(RequestContext(emit=events.append, cancel=threading.Event()))
    try:
        out = predictor.predict(prompt="a lighthouse at dusk", steps=3, guidance=3.5, seed=1)
    finally:
        unbind_request(token)
    assert isinstance(out, Prediction)
    assert out.output.size == (64, 64) and out.units == {"megapixels": 1}
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    again = predictor.predict(prompt="a lighthouse at dusk", steps=3, guidance=3.5, seed=1)
    assert again.output.tobytes() == out.output.tobytes()
