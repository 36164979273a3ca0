"""Cog compatibility: `from cog import BasePredictor, BaseRunner, Input, Path` inside a sandbox.

A Cog project runs unchanged: when the real `cog` package is not installed in the runtime,
the runner serves this module under the name `cog`. Predictors get the engine's progress and
log emitters too.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

from engine.sdk.model import Input, Model

__all__ = ["BasePredictor", "BaseRunner", "ConcatenateIterator", "File", "Input", "Path", "Secret"]


class BasePredictor(Model):
    """Cog's classic base class: `setup()` and `predict(**inputs)`."""


class BaseRunner(Model):
    """Cog's newer base class: `setup()` and `run(**inputs)`."""

    def predict(self, **inputs: Any) -> Any:
        return self.run(**inputs)  # type: ignore[attr-defined]


class Path(pathlib.PosixPath):
    """A file path; returned from `predict`, the file becomes an output."""


File = Path


class Secret(str):
    """A string input that is never logged."""

    def get_secret_value(self) -> str:
        return str(self)


class ConcatenateIterator(Iterator[str]):
    """Marks a streamed text output whose pieces are joined."""
