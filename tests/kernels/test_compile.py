"""torch.compile traces through every custom op via its fake implementation."""

import pytest
import torch

import kernels

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


def _block(x, y, gate, shift, scale, q, k, qw, kw, cos, sin, w, bias):
    res, normed = kernels.gated_residual_adaln(x, gate, y, shift, scale)
    normed = kernels.adaln_layernorm(normed, shift, scale) + kernels.gated_residual(res, gate, y)
    q1, k1 = kernels.qk_rmsnorm(q, k, qw, kw)
    q2, k2 = kernels.qk_rmsnorm_rope(q1, k1, qw, kw, cos, sin)
    q3 = kernels.apply_rope(q2, cos, sin)
    h = kernels.linear_gelu_tanh(normed, w, bias)
    h = kernels.gelu_tanh_bias(h, bias)
    xq, xs = kernels.quantize_fp8_rowwise(normed)
    return h.sum() + q3.sum() + k2.sum() + (xq.float() * xs).sum()


def test_fullgraph_compile_traces_all_ops(device):
    def r(*shape):
        return torch.randn(*shape, dtype=torch.bfloat16, device=device)

    x, y = r(2, 8, 64), r(2, 8, 64)
    gate, shift, scale = r(2, 64), r(2, 64), r(2, 1, 64)
    q, k = r(1, 2, 8, 64), r(1, 2, 8, 64)
    qw, kw = r(64), r(64)
    angles = torch.rand(8, 64, device=device)
    w, bias = r(48, 64), r(48)
    args = (x, y, gate, shift, scale, q, k, qw, kw, angles.cos(), angles.sin(), w, bias)
    compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), _block(*args), rtol=1e-2, atol=1e-1)
