"""Cog projects package unchanged: cog.yaml, BasePredictor.predict or BaseRunner.run."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import jsonschema
import pytest

from engine.manifest import ManifestError, manifest_from_json, parse_cog_yaml
from engine.schema import (
    EntrypointNotFound,
    SchemaError,
    inputs_schema,
    model_schemas,
    outputs_schema,
)
from partners.packaging import PackageRejected, build_package, validate_archive, validate_stream

PREDICTOR = '''\
from typing import Iterator, List, Optional

from cog import BasePredictor, Input, Path, Secret


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.model = None

    def predict(
        self,
        image: Path = Input(description="Image to enlarge"),
        scale: float = Input(description="Factor to scale image by", default=1.5, ge=1.0, le=10.0),
        face_enhance: bool = Input(default=False),
        mode: str = Input(default="fast", choices=["fast", "best"]),
        prompt: Optional[str] = Input(default=None, description="Optional guidance"),
        mask: Path | None = Input(default=None),
        tags: List[str] = Input(default=[], description="Labels"),
        references: list[Path] = Input(description="Reference images"),
        seed: int = Input(default=None, description="Random seed; leave blank to randomize"),
        api_key: Secret = Input(description="Upstream key"),
        name: str = Input(default="out", min_length=1, max_length=32, regex="^[a-z]+$"),
    ) -> Iterator[Path]:
        yield image
'''

RUNNER = '''\
from cog import BaseModel, BaseRunner, Input, Path


class Output(BaseModel):
    image: Path
    caption: str


class Runner(BaseRunner):
    async def run(self, prompt: str = Input(description="Prompt"),
                  num_outputs: int = Input(default=1, ge=1, le=4)) -> Output:
        return Output(image=Path("x.png"), caption=prompt)
'''

COG_YAML = """\
build:
  gpu: true
  python_version: "3.11"
  python_packages:
    - "torch==2.5.0"
    - "diffusers==0.31.0"
  system_packages:
    - "ffmpeg"
image: "r8.im/acme/upscaler"
concurrency:
  max: 4
