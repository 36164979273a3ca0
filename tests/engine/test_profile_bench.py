"""`bench/engine.py --part profile`: the GPU's idle time between kernels, by the pair around it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from bench.enginebench.profile import idle_between_kernels  # noqa: E402

CUDA = torch.autograd.DeviceType.CUDA
CPU = torch.autograd.DeviceType.CPU


def _event(name, start, end, device=CUDA):
    return SimpleNamespace(
        name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end)
    )


class _Profile:
    def __init__(self, events):
        self._events = events

    def events(self):
        return self._events


def test_idle_is_summed_per_pair_of_kernels_and_per_call():
    # Two calls of gemm -> norm -> attention, 10 us then 4 us apart, a CPU op in between
    # and 5 ms between the calls (not idle inside a call).
    events = []
    for t0 in (0.0, 5_000.0):
        events += [
            _event("gemm", t0, t0 + 100),
            _event("cpu_op", t0 + 100, t0 + 300, device=CPU),
            _event("norm", t0 + 110, t0 + 150),
            _event("attention", t0 + 154, t0 + 400),
        ]
    out = idle_between_kernels(_Profile(events), calls=2)
    assert out["idle_ms"] == pytest.approx(0.014)
    assert out["idle_pairs_ms"] == {
        "gemm -> norm": pytest.approx(0.010),
        "norm -> attention": pytest.approx(0.004),
    }
    assert out["idle_pair_calls"] == {"gemm -> norm": 1, "norm -> attention": 1}
    assert out["overlapping_kernels"] == 0


def test_kernels_on_two_streams_that_overlap_add_no_idle_time():
    events = [
        _event("gemm", 0.0, 100.0),
        _event("gemv", 50.0, 80.0),  # on a side stream, inside the gemm's span
        _event("norm", 103.0, 120.0),
    ]
    out = idle_between_kernels(_Profile(events), calls=1)
    assert out["overlapping_kernels"] == 1
    assert out["idle_ms"] == pytest.approx(0.003)
    assert list(out["idle_pairs_ms"]) == ["gemm -> norm"]
