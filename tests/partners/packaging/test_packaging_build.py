"""`build_package` round trips: what it writes reads back, byte for byte, every time."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from partners.packaging import (
    PackageRejected,
    build_package,
    open_package,
    package_command,
    read_file,
    validate_archive,
)

TOML = """\
[model]
name = "tiny-flux"
entrypoint = "predict:TinyFlux"
billable_unit = "megapixels"

[license]
tier = "revenue_share"
terms = "https://example.com/license"

[hardware]
gpu = "H100"
gpu_count = 1
memory_gb = 80
"""

PREDICT = '''\
from pathlib import Path
from typing import Optional

from engine import Input, Model

from helpers.prompts import clean


class TinyFlux(Model):
    def setup(self):
        self.weights = Path(__file__).with_name("model.safetensors").read_bytes()

    def predict(
        self,
        prompt: str = Input(description="What to draw"),
        steps: int = Input(default=4, ge=1, le=50),
        guidance: float = Input(default=3.5, ge=0, le=20),
        scheduler: str = Input(default="euler", choices=["euler", "dpm"]),
        seed: Optional[int] = Input(default=None, description="Random seed"),
    ) -> Path:
        return Path(clean(prompt))
'''


def make_model(root: Path, weights: bytes = b"\x00weights" * 1000) -> Path:
    """A small engine.Model package directory with code, a helper package and weights."""
    (root / "helpers").mkdir(parents=True)
    (root / "mediagate.toml").write_text(TOML)
    (root / "predict.py").write_text(PREDICT)
    (root / "helpers" / "__init__.py").write_text("")
    (root / "helpers" / "prompts.py").write_text("def clean(p):\n    return p.strip()\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec python -m engine.runner\n")
    (root / "run.sh").chmod(0o755)
    (root / "model.safetensors").write_bytes(weights)
    (root / "weights.link").symlink_to("model.safetensors")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"junk")
    (root / ".mediagateignore").write_text("# local only\nnotes/\n*.tmp\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.md").write_text("secret plans")
    (root / "scratch.tmp").write_text("x")
    return root


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny-flux")


def test_round_trip(model_dir: Path, tmp_path: Path):
    result = build_package(model_dir, tmp_path / "out" / "tiny.oci.tar")
    assert result.path.is_file() and result.size == result.path.stat().st_size
    package = validate_archive(result.path)
    assert package.format == "oci"
    assert package.manifest_digest == result.digest
    assert package.root == "src"
    m = package.manifest
    assert (m.name, m.entrypoint, m.billable_unit, m.license_tier) == (
        "tiny-flux", "predict:TinyFlux", "megapixels", "revenue_share")
    assert m.license_terms == "https://example.com/license"
    assert (m.hardware.gpu, m.hardware.gpu_count, m.hardware.memory_gb) == ("H100", 1, 80)
    assert m.method == "predict"
    props = m.inputs_schema["properties"]
    assert list(props) == ["prompt", "steps", "guidance", "scheduler", "seed"]
    assert m.inputs_schema["required"] == ["prompt"]
    assert props["steps"] == {"type": "integer", "minimum": 1, "maximum": 50, "default": 4,
                              "x-order": 1, "title": "Steps"}
    assert props["scheduler"]["enum"] == ["euler", "dpm"]
    assert props["seed"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["seed"]["default"] is None and props["seed"]["description"] == "Random seed"
    assert m.outputs_schema == {"type": "string", "format": "uri", "title": "Output"}

    files = package.model_files()
    assert sorted(files) == ["helpers", "helpers/__init__.py", "helpers/prompts.py", "mediagate.toml",
                             "model.safetensors", "predict.py", "run.sh", "weights.link"]
    assert files["run.sh"].mode == 0o755 and files["predict.py"].mode == 0o644
    assert files["weights.link"].kind == "symlink" and files["weights.link"].target == "model.safetensors"
    weights = (model_dir / "model.safetensors").read_bytes()
    assert files["model.safetensors"].digest == "sha256:" + hashlib.sha256(weights).hexdigest()
    assert files["model.safetensors"].size == len(weights)

    dest = package.extract_to(tmp_path / "tmpfs" / "pkg")
    for rel in ("predict.py", "mediagate.toml", "helpers/prompts.py", "model.safetensors", "run.sh"):
        assert (dest / rel).read_bytes() == (model_dir / rel).read_bytes()
    assert os.readlink(dest / "weights.link") == "model.safetensors"
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not (dest / "notes").exists() and not (dest / ".git").exists()
    assert read_file(package, "helpers/prompts.py") == (model_dir / "helpers" / "prompts.py").read_bytes()


def test_weights_and_code_are_separate_layers(model_dir: Path, tmp_path: Path):
    result = build_package(model_dir, tmp_path / "tiny.oci.tar")
    weights, code = result.layers
    assert weights.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert code.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    with tarfile.open(result.path) as outer:
        blob = outer.extractfile(weights.path).read()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == weights.digest
        with tarfile.open(fileobj=io.BytesIO(blob)) as inner:
            assert [m.name for m in inner if m.isfile()] == ["src/model.safetensors"]
        with tarfile.open(fileobj=outer.extractfile(code.path), mode="r:gz") as inner:
            members = inner.getmembers()
    assert "src/model.safetensors" not in {m.name for m in members}
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    names = [m.name for m in members]
    assert names == sorted(names)


def test_builds_are_deterministic(model_dir: Path, tmp_path: Path):
    first = build_package(model_dir, tmp_path / "a.oci.tar")
    second = build_package(model_dir, tmp_path / "b.oci.tar")
    assert first.digest == second.digest
    assert first.path.read_bytes() == second.path.read_bytes()
    elsewhere = tmp_path / "copy" / "other-name"
    shutil.copytree(model_dir, elsewhere, symlinks=True)
    os.utime(elsewhere / "predict.py", (1_700_000_000, 1_700_000_000))
    moved = build_package(elsewhere, tmp_path / "c.oci.tar")
    assert moved.digest == first.digest
    (elsewhere / "predict.py").write_text(PREDICT + "\n# changed\n")
    assert build_package(elsewhere, tmp_path / "d.oci.tar").digest != first.digest


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspects_the_archive(model_dir: Path, tmp_path: Path):
    import subprocess

    result = build_package(model_dir, tmp_path / "tiny.oci.tar")
    out = subprocess.run(["skopeo", "inspect", f"oci-archive:{result.path}"], check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["Digest"] == result.digest
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    assert info["Layers"] == [layer.digest for layer in result.layers]
    label = json.loads(info["Labels"]["dev.mediagate.manifest"])
    assert label["entrypoint"] == "predict:TinyFlux"
    assert label["inputs_schema"]["properties"]["steps"]["maximum"] == 50
    config = json.loads(subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{result.path}:latest"], check=True,
        capture_output=True, text=True).stdout)
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in result.layers]


def test_open_package_from_a_file_object(model_dir: Path, tmp_path: Path):
    result = build_package(model_dir, tmp_path / "tiny.oci.tar")
    with open(result.path, "rb") as f:
        package = open_package(f)
        dest = package.extract_to(tmp_path / "x")
    assert (dest / "predict.py").read_text() == PREDICT


def test_package_without_weights_has_one_layer(tmp_path: Path):
    root = tmp_path / "plain"
    root.mkdir()
    (root / "mediagate.toml").write_text('[model]\nname = "plain"\nentrypoint = "m.main:M"\n')
    (root / "m").mkdir()
    (root / "m" / "__init__.py").write_text("")
    (root / "m" / "main.py").write_text("class M:\n    def predict(self, n: int = 1) -> int:\n        return n\n")
    result = build_package(root, tmp_path / "plain.oci.tar")
    assert len(result.layers) == 1
    package = validate_archive(result.path)
    assert package.manifest.entrypoint == "m.main:M"
    assert package.manifest.inputs_schema["properties"]["n"]["default"] == 1


@pytest.mark.parametrize("problem", ["escaping-link", "fifo", "no-manifest", "bad-entrypoint"])
def test_build_refuses_bad_directories(problem: str, model_dir: Path, tmp_path: Path):
    if problem == "escaping-link":
        (model_dir / "passwd").symlink_to("/etc/passwd")
        reason, entry = "link-escape", "passwd"
    elif problem == "fifo":
        os.mkfifo(model_dir / "pipe")
        reason, entry = "fifo", "pipe"
    elif problem == "no-manifest":
        (model_dir / "mediagate.toml").unlink()
        reason, entry = "missing-manifest", "mediagate.toml"
    else:
        (model_dir / "mediagate.toml").write_text(TOML.replace("predict:TinyFlux", "predict:Nope"))
        reason, entry = "entrypoint-missing", "predict.py"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PackageRejected) as caught:
        build_package(model_dir, out / "x.oci.tar")
    assert (caught.value.reason, caught.value.entry) == (reason, entry)
    assert list(out.iterdir()) == []


def test_package_command_prints_a_summary(model_dir: Path, tmp_path: Path):
    console = Console(file=io.StringIO(), width=200)
    result = package_command(model_dir, tmp_path / "cli.oci.tar", console=console)
    text = console.file.getvalue()
    assert result.digest in text and "predict:TinyFlux" in text and "prompt, steps" in text
    (model_dir / "mediagate.toml").unlink()
    console = Console(file=io.StringIO(), width=200)
    with pytest.raises(SystemExit) as exit_info:
        package_command(model_dir, tmp_path / "bad.oci.tar", console=console)
    assert exit_info.value.code == 1
    assert "mediagate.toml" in console.file.getvalue()
