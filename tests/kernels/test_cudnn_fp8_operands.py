"""QK norm + RoPE + quantization for cuDNN's fp8 attention (kernels/cudnn_fp8_operands.py).

Wan's norm over H·D channels of one stream, and FLUX's per-head norms over a text stream
and an image stream.

The Triton producer against the same steps in plain torch and fp32 (RMSNorm, Wan's
rotation, `quantize_for_cudnn`): the scales exactly, the e4m3 codes up to the order of a
sum (a code one step apart now and then), the padding as zeros.
"""

import pytest
import torch

from kernels.cudnn_fp8_operands import (
    norm_rope_quantize_for_cudnn,
    norm_rope_quantize_for_cudnn_reference,
    rmsnorm_bound_of,
    wan_rope_reference,
)
from kernels.rope import apply_rope_reference

ON_GPU = torch.cuda.is_available()
# (B, S, H, D): Wan 2.1 1.3B at 480p, a ragged length, two batches of few heads.
SHAPES = (
    [(1, 32760, 12, 128), (2, 1000, 3, 64)]
    if ON_GPU
    else [(1, 300, 2, 64), (2, 130, 3, 32)]
)
# (B, S_text, S_image, H, D): FLUX.1 at 1024² (double-stream blocks), and ragged ones.
FLUX_SHAPES = [(1, 512, 4096, 24, 128), (2, 77, 300, 3, 64)] if ON_GPU else [(1, 40, 110, 2, 64)]


