"""Procedural art: domain-warped value noise coloured by a palette derived from the prompt.

Not a neural network; deterministic for a given prompt and seed.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from engine import Input, Model


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, h, endpoint=False)
    xs = np.linspace(0, cells, w, endpoint=False)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    top = a + (b - a) * fx[None, :]
    bottom = c + (d - c) * fx[None, :]
    return top + (bottom - top) * fy[:, None]


class Predictor(Model):
    def setup(self) -> None:
        self.octaves = (4, 8, 16, 32)

    def predict(
        self,
        prompt: str = Input(description="What to paint; it picks the palette and the pattern"),
        width: int = Input(default=512, ge=64, le=2048, description="Image width in pixels"),
        height: int = Input(default=512, ge=64, le=2048, description="Image height in pixels"),
        steps: int = Input(default=4, ge=1, le=16, description="Refinement passes"),
        seed: int = Input(default=0, ge=0, description="Random seed"),
    ) -> Image.Image:
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        field = np.zeros((height, width))
        for i in range(steps):
            for octave in self.octaves:
                field += _value_noise(rng, height, width, octave) / octave
            self.progress(i + 1, steps)
        warp = _value_noise(rng, height, width, 3) * 6.0
        t = (np.sin(field * 9.0 + warp) + 1) / 2
        palette = np.frombuffer(digest[8:20], dtype=np.uint8).reshape(4, 3).astype(float)
        idx = t * 3
        lo = np.clip(idx.astype(int), 0, 2)
        frac = (idx - lo)[..., None]
        rgb = palette[lo] * (1 - frac) + palette[lo + 1] * frac
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
