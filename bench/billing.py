"""Billing benchmark: usage recording with ledger postings, and the close of a big period.

Run from the repository root: `python bench/billing.py` (a few minutes; `--quick` for a
smoke run). Needs PostgreSQL (`MEDIAGATE_BENCH_PG`, default the local server); builds its
own database, `mediagate_bench_billing`, from scratch. Prints a table, writes
`bench/results/billing.json` and `bench/results/billing.png`.

- Recording, one request per transaction: `record_usage` then commit, as the worker does
  after each succeeded request (usage row, booking-period lock, 2–3 ledger legs, prepaid
  credit balance).
- Recording, batched: `record_usage_batch` of 2,000 requests per transaction (multi-row
  INSERT … ON CONFLICT DO NOTHING RETURNING for usage, multi-row INSERT for the ledger).
- Fill: the batched path again until the month holds 1,000,000 usage records across 1,000
  accounts and 50 models (volume tiers, revenue-share royalties with included volume,
  partner hosting fees, prepaid accounts), i.e. about 3.5 million ledger legs.
- Close: `billing close` of that month without delivery (freeze, pool fees and SLA credits,
  minimum royalties, invoices with lines per model, statements, payouts, licensor
  reports), then the reconciliation report over it, then closing again (a no-op).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PG = os.environ.get("MEDIAGATE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DB = "mediagate_bench_billing"
TARGET_RECORDS_PER_S = 5_000
TARGET_CLOSE_S = 60.0


def _fresh_database() -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                          "AND pid <> pg_backend_pid()"), {"d": DB})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}"'))
        conn.execute(text(f'CREATE DATABASE "{DB}"'))
    admin.dispose()
    os.environ.update(MEDIAGATE_DATABASE_URL=f"{PG}/{DB}", MEDIAGATE_ENV="test")


def _world(accounts: int, models: int) -> dict:
    """Partners, priced models of every tier, customer accounts (a tenth prepaid), payees."""
    from billing import ledger
    from billing import service as billing
    from kit.db import session_scope
    from partners import service as partners

    since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rng = random.Random(7)
    out: dict = {"models": [], "accounts": []}
    with session_scope() as s:
        labs = [partners.create_partner(s, slug=f"lab-{i}", name=f"Lab {i}")[0] for i in range(10)]
        for i in range(models):
            lab = labs[i % len(labs)]
            model = partners.create_model(s, lab, slug=f"model-{i}")
            kind = ("open", "revenue_share", "partner_priced")[i % 3]
            unit = ("images", "megapixels", "video_seconds")[i % 3]
            terms: dict = {"tier": kind, "unit": unit, "unit_price_micros": rng.randrange(2_000, 80_000),
                           "effective_from": since}
            if kind == "revenue_share":
                terms.update(licensor=f"licensor-{i % 3}", royalty_bps=1_000, royalty_per_unit_micros=500,
                             included_units=10_000, minimum_fee_micros=5_000_000)
            if kind == "partner_priced":
                terms.update(platform_fee_bps=2_000, hosting_fee_per_gpu_second_micros=200)
            if i % 5 == 0:
                terms["tiers"] = [{"up_to": 100, "unit_price_micros": terms["unit_price_micros"]},
                                  {"up_to": None, "unit_price_micros": terms["unit_price_micros"] // 2}]
            billing.set_pricing(s, model, **terms)
            out["models"].append((model.id, lab.id, unit))
        for lab in labs:
            billing.ensure_payee(s, "partner", lab.id, stripe_account_id=f"acct_{lab.slug}")
        for i in range(accounts):
            prepaid = i % 10 == 0
            account = billing.create_account(s, name=f"Customer {i}", billing_mode="prepaid" if prepaid else "postpaid")
            if prepaid:
                billing.post_transaction(s, [(ledger.PLATFORM_STRIPE, 10**12), (ledger.customer_credit(account.id), -10**12)],
                                         currency="usd", kind="topup", period="2026-08", ref=f"top-{i}")
            out["accounts"].append(account.id)
        if accounts:
            billing.add_pool_contract(s, s.get(type(account), out["accounts"][1]), pool="gold",
                                      monthly_fee_micros=2_000_000_000, latency_target_ms=5_000, effective_from=since)
    return out


def _items(world: dict, n: int, period: str, start: int, rng: random.Random) -> list:
    from billing.service import UsageItem

    year, month = (int(x) for x in period.split("-"))
    base = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    items = []
    for k in range(start, start + n):
        model_id, partner_id, unit = world["models"][rng.randrange(len(world["models"]))]
        images = rng.randint(1, 4)
        units: dict = {"images": images, "gpu_seconds": round(rng.uniform(0.5, 20), 3)}
        if unit == "megapixels":
            units["megapixels"] = round(images * rng.uniform(0.3, 2.2), 6)
        elif unit == "video_seconds":
            units["video_seconds"] = round(rng.uniform(1, 10), 3)
        items.append(UsageItem(request_id=f"req_{period}_{k:09d}", account_id=world["accounts"][rng.randrange(len(world["accounts"]))],
                               model_id=model_id, partner_id=partner_id, version_id="ver_bench", units=units,
                               occurred_at=base + dt.timedelta(seconds=rng.randrange(27 * 86_400))))
    return items


def bench_single(world: dict, n: int) -> dict:
    """One usage per transaction, as the worker records it after each request."""
    from billing import service as billing
    from kit.db import session_scope
    from partners.models import Model

    rng = random.Random(11)
    items = _items(world, n, "2026-08", 0, rng)
    with session_scope() as s:
        models = {m.id: m for m in s.query(Model).all()}
        for m in models.values():
            s.expunge(m)
    started = time.perf_counter()
    for item in items:
        with session_scope() as s:
            billing.record_usage(s, request_id=item.request_id, account_id=item.account_id,
                                 model=models[item.model_id], version_id=item.version_id, units=item.units,
                                 occurred_at=item.occurred_at)
    elapsed = time.perf_counter() - started
    return {"records": n, "seconds": elapsed, "records_per_s": n / elapsed}


def bench_batched(world: dict, n: int, period: str, start: int, batch: int, label: str) -> dict:
    """`record_usage_batch`, one transaction per batch; throughput including ledger postings."""
    from billing import service as billing
    from kit.db import session_scope

    rng = random.Random(hash(period) & 0xFFFF)
    written, elapsed, rates = 0, 0.0, []
    for offset in range(start, start + n, batch):
        items = _items(world, min(batch, start + n - offset), period, offset, rng)
        t0 = time.perf_counter()
        with session_scope() as s:
            written += billing.record_usage_batch(s, items)
        dt_s = time.perf_counter() - t0
        elapsed += dt_s
        rates.append(len(items) / dt_s)
        if len(rates) % 50 == 0:
            print(f"  {label}: {written:,} records, {written / elapsed:,.0f}/s", flush=True)
    return {"records": written, "seconds": elapsed, "records_per_s": written / elapsed, "batch": batch,
            "slowest_batch_per_s": min(rates), "fastest_batch_per_s": max(rates)}


def bench_close(period: str) -> dict:
    from sqlalchemy import func, select

    from billing.models import LedgerEntry, UsageRecord
    from billing.reports import service as reports
    from billing.tasks import run_close
    from kit.db import session_scope

    with session_scope() as s:
        usage = s.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.period == period))
        legs = s.scalar(select(func.count()).select_from(LedgerEntry))
    t0 = time.perf_counter()
    result = run_close(period, send=False)
    close_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with session_scope() as s:
        recon = reports.reconciliation(s, period)
    recon_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = run_close(period, send=False)
    again_s = time.perf_counter() - t0
    return {"period": period, "usage_records": usage, "ledger_legs": legs, "close_seconds": close_s,
            "totals": result["totals"], "reconciliation_seconds": recon_s, "reconciles": recon["ok"],
            "failed_checks": [c["check"] for c in recon["checks"] if not c["ok"]],
            "second_close_seconds": again_s, "second_close_no_op": again["already_closed"]}


def _chart(results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["one per txn", "batched", "batched, 1M fill"]
    values = [results["single"]["records_per_s"], results["batched"]["records_per_s"],
              results["fill"]["records_per_s"]]
    a.bar(labels, values, color=["#8da0cb", "#3559e0", "#2f9e6e"])
    a.axhline(TARGET_RECORDS_PER_S, color="#c94f4f", linestyle="--", label=f"target {TARGET_RECORDS_PER_S:,}/s")
    a.set_ylabel("usage records per second (with ledger legs)")
    a.set_title("Recording usage on PostgreSQL")
    a.legend()
    for i, v in enumerate(values):
        a.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
    c = results["close"]
    parts = [c["close_seconds"], c["reconciliation_seconds"], c["second_close_seconds"]]
    b.bar(["close", "reconciliation", "close again"], parts, color=["#3559e0", "#e0a235", "#8da0cb"])
    b.axhline(TARGET_CLOSE_S, color="#c94f4f", linestyle="--", label=f"target {TARGET_CLOSE_S:.0f} s")
    b.set_ylabel("seconds")
    b.set_title(f"Period close: {c['usage_records']:,} usage records")
    b.legend()
    for i, v in enumerate(parts):
        b.text(i, v, f"{v:.1f} s", ha="center", va="bottom")
    fig.tight_layout()
    path = RESULTS / "billing.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--records", type=int, default=1_000_000, help="usage records in the closed month")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    if args.quick:
        args.records, args.accounts = 20_000, 100
    single_n, batched_n = (300, 5_000) if args.quick else (3_000, 50_000)

    _fresh_database()
    from kit.db import Base, get_engine
    from migrations.env_models import import_all_models

    import_all_models()
    Base.metadata.create_all(get_engine())
    world = _world(args.accounts, args.models)
    print(f"world: {args.accounts} accounts, {args.models} models", flush=True)
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
                     "load_average_at_start": os.getloadavg(),
                     "database": "PostgreSQL (local)", "accounts": args.accounts, "models": args.models}
    results["single"] = bench_single(world, single_n)
    print(f"one per transaction: {results['single']['records_per_s']:,.0f}/s", flush=True)
    results["batched"] = bench_batched(world, batched_n, "2026-08", 10**7, args.batch, "batched")
    print(f"batched: {results['batched']['records_per_s']:,.0f}/s", flush=True)
    results["close_small"] = bench_close("2026-08")
    results["fill"] = bench_batched(world, args.records, "2026-09", 0, args.batch, "fill")
    results["close"] = bench_close("2026-09")
    with __import__("kit.db", fromlist=["get_engine"]).get_engine().connect() as conn:
        from sqlalchemy import text

        results["database_size"] = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()

    results["load_average_at_end"] = os.getloadavg()
    rows = [
        ("record usage, one per transaction", f"{results['single']['records_per_s']:,.0f} /s", "-"),
        (f"record usage, batches of {args.batch:,}", f"{results['batched']['records_per_s']:,.0f} /s",
         f"≥ {TARGET_RECORDS_PER_S:,} /s"),
        (f"record usage, filling {args.records:,}", f"{results['fill']['records_per_s']:,.0f} /s",
         f"≥ {TARGET_RECORDS_PER_S:,} /s"),
        (f"close {results['close']['usage_records']:,} records", f"{results['close']['close_seconds']:.1f} s",
         f"≤ {TARGET_CLOSE_S:.0f} s"),
        ("reconciliation report of that month", f"{results['close']['reconciliation_seconds']:.1f} s", "-"),
        ("close it again (no-op)", f"{results['close']['second_close_seconds']:.2f} s", "-"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'result':>14}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>14}  {target}")
    print(f"\nledger legs: {results['close']['ledger_legs']:,}; reconciles: {results['close']['reconciles']}; "
          f"database {results['database_size']}; load average {results['load_average_at_start'][0]:.1f} "
          f"at start, {results['load_average_at_end'][0]:.1f} at end (shared machine)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "billing.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {RESULTS / 'billing.json'} and {_chart(results)}")


if __name__ == "__main__":
    main()
