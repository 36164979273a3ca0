"""The prompt check: term lists with combination rules, then the classifier as a second signal.

Combination rules (weights come from the term lists):
- csam: a direct term; or a minor indicator with any explicit sexual term ("strong");
  or a minor indicator with suggestive weight >= 0.5 ("suspected"). csam replaces sexual.
- sexual: an explicit term; or suggestive weight >= 1.2 (the classifier adds 0.4).
- violence: a graphic term; or weak weight >= 1.0.
- self_harm: a listed phrase.
- hate: a slur or listed phrase; a group term within 4 words of a hostile action; or a hate
  symbol with a group, an action, or a confident classifier.
- custom: any of the account's own terms.
- profanity: the classifier alone, when nothing else explains it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from moderation.categories import CSAM, CUSTOM, HATE, PROFANITY, SELF_HARM, SEXUAL, VIOLENCE
from moderation.text.classifier import profanity_probability
from moderation.text.normalize import normalize
from moderation.text.terms import Hit, Term, builtin_index, custom_index

SEXUAL_SUGGESTIVE_SUM = 1.2
CSAM_SUGGESTIVE_SUM = 0.5
VIOLENCE_WEAK_SUM = 1.0
CLASSIFIER_BONUS = 0.4
HATE_WINDOW = 4

# Written ages under 18 ("12yo", "12 year old", "aged 12"); "3 years ago" is not an age.
_AGE_NUMBER = re.compile(
    r"(?<!\d)(\d{1,2})(?!\d)\s*-?\s*"
    r"(?:(?:years?|yrs?|yr)\s*-?\s*olds?\b|(?:yo|y/o|y\.o\.?)(?![a-z]))")
_AGE_WORD = re.compile(r"\bage[ds]?\s*:?\s*(\d{1,2})(?!\d)")
_DIGIT = re.compile(r"\d")


@dataclass
class TextFindings:
    """What the prompt check found: category scores and the evidence for each."""

    categories: dict[str, float] = field(default_factory=dict)
    matches: dict[str, list[str]] = field(default_factory=dict)
    minor: bool = False
    csam_strength: str | None = None  # "strong" or "suspected"
    profanity: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "categories": {k: round(v, 3) for k, v in self.categories.items()},
            "matches": self.matches,
            "minor": self.minor,
            "csam_strength": self.csam_strength,
            "profanity": round(self.profanity, 4),
        }


def _minor_ages(folded: str) -> list[str]:
    if not _DIGIT.search(folded):
        return []
    matches = list(_AGE_NUMBER.finditer(folded))
    if "age" in folded:
        matches += _AGE_WORD.finditer(folded)
    return [m.group(0).strip() for m in matches if int(m.group(1)) < 18]


def _near(a: Sequence[Hit], b: Sequence[Hit], window: int) -> bool:
    return any(abs(x.start - y.start) <= window or abs(x.end - y.end) <= window
               for x in a for y in b)


def analyze_text(texts: Iterable[str], *, custom_terms: Sequence[str] = (),
                 profanity_threshold: float = 0.85) -> TextFindings:
    """Run every text check over the given texts (prompt, negative prompt, other strings)."""
    index = builtin_index()
    extra = custom_index(tuple(custom_terms)) if custom_terms else None
    terms: dict[Term, None] = {}
    hate_hits: list[tuple[list[Hit], list[Hit], list[Hit]]] = []
    ages: list[str] = []
    profanity = 0.0
    for text in texts:
        if not text or not text.strip():
            continue
        norm = normalize(text)
        ages += _minor_ages(norm.folded)
        if norm.leet is not norm.plain:
            ages += _minor_ages(" ".join(norm.leet))
        if norm.joined:
            ages += _minor_ages(" ".join(norm.plain))
        views = [norm.plain] if norm.plain == norm.leet else [norm.plain, norm.leet]
        for view in views:
            hits = index.match(view, norm.joined)
            if extra is not None:
                hits += extra.match(view, norm.joined)
            for h in hits:
                terms[h.term] = None
            hate_hits.append((
                [h for h in hits if h.term.signal == "hate_target"],
                [h for h in hits if h.term.signal == "hate_action"],
                [h for h in hits if h.term.signal == "hate_symbol"],
            ))
        for term in index.scan(norm.despaced):
            terms[term] = None
        if extra is not None:
            for term in extra.scan(norm.despaced):
                terms[term] = None
        profanity = max(profanity, profanity_probability(" ".join(norm.leet)))

    by_signal: dict[str, list[Term]] = {}
    for term in terms:
        by_signal.setdefault(term.signal, []).append(term)

    def weight(signal: str) -> float:
        return sum(t.weight for t in by_signal.get(signal, ()))

    findings = TextFindings(profanity=profanity)
    findings.matches = {s: sorted({t.phrase for t in ts}) for s, ts in by_signal.items()}
    if ages:
        findings.matches.setdefault("minor", []).extend(sorted(set(ages)))
    confident = profanity >= profanity_threshold
    minor = bool(by_signal.get("minor")) or bool(ages)
    findings.minor = minor
    explicit = bool(by_signal.get("sexual"))
    suggestive = weight("suggestive") + (CLASSIFIER_BONUS if confident and by_signal.get("suggestive") else 0.0)

    cats = findings.categories
    if by_signal.get("csam") or (minor and explicit):
        cats[CSAM] = 1.0
        findings.csam_strength = "strong"
    elif minor and suggestive >= CSAM_SUGGESTIVE_SUM:
        cats[CSAM] = min(1.0, 0.5 + suggestive / 2)
        findings.csam_strength = "suspected"
    elif explicit or suggestive >= SEXUAL_SUGGESTIVE_SUM:
        cats[SEXUAL] = 1.0 if explicit else min(1.0, suggestive / 2)

    violence = weight("violence_weak")
    if by_signal.get("violence") or violence >= VIOLENCE_WEAK_SUM:
        cats[VIOLENCE] = 1.0 if by_signal.get("violence") else min(1.0, violence)
    if by_signal.get("self_harm"):
        cats[SELF_HARM] = 1.0

    hate = bool(by_signal.get("hate"))
    for targets, actions, symbols in hate_hits:
        if hate:
            break
        if targets and actions and _near(targets, actions, HATE_WINDOW):
            hate = True
        elif symbols and (targets or actions or confident):
            hate = True
    if hate:
        cats[HATE] = 1.0
    if by_signal.get("custom"):
        cats[CUSTOM] = 1.0
    if confident and not cats:
        cats[PROFANITY] = profanity
    return findings
