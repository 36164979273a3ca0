"""Group commit: the submits that arrive together share one transaction and one commit.

Each API process runs its submits on one thread, a batch at a time: while a batch is in the
database, the submits that arrive meanwhile queue up and become the next batch. A batch is
one session (one connection checkout, one COMMIT) and one Redis pipeline per client for what
follows the commit (task messages, `queued` events; sent once the answers are out), instead
of one of each per submit; under load that is most of a submit's cost, and when idle a batch
is a single submit, so latency does not wait for a batch to fill.

A job is a function of the session that returns the answer or raises. An `AppError` (the
client's fault: bad key, 404, 422, 429...) must be raised before the job writes anything, so
it fails that job alone; anything else (a database error, a bug) rolls the batch back and
each of its jobs runs again in a transaction of its own, so one bad submit cannot fail its
neighbours. A failed COMMIT fails the whole batch (each job gets the error) without a rerun:
the database may have applied it, and the client's retry with its Idempotency-Key is the
safe way back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from gateway import limits
from gateway import repository as repo
from kit.db import get_sessionmaker
from kit.errors import AppError
from kit.pipelined import Pipelines, collecting

MAX_BATCH = 256


@dataclass(frozen=True)
class Admitted:
    """A job in two steps. `admit(session)` says who is asking and which rate-limit token the
    call costs; it runs for every job of the batch first, so the batch takes its tokens in one
    Redis round trip. `work(session, who)` then runs for each job let through."""

    admit: Callable[[Session], tuple[Any, limits.Charge]]
    work: Callable[[Session, Any], Any]


Job = Callable[[Session], Any] | Admitted


@dataclass(frozen=True)
class AfterWrites:
    """A job's answer that needs the batch's deferred writes first (a plain submit's row and
    queue position are written for the whole batch at once): `render()` runs after them, in
    the same transaction, before the commit."""

    render: Callable[[], Any]


@dataclass
class _Queued:
    job: Job
    future: asyncio.Future[Any]


class _Unsafe(Exception):
    """A job failed in a way that may have left the shared transaction dirty."""


def _left_behind(session: Session) -> tuple[int, int]:
    return len(session.info.get("after_commit", ())), len(session.info.get("deferred_requests") or ())


def _attempt(session: Session, job: Callable[[Session], Any]) -> tuple[bool, Any]:
    before = _left_behind(session)
    try:
        return True, job(session)
    except AppError as exc:
        clean = (_left_behind(session) == before and not session.new
                 and not session.dirty and not session.deleted)
        if not clean:
            raise _Unsafe from exc
        return False, exc
    except Exception as exc:
        raise _Unsafe from exc


def _admit(session: Session, jobs: list[Job]) -> list[Callable[[Session], Any] | tuple[bool, Any]]:
    """Each job ready to run, or its outcome when it is not let through (401, 403, 429)."""
    firsts = [_attempt(session, job.admit) if isinstance(job, Admitted) else None for job in jobs]
    verdicts = iter(limits.take_many([first[1][1] for first in firsts if first is not None and first[0]]))
    ready: list[Callable[[Session], Any] | tuple[bool, Any]] = []
    for job, first in zip(jobs, firsts, strict=True):
        if not isinstance(job, Admitted) or first is None:
            ready.append(job)  # type: ignore[arg-type]
        elif not first[0]:
            ready.append(first)
        else:
            who, charge = first[1]
            try:
                limits.settle(charge, next(verdicts))
            except AppError as exc:
                ready.append((False, exc))
                continue
            ready.append(functools.partial(_work, job.work, who))
    return ready


def _work(work: Callable[[Session, Any], Any], who: Any, session: Session) -> Any:
    return work(session, who)


def _run(session: Session, ready: Callable[[Session], Any] | tuple[bool, Any]) -> tuple[bool, Any]:
    return ready if isinstance(ready, tuple) else _attempt(session, ready)


def _finish(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = outcome
    return (True, value.render()) if ok and isinstance(value, AfterWrites) else outcome


def _alone(job: Job) -> tuple[bool, Any]:
    session = get_sessionmaker()()
    repo.defer_inserts(session)
    try:
        ready = _admit(session, [job])[0]
        if isinstance(ready, tuple):
            return ready
        value = ready(session)
        repo.write_deferred(session)
        outcome = _finish((True, value))
        session.commit()
        return outcome
    except _Unsafe as unsafe:
        session.rollback()
        return False, unsafe.__cause__
    except Exception as exc:  # noqa: BLE001 - handed to the job's caller
        session.rollback()
        return False, exc
    finally:
        session.close()


def run_batch(jobs: list[Job]) -> list[tuple[bool, Any]]:
    """Run `jobs` in one transaction; (True, answer) or (False, exception) for each."""
    outcomes, writes = run_batch_holding_writes(jobs)
    writes.flush()
    return outcomes


def run_batch_holding_writes(jobs: list[Job]) -> tuple[list[tuple[bool, Any]], Pipelines]:
    """As `run_batch`, handing back the Redis writes that follow the commit unsent: the
    answers can go out first (the rows are committed; the writes are best effort)."""
    with collecting() as writes:
        session = get_sessionmaker()()
        repo.defer_inserts(session)
        try:
            try:
                outcomes = [_run(session, ready) for ready in _admit(session, jobs)]
                try:
                    repo.write_deferred(session)
                    outcomes = [_finish(outcome) for outcome in outcomes]
                except Exception as exc:
                    raise _Unsafe from exc
            except _Unsafe as unsafe:
                session.rollback()
                if len(jobs) == 1:
                    return [(False, unsafe.__cause__)], writes
                return [_alone(job) for job in jobs], writes
            try:
                session.commit()
            except Exception as exc:  # noqa: BLE001 - every job of the batch gets it
                session.rollback()
                return [(False, exc)] * len(jobs), writes
            return outcomes, writes
        finally:
            session.close()


class GroupCommit:
    """One process's submit queue and the thread that commits it batch by batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_batch: int = MAX_BATCH) -> None:
        self.loop, self.max_batch = loop, max_batch
        self.queue: list[_Queued] = []
        self.drainer: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="group-commit")
        weakref.finalize(loop, self.executor.shutdown, wait=False)

    async def run(self, job: Job) -> Any:
        """Run the job in the next batch; its answer once the batch has committed."""
        run_in = contextvars.copy_context().run  # the request's context: its trace, etc.
        bound: Job = (Admitted(functools.partial(run_in, job.admit), functools.partial(run_in, job.work))
                      if isinstance(job, Admitted) else functools.partial(run_in, job))
        queued = _Queued(bound, self.loop.create_future())
        self.queue.append(queued)
        if self.drainer is None:
            self.drainer = self.loop.create_task(self._drain())
        return await queued.future

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
                # A client that hung up before its submit began gets nothing, so nothing is made.
                batch = [queued for queued in batch if not queued.future.done()]
                if not batch:
                    continue
                try:
                    outcomes, writes = await self.loop.run_in_executor(
                        self.executor, run_batch_holding_writes, [queued.job for queued in batch])
                except BaseException as exc:
                    for queued in batch:
                        if not queued.future.done():
                            queued.future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    raise
                for queued, (ok, value) in zip(batch, outcomes, strict=True):
                    if queued.future.done():
                        continue
                    if ok:
                        queued.future.set_result(value)
                    else:
                        queued.future.set_exception(value)
                # Sent after the answers, before the next batch (the executor runs in order).
                self.loop.run_in_executor(self.executor, writes.flush)
        finally:
            self.drainer = None


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit] = weakref.WeakKeyDictionary()


async def run(job: Job) -> Any:
    """Run the job (`job(session)`, or an `Admitted` pair) in this process's next group commit."""
    loop = asyncio.get_running_loop()
    group = _by_loop.get(loop)
    if group is None:
        group = _by_loop[loop] = GroupCommit(loop)
    return await group.run(job)
