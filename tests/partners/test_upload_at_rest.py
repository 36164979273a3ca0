"""A package's plaintext never reaches disk on its way in: the API runs as a real uvicorn
process, and its data directory (and /tmp) is searched for a marker carried by the package's
code and weights while an upload streams, after it, and around a resumable upload whose
chunk was cut off mid-way."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from kit.settings import get_settings
from tests.support import ROOT, files_holding

ADMIN = {"Authorization": f"Bearer {get_settings().admin_key}"}
# Built at run time so no file of the repository ever holds it.
MARKER = ("never-at-rest-" + os.urandom(6).hex()).encode()
PREDICT = b'''from engine import Model

SECRET = "%s"


class Echo(Model):
    def predict(self, text: str = "hi") -> str:
        return text
''' % MARKER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(committed: Engine) -> Iterator[str]:
    """The API as its own uvicorn process, on the test database and data directory."""
    port = _free_port()
    log = open(get_settings().data_dir / f"api-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "gateway.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def package() -> bytes:
    """An OCI package whose code and weights (several store chunks of them) carry the marker."""
    from partners.packaging import build_package

    build = Path(tempfile.mkdtemp(prefix="at-rest-"))
    try:
        model = build / "model"
        model.mkdir()
        (model / "mediagate.toml").write_bytes(b'[model]\nname = "echo"\nentrypoint = "predict:Echo"\n')
        (model / "predict.py").write_bytes(PREDICT)
        noise = os.urandom(3 << 20)
        (model / "weights.bin").write_bytes(b"".join(noise + MARKER for _ in range(4)))
        build_package(model, build / "model.oci.tar")
        return (build / "model.oci.tar").read_bytes()
    finally:
        shutil.rmtree(build)  # the only plaintext copy left is this process's memory


def _files_holding(needle: bytes, *, everywhere: bool = False) -> list[str]:
    """Files holding `needle` in the API's data directory (and, `everywhere`, all of /tmp)."""
    roots = {get_settings().data_dir.resolve()}
    if everywhere:
        roots |= {Path(tempfile.gettempdir()).resolve(), Path("/var/tmp")}
    return files_holding(roots, needle)


def _partner(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/v1/admin/partners", json={"slug": "vault", "name": "Vault"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert httpx.post(f"{url}/v1/partner/models", json={"slug": "echo"}, headers=headers).status_code == 201
    return headers


def _stored_objects() -> list[Path]:
    """Objects of the artifact store, finished or still being written."""
    return [p for p in (get_settings().storage_root / "artifacts").rglob("*") if p.is_file()]


@pytest.mark.timeout(120)
def test_a_streamed_upload_is_never_plaintext_on_disk(server: str, package: bytes) -> None:
    headers = _partner(server)
    half = len(package) // 2
    looked = []
    before = set(_stored_objects())

    def body() -> Iterator[bytes]:
        for start in range(0, half, 1 << 20):
            yield package[start:min(start + (1 << 20), half)]
        time.sleep(1.0)  # the server is mid-package: validating and encrypting what it has
        looked.append((_files_holding(MARKER), bool(set(_stored_objects()) - before)))
        for start in range(half, len(package), 1 << 20):
            yield package[start:start + (1 << 20)]

    r = httpx.post(f"{server}/v1/partner/models/echo/versions", content=body(), timeout=60,
                   headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.json()["artifact_digest"] == "sha256:" + hashlib.sha256(package).hexdigest()
    assert looked == [([], True)]  # ciphertext was being written, plaintext never
    assert len(set(_stored_objects()) - before) >= 3  # manifest, config and layers, each encrypted
    assert _files_holding(MARKER, everywhere=True) == []


def _patch_cut_off(url: str, path: str, headers: dict[str, str], offset: int, data: bytes, sent: int) -> None:
    """A PATCH whose connection drops after `sent` of the chunk's bytes."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"PATCH {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/offset+octet-stream",
            f"Upload-Offset: {offset}", f"Content-Length: {len(data)}", "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data[:sent])
        time.sleep(0.5)


@pytest.mark.timeout(120)
def test_an_interrupted_resumable_upload_is_never_plaintext_on_disk(server: str, package: bytes) -> None:
    headers = _partner(server)
    r = httpx.post(f"{server}/v1/partner/uploads", json={"model": "echo", "size": len(package)}, headers=headers)
    assert r.status_code == 201, r.text
    path = f"/v1/partner/uploads/{r.json()['id']}"
    third = len(package) // 3
    r = httpx.patch(f"{server}{path}", content=package[:third], headers={**headers, "Upload-Offset": "0"})
    assert r.status_code == 204, r.text
    _patch_cut_off(server, path, headers, third, package[third:], sent=third)
    deadline = time.monotonic() + 10
    while (offset := int(httpx.head(f"{server}{path}", headers=headers).headers["Upload-Offset"])) == third:
        assert time.monotonic() < deadline, "the bytes of the cut-off chunk were not kept"
        time.sleep(0.1)
    assert third < offset <= 2 * third  # what arrived before the cut is kept, to resume from
    assert _files_holding(MARKER) == []

    r = httpx.patch(f"{server}{path}", content=package[offset:], headers={**headers, "Upload-Offset": str(offset)})
    assert r.status_code == 204, r.text
    assert _files_holding(MARKER) == []
    r = httpx.post(f"{server}{path}/complete", json={"sha256": hashlib.sha256(package).hexdigest()},
                   headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    assert not list((get_settings().data_dir / "uploads").rglob(f"{path.rpartition('/')[2]}.part"))
    assert _files_holding(MARKER, everywhere=True) == []
