"""Policy layers: csam fixed, adult content only for verified opt-ins, floors only tighten."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from kit.errors import InvalidInput
from moderation import repository as repo
from moderation.categories import BLOCK, BLUR, FLAG
from moderation.policies import (
    AccountLayer,
    ModelLayer,
    RequestOptions,
    outcome,
    resolve,
    validate_actions,
)
from moderation.policy_service import effective_policy, set_account_policy, set_model_policy


def policy(account=None, models=(), request=None):
    return resolve(account=account, models=list(models), request=request, base_threshold=0.6)


def test_defaults() -> None:
    p = policy()
    assert p.action("csam") == BLOCK and p.action("sexual") == BLOCK
    assert p.action("violence") == FLAG and p.action("hate") == BLOCK
    assert p.action("something new") == BLOCK  # unknown categories fail closed


def test_adult_content_needs_verification_and_opt_in() -> None:
    assert policy(AccountLayer(verified=True, nsfw_opt_in=True)).action("sexual") == FLAG
    unverified = policy(AccountLayer(verified=False, nsfw_opt_in=True))
    assert unverified.action("sexual") == BLOCK
    assert any("not verified" in n for n in unverified.notes)
    sneaky = policy(AccountLayer(actions={"sexual": "allow"}))
    assert sneaky.action("sexual") == BLOCK


def test_nobody_can_loosen_csam() -> None:
    with pytest.raises(InvalidInput, match="csam"):
        validate_actions({"csam": "flag"})
    p = policy(AccountLayer(verified=True, nsfw_opt_in=True, actions={"csam": "allow"}),
               [ModelLayer("partner", {"csam": "allow"})], RequestOptions(False, 6))
    assert p.action("csam") == BLOCK


def test_model_layers_are_floors_and_the_stricter_wins() -> None:
    adult = AccountLayer(verified=True, nsfw_opt_in=True)
    licence = ModelLayer("platform", {"sexual": BLOCK}, nsfw_threshold=0.4)
    partner = ModelLayer("partner", {"sexual": "allow", "violence": BLUR})
    p = policy(adult, [partner, licence])
    assert p.action("sexual") == BLOCK
    assert p.action("violence") == BLUR
    assert p.nsfw_threshold == 0.4
    assert policy(AccountLayer(), [ModelLayer("partner", {"sexual": "allow"})]).action("sexual") == BLOCK


def test_request_options_only_tighten() -> None:
    adult = AccountLayer(verified=True, nsfw_opt_in=True)
    assert policy(adult, request=RequestOptions(enable_safety_checker=True)).action("sexual") == BLUR
    loosened = policy(AccountLayer(), request=RequestOptions(enable_safety_checker=False))
    assert loosened.action("sexual") == BLOCK
    assert any("cannot loosen" in n for n in loosened.notes)
    strict = policy(adult, request=RequestOptions(safety_tolerance=1))
    assert strict.action("violence") == BLOCK and strict.action("sexual") == BLOCK
    assert strict.nsfw_threshold == pytest.approx(0.42)
    assert policy(adult, request=RequestOptions(safety_tolerance=6)).action("sexual") == FLAG


def test_request_options_are_parsed_defensively() -> None:
    assert RequestOptions.from_input({"enable_safety_checker": "no"}).enable_safety_checker is True
    assert RequestOptions.from_input({"safety_tolerance": "99"}).safety_tolerance == 6
    assert RequestOptions.from_input({"safety_tolerance": "lots"}).safety_tolerance == 1
    assert RequestOptions.from_input(None) == RequestOptions()


def test_fingerprint_changes_with_the_policy() -> None:
    a, b = policy(), policy(AccountLayer(verified=True, nsfw_opt_in=True))
    assert a.fingerprint == policy().fingerprint
    assert a.fingerprint != b.fingerprint


def test_outcome_per_stage() -> None:
    p = policy(AccountLayer(verified=True, nsfw_opt_in=True), request=RequestOptions(True))
    assert outcome(p, {"sexual": 1.0}, stage="input")[0] == "flagged"
    assert outcome(p, {"sexual": 1.0}, stage="output")[2] == BLUR
    assert outcome(p, {"hate": 1.0}, stage="input")[0] == "blocked"
    assert outcome(p, {}, stage="input") == ("passed", [], "allow")


def test_stored_layers_and_their_history(db: Session) -> None:
    with pytest.raises(InvalidInput, match="verified"):
        set_account_policy(db, account_id="acc_pol1", changed_by="stf_1", nsfw_opt_in=True)
    set_account_policy(db, account_id="acc_pol1", changed_by="stf_1", verified=True)
    row = set_account_policy(db, account_id="acc_pol1", changed_by="stf_1", nsfw_opt_in=True,
                             custom_terms=["Brand X", "brand x", " "])
    assert row.version == 2 and row.custom_terms == ["Brand X", "brand x"]
    set_model_policy(db, model_id="mdl_pol1", source="platform", changed_by="stf_1",
                     actions={"sexual": "block"})
    p = effective_policy(db, account_id="acc_pol1", model_id="mdl_pol1")
    assert p.action("sexual") == BLOCK  # the licence floor beats the opt-in
    assert effective_policy(db, account_id="acc_pol1", model_id="mdl_other").action("sexual") == FLAG
    history = repo.policy_history(db, row.id)
    assert [h.version for h in history] == [1, 2]
    assert history[0].snapshot["nsfw_opt_in"] is False and history[1].snapshot["nsfw_opt_in"] is True
    # un-verifying withdraws the opt-in
    assert set_account_policy(db, account_id="acc_pol1", changed_by="stf_1", verified=False).nsfw_opt_in is False
    with pytest.raises(InvalidInput):
        set_model_policy(db, model_id="mdl_pol1", source="customer", changed_by="x")
