"""Engine tests compile many small models in one process: each starts from a clean dynamo."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fresh_dynamo():
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
