"""The model contract: `setup()` once per replica, `predict(**inputs)` per request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

Emit = Callable[[dict[str, Any]], None]


class Input:
    """Declares an input's default and constraints in a `predict` signature (Cog-style).

    The gateway reads these statically to build the inputs schema and validates every
    request against it; the runner passes validated values, with defaults filled in.
    """

    def __init__(
        self,
        default: Any = ...,
        *,
        description: str | None = None,
        ge: float | None = None,
        le: float | None = None,
        gt: float | None = None,
        lt: float | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        choices: list[Any] | None = None,
        regex: str | None = None,
    ) -> None:
        self.default = default
        self.description = description
        self.constraints = {
            "ge": ge, "le": le, "gt": gt, "lt": lt, "min_length": min_length,
            "max_length": max_length, "choices": choices, "regex": regex,
        }


@dataclass(frozen=True)
class RequestContext:
    """Where one running request's progress and logs go, and its cancel flag."""

    emit: Emit
    cancel: threading.Event


# Per request, not per model: a replica may run several requests at once, each in its thread.
_current: ContextVar[RequestContext | None] = ContextVar("mediagate_request", default=None)


def bind_request(context: RequestContext) -> Token[RequestContext | None]:
    """Make `context` the running request's for this thread (the runner calls this)."""
    return _current.set(context)


def unbind_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


class Model:
    """Base class of a partner's model. Override `setup` and `predict`."""

    def setup(self) -> None:
        """Load weights and build pipelines; runs once before the first request."""

    def predict(self, **inputs: Any) -> Any:
        """Run one request; return outputs (images, videos, paths, JSON) or a `Prediction`."""
        raise NotImplementedError

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        """Report progress (e.g. a denoising step); customers see it as SSE `progress` events."""
        context = _current.get()
        if context is not None:
            context.emit({"type": "progress", "done": int(done), "total": int(total), "message": message})

    def log(self, message: str) -> None:
        """A log line for this request, visible to the customer and the partner."""
        context = _current.get()
        if context is not None:
            context.emit({"type": "log", "message": str(message)})

    @property
    def canceled(self) -> bool:
        """True once the customer canceled the running request; stop early if you can."""
        context = _current.get()
        return context is not None and context.cancel.is_set()
