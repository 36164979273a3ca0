"""The quick start's main job on the embedded defaults: SQLite, the SQLite broker, no Redis.

`mediagate up` in its own process (migrate, demo seed, API + a real worker process), then the
printed curl line's request, then the revenue-share report from the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import ROOT

PORT = 8765


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAGATE_")}
    env.update(MEDIAGATE_DATA_DIR=str(data_dir), MEDIAGATE_PUBLIC_URL=f"http://127.0.0.1:{PORT}")
    return env


def test_up_serves_the_demo_on_sqlite_and_the_embedded_broker(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--port", str(PORT)], cwd=ROOT,
                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.3)
        demo = json.loads((tmp_path / "demo.json").read_text())
        assert "curl" in (tmp_path / "up.log").read_text()
        r = httpx.post(f"http://127.0.0.1:{PORT}/v1/models/{demo['model']}/requests", timeout=90,
                       headers={"Authorization": f"Key {demo['customer_key']}", "Prefer": "wait=60"},
                       json={"input": {"prompt": "a lighthouse at dusk", "width": 512, "height": 512}})
        body = r.json()
        assert body["status"] == "succeeded", (body, (tmp_path / "up.log").read_text())
        assert body["cost"]["amount_micros"] == 3_000
        image = httpx.get(body["output"]["url"])
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
        period = body["completed_at"][:7]
        report = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "report", "revenue-share", "--period", period,
             "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        (row,) = json.loads(report.stdout)["rows"]
        assert row["model"] == "procedural-art" and row["gross_micros"] == 3_000
        assert row["platform_micros"] == 3_000  # open license: the platform keeps the price
        # Every housekeeping round ran clean on SQLite (no PostgreSQL-only SQL on its path).
        assert "housekeeping round failed" not in (tmp_path / "up.log").read_text()
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
