"""The offline profanity classifier (alt-profanity-check), compiled for per-prompt speed.

The package ships a TF-IDF vectoriser and a calibrated linear SVM. Calling scikit-learn
for one short text costs milliseconds of overhead, so the model is read once and its
linear weights are applied in plain Python: the same arithmetic, in microseconds.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class CompiledModel:
    """idf and per-fold weights of every vocabulary word, and each fold's calibration."""

    weights: dict[str, tuple[float, tuple[float, ...]]]
    intercepts: tuple[float, ...]
    calibration: tuple[tuple[float, float], ...]
    token_re: re.Pattern[str]

    def probability(self, text: str) -> float:
        """The probability that `text` is offensive, as the package's `predict_prob` gives."""
        counts = Counter(self.token_re.findall(text.lower()))
        folds = len(self.intercepts)
        dots = [0.0] * folds
        norm2 = 0.0
        weights = self.weights
        for token, count in counts.items():
            entry = weights.get(token)
            if entry is None:
                continue
            idf, coefs = entry
            norm2 += (count * idf) ** 2
            for k in range(folds):
                dots[k] += count * coefs[k]
        norm = math.sqrt(norm2) or 1.0
        total = 0.0
        for k in range(folds):
            decision = dots[k] / norm + self.intercepts[k]
            a, b = self.calibration[k]
            z = a * decision + b
            total += 1.0 / (1.0 + math.exp(z)) if z < 700 else 0.0
        return total / folds


@functools.cache
def load() -> CompiledModel:
    """Read the package's model files and compile them (once per process)."""
    from importlib import resources

    import joblib

    base = resources.files("profanity_check") / "data"
    vectorizer = joblib.load(base / "vectorizer.joblib")
    model = joblib.load(base / "model.joblib")
    if vectorizer.ngram_range != (1, 1) or vectorizer.norm != "l2" or vectorizer.sublinear_tf:
        raise RuntimeError("unexpected profanity vectoriser settings; the compiled form needs updating")
    idf = vectorizer.idf_
    calibrated = model.calibrated_classifiers_
    coefs = [c.estimator.coef_.ravel() for c in calibrated]
    intercepts = tuple(float(c.estimator.intercept_[0]) for c in calibrated)
    calibration = tuple((float(c.calibrators[0].a_), float(c.calibrators[0].b_)) for c in calibrated)
    weights: dict[str, tuple[float, tuple[float, ...]]] = {}
    for word, index in vectorizer.vocabulary_.items():
        i = int(index)
        weights[word] = (float(idf[i]), tuple(float(idf[i] * c[i]) for c in coefs))
    return CompiledModel(weights=weights, intercepts=intercepts, calibration=calibration,
                         token_re=re.compile(vectorizer.token_pattern))


def profanity_probability(text: str) -> float:
    """The classifier's probability that `text` is offensive (0..1)."""
    return load().probability(text)
