"""One output file through every visual check: decode, PDQ hash match, NSFW detection."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from moderation.categories import SEXUAL
from moderation.images.decode import Frames, UncheckableMedia, read_image, read_video, sniff
from moderation.images.hashing import HashMatch, HashRegistry, pdq_hashes, to_hex
from moderation.images.nsfw import NudeNetDetector, explicit_score


@dataclass
class MediaFindings:
    """What the checks found in one file; hashes and scores only, never the content."""

    path: str
    kind: str = "unknown"
    sha256: str = ""
    size: int = 0
    width: int = 0
    height: int = 0
    frames_checked: int = 0
    pdq: list[str] = field(default_factory=list)
    pdq_quality: list[int] = field(default_factory=list)
    nsfw: dict[str, float] = field(default_factory=dict)
    sexual_score: float = 0.0
    matches: list[HashMatch] = field(default_factory=list)
    categories: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": Path(self.path).name, "kind": self.kind, "sha256": self.sha256,
            "size": self.size, "width": self.width, "height": self.height,
            "frames_checked": self.frames_checked, "pdq": self.pdq,
            "pdq_quality": self.pdq_quality,
            "nsfw": {k: round(v, 4) for k, v in self.nsfw.items() if v >= 0.05},
            "sexual_score": round(self.sexual_score, 4),
            "matches": [m.__dict__ for m in self.matches],
            "categories": {k: round(v, 4) for k, v in self.categories.items()},
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "error": self.error, "note": self.note,
        }


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, streamed."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def check_frames(
    frames: Frames,
    findings: MediaFindings,
    *,
    registry: HashRegistry,
    detector: NudeNetDetector,
    nsfw_threshold: float,
    max_distance: int,
    min_quality: int,
) -> None:
    """Hash-match and NSFW-score each frame; the worst frame decides."""
    findings.width, findings.height = frames.width, frames.height
    seen: dict[tuple[str, int], HashMatch] = {}
    for rgb in frames.frames:
        started = time.perf_counter()
        hashes, quality = pdq_hashes(rgb)
        findings.pdq.append(to_hex(hashes[0]))
        findings.pdq_quality.append(quality)
        hashed = time.perf_counter()
        # A low-quality hash (flat or featureless frame) matches too much to mean anything.
        if quality >= min_quality and registry.size:
            for match in registry.match(hashes, max_distance):
                key = (match.list_name, match.entry)
                if key not in seen or seen[key].distance > match.distance:
                    seen[key] = match
        matched = time.perf_counter()
        scores = detector.class_scores(rgb)
        detected = time.perf_counter()
        for label, score in scores.items():
            findings.nsfw[label] = max(findings.nsfw.get(label, 0.0), score)
        t = findings.timings_ms
        t["pdq"] = t.get("pdq", 0.0) + (hashed - started) * 1000
        t["hash_match"] = t.get("hash_match", 0.0) + (matched - hashed) * 1000
        t["nsfw"] = t.get("nsfw", 0.0) + (detected - matched) * 1000
        findings.frames_checked += 1
    findings.matches = sorted(seen.values(), key=lambda m: m.distance)
    findings.sexual_score = explicit_score(findings.nsfw)
    for match in findings.matches:
        findings.categories[match.category] = 1.0
    if findings.sexual_score >= nsfw_threshold:
        findings.categories[SEXUAL] = max(findings.categories.get(SEXUAL, 0.0), findings.sexual_score)


def analyze_media(
    path: Path,
    *,
    registry: HashRegistry,
    detector: NudeNetDetector,
    nsfw_threshold: float,
    max_distance: int = 31,
    min_quality: int = 50,
    max_file_bytes: int,
    max_pixels: int,
    video_frames: int,
) -> tuple[MediaFindings, Frames | None]:
    """Run the visual checks on one file. Unreadable files come back with `error` set."""
    findings = MediaFindings(path=str(path))
    started = time.perf_counter()
    try:
        findings.sha256, findings.size = file_digest(path)
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        findings.error = f"file cannot be read: {exc}"
        return findings, None
    findings.kind = sniff(head, path.name)
    if findings.size > max_file_bytes:
        findings.error = f"file of {findings.size} bytes is over the checkable size"
        return findings, None
    if findings.kind not in ("image", "video"):
        return findings, None
    try:
        if findings.kind == "image":
            frames = read_image(path, max_pixels=max_pixels, max_frames=video_frames)
        else:
            frames = read_video(path, samples=video_frames, max_pixels=max_pixels)
    except UncheckableMedia as exc:
        findings.error = str(exc)
        return findings, None
    findings.timings_ms["decode"] = (time.perf_counter() - started) * 1000
    check_frames(frames, findings, registry=registry, detector=detector,
                 nsfw_threshold=nsfw_threshold, max_distance=max_distance, min_quality=min_quality)
    findings.timings_ms["total"] = (time.perf_counter() - started) * 1000
    return findings, frames


_STAND_IN_FORMATS = (".png", ".jpg", ".jpeg", ".webp")


def write_replacement(original: Path, frames: Frames) -> Path:
    """A blurred stand-in for an image, written next to it as `<name>.moderated<ext>`.

    The picture is reduced to a few dozen pixels before it is blurred, so nothing of the
    content can be recovered from the stand-in. It keeps the original's dimensions and,
    for PNG, JPEG and WebP, its format (others get PNG), so it can take the original's
    place under the same name.
    """
    rgb = frames.frames[0]
    h, w = rgb.shape[:2]
    tiny = cv2.resize(rgb, (max(1, w * 16 // max(h, w)), max(1, h * 16 // max(h, w))),
                      interpolation=cv2.INTER_AREA)
    tiny = cv2.GaussianBlur(tiny, (0, 0), 2.0)
    width = min(frames.width, 4096)
    height = max(1, round(frames.height * width / max(1, frames.width)))
    blurred = cv2.resize(tiny, (width, height), interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(blurred, (0, 0), max(width, height) / 64)
    suffix = original.suffix.lower() if original.suffix.lower() in _STAND_IN_FORMATS else ".png"
    target = original.with_name(original.name + ".moderated" + suffix)
    if not cv2.imwrite(str(target), cv2.cvtColor(np.ascontiguousarray(blurred), cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write the blurred stand-in {target}")
    return target