def _inputs(b, s, h, d, device):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    g = torch.Generator().manual_seed(s + h + d)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    # Views of one fused projection, as Wan's fused QKV hands them over; K with a common
    # per-channel offset for the centring to remove, V with channels of different scales.
    fused = r(b, s, 3 * h * d)
    fused[..., h * d : 2 * h * d] += 3 * r(h * d)
    fused[..., 2 * h * d :] *= torch.linspace(0.1, 4, h * d)
    q, k, v = (t.unflatten(-1, (h, d)) for t in fused.bfloat16().to(device).chunk(3, dim=-1))
    w_q, w_k = ((1 + 0.3 * r(h * d)).bfloat16().to(device) for _ in range(2))
    rope = WanRotaryPosEmbed(attention_head_dim=d, patch_size=(1, 2, 2), max_seq_len=1024)
    frames = -(-s // 64)
    cos, sin = rope(torch.zeros(1, 4, frames, 16, 16))
    cos, sin = cos[:, :s].contiguous().to(device), sin[:, :s].contiguous().to(device)
    return q, k, v, w_q, w_k, 1e-6, cos, sin


def _close_codes(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype, name
    a, b = out.float(), ref.float()
    differ = a != b
    # A code that differs is one e4m3 step away (3 mantissa bits), and rarely so.
    step = torch.maximum(a.abs(), b.abs()) * 2**-3 + 2**-9
    far = differ & ((a - b).abs() > step)
    assert not far.any(), f"{name}: {a[far][:4].tolist()} against {b[far][:4].tolist()}"
    assert differ.float().mean() <= 1e-3, f"{name}: {differ.float().mean():.2e} differ"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("smooth_k", [True, False])
def test_producer_matches_the_torch_steps(device, shape, smooth_k):
    args = _inputs(*shape, device)
    out = norm_rope_quantize_for_cudnn(*args, smooth_k, 128)
    ref = norm_rope_quantize_for_cudnn_reference(*args, smooth_k, 128)
    names = ("q8", "k8", "v8", "descale_q", "descale_k", "v_amax")
    for name, o, r in zip(names, out, ref, strict=True):
        if o.dtype == torch.float32:
            torch.testing.assert_close(o, r, rtol=0, atol=0, msg=name)
        else:
            _close_codes(o, r, name)
    s = shape[1]
    k8, v8 = out[1], out[2]
    assert k8.shape[1] % 128 == 0 and v8.shape[1] == k8.shape[1]
    assert not k8[:, s:].float().any() and not v8[:, s:].float().any()


@pytest.mark.parametrize("launch", [(1, 1), (2, 4), (4, 4), (8, 8)])
def test_every_launch_size_gives_the_same_operands(device, launch):
    from kernels.cudnn_fp8_operands import _launch

    args = _inputs(*SHAPES[-1], device)
    ref = norm_rope_quantize_for_cudnn_reference(*args, True, 128)
    out = _launch(*args, True, 128, launch=launch)
    for name, o, r in zip(("q8", "k8", "v8"), out, ref, strict=False):
        _close_codes(o, r, name)


def _flux_inputs(b, st, si, h, d, device):
    g = torch.Generator().manual_seed(st + si + d)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def qkv(s):
        fused = r(b, s, 3 * h * d)
        fused[..., h * d : 2 * h * d] += 2 * r(h * d)
        q, k, v = fused.bfloat16().to(device).chunk(3, dim=-1)
        return [t.unflatten(-1, (h, d)) for t in (q, k, v)]

    # Per-head weights, each stream its own; FluxPosEmbed's tables repeat each frequency
    # over its pair.
    w = [(1 + 0.3 * r(d)).bfloat16().to(device) for _ in range(4)]
    theta = (r(st + si, d // 2) * 3).repeat_interleave(2, dim=-1)
    cos, sin = theta.cos().to(device), theta.sin().to(device)
    (q, k, v), (qt, kt, vt) = qkv(si), qkv(st)
    return (q, k, v, w[0], w[1], 1e-6, cos, sin), (qt, kt, vt, w[2], w[3])


@pytest.mark.parametrize("shape", FLUX_SHAPES)
def test_producer_reads_flux_text_and_image_streams(device, shape):
    image, text = _flux_inputs(*shape, device)
    out = norm_rope_quantize_for_cudnn(*image, True, 128, *text)
    ref = norm_rope_quantize_for_cudnn_reference(*image, True, 128, *text)
    s = shape[1] + shape[2]
    assert out[0].shape == (shape[0], s, shape[3], shape[4])
    for name, o, r in zip(("q8", "k8", "v8"), out[:3], ref[:3], strict=True):
        _close_codes(o, r, name)
    for o, r in zip(out[3:], ref[3:], strict=True):
        torch.testing.assert_close(o, r, rtol=0, atol=0)


@pytest.mark.parametrize("smooth_k", [True, False])
def test_scales_come_from_the_norm_weights_of_both_streams(device, smooth_k):
    # The descales are the RMSNorm bounds over every stream's weights (K's doubled when it
    # is centred), worked out in the statistics pass rather than passed in.
    image, text = _flux_inputs(2, 9, 30, 2, 32, device)
    text[3].mul_(3)  # the text stream's q weight sets q's bound
    out = norm_rope_quantize_for_cudnn(*image, smooth_k, 128, *text)
    q_bound = rmsnorm_bound_of(image[3], text[3])
    k_bound = rmsnorm_bound_of(image[4], text[4]) * (2 if smooth_k else 1)
    fp8_max = torch.full_like(q_bound, 448.0)
    torch.testing.assert_close(out[3], (q_bound / fp8_max).reshape(1), rtol=0, atol=0)
    torch.testing.assert_close(out[4], (k_bound / fp8_max).reshape(1), rtol=0, atol=0)
    v = torch.cat([text[2], image[2]], dim=1).float()
    torch.testing.assert_close(out[5], v.abs().amax(dim=1, keepdim=True), rtol=0, atol=0)


def test_pair_rotation_is_fluxs_for_fluxs_tables():
    # FLUX's tables repeat each frequency over its pair, so cos at even positions and sin
    # at odd ones rotate exactly as diffusers' apply_rotary_emb does.
    theta = torch.randn(50, 32).repeat_interleave(2, dim=-1)
    x = torch.randn(2, 50, 3, 64).bfloat16()
    ours = wan_rope_reference(x, theta.cos()[None, :, None], theta.sin()[None, :, None])
    assert torch.equal(ours, apply_rope_reference(x, theta.cos(), theta.sin(), sequence_dim=1))


def test_unpadded_keys_and_a_strided_projection(device):
    q, k, v, *rest = _inputs(1, 200, 2, 64, device)
    assert q.stride(1) == 3 * 2 * 64  # chunks of a fused projection, read in place
    out = norm_rope_quantize_for_cudnn(q, k, v, *rest, True, 1)
    ref = norm_rope_quantize_for_cudnn_reference(q.contiguous(), k, v, *rest, True, 1)
    assert out[1].shape[1] == 200
    for name, o, r in zip(("q8", "k8", "v8"), out[:3], ref[:3], strict=True):
        _close_codes(o, r, name)


def test_bad_arguments_are_named(device):
    q, k, v, w_q, w_k, eps, cos, sin = _inputs(1, 64, 2, 32, device)
    call = norm_rope_quantize_for_cudnn
    with pytest.raises(ValueError, match="share one"):
        call(q, k[:, :10], v, w_q, w_k, eps, cos, sin)
    with pytest.raises(ValueError, match="q_weight"):
        call(q, k, v, w_q[:5], w_k, eps, cos, sin)
    with pytest.raises(ValueError, match="freqs_cos"):
        call(q, k, v, w_q, w_k, eps, cos[:, :10], sin)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        call(q, k, v.float(), w_q, w_k, eps, cos, sin)
    with pytest.raises(ValueError, match="kv_align"):
        call(q, k, v, w_q, w_k, eps, cos, sin, True, 0)
    with pytest.raises(ValueError, match="text stream needs"):
        call(q, k, v, w_q, w_k, eps, cos, sin, True, 128, q)
    with pytest.raises(ValueError, match="q_text, k_text and v_text"):
        call(q, k, v, w_q, w_k, eps, cos, sin, True, 128, q[..., :16], k, v, w_q, w_k)
