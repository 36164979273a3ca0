"""Weight-only fp8 GEMV (kernels/fp8_gemv.py) against its fp32 torch reference."""

import pytest
import torch

from kernels.fp8 import quantize_weight_fp8_rowwise
from kernels.fp8_gemv import (
    GEMV_MAX_ROWS,
    _launch,
    fp8_weight_gemv,
    fp8_weight_gemv_reference,
)

ON_GPU = torch.cuda.is_available()
# (K, N): FLUX's modulation linears on the GPU; on the CPU sizes that leave partial blocks
# along both N and K.
SIZES = [(3072, 18432), (3072, 9216), (200, 130)] if ON_GPU else [(64, 48), (200, 130)]


def _operands(m, k, n, dtype, device, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype).to(device)
    w = torch.randn(n, k, generator=g) / k**0.5
    w_fp8, w_scale = quantize_weight_fp8_rowwise(w.to(device))
    bias = torch.randn(n, generator=g).to(torch.bfloat16).to(device) if with_bias else None
    return x, w_fp8, w_scale.reshape(1, n), bias


def _assert_close(out, ref, dtype):
    # The kernel's fp32 sum rounded once to the output format: within an ulp of it.
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    scale = ref.abs().amax().item()
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2 * scale)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (6e-3 if dtype == torch.bfloat16 else 1e-3), f"relative error {rel:.2e}"


@pytest.mark.parametrize("k, n", SIZES)
@pytest.mark.parametrize("m", [1, 3, GEMV_MAX_ROWS])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_matches_reference(k, n, m, with_bias, dtype, device):
    x, w_fp8, w_scale, bias = _operands(m, k, n, dtype, device, with_bias)
    out = fp8_weight_gemv(x, w_fp8, w_scale, bias)
    _assert_close(out, fp8_weight_gemv_reference(x, w_fp8, w_scale, bias), dtype)


@pytest.mark.parametrize(
    "m, block_n, block_k, num_warps",
    [(1, 8, 256, 1), (1, 64, 128, 4), (5, 16, 64, 2), (5, 64, 128, 8)],
)
def test_launch_sizes(m, block_n, block_k, num_warps, device, poisoned):
    # Other launch sizes (the benchmark's sweep) give the same result; every element written.
    x, w_fp8, w_scale, bias = _operands(m, 200, 130, torch.bfloat16, device)
    out = poisoned((m, 130), torch.bfloat16, device)
    _launch(x, w_fp8, w_scale, bias, out, block_n, block_k, num_warps)
    _assert_close(out, fp8_weight_gemv_reference(x, w_fp8, w_scale, bias), torch.bfloat16)


def test_strided_rows_and_scale_shapes(device):
    # Rows of x a stride apart (a slice of a wider activation); the scale as (N,) or (N, 1).
    x, w_fp8, w_scale, bias = _operands(2, 64, 48, torch.bfloat16, device)
    wide = torch.zeros(2, 96, dtype=x.dtype, device=device)
    wide[:, :64] = x
    ref = fp8_weight_gemv_reference(x, w_fp8, w_scale, bias)
    for scale in (w_scale.reshape(48), w_scale.reshape(48, 1)):
        _assert_close(fp8_weight_gemv(wide[:, :64], w_fp8, scale, bias), ref, torch.bfloat16)


def test_no_rows(device):
    _, w_fp8, w_scale, bias = _operands(1, 64, 48, torch.bfloat16, device)
    x = torch.empty(0, 64, dtype=torch.bfloat16, device=device)
    assert fp8_weight_gemv(x, w_fp8, w_scale, bias).shape == (0, 48)


def test_closer_to_the_linear_than_quantizing_the_activation(device):
    # The point of keeping x in bf16: only the weight's e4m3 rounding remains, so the result
    # is nearer the linear of the dequantized weight than the fp8-activation path's.
    pytest.importorskip("diffusers")  # engine.optimization imports it
    from engine.optimization.fp8 import quantize_rowwise

    x, w_fp8, w_scale, bias = _operands(1, 3072, 256, torch.bfloat16, device)
    w = w_fp8.float() * w_scale.reshape(-1, 1)
    exact = x.float() @ w.t() + bias.float()
    xq, xs = quantize_rowwise(x)
    fp8_act = (xq.float() * xs) @ w.t() + bias.float()
    ours = fp8_weight_gemv(x, w_fp8, w_scale, bias).float()
    err_ours = (ours - exact).norm() / exact.norm()
    err_fp8_act = (fp8_act - exact).norm() / exact.norm()
    assert err_ours < err_fp8_act / 4, (err_ours, err_fp8_act)


def test_opcheck(device):
    x, w_fp8, w_scale, bias = _operands(3, 64, 48, torch.bfloat16, device)
    # Not test_schema: it runs the op under a mode that also sees the interpreter's own
    # arithmetic on e4m3 tensors, which has no CPU kernel.
    tests = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(fp8_weight_gemv, (x, w_fp8, w_scale, bias), test_utils=tests)
    torch.library.opcheck(fp8_weight_gemv, (x, w_fp8, w_scale, None), test_utils=tests)


def test_rejects_bad_operands(device):
    x, w_fp8, w_scale, bias = _operands(2, 64, 48, torch.bfloat16, device)
    cases = [
        ((x.float(), w_fp8, w_scale, bias), "bf16 or fp16"),
        ((x[0], w_fp8, w_scale, bias), "bf16 or fp16"),
        ((x.new_zeros(GEMV_MAX_ROWS + 1, 64), w_fp8, w_scale, bias), "at most"),
        ((x, w_fp8.float(), w_scale, bias), "float8_e4m3fn"),
        ((x[:, :32], w_fp8, w_scale, bias), "K=32"),
        ((x, w_fp8.t().contiguous().t(), w_scale, bias), "contiguous"),
        ((x, w_fp8, w_scale[:, :47], bias), "weight_scale"),
        ((x, w_fp8, w_scale.double(), bias), "weight_scale"),
        ((x, w_fp8, w_scale, bias[:47]), "bias"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            fp8_weight_gemv(*args)
