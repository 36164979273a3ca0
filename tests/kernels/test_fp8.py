import pytest
import torch

from kernels.fp8 import (
    FP8_DTYPE,
    fp8_linear,
    fp8_linear_reference,
    quantize_cat_gelu_fp8_rowwise,
    quantize_fp8_rowwise,
    quantize_fp8_rowwise_launch,
    quantize_fp8_rowwise_reference,
    quantize_gelu_fp8_rowwise,
    quantize_weight_fp8_rowwise,
    requantize_fp8_rowwise,
    requantize_fp8_rowwise_reference,
)

ON_GPU = torch.cuda.is_available()
SHAPES = [(4608, 3072), (2, 333, 3072), (3, 7, 128)] if ON_GPU else [(3, 7, 128), (2, 33, 200)]


def _quantize(x, poisoned, pre_round=None):
    q = torch.zeros(x.shape, dtype=FP8_DTYPE, device=x.device)
    q.view(torch.uint8).fill_(0x7F)  # e4m3fn NaN
    s = poisoned((*x.shape[:-1], 1), torch.float32, x.device)
    return quantize_fp8_rowwise_launch(x, q, s, pre_round=pre_round)


def _assert_same_quantization(q, s, x):
    # The reference runs on the CPU, whose float -> e4m3 cast is a plain software RTNE.
    q_ref, s_ref = quantize_fp8_rowwise_reference(x.cpu())
    q, s = q.cpu(), s.cpu()
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert not torch.isnan(q.float()).any() and not torch.isnan(s).any()
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    # Same scale, same round-to-nearest-even: the fp8 codes must agree exactly.
    diff = q.view(torch.uint8) != q_ref.view(torch.uint8)
    if diff.any():
        idx = diff.nonzero()[:6]
        scaled = x.cpu().float() * (448.0 / s_ref.mul(448.0))
        lines = [
            f"{tuple(i.tolist())}: x*inv={scaled[tuple(i)].item():.9g} "
            f"ours={q[tuple(i)].float().item()} ref={q_ref[tuple(i)].float().item()}"
            for i in idx
        ]
        raise AssertionError(f"{int(diff.sum())} fp8 codes differ:\n" + "\n".join(lines))


def test_e4m3_available_on_this_torch():
    assert torch.tensor([1.5]).to(FP8_DTYPE).float().item() == 1.5


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_reference(shape, dtype, device, poisoned):
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    q, s = _quantize(x, poisoned)
    _assert_same_quantization(q, s, x)
    # x ~= q * s within half an e4m3 step (2**-4 relative) plus the subnormal step.
    deq = q.float() * s
    bound = x.float().abs() * 2**-4 + s * 2**-9 + 1e-30
    assert ((deq - x.float()).abs() <= bound).all()


def test_quantize_wide_dynamic_range_and_zero_rows(device, poisoned):
    # Magnitudes over 12 decades reach e4m3's subnormals and underflow to zero; a row of zeros
    # takes the amax floor.
    x = torch.randn(6, 200, device=device) * 10 ** (torch.rand(6, 200, device=device) * 12 - 10)
    x[2] = 0
    x = x.to(torch.bfloat16)
    q, s = _quantize(x, poisoned)
    _assert_same_quantization(q, s, x)
    assert (q[2].float() == 0).all()


def _assert_gelu_quantized(q, s, x, g):
    # On the GPU tanh is the SFU's tanh.approx, absolute error <= 2**-10.99, so gelu is off by
    # at most |x|·2**-12: the row scales (set by the largest values, where tanh saturates)
    # agree to 2**-11, and each value lands on torch's e4m3 code or the next one (2**-3)
    # up to that error. The interpreter computes tanh exactly.
    _, s_ref = quantize_fp8_rowwise_reference(g)
    torch.testing.assert_close(s, s_ref, rtol=2**-11 if ON_GPU else 1e-5, atol=0)
    deq = q.float() * s
    assert ((deq - g).abs() <= g.abs() * 2**-3 + s * 2**-8 + x.abs() * 2**-12).all()


@pytest.mark.parametrize(
    "shape", [(4608, 12288), (32760, 8960), (77, 3072)] if ON_GPU else [(3, 7, 200), (2, 3, 4500)]
)
def test_quantize_gelu_matches_gelu_then_quantize(shape, device):
    # Rows wider than WIDE_ROW go through the segmented kernel, narrower ones the tile kernel.
    x = torch.randn(shape, dtype=torch.bfloat16, device=device) * 3
    q, s = quantize_gelu_fp8_rowwise(x)
    g = torch.nn.functional.gelu(x.float(), approximate="tanh")
    assert q.shape == x.shape and s.shape == (*shape[:-1], 1)
    _assert_gelu_quantized(q, s, x.float(), g)


@pytest.mark.parametrize(
    "lead,na,nb",
    [((1, 4608), 3072, 12288), ((2, 333), 3072, 12288)] if ON_GPU else [((2, 5), 64, 200), ((3,), 96, 0)],
)
def test_quantize_cat_gelu_matches_cat_then_quantize(lead, na, nb, device):
    a = torch.randn(*lead, na, dtype=torch.bfloat16, device=device)
    b = torch.randn(*lead, nb, dtype=torch.bfloat16, device=device) * 3
    q, s = quantize_cat_gelu_fp8_rowwise(a, b)
    x = torch.cat([a.float(), torch.nn.functional.gelu(b.float(), approximate="tanh")], -1)
    assert q.shape == (*lead, na + nb) and s.shape == (*lead, 1)
    _assert_gelu_quantized(q, s, torch.cat([torch.zeros_like(a.float()), b.float()], -1), x)
    torch.library.opcheck(quantize_cat_gelu_fp8_rowwise, (a[..., :2, :], b[..., :2, :]))


