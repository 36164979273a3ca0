"""Test images drawn in code: textured scenes, flat colours, noise, and a figure the NSFW
detector scores as exposed nudity (abstract blurred ellipses, nothing real)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def scene(seed: int, size: int = 1024) -> np.ndarray:
    """A busy RGB scene of random shapes: high PDQ quality, unique per seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(80):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = rng.integers(0, 3)
        p = rng.integers(0, size, 2)
        if kind == 0:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(size // 40, size // 6)), colour, -1)
        elif kind == 1:
            q = rng.integers(0, size, 2)
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, -1)
        else:
            q = rng.integers(0, size, 2)
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(2, 20)))
    return img


def solid(colour: tuple[int, int, int], size: int = 512) -> np.ndarray:
    """One flat colour."""
    return np.full((size, size, 3), colour, np.uint8)


def noise(seed: int, size: int = 512) -> np.ndarray:
    """Uniform RGB noise."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def nsfw_figure(size: int = 1024) -> np.ndarray:
    """Blurred skin-toned ellipses the detector reads as an exposed chest (score ~0.85)."""
    img = np.full((320, 320, 3), (72, 71, 67), np.uint8)
    cv2.ellipse(img, (160, 222), (130, 170), 0, 0, 360, (255, 163, 98), -1)
    for cx in (101, 219):
        cv2.circle(img, (cx, 182), 46, (240, 151, 87), -1)
        cv2.circle(img, (cx, 193), 11, (69, 1, 5), -1)
    img = cv2.GaussianBlur(img, (13, 13), 0)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)


def save(rgb: np.ndarray, path: Path, fmt: str | None = None, **options: object) -> Path:
    """Write an RGB array with Pillow (format from the suffix unless given)."""
    Image.fromarray(rgb).save(path, format=fmt, **options)
    return path


def jpeg_resized(rgb: np.ndarray, scale: float, quality: int = 75) -> bytes:
    """The image resized by `scale` and re-encoded as JPEG."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
