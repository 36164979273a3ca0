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
