"""adaLN LayerNorm into fp8 rows (kernels/adaln_fp8.py) against its torch reference."""

import pytest
import torch

from kernels.adaln_fp8 import (
    adaln_layernorm_fp8,
    adaln_layernorm_fp8_launch,
    adaln_layernorm_fp8_reference,
    residual_adaln_layernorm_fp8,
    residual_adaln_layernorm_fp8_launch,
    residual_adaln_layernorm_fp8_reference,
)
from kernels.fp8 import FP8_DTYPE

ON_GPU = torch.cuda.is_available()
# (B, prefix rows, rows, D): FLUX's single blocks (512 text + 4096 image tokens) on the GPU;
# on the CPU widths that are not powers of two and row counts that leave partial programs.
SHAPES = (
    [(1, 512, 4096, 3072), (2, 0, 4608, 3072), (1, 0, 32760, 1536)]
    if ON_GPU
    else [(1, 3, 5, 48), (2, 0, 7, 96), (2, 4, 1, 200)]
)


def _operands(b, p, s, d, dtype, device, seed=0, shared_mod=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, s, d, generator=g) * 3 + 0.5).to(dtype).to(device)
    prefix = (torch.randn(b, p, d, generator=g) * 5).to(dtype).to(device) if p else None
    nb = 1 if shared_mod else b
    # FLUX hands out chunks of one (B, 3D) modulation row: strided views, as here.
    emb = torch.randn(nb, 3 * d, generator=g).to(dtype).to(device)
    shift, scale, _ = emb.chunk(3, dim=1)
    return x, prefix, shift, scale


def _assert_same(q, s, rq, rs, dtype=torch.bfloat16):
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert q.shape == rq.shape and s.shape == rs.shape
    # A row's amax element may round one ulp of x's dtype apart (fp32 sums in another order).
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(s, rs, rtol=ulp, atol=0)
    assert (s != rs).float().mean() < 1e-2
    # One bf16 rounding apart at most (fp32 sums in another order): codes one step apart, rarely.
    diff = (q.float() - rq.float()).abs()
    step = rq.float().abs().clamp(min=2**-6) / 8 * (1 + ulp)
    assert (diff <= step + 1e-12).all()
    assert (diff > 0).float().mean() < 1e-3


@pytest.mark.parametrize("b, p, s, d", SHAPES)
def test_matches_reference(b, p, s, d, dtype, device):
    x, prefix, shift, scale = _operands(b, p, s, d, dtype, device)
    q, sc = adaln_layernorm_fp8(x, shift, scale, 1e-6, prefix)
    rq, rs = adaln_layernorm_fp8_reference(x, shift, scale, 1e-6, prefix)
    assert q.shape == (b, p + s, d)
    _assert_same(q, sc, rq, rs, dtype)


def test_prefix_is_the_concatenation(device):
    x, prefix, shift, scale = _operands(2, 3, 5, 64, torch.bfloat16, device)
    q, s = adaln_layernorm_fp8(x, shift, scale, 1e-6, prefix)
    q2, s2 = adaln_layernorm_fp8(torch.cat([prefix, x], 1), shift, scale, 1e-6)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


@pytest.mark.parametrize("mod_shape", ["(D,)", "(1, D)", "(B, 1, D)"])
def test_modulation_shapes(mod_shape, device):
    x, prefix, shift, scale = _operands(2, 2, 3, 32, torch.bfloat16, device, shared_mod=True)
    if mod_shape == "(D,)":
        shift, scale = shift[0], scale[0]
    elif mod_shape == "(B, 1, D)":
        shift, scale = shift.expand(2, 32)[:, None], scale.expand(2, 32)[:, None]
    q, s = adaln_layernorm_fp8(x, shift, scale, 1e-6, prefix)
    _assert_same(q, s, *adaln_layernorm_fp8_reference(x, shift, scale, 1e-6, prefix))


@pytest.mark.parametrize("block_m, num_warps", [(1, 1), (4, 2)])
def test_launch_sizes(block_m, num_warps, device):
    x, prefix, shift, scale = _operands(1, 3, 6, 80, torch.bfloat16, device)
    q, s = adaln_layernorm_fp8_launch(x, shift, scale, 1e-6, prefix, block_m, num_warps)
    _assert_same(q, s, *adaln_layernorm_fp8_reference(x, shift, scale, 1e-6, prefix))


def test_constant_row_and_empty(device):
    x, _, shift, scale = _operands(1, 0, 4, 32, torch.bfloat16, device)
    x[0, 1] = 7.0  # LayerNorm of a constant row is 0: y = shift, still a finite scale
    q, s = adaln_layernorm_fp8(x, shift, scale)
    rq, rs = adaln_layernorm_fp8_reference(x, shift, scale)
    _assert_same(q, s, rq, rs)
    assert torch.isfinite(s).all()
    q0, s0 = adaln_layernorm_fp8(x[:, :0], shift, scale)
    assert q0.shape == (1, 0, 32) and s0.shape == (1, 0, 1)


