"""Normalisation that undoes the usual evasions before any term is looked up.

Handled: case, compatibility forms (fullwidth, mathematical and circled letters), accents,
zero-width and other invisible characters, confusable letters from other scripts,
leetspeak, letters spaced or dotted apart ("s e x", "p.o.r.n"), and stretched letters
("seeexy", handled at lookup time by `variants`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Letters of other scripts that render like Latin ones. NFKD does not fold these.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "б": "b", "в": "b", "г": "r", "д": "d", "е": "e", "ё": "e", "ж": "x", "з": "3",
    "и": "u", "й": "u", "к": "k", "л": "n", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p",
    "с": "c", "т": "t", "у": "y", "ф": "f", "х": "x", "ц": "u", "ч": "4", "ш": "w", "щ": "w",
    "ъ": "b", "ы": "bl", "ь": "b", "э": "e", "ю": "io", "я": "r", "є": "e", "і": "i",
    "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y",
    "ҡ": "k", "ғ": "f", "ң": "h", "ҫ": "c", "ә": "e", "ө": "o", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "θ": "o", "ι": "i",
    "κ": "k", "λ": "l", "μ": "u", "ν": "v", "ξ": "e", "ο": "o", "π": "n", "ρ": "p", "σ": "o",
    "ς": "s", "τ": "t", "υ": "u", "φ": "f", "χ": "x", "ψ": "w", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Armenian, Cherokee and Latin look-alikes
    "օ": "o", "ս": "u", "ո": "n", "հ": "h", "ց": "g", "ք": "f", "զ": "q", "ա": "w",
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɩ": "i", "ʀ": "r", "ʏ": "y", "ᴀ": "a", "ʙ": "b", "ᴄ": "c",
    "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m",
    "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ꞯ": "q", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z", "ø": "o", "ð": "d", "þ": "p", "ß": "ss", "æ": "ae", "œ": "oe", "ł": "l",
    "đ": "d", "ħ": "h", "ŧ": "t", "ƒ": "f", "ʃ": "s", "ꭰ": "d", "Ꭺ": "a", "Ᏼ": "b",
    "Ꮯ": "c", "Ꭼ": "e", "Ꮋ": "h", "Ꮶ": "k", "Ꮇ": "m", "Ꮲ": "p", "Ꮪ": "s", "Ꭲ": "t",
    "Ꮃ": "w", "Ꮓ": "z", "×": "x",
}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)

# Leetspeak: applied only inside words that also hold letters, so "18 year old" keeps its
# number while "s3x" and "p0rn" become words.
_LEET_TABLE = str.maketrans({
    "0": "o", "1": "i", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b",
    "9": "g", "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e", "£": "l", "¢": "c",
    "(": "c", "<": "c", "%": "x", "¥": "y", "§": "s",
})
_LEET_CHARS = frozenset("0123456789@$!|+€£¢(<%¥§")

_ANY_LEET = re.compile(r"[0-9@$!|+€£¢(<%¥§]")
# A whitespace-delimited word holding a leet character and a letter somewhere.
_LEET_WORD = re.compile(r"\S*[0-9@$!|+€£¢(<%¥§]\S*")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_HAS_LETTER = re.compile(r"[a-z]")
_REPEAT = re.compile(r"(.)\1")
_REPEAT_ANY = re.compile(r"(.)\1+")
_REPEAT_3 = re.compile(r"(.)\1{2,}")


def fold(text: str) -> str:
    """Case, compatibility forms, accents, invisible characters and confusables folded."""
    text = text.casefold()
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        # Cf: zero-width and bidi controls; Mn/Me: accents and combining overlays;
        # Cc: control characters; Co/Cn/Cs: nothing a real prompt needs.
        text = "".join(
            ch if ch.isascii() else (
                " " if ch.isspace() else
                "" if unicodedata.category(ch) in _DROP else ch)
            for ch in text
        )
        text = text.translate(_CONFUSABLE_TABLE).casefold()
    return text


_DROP = frozenset({"Cf", "Mn", "Me", "Cc", "Co", "Cn", "Cs", "Sk"})


def _deleet_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if not _HAS_LETTER.search(word):
        return word
    # "(s3xy!)": brackets and exclamation marks at the edges are punctuation, not letters.
    core = word.lstrip("(<|").rstrip("!|+(<%.,;:?)")
    start = word.index(core) if core else 0
    return word[:start] + core.translate(_LEET_TABLE) + word[start + len(core):]


def _join_spelled(tokens: list[str], joined: set[str], *, leet: bool) -> list[str]:
    """Merge runs of three or more one-character tokens: "s e x" → "sex".

    A run may hold digits ("s e x y t 3 3 n", "a g e d 1 0"); the leetspeak view decodes
    it once joined. Joined tokens are remembered: the matcher may split them back into words.
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        letters = sum(c.isalpha() for c in run)
        if len(run) >= 3 and letters >= 2:
            word = "".join(run)
            if leet:
                word = word.translate(_LEET_TABLE)
            joined.add(word)
            out.append(word)
        else:
            out.extend(run)
        run.clear()

    for tok in tokens:
        if len(tok) == 1 and tok.isalnum():
            run.append(tok)
            continue
        if run:
            flush()
        if tok:
            out.append(tok)
    if run:
        flush()
    return out


@dataclass(frozen=True)
class Normalized:
    """The views of one text that term lists and the classifier look at."""

    folded: str
    plain: tuple[str, ...]
    leet: tuple[str, ...]
    despaced: str
    joined: frozenset[str]


def normalize(text: str) -> Normalized:
    """Fold a text and split it into the word views used for matching."""
    folded = fold(text)
    joined: set[str] = set()
    plain = _join_spelled(_NON_ALNUM.split(folded), joined, leet=False)
    if _ANY_LEET.search(folded):
        leet_text = _LEET_WORD.sub(_deleet_word, folded)
        leet = _join_spelled(_NON_ALNUM.split(leet_text), joined, leet=True)
    else:
        leet = plain
    return Normalized(folded=folded, plain=tuple(plain), leet=tuple(leet),
                      despaced="".join(t for t in leet if not t.isdigit()),
                      joined=frozenset(joined))


def variants(token: str) -> tuple[str, ...]:
    """The token and its de-stretched forms ("seeexxy" → "sexy", "seexy")."""
    if not _REPEAT.search(token):
        return (token,)
    one = _REPEAT_ANY.sub(r"\1", token)
    two = _REPEAT_3.sub(r"\1\1", token)
    return tuple(dict.fromkeys((token, two, one)))


def squeeze(text: str) -> str:
    """Every run of a repeated character cut to one (for substring scans)."""
    return _REPEAT_ANY.sub(r"\1", text)
