"""Start localstripe and the stand-in in front of it, each a subprocess on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent

# localstripe binds every interface and pickles its store to a fixed /tmp file on each write;
# this runs its app on loopback only, in memory.
LOCALSTRIPE = """
import sys
from aiohttp import web
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=1, headers={"Authorization": "Bearer sk_test_probe"})
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start:\n{log.read_text()}")


class StripeProcesses:
    """localstripe plus the stand-in; `api_base` is where the SDK should point."""

    def __init__(self, log_dir: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        ls_port, stand_in_port = free_port(), free_port()
        self.localstripe = f"http://127.0.0.1:{ls_port}"
        self.api_base = f"http://127.0.0.1:{stand_in_port}"
        self._start([sys.executable, "-c", LOCALSTRIPE, str(ls_port)], log_dir / "localstripe.log",
                    self.localstripe + "/v1/customers")
        self._start([sys.executable, str(HERE / "server.py"), "--port", str(stand_in_port),
                     "--upstream", self.localstripe], log_dir / "stripe-standin.log", self.api_base + "/_config/log")

    def _start(self, cmd: list[str], log: Path, probe: str) -> None:
        out = open(log, "wb")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append(proc)
        _wait(probe, proc, log)

    def fault(self, path: str, mode: str, count: int = 1, seconds: float = 5) -> None:
        """Make the next `count` POSTs to `path` fail (see server.py)."""
        httpx.post(f"{self.api_base}/_config/faults",
                   json={"path": path, "mode": mode, "count": count, "seconds": seconds}).raise_for_status()

    def log(self) -> list[dict]:
        return httpx.get(f"{self.api_base}/_config/log").json()

    def add_webhook(self, name: str, url: str, secret: str) -> None:
        httpx.post(f"{self.api_base}/_config/webhooks/{name}", data={"url": url, "secret": secret}).raise_for_status()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