def test_bad_inputs(device):
    x, prefix, shift, scale = _operands(2, 2, 3, 32, torch.bfloat16, device)
    with pytest.raises(ValueError, match="x must be"):
        adaln_layernorm_fp8(x.float(), shift, scale)
    with pytest.raises(ValueError, match="x must be"):
        adaln_layernorm_fp8(x[0], shift, scale)
    with pytest.raises(ValueError, match="prefix must be"):
        adaln_layernorm_fp8(x, shift, scale, 1e-6, prefix[:, :, :16])
    with pytest.raises(ValueError, match="shift must be per sample"):
        adaln_layernorm_fp8(x, torch.zeros(2, 3, 32, device=device), scale)
    with pytest.raises(ValueError, match="scale must be per sample"):
        adaln_layernorm_fp8(x, shift, scale[:, :16])


# ------------------------------------------------------------------ with the residual joined first
# (B, rows, D): FLUX's double-block image and text streams and Wan 480p's video on the GPU.
RESIDUAL_SHAPES = (
    [(1, 4096, 3072), (1, 512, 3072), (1, 32760, 1536)]
    if ON_GPU
    else [(1, 5, 48), (2, 7, 96), (2, 1, 200)]
)


def _branch(x, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(x.shape, generator=g) * 2).to(x.dtype).to(x.device)


def _assert_residual(res, rres, dtype):
    # x + g·y in fp32 may fuse into one rounding on the GPU: one ulp of x's dtype at most.
    assert res.dtype == rres.dtype and res.shape == rres.shape
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(res.float(), rres.float(), rtol=ulp, atol=1e-6)
    assert (res != rres).float().mean() < 1e-3


@pytest.mark.parametrize("b, s, d", RESIDUAL_SHAPES)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_residual_matches_reference(b, s, d, gated, dtype, device):
    x, _, shift, scale = _operands(b, 0, s, d, dtype, device)
    y = _branch(x)
    # Wan's gates are fp32 (B, 1, D) chunks of its modulation table; FLUX's half (B, D).
    gen = torch.Generator().manual_seed(2)
    gate = torch.rand(b, 1, d, generator=gen).to(device) if gated else None
    res, q, sc = residual_adaln_layernorm_fp8(x, y, gate, shift, scale, 1e-6)
    rres, rq, rs = residual_adaln_layernorm_fp8_reference(x, y, gate, shift, scale, 1e-6)
    _assert_residual(res, rres, dtype)
    # The rows are those of the residual the kernel wrote...
    _assert_same(q, sc, *adaln_layernorm_fp8_reference(res, shift, scale, 1e-6), dtype)
    # ...and, where that residual is one rounding off the reference's (a fused multiply-add on
    # the GPU), its row's codes may all move a step: compare the values they stand for.
    torch.testing.assert_close(q.float() * sc, rq.float() * rs, rtol=0.13, atol=0.05)


def test_residual_is_the_two_steps(device):
    x, _, shift, scale = _operands(2, 0, 5, 64, torch.bfloat16, device)
    y, gate = _branch(x), shift * 0.5
    res, q, s = residual_adaln_layernorm_fp8(x, y, gate, shift, scale, 1e-6)
    joined = (x.float() + gate.float()[:, None] * y.float()).to(x.dtype)
    _assert_residual(res, joined, torch.bfloat16)
    q2, s2 = adaln_layernorm_fp8(res, shift, scale, 1e-6)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


@pytest.mark.parametrize("block_m, num_warps", [(1, 1), (4, 2)])
def test_residual_launch_sizes(block_m, num_warps, device):
    x, _, shift, scale = _operands(1, 0, 7, 80, torch.bfloat16, device)
    y = _branch(x)
    out = residual_adaln_layernorm_fp8_launch(x, y, shift, shift, scale, 1e-6, block_m, num_warps)
    ref = residual_adaln_layernorm_fp8_reference(x, y, shift, shift, scale, 1e-6)
    _assert_residual(out[0], ref[0], torch.bfloat16)
    _assert_same(*out[1:], *ref[1:])


def test_residual_empty_and_bad_inputs(device):
    x, _, shift, scale = _operands(2, 0, 3, 32, torch.bfloat16, device)
    y = _branch(x)
    res, q, s = residual_adaln_layernorm_fp8(x[:, :0], y[:, :0], None, shift, scale)
    assert res.shape == (2, 0, 32) and q.shape == (2, 0, 32) and s.shape == (2, 0, 1)
    with pytest.raises(ValueError, match="y must have x's shape"):
        residual_adaln_layernorm_fp8(x, y[:, :2], None, shift, scale)
    with pytest.raises(ValueError, match="y must be"):
        residual_adaln_layernorm_fp8(x, y.half(), None, shift, scale)
    with pytest.raises(ValueError, match="gate must be per sample"):
        residual_adaln_layernorm_fp8(x, y, torch.ones(2, 3, 32, device=device), shift, scale)
