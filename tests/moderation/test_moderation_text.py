"""Prompt checks: the labelled corpus (precision and recall per category), evasions, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderation.text.check import analyze_text
from moderation.text.classifier import load, profanity_probability
from moderation.text.normalize import normalize
from moderation.text.terms import builtin_index, parse_terms

DATA = Path(__file__).parent / "data"
CATEGORIES = ("csam", "sexual", "violence", "self_harm", "hate")
# Floors per category; csam recall is absolute.
MIN_RECALL = {"csam": 1.0, "sexual": 0.95, "violence": 0.95, "self_harm": 0.95, "hate": 0.95}
MIN_PRECISION = {"csam": 0.97, "sexual": 0.95, "violence": 0.95, "self_harm": 0.95, "hate": 0.95}


def load_corpus(names: tuple[str, ...] = ("prompts.tsv", "prompts_evasions.tsv")) -> list[tuple[set[str], str, str]]:
    rows = []
    for name in names:
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            if not line or line.startswith("#"):
                continue
            labels, kind, prompt = line.split("\t")
            rows.append((set() if labels == "none" else set(labels.split(",")), kind, prompt))
    return rows


def evaluate(rows: list[tuple[set[str], str, str]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in CATEGORIES}
    misses = []
    for labels, kind, prompt in rows:
        predicted = set(analyze_text([prompt]).categories) & set(CATEGORIES)
        for c in CATEGORIES:
            if c in predicted and c in labels:
                counts[c]["tp"] += 1
            elif c in predicted:
                counts[c]["fp"] += 1
                misses.append(f"FP {c} [{kind}] {prompt!r}")
            elif c in labels:
                counts[c]["fn"] += 1
                misses.append(f"FN {c} [{kind}] {prompt!r}")
    metrics = {}
    for c, n in counts.items():
        metrics[c] = {
            "precision": n["tp"] / max(1, n["tp"] + n["fp"]),
            "recall": n["tp"] / max(1, n["tp"] + n["fn"]),
            "support": n["tp"] + n["fn"], **n,
        }
    return metrics, misses


def test_corpus_precision_and_recall_per_category() -> None:
    rows = load_corpus()
    assert len(rows) >= 300
    assert {k for _, k, _ in rows} >= {"plain", "hard", "long", "spaced", "homoglyphs", "zero_width",
                                       "leetspeak", "mixed_scripts", "fullwidth", "run_together"}
    metrics, misses = evaluate(rows)
    print(f"\n{len(rows)} prompts ({sum(1 for r in rows if not r[0])} innocent)")
    print(f"{'category':<10} {'support':>7} {'precision':>9} {'recall':>7}")
    for c, m in metrics.items():
        print(f"{c:<10} {m['support']:>7} {m['precision']:>9.3f} {m['recall']:>7.3f}")
    for line in misses:
        print(line)
    for c, m in metrics.items():
        assert m["recall"] >= MIN_RECALL[c], (c, m)
        assert m["precision"] >= MIN_PRECISION[c], (c, m)
    assert metrics["csam"]["recall"] == 1.0


def test_held_out_prompts() -> None:
    """Prompts written after the lists were frozen: a less flattering, more honest estimate."""
    rows = load_corpus(("prompts_holdout.tsv",))
    metrics, misses = evaluate(rows)
    print(f"\nheld out: {len(rows)} prompts")
    for c, m in metrics.items():
        print(f"{c:<10} {m['support']:>7} {m['precision']:>9.3f} {m['recall']:>7.3f}")
    for line in misses:
        print(line)
    assert metrics["csam"]["recall"] == 1.0
    for m in metrics.values():
        assert m["recall"] >= 0.9 and m["precision"] >= 0.9


def test_innocent_prompts_pass_clean() -> None:
    innocent = [p for labels, _, p in load_corpus() if not labels]
    flagged = [p for p in innocent if set(analyze_text([p]).categories) & set(CATEGORIES)]
    assert flagged == []


@pytest.mark.parametrize("text, expected", [
    ("ＮＵＤＥ", "nude"),
    ("n\u200bu\u200dd\ufeffe", "nude"),
    ("ѕех", "sex"),                      # Cyrillic
    ("𝐧𝐚𝐤𝐞𝐝", "naked"),                  # mathematical bold
    ("ⓝⓤⓓⓔ", "nude"),                    # circled
    ("n̶u̶d̶e̶", "nude"),                    # combining strike-through
    ("nüdé", "nude"),
    ("NuDe", "nude"),
])
def test_fold_undoes_evasions(text: str, expected: str) -> None:
    assert expected in normalize(text).leet


@pytest.mark.parametrize("text, expected", [
    ("s e x", ("sex",)),
    ("p.o.r.n", ("porn",)),
    ("p0rn", ("porn",)),
    ("$ex", ("sex",)),
    ("(s3xy!)", ("sexy",)),
])
def test_spacing_and_leetspeak(text: str, expected: tuple[str, ...]) -> None:
    assert normalize(text).leet == expected


def test_numbers_keep_their_meaning() -> None:
    norm = normalize("a 12 year old in 8k")
    assert "12" in norm.leet and "12" in norm.plain
    assert analyze_text(["a 12 year old girl naked"]).categories.keys() == {"csam"}
    assert analyze_text(["a 12yo, nude"]).categories.keys() == {"csam"}
    assert "csam" not in analyze_text(["an 18 year old woman, nude"]).categories
    assert "csam" not in analyze_text(["three years ago, nude beach"]).categories


def test_combination_rules() -> None:
    assert "csam" not in analyze_text(["a child on a swing"]).categories
    assert analyze_text(["a child on a swing"]).minor
    assert analyze_text(["a child, nude"]).csam_strength == "strong"
    assert analyze_text(["a sexy teen"]).csam_strength == "suspected"
    # csam replaces sexual; it never shows as both
    assert set(analyze_text(["nude teen"]).categories) == {"csam"}
    # one weak violence word is not violence, several are
    assert "violence" not in analyze_text(["a knight with a sword and a knife"]).categories
    assert "violence" in analyze_text(["a bloody corpse with wounds, brutal"]).categories
    # a group word alone is not hate; with a hostile action near it, it is
    assert "hate" not in analyze_text(["muslims praying in a mosque"]).categories
    assert "hate" in analyze_text(["exterminate the muslims"]).categories


def test_negative_prompts_and_nested_inputs_are_checked_together() -> None:
    found = analyze_text(["a portrait of a girl, 10 years old", "negative: clothes, dressed"])
    assert found.minor
    assert "csam" not in found.categories  # "clothes" is not sexual
    assert "csam" in analyze_text(["a portrait of a kid", "nude"]).categories


def test_custom_terms() -> None:
    assert analyze_text(["a mickey mouse poster"], custom_terms=("mickey mouse",)).categories == {"custom": 1.0}
    assert analyze_text(["M1CK3Y  M0USE"], custom_terms=("mickey mouse",)).categories == {"custom": 1.0}
    assert analyze_text(["a mouse"], custom_terms=("mickey mouse",)).categories == {}
    assert analyze_text(["xxsecretprojectxx"], custom_terms=("*secretproject",)).categories == {"custom": 1.0}


def test_compiled_classifier_matches_the_package() -> None:
    from profanity_check import predict_prob

    texts = ["a photo of a cat", "you are a fucking idiot", "beautiful sunset", "shit happens",
             "kill all the stupid bastards", "", "日本語のテキスト"]
    expected = predict_prob(texts)
    for text, want in zip(texts, expected, strict=True):
        assert profanity_probability(text) == pytest.approx(float(want), abs=1e-9)
    assert load() is load()


def test_term_file_parses_and_rejects_bad_lines() -> None:
    assert len(builtin_index().phrases) > 500
    with pytest.raises(ValueError, match="unknown signal"):
        parse_terms(["nonsense\tword"])
    with pytest.raises(ValueError, match="SIGNAL<TAB>PHRASE"):
        parse_terms(["sexual word"])


def test_very_long_input_is_linear_and_still_caught() -> None:
    filler = "a beautiful landscape with mountains and rivers, " * 2000  # ~100k characters
    started = time.perf_counter()
    found = analyze_text([filler + " and a nude child hidden at the end"])
    assert time.perf_counter() - started < 2.0
    assert "csam" in found.categories


def test_adversarial_unicode_does_not_crash() -> None:
    nasty = ["\u202enude\u202c", "\ud800", "\x00\x01\x02", "🍆" * 500, "\u0301" * 1000,
             "a" * 100_000, "s " * 20_000, "".join(chr(c) for c in range(0x0, 0x3000, 7))]
    for text in nasty:
        analyze_text([text])
    assert "sexual" in analyze_text(["\u202enude\u202c"]).categories


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=300), max_size=4))
def test_any_text_is_analysed_without_error(texts: list[str]) -> None:
    found = analyze_text(texts)
    assert all(0.0 <= v <= 1.0 for v in found.categories.values())
