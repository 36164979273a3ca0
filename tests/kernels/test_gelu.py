import pytest
import torch

from kernels.gelu import (
    gelu_tanh_bias,
    gelu_tanh_bias_launch,
    gelu_tanh_bias_reference,
    linear_gelu_tanh,
    linear_gelu_tanh_launch,
    linear_gelu_tanh_reference,
)

# exp(-2u) overflows to inf for very negative inputs by design; numpy, under the interpreter,
# says so.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

ON_GPU = torch.cuda.is_available()
SHAPES = [(1, 4608, 12288), (2, 333, 3072), (3, 7, 128)] if ON_GPU else [(3, 7, 128), (2, 33, 200)]
# (leading shape, K, N) for the fused matmul.
MATMUL_SHAPES = (
    [((1, 4608), 3072, 12288), ((2, 333), 3072, 3072), ((3, 7), 200, 136)]
    if ON_GPU
    else [((37,), 72, 40), ((2, 5), 64, 48)]
)


@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_tanh_bias(shape, dtype, device, poisoned, assert_matches):
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    bias = torch.randn(shape[-1], dtype=dtype, device=device)
    out = gelu_tanh_bias_launch(x, bias, poisoned(shape, dtype, device))
    assert_matches(out, gelu_tanh_bias_reference(x.float(), bias.float()), dtype)


def test_gelu_extremes(device):
    x = torch.tensor([[-1e4, -60.0, -10.0, -1e-3, 0.0, 1e-3, 10.0, 60.0, 1e4]], device=device)
    out = gelu_tanh_bias(x, torch.zeros(x.shape[-1], device=device))
    ref = gelu_tanh_bias_reference(x, torch.zeros_like(x[0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lead,k,n", MATMUL_SHAPES)
def test_linear_gelu_tanh(lead, k, n, dtype, device, poisoned, assert_matches):
    x = torch.randn(*lead, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device) / k**0.5
    bias = torch.randn(n, dtype=dtype, device=device) * 0.1
    out = linear_gelu_tanh_launch(x, w, bias, poisoned((*lead, n), dtype, device))
    ref = linear_gelu_tanh_reference(x.float(), w.float(), bias.float())
    assert_matches(out, ref, dtype, scale=2.0)


@pytest.mark.parametrize("fused_epilogue", [False, True], ids=["cublas", "fused"])
def test_public_linear_gelu_tanh(fused_epilogue, device, assert_matches):
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, device=device)
    w = torch.randn(48, 64, dtype=torch.bfloat16, device=device) / 8
    bias = torch.randn(48, dtype=torch.bfloat16, device=device)
    out = linear_gelu_tanh(x, w, bias, fused_epilogue)
    ref = linear_gelu_tanh_reference(x.float(), w.float(), bias.float())
    assert_matches(out, ref, torch.bfloat16, scale=2.0)
    torch.library.opcheck(linear_gelu_tanh, (x, w, bias, fused_epilogue))


def test_gelu_opcheck(device):
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(gelu_tanh_bias, (x, torch.randn(64, dtype=torch.bfloat16, device=device)))
