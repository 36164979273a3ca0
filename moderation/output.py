"""The output check over a request's files: which to keep, which to replace, which to drop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moderation.categories import BLOCK, BLOCKED, BLUR, CSAM, PASSED, SEXUAL
from moderation.config import get_moderation_settings
from moderation.images.check import MediaFindings, analyze_media, write_replacement
from moderation.images.hashing import get_registry
from moderation.images.nsfw import get_detector
from moderation.policies import EffectivePolicy, outcome
from moderation.verdicts import FileVerdict


@dataclass
class OutputResult:
    """Per-file outcomes plus what the record needs."""

    files: list[FileVerdict] = field(default_factory=list)
    findings: list[MediaFindings] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    nsfw: bool = False
    csam_strength: str | None = None
    csam_rule: str | None = None
    error: str | None = None
    error_reason: str | None = None


def _blocked(path: Path, findings: MediaFindings, reason: str, category: str = "uncheckable") -> FileVerdict:
    return FileVerdict(path=path, decision=BLOCKED, action="drop", categories=[category],
                       sha256=findings.sha256, reason=reason)


def _text_file(path: Path, findings: MediaFindings, policy: EffectivePolicy) -> tuple[dict[str, float], str | None]:
    from moderation.text.check import analyze_text

    settings = get_moderation_settings()
    if findings.size > settings.max_text_chars * 4:
        return {}, "text output is over the checkable size"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"text output cannot be read: {exc}"
    found = analyze_text([text], custom_terms=policy.custom_terms,
                         profanity_threshold=settings.profanity_threshold)
    return dict(found.categories), None


def check_files(paths: list[Path], *, policy: EffectivePolicy, minor_signal: bool) -> OutputResult:
    """Run every output check on `paths` under `policy`; never raises for a checker failure."""
    settings = get_moderation_settings()
    result = OutputResult()
    started = time.perf_counter()
    try:
        registry = get_registry(settings.hash_list_dir, settings.hash_lists)
        detector = get_detector(settings.nsfw_model_path, settings.nsfw_threads)
    except Exception as exc:  # fail closed: without the lists or the detector nothing passes
        result.error = f"{type(exc).__name__}: {exc}"
        result.error_reason = "the output could not be checked, so it was blocked"
        result.checks.append({"name": "setup", "ok": False, "error": result.error})
        for path in paths:
            result.files.append(FileVerdict(path=path, decision=BLOCKED, action="drop",
                                            categories=["check_error"], reason=result.error_reason))
        return result
    result.checks.append({"name": "setup", "ok": True, "hash_entries": registry.size,
                          "hash_lists": [f"{x.name}:{x.count}" for x in registry.lists],
                          "ms": round((time.perf_counter() - started) * 1000, 3)})

    errors: list[str] = []
    for path in paths:
        try:
            findings, frames = analyze_media(
                path, registry=registry, detector=detector, nsfw_threshold=policy.nsfw_threshold,
                max_distance=settings.pdq_max_distance, min_quality=settings.pdq_min_quality,
                max_file_bytes=settings.max_file_bytes, max_pixels=settings.max_image_pixels,
                video_frames=settings.video_sample_frames)
        except Exception as exc:  # fail closed per file
            findings, frames = MediaFindings(path=str(path), error=f"{type(exc).__name__}: {exc}"), None
        result.findings.append(findings)
        result.checks.append({"name": f"file:{path.name}", "ok": findings.error is None,
                              "kind": findings.kind, "timings_ms": findings.timings_ms,
                              **({"error": findings.error} if findings.error else {})})
        if findings.error:
            errors.append(f"{path.name}: {findings.error}")
            result.files.append(_blocked(path, findings, "the output could not be checked"))
            continue
        if findings.kind == "unknown":
            errors.append(f"{path.name}: unknown file type")
            result.files.append(_blocked(path, findings, "unknown output type cannot be checked"))
            continue
        if findings.kind == "audio":
            findings.note = "no visual checks apply to audio"
            result.files.append(FileVerdict(path=path, decision=PASSED, action="keep",
                                            sha256=findings.sha256))
            continue
        if findings.kind == "text":
            categories, problem = _text_file(path, findings, policy)
            if problem:
                errors.append(f"{path.name}: {problem}")
                result.files.append(_blocked(path, findings, problem))
                continue
            findings.categories = categories
        categories = dict(findings.categories)
        if SEXUAL in categories or findings.sexual_score >= policy.nsfw_threshold:
            result.nsfw = True
        if any(m.category == CSAM for m in findings.matches):
            result.csam_strength, result.csam_rule = "strong", "hash list match"
        elif minor_signal and SEXUAL in categories:
            # No image model here estimates age; a prompt that named a minor plus nudity
            # in the result is treated as the worst case.
            categories[CSAM] = categories[SEXUAL]
            result.csam_strength, result.csam_rule = "strong", "minor-indicating prompt with nudity in the output"
        if CSAM in categories:
            categories.pop(SEXUAL, None)
            findings.categories = categories
        for category, score in categories.items():
            result.scores[category] = max(result.scores.get(category, 0.0), score)
        decision, acted, strictest = outcome(policy, categories, stage="output")
        verdict = FileVerdict(path=path, decision=decision, action="keep", categories=acted,
                              sha256=findings.sha256)
        if strictest == BLOCK:
            verdict.action = "drop"
        elif strictest == BLUR:
            if findings.kind == "image" and frames is not None and frames.total_frames == 1:
                verdict.replace_with = write_replacement(path, frames)
                verdict.action = "replace"
            else:  # an animation or a video cannot be blurred here; it is dropped instead
                verdict.decision, verdict.action = BLOCKED, "drop"
        result.files.append(verdict)
    if errors:
        result.error = "; ".join(errors)
        result.error_reason = "the output could not be checked, so it was blocked"
    result.checks.append({"name": "total", "ms": round((time.perf_counter() - started) * 1000, 3)})
    return result