"""


def cog_project(root: Path, *, key: str, module: str, source: str, yaml: str = COG_YAML) -> Path:
    root.mkdir(parents=True)
    cls = "Runner" if key == "run" else "Predictor"
    (root / "cog.yaml").write_text(yaml + f'{key}: "{module}.py:{cls}"\n')
    (root / f"{module}.py").write_text(source)
    (root / "weights").mkdir()
    (root / "weights" / "model.bin").write_bytes(b"\x01" * 4096)
    return root


def test_predictor_schema(tmp_path: Path):
    root = cog_project(tmp_path / "upscaler", key="predict", module="predict", source=PREDICTOR)
    package = validate_archive(build_package(root, tmp_path / "cog.oci.tar").path)
    m = package.manifest
    assert (m.name, m.entrypoint, m.method) == ("upscaler", "predict:Predictor", "predict")
    assert m.billable_unit == "gpu_seconds" and m.hardware.gpu_count == 1
    assert m.runtime["format"] == "cog" and m.runtime["python_version"] == "3.11"
    assert m.runtime["python_packages"] == ["torch==2.5.0", "diffusers==0.31.0"]
    assert m.runtime["concurrency"] == 4
    schema = m.inputs_schema
    p = schema["properties"]
    assert list(p) == ["image", "scale", "face_enhance", "mode", "prompt", "mask", "tags", "references",
                       "seed", "api_key", "name"]
    assert schema["required"] == ["image", "references", "api_key"]
    assert p["image"] == {"type": "string", "format": "uri", "description": "Image to enlarge",
                          "x-order": 0, "title": "Image"}
    assert p["scale"] == {"type": "number", "description": "Factor to scale image by", "default": 1.5,
                          "minimum": 1.0, "maximum": 10.0, "x-order": 1, "title": "Scale"}
    assert p["face_enhance"]["default"] is False and p["face_enhance"]["type"] == "boolean"
    assert p["mode"]["enum"] == ["fast", "best"] and p["mode"]["default"] == "fast"
    assert p["prompt"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                           "description": "Optional guidance", "x-order": 4, "title": "Prompt"}
    assert p["mask"]["anyOf"][0] == {"type": "string", "format": "uri"}
    assert p["tags"] == {"type": "array", "items": {"type": "string"}, "default": [],
                         "description": "Labels", "x-order": 6, "title": "Tags"}
    assert p["references"]["items"] == {"type": "string", "format": "uri"}
    assert p["seed"]["anyOf"] == [{"type": "integer"}, {"type": "null"}] and p["seed"]["default"] is None
    assert p["api_key"]["format"] == "password" and p["api_key"]["x-cog-secret"] is True
    assert (p["name"]["minLength"], p["name"]["maxLength"], p["name"]["pattern"]) == (1, 32, "^[a-z]+$")
    assert m.outputs_schema == {"type": "array", "items": {"type": "string", "format": "uri"},
                                "x-cog-array-type": "iterator", "title": "Output"}
    files = package.model_files()
    assert {"cog.yaml", "predict.py", "weights/model.bin"} <= set(files)
    jsonschema.Draft202012Validator.check_schema(m.inputs_schema)
    jsonschema.Draft202012Validator.check_schema(m.outputs_schema)
    validator = jsonschema.Draft202012Validator(m.inputs_schema)
    good = {"image": "https://x/y.png", "references": [], "api_key": "k", "scale": 2.0, "prompt": None}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({**good, "scale": 11})) and list(validator.iter_errors({**good, "mode": "x"}))


def test_runner_schema(tmp_path: Path):
    root = cog_project(tmp_path / "gen", key="run", module="run", source=RUNNER)
    package = validate_archive(build_package(root, tmp_path / "run.oci.tar").path)
    m = package.manifest
    assert (m.entrypoint, m.method) == ("run:Runner", "run")
    assert m.inputs_schema["properties"]["num_outputs"] == {
        "type": "integer", "default": 1, "minimum": 1, "maximum": 4, "x-order": 1, "title": "Num outputs"}
    assert m.inputs_schema["required"] == ["prompt"]
    assert m.outputs_schema == {
        "type": "object", "title": "Output",
        "properties": {"image": {"type": "string", "format": "uri", "title": "Image"},
                       "caption": {"type": "string", "title": "Caption"}}}


def test_cog_project_as_a_plain_tarball(tmp_path: Path):
    root = cog_project(tmp_path / "gen", key="run", module="run", source=RUNNER)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, arcname="gen")
    buf.seek(0)
    package = validate_stream(buf)
    assert package.format == "directory" and package.root == "gen"
    assert package.manifest.method == "run"
    assert package.layers[0].media_type.endswith("+gzip")
    dest = package.extract_to(tmp_path / "out")
    assert (dest / "run.py").read_text() == RUNNER


def test_older_cog_without_image_uses_the_directory_name(tmp_path: Path):
    root = cog_project(tmp_path / "My_Model", key="predict", module="predict", source=PREDICTOR,
                       yaml="build:\n  gpu: false\n")
    m = build_package(root, tmp_path / "m.oci.tar").manifest
    assert m.name == "my_model" and m.billable_unit == "requests" and m.hardware.gpu_count == 0


def test_reexported_class_is_followed():
    sources = {
        "predict": ("from impl.model import Predictor\n", False),
        "impl": ("", True),
        "impl.model": ("from cog import BasePredictor\n\nclass Base(BasePredictor):\n"
                       "    def predict(self, n: int = 2) -> str:\n        return ''\n\n"
                       "class Predictor(Base):\n    pass\n", False),
    }
    found = model_schemas(sources.get, "predict", "Predictor")
    assert found.method == "predict"
    assert found.inputs["properties"]["n"]["default"] == 2
    with pytest.raises(EntrypointNotFound):
        model_schemas(sources.get, "predict", "Missing")


def test_schema_functions_keep_their_contract():
    assert inputs_schema(RUNNER, "Runner", "run")["required"] == ["prompt"]
    concat = "from cog import ConcatenateIterator\nclass P:\n    def predict(self) -> ConcatenateIterator[str]:\n        pass\n"
    assert outputs_schema(concat, "P") == {"type": "array", "items": {"type": "string"}, "title": "Output",
                                           "x-cog-array-type": "iterator",
                                           "x-cog-array-display": "concatenate"}
    with pytest.raises(SchemaError, match="unsupported input type"):
        inputs_schema("class P:\n    def predict(self, x: set) -> None:\n        pass\n", "P")
    with pytest.raises(SchemaError, match="literal"):
        inputs_schema("class P:\n    def predict(self, x: int = Input(default=f())) -> None:\n        pass\n", "P")
    with pytest.raises(SchemaError):
        inputs_schema("(" * 500, "P")
    with pytest.raises(SchemaError, match="does not compile"):
        inputs_schema("class P:\n    def predict(self, x: str = Input(regex='(')) -> None:\n        pass\n", "P")


def test_cog_yaml_errors():
    with pytest.raises(ManifestError, match="run:"):
        parse_cog_yaml("build:\n  gpu: true\n")
    with pytest.raises(ManifestError, match="YAML"):
        parse_cog_yaml("predict: [unclosed\n")
    with pytest.raises(ManifestError, match="module:Class"):
        parse_cog_yaml('predict: "predict.py"\n')
    assert parse_cog_yaml('predict: "./src/predict.py:Predictor"\n').entrypoint == "src.predict:Predictor"


def test_manifest_label_is_checked_strictly():
    good = {"name": "m", "entrypoint": "predict:P", "hardware": {"gpu": "L4", "gpu_count": 1}}
    assert manifest_from_json(good).hardware.gpu == "L4"
    for bad in ({**good, "evil": 1}, {**good, "hardware": {"gpu_count": "1"}},
                {**good, "entrypoint": "os:system; rm"}, {**good, "license_tier": "free"}, [good],
                {**good, "hardware": {"gpu_count": True}}):
        with pytest.raises(ManifestError):
            manifest_from_json(bad)


def test_cog_project_with_a_bad_yaml_is_rejected(tmp_path: Path):
    root = cog_project(tmp_path / "bad", key="predict", module="predict", source=PREDICTOR,
                       yaml="build: [\n")
    with pytest.raises(PackageRejected) as caught:
        build_package(root, tmp_path / "bad.oci.tar")
    assert (caught.value.reason, caught.value.entry) == ("bad-manifest", "cog.yaml")
