"""Packages from `mediagate package`, from umoci/skopeo and Cog projects all deploy and serve.

Also: after a package is uploaded and run, no byte of its code is readable anywhere on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.settings import get_settings
from tests.e2e.conftest import World
from tests.support import FIXTURE_MODELS

# Built at run time so this file itself never holds the marker it searches for.
MARKER = ("closed-weights-" + "7f3a9c0e51d2").encode()
MODEL_PY = b'''"""A model whose code carries a marker that must never be found on disk."""

from engine import Input, Model

SECRET = "%s"


class Echo(Model):
    def predict(self, text: str = Input(description="text"), times: int = Input(default=1, ge=1, le=5)) -> dict:
        return {"echo": " ".join([text] * times), "weights": open("weights/w.safetensors").read()[:4]}
''' % MARKER
TOML = b'''[model]
name = "echo"
entrypoint = "predict:Echo"
billable_unit = "requests"
'''
REQUESTS = {"tier": "open", "unit": "requests", "unit_price_micros": 1_000}
needs_tools = pytest.mark.skipif(shutil.which("umoci") is None or shutil.which("skopeo") is None,
                                 reason="umoci and skopeo are not installed")


def _run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def _umoci_archive(tmp: Path) -> bytes:
    image, bundle = f"{tmp / 'layout'}:latest", tmp / "bundle"
    _run("umoci", "init", "--layout", tmp / "layout")
    _run("umoci", "new", "--image", image)
    _run("umoci", "unpack", "--rootless", "--image", image, bundle)
    model = bundle / "rootfs" / "opt" / "model"
    (model / "weights").mkdir(parents=True)
    (model / "mediagate.toml").write_bytes(TOML)
    (model / "predict.py").write_bytes(MODEL_PY)
    (model / "weights" / "w.safetensors").write_bytes(b"WGHT" + MARKER * 100)
    _run("umoci", "repack", "--image", image, bundle)
    _run("umoci", "config", "--image", image, "--config.workingdir", "/opt/model")
    archive = tmp / "umoci.oci.tar"
    _run("skopeo", "copy", f"oci:{image}", f"oci-archive:{archive}")
    return archive.read_bytes()


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


@needs_tools
def test_umoci_package_serves_and_its_plaintext_never_touches_disk(api, worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    archive = _umoci_archive(tmp_path / "build")
    w = World(api, tmp_path, archive=archive, slug="echo", pricing=REQUESTS)
    shutil.rmtree(tmp_path / "build")
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=60"},
                    json={"input": {"text": "hi", "times": 2}}).json()
    assert body["status"] == "succeeded", body["error"]
    assert body["output"] == {"echo": "hi hi", "weights": "WGHT"}
    leaked = _files_containing(get_settings().data_dir, MARKER) + _files_containing(Path("/tmp"), MARKER)
    assert leaked == []


def test_cog_predictor_project_deploys_unchanged(api, worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "cog-echo", slug="cog-echo", pricing=REQUESTS)
    schema = api.get(f"/v1/models/{w.model}", headers=w.customer).json()["inputs_schema"]
    assert schema["properties"]["times"]["maximum"] == 5
    assert schema["properties"]["shade"]["enum"] == ["red", "green"]
    assert api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                    json={"input": {"text": "x", "times": 9}}).status_code == 422  # le=5 at the gateway
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=60"},
                    json={"input": {"text": "x", "times": 3, "shade": "green"}}).json()
    assert body["status"] == "succeeded", body
    assert body["output"]["content_type"] == "image/png" and body["output"]["url"]
    assert body["cost"]["amount_micros"] == 1_000


def test_cog_runner_project_deploys_unchanged(api, worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "cog-runner", slug="cog-runner", pricing=REQUESTS)
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=60"},
                    json={"input": {"words": ["a", "b", "c"], "sep": "-"}}).json()
    assert body["status"] == "succeeded", body
    assert body["output"] == "a-b-c"
