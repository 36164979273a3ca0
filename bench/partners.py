"""Partner deployment figures: upload (validate + encrypt + store) throughput with RSS,
encrypt+store alone, sandbox cold start, and warm replica acquire.

    python bench/partners.py [--size-gb 4] [--rounds 3] [--starts 20] [--acquires 2000] [--only-upload]

The upload runs the one-pass path (validate, digest and encrypt while reading) and, beside
it in the same run, the previous two-pass path (validate, then read again to encrypt).

Writes bench/results/partners.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.common import machine, summary, write_json  # noqa: E402
from kit.db import Base, make_engine  # noqa: E402
from kit.storage import LocalStorage  # noqa: E402
from partners.tenancy import models  # noqa: E402,F401 - registers the tables
from partners.tenancy.kms import LocalKeyManager  # noqa: E402
from partners.tenancy.sandbox import Sandbox, SandboxSpec  # noqa: E402
from partners.tenancy.store import ArtifactStore  # noqa: E402

MiB = 1024 * 1024
MODEL = b"""from engine.sdk import Model


class Echo(Model):
    def predict(self, text: str = "hi") -> str:
        return text
"""


class Synthetic(io.RawIOBase):
    """`size` bytes of incompressible-looking data without holding them: one block, varied."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(8 * MiB)
        self.offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else self.left, self.left, len(self.block))
        start = self.offset % (len(self.block) - n + 1)
        self.offset += 4099
        self.left -= n
        return self.block[start:start + n]


class RssSampler:
    """Peak resident memory of this process, sampled every 20 ms."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.baseline = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class HashOnlyStorage(LocalStorage):
    """LocalStorage's work (read, hash the ciphertext) without the disk: the CPU-bound part."""

    def put_stream(self, key: str, stream: Any) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()


def disk_write_mb_s(workdir: Path, size: int = 1024**3) -> float:
    """Plain sequential write speed of the same directory (page cache, no fsync), as a baseline."""
    block = os.urandom(4 * MiB)
    path = workdir / "baseline.bin"
    os.sync()
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    elapsed = time.perf_counter() - started
    path.unlink()
    return size / MiB / elapsed


def bench_encrypt_only(size: int, workdir: Path) -> dict[str, Any]:
    engine = make_engine(f"sqlite:///{workdir / 'bench-cpu.db'}")
    Base.metadata.create_all(engine)
    store = ArtifactStore(HashOnlyStorage(workdir / "unused"), LocalKeyManager(os.urandom(32)))
    with Session(engine) as session, RssSampler() as rss:
        started = time.perf_counter()
        store.put_blob(session, "par_bench", Synthetic(size))
        elapsed = time.perf_counter() - started
    return {"encrypt_hash_mb_s": size / MiB / elapsed, "rss_peak_mb": rss.peak / MiB}


def bench_store(size: int, workdir: Path) -> dict[str, Any]:
    engine = make_engine(f"sqlite:///{workdir / 'bench.db'}")
    Base.metadata.create_all(engine)
    store = ArtifactStore(LocalStorage(workdir / "storage"),
                          LocalKeyManager(os.urandom(32)))
    with Session(engine) as session:
        store.put_blob(session, "par_bench", [b"warm up"])
        with RssSampler() as rss:
            started = time.perf_counter()
            digest = store.put_blob(session, "par_bench", Synthetic(size))
            put_s = time.perf_counter() - started
        with RssSampler() as rss_read:
            started = time.perf_counter()
            read = 0
            for chunk in store.open_blob(session, "par_bench", digest, actor="bench",
                                         deployment_id=None, reason="bench"):
                read += len(chunk)
            get_s = time.perf_counter() - started
        assert read == size
        session.commit()
    return {
        "size_bytes": size,
        "encrypt_store_s": put_s,
        "encrypt_store_mb_s": size / MiB / put_s,
        "decrypt_read_mb_s": size / MiB / get_s,
        "rss_baseline_mb": rss.baseline / MiB,
        "rss_peak_mb": rss.peak / MiB,
        "rss_growth_mb": (rss.peak - rss.baseline) / MiB,
        "rss_peak_read_mb": rss_read.peak / MiB,
    }


