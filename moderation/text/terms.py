"""Curated term lists: loading, and matching on normalised word sequences."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.text.normalize import fold, squeeze, variants

DATA = Path(__file__).with_name("data") / "terms.txt"

# Weight of a weak signal when its line gives none.
DEFAULT_WEIGHTS = {"suggestive": 0.3, "violence_weak": 0.4}
SIGNALS = frozenset({
    "csam", "minor", "sexual", "suggestive", "violence", "violence_weak", "self_harm",
    "hate", "hate_target", "hate_action", "hate_symbol", "benign", "custom",
})

_NUMBER_WORDS = ("newborn one two three four five six seven eight nine ten eleven twelve "
                 "thirteen fourteen fifteen sixteen seventeen").split()[1:]
_SPLIT = re.compile(r"[^0-9a-z]+")
_RUN3 = re.compile(r"(.)\1\1")

STRONG_SIGNALS = frozenset({"csam", "minor", "sexual", "self_harm", "hate", "violence", "custom"})

# Everyday words that may sit between listed words in a run-together token.
COMMON_WORDS = frozenset("""
a an the of in on at to and or with without her his him she he their them they my your our
its it this that these those some any very so too just only also then than but not no all
get getting got being be is are was were been am do does did have has had will would can
girl girls boy boys woman women man men lady ladies guy guys person people female male
wife husband mother father mom dad sister brother friend friends couple family student
photo photos photograph photography picture pictures pic pics image images video videos
selfie selfies art drawing drawings painting sketch cartoon anime comic character scene
show showing make making draw paint create generate render realistic real style closeup
close up down out over under into onto from for by about like as while after before
young old little small big large huge tall short hot cute pretty beautiful ugly fat thin
full fully half totally completely really very new first last best free online
room bedroom bathroom bed bath beach pool park school class street car house home office
party night day morning evening shop shopping mall store city town village forest
red blue black white green pink yellow dark light
""".split())

# Real words that a split would misread ("nine|teen", "can|teen"); never split.
KEEP_WORDS = frozenset("""
thirteen fourteen fifteen sixteen seventeen eighteen nineteen canteen canteens velveteen
sateen umpteen umpteenth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth
nineteenth kidney kidneys kidnap kidnapped kidnapping skidding sidekick sidekicks
""".split())


@dataclass(frozen=True)
class Term:
    """One list entry."""

    signal: str
    phrase: str
    weight: float = 1.0


@dataclass(frozen=True)
class Hit:
    """A term found at a word position of one view."""

    term: Term
    start: int
    end: int


def phrase_words(phrase: str) -> tuple[str, ...]:
    """A phrase normalised exactly as input text is (without leetspeak decoding)."""
    return tuple(w for w in _SPLIT.split(fold(phrase)) if w)


class TermIndex:
    """Phrases keyed by their normalised words, plus a substring scan for marked terms."""

    def __init__(self, terms: Iterable[Term], substring_terms: Iterable[Term] = ()) -> None:
        self.phrases: dict[tuple[str, ...], list[Term]] = {}
        self.benign: set[tuple[str, ...]] = set()
        self.max_words = 1
        self.max_benign = 0
        for term in terms:
            words = phrase_words(term.phrase)
            if not words:
                continue
            if term.signal == "benign":
                self.benign.add(words)
                self.max_benign = max(self.max_benign, len(words))
                continue
            self.phrases.setdefault(words, []).append(term)
            self.max_words = max(self.max_words, len(words))
        self.words = frozenset(w for key in self.phrases for w in key) | frozenset(
            w for key in self.benign for w in key)
        # Only positions that start a longer phrase need the longer lookups.
        self._multi_first = frozenset(key[0] for key in self.phrases if len(key) > 1)
        self._benign_first = frozenset(key[0] for key in self.benign)
        self._segment_vocab = self.words | COMMON_WORDS
        self._segment_max = max((len(w) for w in self._segment_vocab), default=1)
        self._segment_cache: dict[tuple[str, bool], list[str] | None] = {}
        self._token_cache: dict[str, tuple[str, ...]] = {}
        # Stretched words ("disguuusting") looked up by their squeezed form.
        self._squeezed = {squeeze(w): w for w in sorted(self.words, key=len)}
        self._substrings: dict[str, Term] = {}
        for term in substring_terms:
            key = "".join(phrase_words(term.phrase))
            if key:
                self._substrings[key] = term
        self._substring_re = (
            re.compile("|".join(re.escape(k) for k in sorted(self._substrings, key=len, reverse=True)))
            if self._substrings else None)

    def segment(self, token: str, *, gaps: bool) -> list[str] | None:
        """Split a run-together token into known words ("sexyteen" → sexy, teen).

        With `gaps`, characters no known word covers may remain (as tokens of their own);
        without, the words must cover the token exactly. None when no split helps.
        """
        n = len(token)
        if n > 200:
            return None
        vocab, longest = self._segment_vocab, self._segment_max
        inf = float("inf")
        # cost[i]: cheapest cover of token[:i]; an unknown character costs 1, a word little,
        # so the split with the fewest uncovered characters, then the fewest words, wins.
        cost = [0.0] + [inf] * n
        back = [0] * (n + 1)
        for end in range(1, n + 1):
            if gaps and cost[end - 1] + 1.0 < cost[end]:
                cost[end], back[end] = cost[end - 1] + 1.0, -(end - 1) - 1
            for start in range(max(0, end - longest), end):
                c = cost[start] + 0.001
                if c < cost[end] and token[start:end] in vocab:
                    cost[end], back[end] = c, start
        if cost[n] == inf:
            return None
        parts: list[str] = []
        end = n
        while end:
            start = back[end]
            if start < 0:  # one uncovered character, merged with its uncovered neighbours
                start = -start - 1
                if parts and parts[-1].startswith("\x00"):
                    parts[-1] = "\x00" + token[start:end] + parts[-1][1:]
                else:
                    parts.append("\x00" + token[start:end])
            else:
                parts.append(token[start:end])
            end = start
        words = [p[1:] if p.startswith("\x00") else p for p in reversed(parts)]
        return words if len(words) >= 2 else None

    def _reveals(self, parts: Sequence[str], *, any_signal: bool) -> bool:
        """Whether the split words hold a listed phrase (one that counts alone, unless
        `any_signal`)."""
        phrases = self.phrases
        for i in range(len(parts)):
            for k in range(1, min(self.max_words, len(parts) - i) + 1):
                for term in phrases.get(tuple(parts[i:i + k]), ()):
                    if term.signal in STRONG_SIGNALS or (any_signal and term.signal != "benign"):
                        return True
        return False

    def _segment_cached(self, token: str, gaps: bool) -> list[str] | None:
        """A split kept only when it reveals a term that counts on its own ("nakedkid");
        so "assassin" stays one word."""
        cache = self._segment_cache
        key = (token, gaps)
        if key in cache:
            return cache[key]
        parts = self.segment(token, gaps=gaps)
        # Letters spelled apart are an evasion already, so any listed phrase counts there.
        if parts and not self._reveals(parts, any_signal=gaps):
            parts = None
        if len(cache) > 50_000:
            cache.clear()
        cache[key] = parts
        return parts

    def _rewrite(self, tok: str) -> tuple[str, ...]:
        """What an unlisted token stands for: its split into words, the word it stretches,
        or itself."""
        if 7 <= len(tok) <= 60 and tok.isalpha() and tok not in KEEP_WORDS:
            parts = self._segment_cached(tok, False)
            if parts:
                return tuple(parts)
        if _RUN3.search(tok):
            return (self._squeezed.get(squeeze(tok), tok),)
        for v in variants(tok)[1:]:
            if v in self.words:
                return (v,)
        return (tok,)

    def _canonical(self, tokens: Sequence[str], joined: frozenset[str]) -> list[str]:
        """Stretched tokens replaced by the word they stretch; joined runs split into words."""
        out: list[str] = []
        words, cache = self.words, self._token_cache
        for tok in tokens:
            if tok in words:
                out.append(tok)
                continue
            if tok in joined:
                parts = self._segment_cached(tok, True)
                if parts:
                    out.extend(parts)
                    continue
            rewritten = cache.get(tok)
            if rewritten is None:
                rewritten = self._rewrite(tok)
                if len(cache) > 100_000:
                    cache.clear()
                cache[tok] = rewritten
            out.extend(rewritten)
        return out

    def match(self, tokens: Sequence[str], joined: frozenset[str] = frozenset()) -> list[Hit]:
        """Every listed phrase in `tokens` that no benign phrase covers."""
        toks = self._canonical(tokens, joined)
        n = len(toks)
        covered = bytearray(n)
        benign_first = self._benign_first
        for i in range(n):
            if toks[i] in benign_first:
                for k in range(min(self.max_benign, n - i), 0, -1):
                    if tuple(toks[i:i + k]) in self.benign:
                        covered[i:i + k] = b"\x01" * k
                        break
        hits: list[Hit] = []
        phrases, multi_first, max_words = self.phrases, self._multi_first, self.max_words
        for i in range(n):
            tok = toks[i]
            found = phrases.get((tok,))
            if found and not covered[i]:
                hits.extend(Hit(t, i, i + 1) for t in found)
            if tok in multi_first:
                for k in range(2, min(max_words, n - i) + 1):
                    found = phrases.get(tuple(toks[i:i + k]))
                    if found and not any(covered[i:i + k]):
                        hits.extend(Hit(t, i, i + k) for t in found)
        return hits

    def scan(self, despaced: str) -> list[Term]:
        """Marked terms found inside text whose spaces were removed."""
        if self._substring_re is None:
            return []
        found = {m.group(0) for m in self._substring_re.finditer(despaced)}
        squeezed = squeeze(despaced)
        if squeezed != despaced:
            found |= {m.group(0) for m in self._substring_re.finditer(squeezed)}
        return [self._substrings[k] for k in found]


def parse_terms(lines: Iterable[str], *, source: str = "terms") -> tuple[list[Term], list[Term]]:
    """Parse `SIGNAL[:WEIGHT]<TAB>PHRASE` lines into phrase terms and substring terms."""
    terms: list[Term] = []
    substrings: list[Term] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, phrase = line.partition("\t")
        if not sep:
            raise ValueError(f"{source}:{lineno}: expected SIGNAL<TAB>PHRASE")
        signal, _, weight = head.partition(":")
        if signal not in SIGNALS:
            raise ValueError(f"{source}:{lineno}: unknown signal {signal!r}")
        w = float(weight) if weight else DEFAULT_WEIGHTS.get(signal, 1.0)
        if phrase.startswith("*"):
            phrase = phrase[1:]
            substrings.append(Term(signal, phrase, w))
        terms.append(Term(signal, phrase, w))
    return terms, substrings


@functools.cache
def builtin_index() -> TermIndex:
    """The curated lists shipped with the package, plus spelled-out minor ages."""
    terms, substrings = parse_terms(DATA.read_text(encoding="utf-8").splitlines(),
                                    source=DATA.name)
    for word in _NUMBER_WORDS:
        for suffix in ("year old", "years old", "yr old", "yo", "year old girl", "year old boy"):
            terms.append(Term("minor", f"{word} {suffix}"))
    return TermIndex(terms, substrings)


@functools.lru_cache(maxsize=512)
def custom_index(phrases: tuple[str, ...]) -> TermIndex:
    """An index of an account's custom terms (a leading `*` also scans inside words)."""
    terms = [Term("custom", p.lstrip("*")) for p in phrases if p.strip("* ")]
    subs = [Term("custom", p[1:]) for p in phrases if p.startswith("*") and p[1:].strip()]
    return TermIndex(terms, subs)