@pytest.mark.parametrize(
    "b, s, na, nb", [(1, 4608, 3072, 12288), (2, 333, 3072, 12288)] if ON_GPU else [(2, 5, 64, 200)]
)
def test_quantize_cat_gelu_reads_an_e4m3_attention_output(b, s, na, nb, device):
    # FLUX single blocks: cuDNN's e4m3 output in V's per-channel units beside the MLP's
    # pre-activation: the same codes and scales as through the bf16 attention output.
    a8 = (torch.randn(b, s, na, device=device) * 60).clamp(-448, 448).to(FP8_DTYPE)
    col = torch.rand(b, 1, na, device=device) * 3 + 1e-3
    mlp = torch.randn(b, s, nb, dtype=torch.bfloat16, device=device) * 3
    q, sc = quantize_cat_gelu_fp8_rowwise(a8, mlp, col)
    q_ref, s_ref = quantize_cat_gelu_fp8_rowwise((a8.float() * col).to(torch.bfloat16), mlp)
    torch.testing.assert_close(sc, s_ref, atol=0, rtol=0)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    with pytest.raises(ValueError, match="a_col_scale"):
        quantize_cat_gelu_fp8_rowwise(a8, mlp, col[..., :1])
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        quantize_cat_gelu_fp8_rowwise(a8.float(), mlp, col)


def test_quantize_gelu_opcheck(device):
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(quantize_gelu_fp8_rowwise, (x,))


@pytest.mark.parametrize("b, s, k", [(1, 7, 128), (2, 33, 200), (2, 5, 1536)])
def test_requantize_matches_dequantize_then_quantize(b, s, k, device):
    # An fp8 attention's output (e4m3, V's per-channel units, one set per batch) straight to
    # the next linear's row-quantized input: the same codes and scales as going through bf16.
    x8 = (torch.randn(b, s, k, device=device) * 60).clamp(-448, 448).to(FP8_DTYPE)
    col = torch.rand(b, 1, k, device=device) * 3 + 1e-3
    col[..., 0] = 0.0  # a channel whose V was all zeros
    q, sc = requantize_fp8_rowwise(x8, col)
    q_ref, s_ref = requantize_fp8_rowwise_reference(x8.cpu(), col.cpu())
    assert q.shape == (b, s, k) and sc.shape == (b, s, 1)
    torch.testing.assert_close(sc.cpu(), s_ref, atol=0, rtol=0)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
    # Not test_schema: it runs the op under a mode that also sees the interpreter's own
    # arithmetic on e4m3 tensors, which has no CPU kernel.
    tests = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(requantize_fp8_rowwise, (x8, col), test_utils=tests)


def test_requantize_rejects_bad_operands(device):
    x8 = torch.zeros(2, 5, 64, device=device).to(FP8_DTYPE)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        requantize_fp8_rowwise(x8.float(), torch.ones(2, 1, 64, device=device))
    with pytest.raises(ValueError, match="col_scale"):
        requantize_fp8_rowwise(x8, torch.ones(1, 1, 64, device=device))


def test_quantize_weight_shapes(device):
    w = torch.randn(48, 64, dtype=torch.bfloat16, device=device)
    w_fp8, w_scale = quantize_weight_fp8_rowwise(w)
    assert w_fp8.shape == (48, 64) and w_scale.shape == (48, 1)
    with pytest.raises(ValueError):
        quantize_weight_fp8_rowwise(w[None])


def test_quantize_opcheck(device):
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(quantize_fp8_rowwise, (x,))


def _linear_case(lead, k, n, dtype, device, with_bias):
    x = torch.randn(*lead, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device) / k**0.5
    bias = torch.randn(n, dtype=dtype, device=device) if with_bias else None
    w_fp8, w_scale = quantize_weight_fp8_rowwise(w)
    return x, w_fp8, w_scale, bias


@pytest.mark.parametrize("with_bias", [True, False])
def test_fp8_linear_small(with_bias, device):
    # torch._scaled_mm has a CPU implementation too, so this runs everywhere.
    x, w_fp8, w_scale, bias = _linear_case((37,), 64, 48, torch.bfloat16, device, with_bias)
    out = fp8_linear(x, w_fp8, w_scale, bias)
    ref = fp8_linear_reference(x, w_fp8, w_scale, bias, out_dtype=torch.float32)
    assert out.shape == (37, 48) and out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 1e-2, f"relative error {rel:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device for fp8 tensor cores")
@pytest.mark.parametrize("lead,k,n", [((4608,), 3072, 12288), ((2, 333), 3072, 3072)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_fp8_linear_full_size(lead, k, n, out_dtype, device):
    x, w_fp8, w_scale, bias = _linear_case(lead, k, n, torch.bfloat16, device, True)
    out = fp8_linear(x, w_fp8, w_scale, bias, out_dtype=out_dtype)
    ref = fp8_linear_reference(x, w_fp8, w_scale, bias, out_dtype=torch.float32)
    assert out.shape == (*lead, n) and out.dtype == out_dtype
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 1e-2, f"relative error {rel:.2e}"
    # And close to the unquantized product: e4m3 keeps ~3 significant bits per element.
    exact = torch.nn.functional.linear(x.float(), (w_fp8.float() * w_scale), bias.float())
    assert (out.float() - exact).norm() / exact.norm() < 6e-2
