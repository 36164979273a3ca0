import pytest
import torch
import torch.nn.functional as F

from kernels.attention_fp8 import (
    KV_BLOCK,
    attention_fp8,
    attention_fp8_launch,
    attention_fp8_reference,
    quantize_qkv_fp8,
    quantize_qkv_fp8_reference,
)

ON_GPU = torch.cuda.is_available()
# (B, Sq, Skv, H, D): self attention with a ragged tail, cross attention with short keys.
SHAPES = (
    [(1, 4608, 4608, 24, 128), (2, 333, 333, 3, 64), (1, 1000, 77, 4, 128)]
    if ON_GPU
    else [(1, 150, 150, 2, 64), (2, 70, 33, 1, 32)]
)


def _qkv(b, sq, skv, h, d, device, dtype=torch.bfloat16, k_offset=2.0):
    # A per-channel offset on k: the mean that smoothing removes (softmax does not see it).
    q = torch.randn(b, sq, h, d, device=device)
    k = torch.randn(b, skv, h, d, device=device) + k_offset * torch.randn(1, 1, h, d, device=device)
    v = torch.randn(b, skv, h, d, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact(q, k, v, scale=None):
    args = [t.transpose(1, 2).float() for t in (q, k, v)]
    return F.scaled_dot_product_attention(*args, scale=scale).transpose(1, 2)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _cos(a, b):
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_reference(shape, device):
    b, sq, skv, h, d = shape
    q, k, v = _qkv(b, sq, skv, h, d, device)
    got = quantize_qkv_fp8(q, k, v)
    ref = quantize_qkv_fp8_reference(q.cpu(), k.cpu(), v.cpu())
    for name in ("q_scale", "k_scale", "v_amax"):
        g, r = getattr(got, name).cpu(), getattr(ref, name)
        if name == "q_scale":
            g, r = g[..., :sq], r[..., :sq]
        torch.testing.assert_close(g, r, rtol=1e-5, atol=0, msg=name)
    for name in ("q8", "k8", "v8"):
        g, r = getattr(got, name).cpu().float(), getattr(ref, name).float()
        assert g.shape == r.shape, name
        # The mean of K is summed in another order and the GPU divides by its own rounding:
        # a few codes land one e4m3 step (2**-3 relative, 2**-9 below 2**-6) apart.
        off = (g != r).float().mean().item()
        assert off < 1e-2, f"{name}: {off:.2%} of codes differ"
        step = torch.maximum(g.abs(), r.abs()) * 2**-3 + 2**-9
        assert ((g - r).abs() <= step).all(), name
    # Padding past the sequence is zeros, so the kernel reads whole tiles unmasked.
    nk = -(-skv // KV_BLOCK) * KV_BLOCK
    if nk > skv:
        assert (got.k8[:, :, skv:].float() == 0).all()
        assert (got.v8[..., skv:].float() == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_matches_reference_and_exact(shape, device):
    b, sq, skv, h, d = shape
    q, k, v = _qkv(b, sq, skv, h, d, device)
    out = attention_fp8(q, k, v)
    assert out.shape == (b, sq, h, d) and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    ref = attention_fp8_reference(q.cpu(), k.cpu(), v.cpu())
    exact = _exact(q, k, v)
    # The kernel rounds P against a running row max, the reference against the final one:
    # the two differ by e4m3 rounding of P, not more.
    assert _rel(out.cpu(), ref) < 0.04
    assert _cos(out, exact) > 0.995
    assert _rel(out, exact) < 0.1


def test_softmax_scale_and_fp16(device):
    q, k, v = _qkv(1, 96, 96, 2, 64, device, dtype=torch.float16)
    out = attention_fp8(q, k, v, 0.05)
    assert out.dtype == torch.float16
    assert _cos(out, _exact(q, k, v, scale=0.05)) > 0.995


def test_key_offset_is_smoothed_away(device):
    # A large shared offset on k would swamp e4m3's 3 mantissa bits without smoothing.
    q, k, v = _qkv(1, 128, 256, 2, 64, device, k_offset=30.0)
    assert _cos(attention_fp8(q, k, v), _exact(q, k, v)) > 0.995


@pytest.mark.skipif(not ON_GPU, reason="the config sweep times kernels on a GPU")
@pytest.mark.gpu
def test_every_config_computes_the_same_function(device):
    from kernels.attention_fp8 import ATTN_CONFIGS

    q, k, v = _qkv(1, 1000, 1000, 4, 128, device)
    exact = _exact(q, k, v)
    for cfg in ATTN_CONFIGS:
        for fresh in (True, False):
            out = attention_fp8_launch(q, k, v, config=cfg, fresh_acc=fresh)
            assert _cos(out, exact) > 0.995, (cfg, fresh)


def test_rejects_bad_shapes(device):
    q, k, v = _qkv(1, 8, 8, 1, 64, device)
    with pytest.raises(ValueError):
        attention_fp8_launch(q, k[..., :32], v)
    with pytest.raises(ValueError):
        attention_fp8_launch(q[..., :48], k[..., :48], v[..., :48])


def test_opcheck_and_compile(device):
    q, k, v = _qkv(1, 40, 40, 2, 64, device)
    torch.library.opcheck(attention_fp8, (q, k, v))
    compiled = torch.compile(
        lambda a, b, c: attention_fp8(a, b, c) * 2, fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(q, k, v), attention_fp8(q, k, v) * 2)


def test_small_head_dim_is_padded(device):
    q, k, v = _qkv(1, 50, 50, 2, 16, device)
    out = attention_fp8(q, k, v)
    assert out.shape == q.shape
    assert _cos(out, _exact(q, k, v)) > 0.995


def test_ex2_polynomial_matches_exp2():
    # The FMA-pipe 2**x of the ex2_poly variants, replayed in torch: floor by a round-down
    # add, degree-3 polynomial, integer add into the exponent bits.
    x = torch.linspace(-126.0, 8.8, 200001, dtype=torch.float32)
    j = torch.floor(x)
    f = x - j
    p = ((0.077119089663028717041015625 * f + 0.227564394474029541015625) * f
         + 0.695146143436431884765625) * f + 1.0
    bits = p.view(torch.int32) + (j.to(torch.int32) << 23)
    rel = (bits.view(torch.float32).double() / torch.exp2(x.double()) - 1).abs().max()
    assert rel < 2e-4


def test_lazy_rescale_computes_the_same_function(device):
    from kernels.attention_fp8 import Fp8AttnVariant

    q, k, v = _qkv(1, 300, 500, 2, 64, device)
    exact = _exact(q, k, v)
    for tau in (2.0, 4.0):
        out = attention_fp8_launch(q, k, v, variant=Fp8AttnVariant(lazy_tau=tau))
        assert _cos(out, exact) > 0.995, tau


@pytest.mark.skipif(not ON_GPU, reason="the PTX exponentials and imprecise MMA run on a GPU")
@pytest.mark.gpu
def test_gpu_variants_compute_the_same_function(device):
    from kernels.attention_fp8 import SWEEP_CONFIGS, Fp8AttnVariant

    q, k, v = _qkv(1, 1000, 1000, 4, 128, device)
    exact = _exact(q, k, v)
    for poly in (1, 2, 3):
        for tau in (0.0, 2.0):
            var = Fp8AttnVariant(ex2_poly=poly, lazy_tau=tau)
            out = attention_fp8_launch(q, k, v, variant=var)
            assert _cos(out, exact) > 0.995, var
    out = attention_fp8_launch(q, k, v, variant=Fp8AttnVariant(imprecise=32))
    assert _cos(out, exact) > 0.995
    for cfg in SWEEP_CONFIGS:
        try:
            out = attention_fp8_launch(q, k, v, config=cfg)
        except Exception as exc:  # noqa: BLE001  (a config over this GPU's shared memory)
            if "resources" not in str(exc).lower() and "shared" not in str(exc).lower():
                raise
            continue
        assert _cos(out, exact) > 0.995, cfg
