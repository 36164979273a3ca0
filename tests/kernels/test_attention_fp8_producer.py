import pytest
import torch
import torch.nn.functional as F

from kernels.attention_fp8 import KV_BLOCK
from kernels.attention_fp8_producer import (
    attention_fp8_norm_rope,
    norm_rope_quantize_fp8,
    norm_rope_quantize_fp8_reference,
)
from kernels.rope import qk_rmsnorm_rope_reference

ON_GPU = torch.cuda.is_available()
# (B, S_text, S_image, H, D): FLUX's joint attention, its single-stream blocks (no text
# tensors), and ragged token counts.
SHAPES = (
    [(1, 512, 4096, 24, 128), (1, 0, 4608, 24, 128), (2, 77, 300, 3, 64)]
    if ON_GPU
    else [(1, 40, 110, 2, 64), (1, 0, 150, 2, 32)]
)


def _inputs(b, st, si, h, d, device):
    g = torch.Generator().manual_seed(st + si + d)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def qkv(s):
        # Views of one fused projection, as FLUX's fused QKV hands them over.
        fused = r(b, s, 3 * h * d).to(torch.bfloat16).to(device)
        q, k, v = fused.chunk(3, dim=-1)
        return [t.unflatten(-1, (h, d)) for t in (q, k, v)]

    w = [(1 + 0.3 * r(d)).to(torch.bfloat16).to(device) for _ in range(4)]
    # k's norm weight away from 1: keys of a larger scale than queries.
    w[1] = w[1] + 2.0
    theta = r(st + si, d // 2).repeat_interleave(2, dim=-1)
    cos, sin = theta.cos().to(device), theta.sin().to(device)
    q, k, v = qkv(si)
    text = None
    if st:
        qt, kt, vt = qkv(st)
        text = (qt, kt, vt, w[2], w[3])
    return q, k, v, w[0], w[1], cos, sin, text


def _exact(q, k, v, q_w, k_w, cos, sin, text):
    d = q.shape[-1]
    st = 0 if text is None else text[0].shape[1]
    qn, kn = qk_rmsnorm_rope_reference(q, k, q_w, k_w, cos[st:], sin[st:], 1e-6, 1)
    if text is not None:
        tq, tk = qk_rmsnorm_rope_reference(
            text[0], text[1], text[3], text[4], cos[:st], sin[:st], 1e-6, 1
        )
        qn, kn, v = torch.cat([tq, qn], 1), torch.cat([tk, kn], 1), torch.cat([text[2], v], 1)
    args = [t.transpose(1, 2).float() for t in (qn, kn, v)]
    return F.scaled_dot_product_attention(*args, scale=d**-0.5).transpose(1, 2)


def _cos(a, b):
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@pytest.mark.parametrize("shape", SHAPES)
def test_producer_matches_reference(shape, device):
    q, k, v, q_w, k_w, cos, sin, text = _inputs(*shape, device)
    got = norm_rope_quantize_fp8(q, k, v, q_w, k_w, cos, sin, text=text)
    cpu = lambda t: t.cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
    ref = norm_rope_quantize_fp8_reference(
        *(cpu(t) for t in (q, k, v, q_w, k_w, cos, sin)),
        text=None if text is None else tuple(cpu(t) for t in text),
    )
    s = shape[1] + shape[2]
    for name in ("q_scale", "k_scale", "v_amax"):
        g, r = getattr(got, name).cpu(), getattr(ref, name)
        if name == "q_scale":
            g, r = g[..., :s], r[..., :s]
        # The kernel keeps the norm and rotation in fp32; the reference rounds to bf16 twice.
        torch.testing.assert_close(g, r, rtol=2e-2, atol=0, msg=name)
    for name in ("q8", "k8", "v8"):
        g, r = getattr(got, name).cpu().float(), getattr(ref, name).float()
        assert g.shape == r.shape, name
        off = (g != r).float().mean().item()
        assert off < 0.15, f"{name}: {off:.2%} of codes differ"
        # Codes run to 448: the reference's bf16 rounding of values near 448 moves small
        # codes (the rotation's cancellations) by up to about 448 * 2**-8 each way.
        step = torch.maximum(g.abs(), r.abs()) * 2**-3 + 4.0
        assert ((g - r).abs() <= step).all(), name
    pad = -(-s // KV_BLOCK) * KV_BLOCK
    if pad > s:
        assert (got.k8[:, :, s:].float() == 0).all()
        assert (got.v8[..., s:].float() == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_attention_matches_exact(shape, device):
    q, k, v, q_w, k_w, cos, sin, text = _inputs(*shape, device)
    t = (None,) * 5 if text is None else text
    out = attention_fp8_norm_rope(q, k, v, q_w, k_w, cos, sin, 1e-6, *t)
    assert out.shape == (shape[0], shape[1] + shape[2], shape[3], shape[4])
    assert torch.isfinite(out).all()
    assert _cos(out, _exact(q, k, v, q_w, k_w, cos, sin, text)) > 0.995


def test_fused_attention_opcheck(device):
    q, k, v, q_w, k_w, cos, sin, text = _inputs(1, 20, 30, 2, 32, device)
    torch.library.opcheck(attention_fp8_norm_rope, (q, k, v, q_w, k_w, cos, sin, 1e-6, *text))
