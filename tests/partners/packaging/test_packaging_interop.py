"""Archives made by other tools: umoci and skopeo (Debian), `docker save`, plain tarballs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from partners.packaging import build_package, validate_archive
from tests.partners.packaging.packaging_corpus import (
    GOOD_PY,
    GOOD_TOML,
    E,
    good_entries,
    layer,
    sha,
    tar_bytes,
    thin_tgz,
    write_oci,
)

needs_tools = pytest.mark.skipif(shutil.which("umoci") is None or shutil.which("skopeo") is None,
                                 reason="umoci and skopeo are not installed")


def run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


@needs_tools
def test_umoci_image_with_gzip_layers_and_a_whiteout(tmp_path: Path):
    image = f"{tmp_path / 'layout'}:latest"
    bundle = tmp_path / "bundle"
    run("umoci", "init", "--layout", tmp_path / "layout")
    run("umoci", "new", "--image", image)
    run("umoci", "unpack", "--rootless", "--image", image, bundle)
    model = bundle / "rootfs" / "opt" / "model"
    (model / "weights").mkdir(parents=True)
    (model / "mediagate.toml").write_bytes(GOOD_TOML)
    (model / "predict.py").write_bytes(GOOD_PY)
    (model / "weights" / "a.safetensors").write_bytes(b"A" * 10_000)
    (model / "weights" / "stale.bin").write_bytes(b"old")
    (model / "link.safetensors").symlink_to("weights/a.safetensors")
    run("umoci", "repack", "--image", image, bundle)
    shutil.rmtree(bundle)
    run("umoci", "unpack", "--rootless", "--image", image, bundle)
    (bundle / "rootfs" / "opt" / "model" / "weights" / "stale.bin").unlink()
    (bundle / "rootfs" / "opt" / "model" / "predict.py").write_bytes(GOOD_PY + b"\n# v2\n")
    run("umoci", "repack", "--image", image, bundle)
    run("umoci", "config", "--image", image, "--config.workingdir", "/opt/model")
    archive = tmp_path / "umoci.oci.tar"
    run("skopeo", "copy", f"oci:{image}", f"oci-archive:{archive}")

    package = validate_archive(archive)
    assert package.format == "oci" and package.root == "opt/model"
    assert all(x.media_type.endswith("+gzip") for x in package.layers) and len(package.layers) == 2
    files = package.model_files()
    assert "weights/stale.bin" not in files  # removed by the second layer's whiteout
    assert files["link.safetensors"].kind == "symlink"
    assert package.manifest.entrypoint == "predict:Echo"
    assert package.manifest.inputs_schema["properties"]["times"]["maximum"] == 5
    dest = package.extract_to(tmp_path / "tmpfs")
    assert (dest / "predict.py").read_bytes().endswith(b"# v2\n")
    assert (dest / "link.safetensors").read_bytes() == b"A" * 10_000
    assert not (dest / "weights" / "stale.bin").exists()


@needs_tools
def test_our_archive_unpacks_with_umoci(tmp_path: Path):
    from tests.partners.packaging.test_packaging_build import make_model

    result = build_package(make_model(tmp_path / "m"), tmp_path / "m.oci.tar")
    run("skopeo", "copy", f"oci-archive:{result.path}", f"oci:{tmp_path / 'layout'}:latest")
    run("umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'layout'}:latest", tmp_path / "bundle")
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "src" / "predict.py").read_bytes() == (tmp_path / "m" / "predict.py").read_bytes()
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["process"]["cwd"] == "/src"


@needs_tools
def test_docker_archive_written_by_skopeo(tmp_path: Path):
    from tests.partners.packaging.test_packaging_build import make_model

    result = build_package(make_model(tmp_path / "m"), tmp_path / "m.oci.tar")
    archive = tmp_path / "docker.tar"
    run("skopeo", "copy", f"oci-archive:{result.path}", f"docker-archive:{archive}:acme/tiny:latest")
    package = validate_archive(archive)
    assert package.format == "docker" and package.root == "src"
    assert package.manifest.entrypoint == "predict:TinyFlux"
    assert [x.diff_id for x in package.layers] == [x.diff_id for x in result.layers]
    dest = package.extract_to(tmp_path / "out")
    assert (dest / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()


def test_model_directory_named_through_a_symlink(tmp_path: Path):
    entries = [E("app", "dir"), *(E("app/" + e.name, e.kind, e.data) for e in good_entries("")),
               E("src", "symlink", link="app")]
    package = validate_archive(write_oci(tmp_path / "p.tar", [layer(entries)],
                                        labels={"dev.mediagate.root": "/src"}))
    assert package.root == "app"
    assert sorted(package.model_files()) == ["mediagate.toml", "predict.py"]


def test_gzip_layers_whiteouts_and_opaque_directories(tmp_path: Path):
    base = [*good_entries(), E("src/cache", "dir"), E("src/cache/a.bin", data=b"a"),
            E("src/cache/b.bin", data=b"b"), E("src/old.py", data=b"x = 1"), E("src/keep.txt", data=b"k")]
    upper = [E("src/.wh.old.py"), E("src/cache", "dir"), E("src/cache/.wh..wh..opq"),
             E("src/cache/c.bin", data=b"c"), E("src/keep.txt", data=b"k2")]
    top = [E("src/cache/d.bin", data=b"d1"), E("src/cache/e.bin", "hardlink", link="src/cache/d.bin")]
    archive = write_oci(tmp_path / "layers.tar", [layer(base, gz=True), layer(upper), layer(top, gz=True)])
    package = validate_archive(archive)
    files = package.model_files()
    assert "old.py" not in files
    assert sorted(p for p in files if p.startswith("cache/")) == ["cache/c.bin", "cache/d.bin", "cache/e.bin"]
    assert files["keep.txt"].layer == 1 and files["keep.txt"].digest == sha(b"k2")
    assert files["cache/e.bin"].kind == "hardlink" and files["cache/e.bin"].digest == sha(b"d1")
    dest = package.extract_to(tmp_path / "out")
    assert (dest / "keep.txt").read_bytes() == b"k2"
    assert (dest / "cache" / "e.bin").read_bytes() == b"d1"
    assert sorted(os.listdir(dest / "cache")) == ["c.bin", "d.bin", "e.bin"]


def test_hardlink_whose_target_a_later_layer_removes(tmp_path: Path):
    first = [*good_entries(), E("src/w.bin", data=b"weights"), E("src/w2.bin", "hardlink", link="src/w.bin")]
    second = [E("src/.wh.w.bin")]
    package = validate_archive(write_oci(tmp_path / "p.tar", [layer(first), layer(second)]))
    assert "w.bin" not in package.model_files()
    dest = package.extract_to(tmp_path / "out")
    assert (dest / "w2.bin").read_bytes() == b"weights"


def test_docker_save_layout(tmp_path: Path):
    layer_tar = tar_bytes([E("app", "dir"), *(E("app/" + e.name, e.kind, e.data) for e in good_entries("")),
                           E("app/extra.py", data=b"X = 1")])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"WorkingDir": "/app", "Labels": None},
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]}}).encode()
    config_name = sha(config).split(":")[1] + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["acme/echo:latest"],
                            "Layers": ["abc123/layer.tar"]}]).encode()
    members = [E("abc123", "dir"), E("abc123/layer.tar", data=layer_tar), E(config_name, data=config),
               E("manifest.json", data=manifest), E("repositories", data=b"{}")]
    archive = tmp_path / "docker.tar"
    archive.write_bytes(tar_bytes(members))
    package = validate_archive(archive)
    assert package.format == "docker" and package.root == "app"
    assert "extra.py" in package.model_files()
    assert (package.extract_to(tmp_path / "out") / "extra.py").read_bytes() == b"X = 1"


def test_plain_tarball_of_a_model_directory(tmp_path: Path):
    archive = thin_tgz(tmp_path / "m.tar.gz", [*good_entries("echo"), E("echo/w.bin", data=b"w" * 999)])
    package = validate_archive(archive)
    assert package.format == "directory" and package.root == "echo"
    assert package.layers[0].digest == sha(archive.read_bytes())
    assert [b.role for b in package.blobs] == ["archive"]
    assert package.manifest.name == "corpus"
    assert (package.extract_to(tmp_path / "out") / "w.bin").read_bytes() == b"w" * 999


def test_manifest_label_without_a_manifest_file(tmp_path: Path):
    label = json.dumps({"name": "labelled", "entrypoint": "predict:Echo", "billable_unit": "images"})
    archive = write_oci(tmp_path / "l.tar", [layer([E("srv", "dir"), E("srv/predict.py", data=GOOD_PY)])],
                        labels={"dev.mediagate.manifest": label}, working_dir="/srv")
    package = validate_archive(archive)
    assert package.root == "srv" and package.manifest.name == "labelled"
    assert package.manifest.inputs_schema["properties"]["prompt"]["description"] == "what to say"


def test_layers_as_tar_files_read_back_by_tarfile(tmp_path: Path):
    archive = write_oci(tmp_path / "p.tar", [layer(good_entries(), gz=True)])
    package = validate_archive(archive)
    with tarfile.open(archive) as outer:
        names = outer.getnames()
    assert {b.path for b in package.blobs} <= set(names)


def test_blobs_the_image_does_not_use_are_not_unpacked(tmp_path: Path):
    evil = tar_bytes([E("/etc/passwd", data=b"root::0:0")])

    def add_stray_blob(members: dict[str, bytes]) -> None:
        members["blobs/sha256/" + sha(evil).split(":")[1]] = evil

    package = validate_archive(write_oci(tmp_path / "p.tar", [layer(good_entries())],
                                         members_patch=add_stray_blob))
    assert len(package.layers) == 1 and sha(evil) not in {b.digest for b in package.blobs}


def test_directory_archive_holding_a_tarball_of_its_own(tmp_path: Path):
    data = tar_bytes([E("/abs/path.txt", data=b"dataset")])
    archive = thin_tgz(tmp_path / "m.tgz", [*good_entries(""), E("./data.tar", data=data)])
    package = validate_archive(archive)
    assert package.root == "" and package.files["data.tar"].digest == sha(data)
    assert (package.extract_to(tmp_path / "out") / "data.tar").read_bytes() == data
