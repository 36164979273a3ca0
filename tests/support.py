"""Test helpers: build packages, start real worker processes, drive the API as users do."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = Path(__file__).resolve().parent / "fixtures" / "models"


def package_bytes(model_dir: Path, tmp: Path) -> bytes:
    """Build a model package archive and return its bytes."""
    from partners.packaging import build_package

    out = tmp / f"{model_dir.name}.oci.tar"
    build_package(model_dir, out)
    return out.read_bytes()


class WorkerProcess:
    """A real Celery worker (`mediagate worker`) in its own process."""

    def __init__(self, pools: str = "shared", concurrency: int = 2, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        """`prefix` runs the worker through another command that execs it (e.g. `ip netns exec NAME`)."""
        self.log = Path(os.environ.get("MEDIAGATE_DATA_DIR", "/tmp")) / f"worker-{time.time_ns()}.log"
        self._file = open(self.log, "wb")
        self.process = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "gateway.cli", "worker", "--pools", pools,
             "--concurrency", str(concurrency)],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self._file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while b" ready." not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + self.log.read_text())
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            import signal

            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._file.close()


def files_holding(roots: Iterable[Path], needle: bytes) -> list[str]:
    """Regular files under `roots` whose bytes contain `needle` (links and files over 1 GiB skipped)."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 30:
                        continue
                    with open(path, "rb") as f:
                        tail = b""
                        while block := f.read(8 << 20):
                            if needle in tail + block:
                                hits.append(path)
                                break
                            tail = block[-len(needle):]
                except OSError:
                    continue
    return hits


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Wait until the API at `url` answers /healthz; raise with its log if it dies or never does."""
    import httpx

    deadline = time.monotonic() + timeout  # a busy machine starts Python slowly
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"API at {url} did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.1)


def deploy_stepper(session, tmp: Path):  # type: ignore[no-untyped-def]
    """A new partner's `stepper` model (tests/fixtures), deployed in a pool of its own and priced
    open at 100 µUSD a request, and a new customer account; returns (account, "owner/stepper")."""
    import hashlib

    from billing import service as billing
    from kit.ids import new_id
    from partners import service as partners

    slug = f"lab-{new_id('x')[-8:]}"
    partner, _ = partners.create_partner(session, slug=slug, name="Lab")
    model = partners.create_model(session, partner, slug="stepper")
    data = package_bytes(FIXTURE_MODELS / "stepper", tmp)
    archive = tmp / "stepper.oci.tar"
    archive.write_bytes(data)
    partners.create_version(session, partner, model, archive=archive, digest=hashlib.sha256(data).hexdigest(),
                            size=len(data))
    partners.create_deployment(session, partner, model_slug="stepper", version=None, pool=f"p-{slug}",
                               min_replicas=0, max_replicas=1, concurrency=1, keep_alive_s=60)
    billing.set_pricing(session, model, tier="open", unit="requests", unit_price_micros=100)
    return billing.create_account(session, name="Customer"), f"{slug}/stepper"