def _build_big_package(size: int, workdir: Path) -> Path:
    from partners.packaging import build_package

    model = workdir / "model"
    (model / "weights").mkdir(parents=True)
    (model / "mediagate.toml").write_text('[model]\nname = "big"\nentrypoint = "predict:Echo"\n')
    (model / "predict.py").write_bytes(MODEL)
    block = os.urandom(4 * MiB)
    with open(model / "weights" / "model.safetensors", "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    archive = workdir / "big.oci.tar"
    build_package(model, archive)
    (model / "weights" / "model.safetensors").unlink()
    return archive


def _two_pass(session: Session, store: ArtifactStore, archive: Path) -> float:
    """The previous upload path, for comparison: validate the archive, then read it again to
    encrypt each layer. Returns the seconds the validation pass took."""
    from partners.packaging import validate_stream

    started = time.perf_counter()
    with open(archive, "rb") as f:
        package = validate_stream(f)
    validated = time.perf_counter() - started
    with tarfile.open(archive, mode="r:*") as tar:
        for layer in package.layers:
            member = tar.extractfile(layer.path)
            assert member is not None
            with member:
                store.put_blob(session, "par_bench", member, expected_digest=layer.digest)
    return validated


def _one_pass(session: Session, store: ArtifactStore, archive: Path) -> None:
    """The upload path: one read that validates, digests and encrypts into the store."""
    from partners.tenancy.packages import ingest_package

    with open(archive, "rb") as f:
        ingest_package(session, "par_bench", f, store=store)


def _cpu_s() -> float:
    """CPU seconds of this process so far, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_upload(size: int, workdir: Path, rounds: int) -> dict[str, Any]:
    """An uploaded package of `size` bytes of weights, validated and encrypted into the store:
    the one-pass path and the previous two-pass path, alternating, `rounds` times each."""
    import shutil

    archive = _build_big_package(size, workdir)
    archive_size = archive.stat().st_size
    runs: dict[str, list[dict[str, float]]] = {"one_pass": [], "two_pass": []}
    for _ in range(rounds):
        for name in ("two_pass", "one_pass"):
            engine = make_engine(f"sqlite:///{workdir / f'upload-{name}.db'}")
            Base.metadata.create_all(engine)
            storage = workdir / "upload-storage"
            store = ArtifactStore(LocalStorage(storage), LocalKeyManager(os.urandom(32)))
            os.sync()  # each run starts with no earlier write still draining to the disk
            with Session(engine) as session, RssSampler() as rss:
                cpu = _cpu_s()
                started = time.perf_counter()
                validated = _two_pass(session, store, archive) if name == "two_pass" else \
                    _one_pass(session, store, archive)
                elapsed = time.perf_counter() - started
                cpu = _cpu_s() - cpu
                session.commit()
            run = {"total_s": elapsed, "mb_s": archive_size / MiB / elapsed,
                   "cpu_s_per_gb": cpu / (archive_size / 1024**3),
                   "rss_peak_mb": rss.peak / MiB, "rss_growth_mb": (rss.peak - rss.baseline) / MiB}
            if validated is not None:
                run["validate_mb_s"] = archive_size / MiB / validated
            runs[name].append(run)
            engine.dispose()
            (workdir / f"upload-{name}.db").unlink()
            shutil.rmtree(storage)
    archive.unlink()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    return {"archive_bytes": archive_size, "rounds": rounds, "runs": runs,
            "upload_mb_s": median("one_pass", "mb_s"), "two_pass_mb_s": median("two_pass", "mb_s"),
            "cpu_s_per_gb": median("one_pass", "cpu_s_per_gb"),
            "two_pass_cpu_s_per_gb": median("two_pass", "cpu_s_per_gb"),
            "validate_mb_s": median("two_pass", "validate_mb_s"),
            "rss_peak_mb": max(r["rss_peak_mb"] for r in runs["one_pass"]),
            "rss_growth_mb": max(r["rss_growth_mb"] for r in runs["one_pass"])}


def bench_warm_acquire(n: int) -> dict[str, Any]:
    """Taking a slot on an already warm replica and giving it back (the pool's hot path)."""
    from partners.tenancy.runner import DeploymentSpec, PackageLayers, ReplicaPool

    # The pool records replica states for partners; this bench has no deployment row to record.
    logging.getLogger("partners.tenancy.runner").setLevel(logging.CRITICAL)
    layer = _layer()
    spec = DeploymentSpec("dep_bench", lambda: PackageLayers([[layer]], "", 1 << 20),
                          {"name": "echo", "entrypoint": "predict:Echo"}, concurrency=1)
    pool = ReplicaPool()
    pool.release(pool.acquire(spec, timeout=30))
    times = []
    for _ in range(n):
        started = time.perf_counter()
        replica = pool.acquire(spec, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        pool.release(replica)
    pool.close()
    return {"acquires": n, "acquire_ms": summary(times)}


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("predict.py")
        info.size = len(MODEL)
        tar.addfile(info, io.BytesIO(MODEL))
    return buf.getvalue()


def bench_sandbox(starts: int) -> dict[str, Any]:
    layer = _layer()
    manifest = {"name": "echo", "entrypoint": "predict:Echo"}
    ready, first, stop = [], [], []
    for i in range(starts + 1):
        box = Sandbox(SandboxSpec(layers=[[layer]], manifest=manifest))
        started = time.perf_counter()
        box.start()
        box.wait_ready(30)
        t_ready = time.perf_counter() - started
        frame = box.predict(f"req_{i}", {"text": "x"})
        t_first = time.perf_counter() - started
        assert frame["type"] == "result" and frame["output"] == "x", frame
        started = time.perf_counter()
        box.stop()
        t_stop = time.perf_counter() - started
        if i:  # the first start warms the page cache
            ready.append(t_ready * 1000)
            first.append(t_first * 1000)
            stop.append(t_stop * 1000)
    return {"starts": starts, "process_cap": box.process_cap, "memory_cap": box.memory_cap,
            "cold_start_ready_ms": summary(ready), "cold_start_first_result_ms": summary(first),
            "stop_ms": summary(stop)}


def _upload_rows(upload: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        ("upload: validate+encrypt+store", f"{upload['upload_mb_s']:.0f} MB/s",
         f"{upload['archive_bytes'] / 1024**3:.1f} GB package, one pass, median of "
         f"{upload['rounds']}, target >= 300 MB/s"),
        ("  previous path (2 passes)", f"{upload['two_pass_mb_s']:.0f} MB/s",
         "validate, then read again to encrypt; same run"),
        ("  CPU per GB, one pass / two", f"{upload['cpu_s_per_gb']:.2f} s",
         f"/ {upload['two_pass_cpu_s_per_gb']:.2f} s (all threads; the one pass also digests "
         "the archive)"),
        ("  its validation pass alone", f"{upload['validate_mb_s']:.0f} MB/s", ""),
        ("RSS peak (upload)", f"{upload['rss_peak_mb']:.0f} MB",
         f"growth {upload['rss_growth_mb']:.0f} MB, target <= 150 MB"),
        ("disk write baseline", f"{upload['disk_baseline_write_mb_s']:.0f} MB/s", "1 GB, no fsync"),
        ("load average", "{:.1f} / {:.1f}".format(*upload["load_average"]), "before / after the uploads"),
    ]


def _print_upload(upload: dict[str, Any], path: Path) -> None:
    print(f"partners upload bench on {machine()}")
    for name, value, note in _upload_rows(upload):
        print(f"  {name:<32}  {value:>10}  {note}")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--acquires", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="upload runs of each path (medians)")
    parser.add_argument("--only-upload", action="store_true", help="skip the store, sandbox and replica figures")
    args = parser.parse_args()
    base = os.environ.get("MEDIAGATE_DATA_DIR") or None
    size = int(args.size_gb * 1024**3)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=base) as tmp:
        disk = disk_write_mb_s(Path(tmp))
        upload = bench_upload(size, Path(tmp), args.rounds)
        upload["disk_baseline_write_mb_s"] = disk
        upload["load_average"] = [load_before, os.getloadavg()[0]]  # the machine is shared
        if args.only_upload:
            path = write_json("partners-upload", {"machine": machine(), "upload": upload})
            _print_upload(upload, path)
            return
        cpu = bench_encrypt_only(size, Path(tmp))
        store = bench_store(size, Path(tmp))
        store.update(cpu, disk_baseline_write_mb_s=disk)
    sandbox = bench_sandbox(args.starts)
    warm = bench_warm_acquire(args.acquires)
    payload = {"machine": machine(), "upload": upload, "store": store, "sandbox": sandbox, "warm": warm}
    path = write_json("partners", payload)
    rows = [*_upload_rows(upload),
        ("encrypt+hash (no disk)", f"{store['encrypt_hash_mb_s']:.0f} MB/s",
         "AES-256-GCM + plaintext and ciphertext sha256, target >= 300 MB/s"),
        ("encrypt+store", f"{store['encrypt_store_mb_s']:.0f} MB/s",
         f"{store['size_bytes'] / 1024**3:.1f} GB stream to local disk"),
        ("decrypt+read", f"{store['decrypt_read_mb_s']:.0f} MB/s", ""),
        ("RSS peak (encrypt)", f"{store['rss_peak_mb']:.0f} MB",
         f"growth {store['rss_growth_mb']:.0f} MB, target <= 150 MB"),
        ("sandbox cold start to ready", f"{sandbox['cold_start_ready_ms']['p50']:.0f} ms",
         f"median of {args.starts}, p90 {sandbox['cold_start_ready_ms']['p90']:.0f} ms, "
         "target <= 1000 ms"),
        ("cold start to first result", f"{sandbox['cold_start_first_result_ms']['p50']:.0f} ms", ""),
        ("sandbox stop", f"{sandbox['stop_ms']['p50']:.0f} ms", ""),
        ("warm replica acquire", f"{warm['acquire_ms']['p50'] * 1000:.1f} µs",
         f"p99 {warm['acquire_ms']['p99'] * 1000:.1f} µs over {warm['acquires']}, target <= 2 ms"),
    ]
    print(f"partners bench on {machine()}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    print(f"wrote {path.relative_to(ROOT)}; process cap: {sandbox['process_cap']}; "
          f"memory cap: {sandbox['memory_cap']}; "
          f"median ready {statistics.median([sandbox['cold_start_ready_ms']['p50']]):.0f} ms")


if __name__ == "__main__":
    main()
