"""Policy resolution: platform defaults, account, model (partner and platform) and request.

The rules, in order:
- `csam` is always `block`; no layer can change it.
- The account layer starts from the platform defaults. Only a verified account that opted
  in to adult content has `sexual` loosened (to `flag`: allowed, still tracked).
- Model layers (one set by the partner, one by the platform, e.g. a licence obligation)
  are floors: the stricter of account and model wins, per category.
- Request options (`enable_safety_checker`, `safety_tolerance`) are floors too: they can
  tighten what the account allows, never loosen it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kit.errors import InvalidInput
from moderation.categories import (
    ACTIONS,
    ALLOW,
    BLOCK,
    BLOCKED,
    BLUR,
    CATEGORIES,
    CSAM,
    CUSTOM,
    FLAG,
    FLAGGED,
    HATE,
    PASSED,
    PROFANITY,
    SELF_HARM,
    SEXUAL,
    VIOLENCE,
    action_rank,
    stricter,
)

DEFAULT_ACTIONS: dict[str, str] = {
    CSAM: BLOCK,
    SEXUAL: BLOCK,
    VIOLENCE: FLAG,
    SELF_HARM: BLOCK,
    HATE: BLOCK,
    CUSTOM: BLOCK,
    PROFANITY: FLAG,
}

# safety_tolerance follows the 1 (strictest) .. 6 (most permissive) scale customers know
# from image APIs; each level is a floor, so 4-6 add nothing to the account's own policy.
TOLERANCE_FLOORS: dict[int, dict[str, str]] = {
    1: {SEXUAL: BLOCK, VIOLENCE: BLOCK, HATE: BLOCK, SELF_HARM: BLOCK, PROFANITY: BLOCK},
    2: {SEXUAL: BLOCK, VIOLENCE: BLUR, PROFANITY: FLAG},
    3: {SEXUAL: BLUR},
    4: {}, 5: {}, 6: {},
}
# The strictest tolerance also makes the image detector more sensitive.
TOLERANCE_THRESHOLD_SCALE = {1: 0.7, 2: 0.85}


def validate_actions(actions: Mapping[str, str]) -> dict[str, str]:
    """Check a per-category action map as given by a partner or staff member."""
    out: dict[str, str] = {}
    for category, action in actions.items():
        if category not in CATEGORIES:
            raise InvalidInput(f"unknown moderation category {category!r}",
                               allowed=list(CATEGORIES))
        if action not in ACTIONS:
            raise InvalidInput(f"unknown action {action!r} for {category}", allowed=list(ACTIONS))
        if category == CSAM and action != BLOCK:
            raise InvalidInput("csam is always blocked; no policy can change that")
        out[category] = action
    return out


@dataclass(frozen=True)
class AccountLayer:
    """What trust and safety set for one customer account."""

    verified: bool = False
    nsfw_opt_in: bool = False
    actions: Mapping[str, str] = field(default_factory=dict)
    custom_terms: tuple[str, ...] = ()
    version: int = 0


@dataclass(frozen=True)
class ModelLayer:
    """A floor set on a model by its partner or by the platform."""

    source: str
    actions: Mapping[str, str] = field(default_factory=dict)
    nsfw_threshold: float | None = None
    version: int = 0


@dataclass(frozen=True)
class RequestOptions:
    """The request-level safety options a customer may send with the input."""

    enable_safety_checker: bool | None = None
    safety_tolerance: int | None = None

    @classmethod
    def from_input(cls, data: Mapping[str, Any] | None) -> RequestOptions:
        """Read the options from a request body or input dict; bad values fail closed."""
        data = data or {}
        esc = data.get("enable_safety_checker")
        tol = data.get("safety_tolerance")
        if esc is not None and not isinstance(esc, bool):
            esc = True  # anything unclear keeps the checker on
        tolerance: int | None = None
        if tol is not None:
            try:
                tolerance = int(str(tol))
            except ValueError:
                tolerance = 1
            tolerance = min(max(tolerance, 1), 6)
        return cls(enable_safety_checker=esc, safety_tolerance=tolerance)


@dataclass(frozen=True)
class EffectivePolicy:
    """The actions that apply to one request, after every layer."""

    actions: Mapping[str, str]
    nsfw_threshold: float
    custom_terms: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    layers: str = "default"

    def action(self, category: str) -> str:
        """The action for `category`; unknown categories block."""
        return self.actions.get(category, BLOCK)

    def to_dict(self) -> dict[str, Any]:
        """A JSON form, stored with every record so each decision can be explained."""
        return {
            "actions": dict(sorted(self.actions.items())),
            "nsfw_threshold": round(self.nsfw_threshold, 4),
            "custom_terms_sha256": hashlib.sha256(
                "\n".join(sorted(self.custom_terms)).encode()).hexdigest(),
            "custom_terms_count": len(self.custom_terms),
            "layers": self.layers,
        }

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short, stable id of the effective policy (the record's policy version)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "pol_" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve(
    *,
    account: AccountLayer | None,
    models: list[ModelLayer],
    request: RequestOptions | None,
    base_threshold: float,
) -> EffectivePolicy:
    """Combine every layer into the policy that applies to one request."""
    account = account or AccountLayer()
    request = request or RequestOptions()
    notes: list[str] = []
    actions = dict(DEFAULT_ACTIONS)

    adult_ok = account.verified and account.nsfw_opt_in
    if adult_ok:
        actions[SEXUAL] = FLAG
    elif account.nsfw_opt_in:
        notes.append("adult content opt-in ignored: the account is not verified")
    for category, action in account.actions.items():
        if category == CSAM:
            continue
        if category == SEXUAL and not adult_ok and action_rank(action) < action_rank(BLOCK):
            notes.append("sexual override ignored: adult content needs a verified opt-in")
            continue
        actions[category] = action

    threshold = base_threshold
    for layer in models:
        for category, action in layer.actions.items():
            actions[category] = stricter(actions.get(category), action)
        if layer.nsfw_threshold is not None:
            threshold = min(threshold, layer.nsfw_threshold)

    if request.enable_safety_checker is True:
        actions[SEXUAL] = stricter(actions[SEXUAL], BLUR)
    elif request.enable_safety_checker is False:
        notes.append("enable_safety_checker=false cannot loosen the account's policy")
    if request.safety_tolerance is not None:
        for category, action in TOLERANCE_FLOORS[request.safety_tolerance].items():
            actions[category] = stricter(actions[category], action)
        threshold *= TOLERANCE_THRESHOLD_SCALE.get(request.safety_tolerance, 1.0)

    actions[CSAM] = BLOCK
    layers = ",".join(
        [f"account:v{account.version}"] + [f"{m.source}:v{m.version}" for m in models]
        + ([f"request:esc={request.enable_safety_checker},tol={request.safety_tolerance}"]
           if request.enable_safety_checker is not None or request.safety_tolerance else [])
    )
    return EffectivePolicy(actions=actions, nsfw_threshold=threshold,
                           custom_terms=tuple(account.custom_terms), notes=tuple(notes),
                           layers=layers)


def outcome(policy: EffectivePolicy, categories: Mapping[str, float], *, stage: str) -> tuple[str, list[str], str]:
    """(decision, categories acted on, strictest action) for what a check found."""
    acted: list[str] = []
    strictest = ALLOW
    for category in categories:
        action = policy.action(category)
        if action == ALLOW:
            continue
        if stage == "input" and action == BLUR:
            action = FLAG  # a prompt cannot be blurred; its output will be
        acted.append(category)
        if action_rank(action) > action_rank(strictest):
            strictest = action
    if strictest == BLOCK:
        return BLOCKED, acted, strictest
    if acted:
        return FLAGGED, acted, strictest
    return PASSED, acted, strictest


def reason_text(stage: str, decision: str, categories: Sequence[str]) -> str | None:
    """The customer-facing reason for a decision."""
    if decision == PASSED:
        return None
    what = "input" if stage == "input" else "output"
    cats = ", ".join(categories) or "policy"
    if decision == BLOCKED:
        return f"the {what} violates the content policy ({cats})"
    return f"the {what} was flagged under the content policy ({cats})"
