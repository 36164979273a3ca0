import pytest
import torch

from kernels.gated_residual import (
    gated_residual,
    gated_residual_adaln,
    gated_residual_adaln_launch,
    gated_residual_adaln_reference,
    gated_residual_launch,
    gated_residual_reference,
)

ON_GPU = torch.cuda.is_available()
SHAPES = [(1, 4608, 3072), (2, 333, 3072), (3, 7, 128)] if ON_GPU else [(3, 7, 128), (2, 33, 200)]


def _inputs(shape, dtype, device, gate_shape=None):
    x = torch.randn(shape, dtype=dtype, device=device) * 4
    y = torch.randn(shape, dtype=dtype, device=device)
    gate = torch.randn(gate_shape or (shape[0], shape[-1]), dtype=dtype, device=device)
    return x, gate, y


@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual(shape, dtype, device, poisoned, assert_matches):
    x, gate, y = _inputs(shape, dtype, device)
    out = gated_residual_launch(x, gate, y, poisoned(shape, dtype, device))
    assert_matches(out, gated_residual_reference(x.float(), gate.float(), y.float()), dtype)


def test_gated_residual_per_token_gate(dtype, device, poisoned, assert_matches):
    shape = (2, 37, 1100)
    x, gate, y = _inputs(shape, dtype, device, gate_shape=shape)
    out = gated_residual_launch(x, gate, y, poisoned(shape, dtype, device))
    assert_matches(out, gated_residual_reference(x.float(), gate.float(), y.float()), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("late_mod", [None, True], ids=["default", "late_mod"])
def test_gated_residual_adaln(shape, late_mod, dtype, device, poisoned, assert_matches):
    x, gate, y = _inputs(shape, dtype, device, gate_shape=(shape[0], 1, shape[-1]))
    shift = torch.randn(shape[0], shape[-1], dtype=dtype, device=device)
    scale = torch.randn(shape[0], shape[-1], dtype=dtype, device=device) * 0.3
    res, normed = gated_residual_adaln_launch(
        x, gate, y, shift, scale, 1e-6,
        poisoned(shape, dtype, device), poisoned(shape, dtype, device), late_mod=late_mod,
    )
    ref_res, ref_normed = gated_residual_adaln_reference(
        x.float(), gate.float(), y.float(), shift.float(), scale.float(), 1e-6
    )
    assert_matches(res, ref_res, dtype)
    assert_matches(normed, ref_normed, dtype)


def test_public_ops_and_opcheck(device, assert_matches):
    x, gate, y = _inputs((2, 6, 64), torch.bfloat16, device)
    shift, scale = torch.randn_like(gate), torch.randn_like(gate)
    out = gated_residual(x, gate, y)
    assert_matches(out, gated_residual_reference(x.float(), gate.float(), y.float()), x.dtype)
    res, normed = gated_residual_adaln(x, gate, y, shift, scale)
    assert res.is_contiguous() and normed.is_contiguous()
    torch.library.opcheck(gated_residual, (x, gate, y))
    torch.library.opcheck(gated_residual_adaln, (x, gate, y, shift, scale), {"eps": 1e-6})
