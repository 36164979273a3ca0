"""The moderation categories and the actions a policy can take on each."""

from __future__ import annotations

CSAM = "csam"
SEXUAL = "sexual"
VIOLENCE = "violence"
SELF_HARM = "self_harm"
HATE = "hate"
CUSTOM = "custom"
PROFANITY = "profanity"

CATEGORIES: tuple[str, ...] = (CSAM, SEXUAL, VIOLENCE, SELF_HARM, HATE, CUSTOM, PROFANITY)

# Ordered from loosest to strictest; "the stricter wins" is `max` over this order.
ALLOW, FLAG, BLUR, BLOCK = "allow", "flag", "blur", "block"
ACTIONS: tuple[str, ...] = (ALLOW, FLAG, BLUR, BLOCK)
_RANK = {a: i for i, a in enumerate(ACTIONS)}


def action_rank(action: str) -> int:
    """Strictness of an action; unknown actions count as the strictest (fail closed)."""
    return _RANK.get(action, _RANK[BLOCK])


def stricter(*actions: str | None) -> str:
    """The strictest of the given actions (None means no constraint)."""
    present = [a for a in actions if a is not None]
    if not present:
        return ALLOW
    return max(present, key=action_rank)


# Decisions a check returns.
PASSED, FLAGGED, BLOCKED = "passed", "flagged", "blocked"
