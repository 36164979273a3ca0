"""kit: ids, money, settings, problem+json, and the after-commit hooks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from kit.db import after_commit
from kit.errors import Conflict, NotFound
from kit.ids import has_prefix, new_id
from kit.money import format_micros, micros_to_cents, share_bps, to_micros
from kit.settings import Settings
from kit.signing import sign, verify


def test_ids_are_prefixed_unique_and_sortable() -> None:
    ids = [new_id("req") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(has_prefix(i, "req") for i in ids)
    assert ids[0] < ids[-1]
    assert not has_prefix("req_short", "req")


def test_money_in_integer_micros() -> None:
    assert to_micros("0.025") == 25_000
    with pytest.raises(ValueError):
        to_micros("0.0000001")
    assert share_bps(1_000_001, 2_000) == 200_000  # floor: the remainder stays with the payer
    assert share_bps(-999, 5_000) == -499
    assert micros_to_cents(12_345, carried=7_000) == (1, 9_345)
    assert format_micros(-1_500_000) == "-1.500000 USD"


def test_settings_refuse_public_secrets_in_production() -> None:
    with pytest.raises(ValidationError, match="must be set in production"):
        Settings(env="production")
    ok = Settings(env="production", secret_key="s" * 40, master_key="m" * 44, admin_key="a" * 40)
    assert ok.env == "production"


def test_problem_body_follows_rfc9457() -> None:
    body = NotFound("no request req_x").problem("/v1/requests/req_x")
    assert body["status"] == 404 and body["type"].endswith("/not-found")
    assert body["detail"] == "no request req_x" and body["instance"] == "/v1/requests/req_x"
    assert Conflict("x", field="a").problem()["field"] == "a"


def test_signed_tokens_expire_and_bind_the_subject() -> None:
    expires, sig = sign("file_a", 60)
    assert verify("file_a", expires, sig)
    assert not verify("file_b", expires, sig)
    assert not verify("file_a", expires - 120, sig)


def test_after_commit_runs_only_when_the_transaction_lands(db: Session) -> None:
    ran: list[str] = []
    with db.begin_nested():
        after_commit(db, lambda: ran.append("first"))
    db.commit()
    assert ran == ["first"]
    after_commit(db, lambda: ran.append("dropped"))
    db.rollback()
    db.commit()
    assert ran == ["first"]
