"""The runner process: load the partner's class, run `setup()`, serve requests on a socket."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from engine.manifest import Manifest
from engine.runner.protocol import ProtocolError, recv_frame, send_frame
from engine.sdk.io import OutputWriter, Prediction
from engine.sdk.model import Model, RequestContext, bind_request, unbind_request


def _provide_cog() -> None:
    """Serve `engine.sdk.cog` as `cog` unless the real package is installed."""
    if importlib.util.find_spec("cog") is None:
        from engine.sdk import cog

        sys.modules["cog"] = cog


class Runner:
    """One replica: a model instance, its setup state, and the requests in flight."""

    def __init__(self, package_dir: Path, manifest: Manifest) -> None:
        self.package_dir = package_dir
        self.manifest = manifest
        self.state = "setting_up"
        self.error: str | None = None
        self.model: Model | None = None
        self.cancels: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def load_and_setup(self) -> None:
        """Import the entrypoint and run its setup, recording a traceback on failure."""
        try:
            sys.path.insert(0, str(self.package_dir))
            os.chdir(self.package_dir)  # models open their weights by relative path, as under Cog
            _provide_cog()
            module = importlib.import_module(self.manifest.module)
            cls = getattr(module, self.manifest.class_name)
            model = cls()
            if hasattr(model, "setup"):
                model.setup()
            self.model = model
            self.state = "ready"
        except BaseException:  # noqa: BLE001 - the partner's failure is reported, not raised
            self.error = traceback.format_exc()
            self.state = "setup_failed"

    def status(self) -> dict[str, Any]:
        return {"type": "status", "state": self.state, "error": self.error, "pid": os.getpid()}

    def predict(self, conn: socket.socket, message: dict[str, Any]) -> None:
        request_id = str(message["id"])
        out_dir = Path(message["output_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        cancel = threading.Event()
        self.cancels[request_id] = cancel
        send_lock = threading.Lock()

        def emit(frame: dict[str, Any]) -> None:
            with send_lock:
                send_frame(conn, {**frame, "id": request_id})

        model = self.model
        assert model is not None
        started = time.perf_counter()
        token = bind_request(RequestContext(emit, cancel))
        try:
            fn = getattr(model, self.manifest.method)
            result = fn(**message.get("input", {}))
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            if inspect.isgenerator(result):
                result = list(result)
            units: dict[str, float] | None = None
            if isinstance(result, Prediction):
                result, units = result.output, result.units
            writer = OutputWriter(out_dir, image_format=str(message.get("image_format", "png")))
            output = writer.convert(result)
            counted = writer.units(self.manifest.billable_unit, time.perf_counter() - started)
            counted.update(units or {})
            emit({"type": "result", "output": output, "units": counted,
                  "predict_ms": round((time.perf_counter() - started) * 1000, 3)})
        except BaseException as exc:  # noqa: BLE001 - any model error ends this request only
            emit({"type": "error", "message": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "canceled": cancel.is_set()})
        finally:
            unbind_request(token)
            self.cancels.pop(request_id, None)

    def handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    message = recv_frame(conn)
                    kind = message["type"]
                    if kind == "health":
                        send_frame(conn, self.status())
                    elif kind == "predict":
                        if self.state != "ready":
                            send_frame(conn, {"type": "error", "id": message.get("id"),
                                              "message": f"model is not ready ({self.state})"})
                        else:
                            self.predict(conn, message)
                    elif kind == "cancel":
                        event = self.cancels.get(str(message.get("id")))
                        if event is not None:
                            event.set()
                        send_frame(conn, {"type": "ok", "canceled": event is not None})
                    else:
                        send_frame(conn, {"type": "error", "message": f"unknown message {kind!r}"})
        except (ProtocolError, OSError):
            return


def serve(package_dir: Path, manifest: Manifest, socket_path: Path) -> None:
    """Listen first (so health checks answer during setup), then set up, then serve forever."""
    runner = Runner(package_dir, manifest)
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    server.listen(64)
    threading.Thread(target=runner.load_and_setup, name="setup", daemon=True).start()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=runner.handle, args=(conn,), daemon=True).start()
