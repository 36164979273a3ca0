"""Replica states and log lines, reported by the workers that hold replicas, read by partners.

Workers call (no session needed; each call writes in its own short transaction):

    from partners import logs
    logs.report_replica(dep_id, replica_id, "starting")          # then "ready", "failed", "stopped"
    logs.report_replica(dep_id, replica_id, "failed", detail=model_traceback)
    logs.log_line(dep_id, line, replica_id=replica_id)           # a replica's stdout/stderr line
    logs.log_line(dep_id, msg, replica_id=rid, request_id=req)   # a request's `log` event

`log_line` only queues: one background thread per process writes batches every half
second, so a chatty model never waits on the database. Lines past a backlog of
`MAX_BACKLOG` are counted and reported as dropped instead of growing memory.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from kit.db import session_scope, utcnow
from partners import repository as repo
from partners.models import ReplicaState

REPLICA_STATES = ("starting", "ready", "failed", "stopped")
MAX_LINE = 8000
MAX_BACKLOG = 20_000
FLUSH_INTERVAL_S = 0.5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogLine:
    """One line of a deployment's logs."""

    deployment_id: str
    message: str
    replica_id: str | None = None
    request_id: str | None = None
    stream: str = "stdout"
    created_at: dt.datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "replica_id": self.replica_id,
                "request_id": self.request_id, "stream": self.stream[:8],
                "message": self.message[:MAX_LINE], "created_at": self.created_at}


def write_lines(session: Session, lines: Iterable[LogLine]) -> int:
    """Append log lines in the caller's transaction; returns how many."""
    rows = [line.row() for line in lines]
    repo.add_log_lines(session, rows)
    return len(rows)


def record_replica(session: Session, deployment_id: str, replica_id: str, state: str, *,
                   detail: str | None = None, host: str | None = None) -> ReplicaState:
    """Upsert a replica's state in the caller's transaction; a failure's detail also goes to the logs."""
    if state not in REPLICA_STATES:
        raise ValueError(f"state must be one of {REPLICA_STATES}")
    now = utcnow()
    row = repo.replica_state(session, replica_id)
    if row is None:
        row = ReplicaState(id=replica_id, deployment_id=deployment_id, state=state,
                           host=host or socket.gethostname(), started_at=now, updated_at=now)
        session.add(row)
    row.state, row.updated_at = state, now
    if detail is not None:
        row.detail = detail[:20_000]
    if state == "failed" and detail:
        write_lines(session, [LogLine(deployment_id, text, replica_id=replica_id, stream="stderr")
                              for text in detail.splitlines()[-200:]])
    session.flush()
    return row


def report_replica(deployment_id: str, replica_id: str, state: str, *, detail: str | None = None,
                   host: str | None = None) -> None:
    """Record a replica's state now, in a transaction of its own (for worker threads)."""
    shipper().flush()  # keep a replica's lines ahead of its state change
    with session_scope() as session:
        record_replica(session, deployment_id, replica_id, state, detail=detail, host=host)


def prune(session: Session, *, keep: dt.timedelta = dt.timedelta(days=14)) -> int:
    """Delete log lines older than `keep` (for a periodic task)."""
    return repo.prune_logs(session, utcnow() - keep)


class LogShipper:
    """Queues lines from any thread and writes them in batches from one background thread."""

    def __init__(self, interval: float = FLUSH_INTERVAL_S, max_backlog: int = MAX_BACKLOG) -> None:
        self.interval = interval
        self.max_backlog = max_backlog
        self._lines: deque[LogLine] = deque()
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
        self._thread.start()

    def emit(self, line: LogLine) -> None:
        """Queue a line; never blocks on the database."""
        with self._lock:
            if len(self._lines) >= self.max_backlog:
                self._dropped[line.deployment_id] = self._dropped.get(line.deployment_id, 0) + 1
                return
            self._lines.append(line)

    def flush(self) -> None:
        """Write everything queued so far."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._lines)
                self._lines.clear()
                dropped, self._dropped = self._dropped, {}
            batch += [LogLine(dep, f"[{n} log lines dropped: the model logged faster than they could be stored]",
                              stream="system") for dep, n in dropped.items()]
            if not batch:
                return
            try:
                with session_scope() as session:
                    write_lines(session, batch)
            except Exception:  # noqa: BLE001 - logs are best effort; serving must go on
                log.exception("could not store %d log lines", len(batch))

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()


@functools.cache
def shipper() -> LogShipper:
    """This process's shipper, flushed once more at exit."""
    s = LogShipper()
    atexit.register(s.close)
    return s


def log_line(deployment_id: str, message: str, *, replica_id: str | None = None,
             request_id: str | None = None, stream: str = "stdout") -> None:
    """Queue one log line of a replica (and of a request, when given) for storage."""
    shipper().emit(LogLine(deployment_id, message, replica_id=replica_id, request_id=request_id,
                           stream=stream))
