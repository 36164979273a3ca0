"""`mediagate billing …`: close a period, deliver it, issue finance keys."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Billing: period close, delivery to Stripe and licensors, finance keys.",
                  no_args_is_help=True)
console = Console()


@app.command("close")
def close_cmd(period: str = typer.Option(..., help="Billing period, e.g. 2026-11"),
              send: bool = typer.Option(True, help="Send invoices, payouts and licensor reports"),
              as_json: bool = typer.Option(False, "--json", help="Print the result as JSON")) -> None:
    """Freeze a period and write its invoices, statements and payouts (safe to run twice)."""
    from billing.tasks import run_close
    from kit.errors import AppError

    try:
        result = run_close(period, send=send)
    except AppError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    note = "was already closed; nothing changed" if result["already_closed"] else "closed"
    console.print(f"[green]{period} {note}[/]")
    table = Table(title=f"Close {period}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in sorted(result["totals"].items()):
        table.add_row(key, str(value))
    for kind, counts in result["delivered"].items():
        table.add_row(f"{kind} sent", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-")
    console.print(table)


@app.command("deliver")
def deliver_cmd(period: str | None = typer.Option(None, help="Only this period")) -> None:
    """Retry whatever is pending: invoices to Stripe, Connect payouts, licensor reports."""
    from billing.tasks import deliver

    print(json.dumps(deliver(period), indent=2))


@app.command("finance-key")
def finance_key(name: str = typer.Option(..., help="Who the key is for")) -> None:
    """Issue a key for the finance pages and exports (shown once)."""
    from billing.reports.auth import issue_finance_key
    from kit.db import session_scope

    with session_scope() as session:
        key = issue_finance_key(session, name=name)
    print(key)
