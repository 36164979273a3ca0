"""Log lines without secrets: URLs lose their user info and query strings, and anything shaped
like one of our keys or a Stripe secret keeps only its prefix.

Customers put tokens in webhook URLs (`https://hooks.example.com/in?token=…`), and httpx logs
every request's full URL at INFO; signed file links carry their signature in the query. The
redaction runs as each record is made, so it holds for every handler a process installs
(Celery's included) and for tracebacks too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

URL = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?:[^\s/?#@\"'<>]*@)?(?P<rest>[^\s?#\"'<>]*)"
                 r"(?P<query>[?#][^\s\"'<>]*)?", re.IGNORECASE)
# A bare path with a query, as access logs print it (`/v1/files/…?expires=…&signature=…`).
PATH_QUERY = re.compile(r"(?<![\w:/.])(?P<path>/[^\s?#\"'<>]*)\?[^\s\"'<>]*")
# Paths that are themselves a credential.
SECRET_PATHS = re.compile(r"(?P<path>/portal/invite/)[^\s/?#\"'<>]+")
# Our key prefixes (kit.keys.new_key), Standard Webhooks secrets, Stripe secret keys.
TOKEN = re.compile(r"\b(?P<kind>mg_live|mgp|mgf|mga|mgs|whsec|sk_live|sk_test|rk_live|rk_test)_[A-Za-z0-9_\-+/=]{6,}")
HIDDEN = "…"


def redact(text: str) -> str:
    """`text` with URL credentials and queries, secret paths and key-shaped tokens cut out."""
    text = URL.sub(lambda m: m["scheme"] + m["rest"] + (m["query"][0] + HIDDEN if m["query"] else ""), text)
    text = PATH_QUERY.sub(lambda m: f"{m['path']}?{HIDDEN}", text)
    text = SECRET_PATHS.sub(lambda m: m["path"] + HIDDEN, text)
    return TOKEN.sub(lambda m: f"{m['kind']}_{HIDDEN}", text)


def _clean(value: Any) -> Any:
    """A log argument, or its redacted text when that differs (numbers stay numbers)."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - an argument that cannot print is logging's to report
        return value
    clean = redact(text)
    return value if clean == text else clean


def _redacting(base: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        # Argument by argument: formatters such as uvicorn's access log unpack record.args.
        if isinstance(record.msg, str):
            record.msg = _clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text, so the traceback is printed as redacted here.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    return make_record


def install() -> None:
    """Redact every log record this process makes from now on (idempotent)."""
    base = logging.getLogRecordFactory()
    if not getattr(base, "redacting", False):
        logging.setLogRecordFactory(_redacting(base))
