"""The Gluon fp8 attention against the same quantized math in torch (Hopper only: wgmma)."""

from __future__ import annotations

import math

import pytest
import torch

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
hopper = pytest.mark.skipif(not HOPPER, reason="wgmma and TMA need a Hopper GPU")


def _operands(b, s_q, s_kv, h, d, pad_to=128, seed=0):
    from engine.optimization.cudnn_fp8 import quantize_for_cudnn

    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(b, s, h, d, device="cuda", generator=g).to(torch.bfloat16)
        for s in (s_q, s_kv, s_kv)
    )
    k = k + 3 * torch.randn(1, 1, h, d, device="cuda", generator=g).to(torch.bfloat16)
    return quantize_for_cudnn(q, k, v, kv_align=pad_to)


def _reference(q8, k8, v8, dq, dk, kv_len):
    # fp32 scores, P = exp(s - max)·448 rounded to e4m3, P·V / row sum (the kernel's math).
    q, k, v = (t.float().transpose(1, 2) for t in (q8, k8, v8))
    s = (q @ k.transpose(-1, -2)) * (dq * dk).reshape(()) / math.sqrt(q.shape[-1])
    s[..., kv_len:] = float("-inf")
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    o = ((p * 448).to(torch.float8_e4m3fn).float() @ v) / 448 / p.sum(dim=-1, keepdim=True)
    return o.transpose(1, 2)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize(
    "b, s_q, s_kv, h",
    [(1, 4608, 4608, 3), (2, 1000, 1000, 2), (1, 300, 2000, 2), (1, 128, 128, 1), (1, 77, 129, 2)],
)
@pytest.mark.parametrize("config", [(128, 128, 3, 8), (64, 128, 2, 4), (128, 64, 3, 8)])
def test_matches_the_quantized_math(b, s_q, s_kv, h, config):
    from kernels.attention_fp8_wgmma import attention_fp8_wgmma, transpose_v

    q8, k8, v8, dq, dk, _ = _operands(b, s_q, s_kv, h, 128)
    out = attention_fp8_wgmma(q8, k8, transpose_v(v8), dq, dk, s_kv, *config)
    ref = _reference(q8, k8, v8, dq, dk, s_kv)
    assert out.shape == (b, s_q, h, 128) and out.dtype == torch.bfloat16
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 4e-2, err  # e4m3 P: the kernel and torch round a few exp2 values apart


@pytest.mark.gpu
@hopper
def test_padded_keys_are_left_out():
    from kernels.attention_fp8_wgmma import attention_fp8_wgmma, transpose_v

    q8, k8, v8, dq, dk, _ = _operands(1, 256, 300, 2, 128)
    assert k8.shape[1] == 384
    poisoned_k, poisoned_v = k8.clone(), v8.clone()
    poisoned_k[:, 300:] = 100.0  # would dominate every row if the padding mask leaked
    poisoned_v[:, 300:] = 100.0
    clean = attention_fp8_wgmma(q8, k8, transpose_v(v8), dq, dk, 300)
    poisoned = attention_fp8_wgmma(q8, poisoned_k, transpose_v(poisoned_v), dq, dk, 300)
    torch.testing.assert_close(clean, poisoned, rtol=0, atol=0)


def test_rejects_bad_operands():
    from kernels.attention_fp8_wgmma import attention_fp8_wgmma, transpose_v

    e4m3 = torch.float8_e4m3fn
    q8 = torch.zeros(1, 64, 2, 128, dtype=e4m3)
    k8 = torch.zeros(1, 128, 2, 128, dtype=e4m3)
    d = torch.ones(1)
    vt8 = transpose_v(k8)
    with pytest.raises(ValueError, match="shapes"):  # head dims differ
        attention_fp8_wgmma(q8[..., :64], k8, vt8, d, d)
    with pytest.raises(ValueError, match="multiple of 32"):  # keys not padded
        attention_fp8_wgmma(q8, k8[:, :100], torch.zeros(1, 2, 128, 100, dtype=e4m3), d, d)
    with pytest.raises(ValueError, match="kv_len"):
        attention_fp8_wgmma(q8, k8, vt8, d, d, kv_len=129)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        attention_fp8_wgmma(q8.to(torch.bfloat16), k8, vt8, d, d)


def test_transpose_v_reorders_keys_within_each_32():
    from kernels.attention_fp8_wgmma import transpose_v

    v = torch.arange(64, dtype=torch.float32).reshape(1, 64, 1, 1).expand(1, 64, 1, 2)
    vt = transpose_v(v)
    assert vt.shape == (1, 1, 2, 64)
    order = vt[0, 0, 0].long().tolist()
    # Within 32 keys: the thread with q = 1 holds columns 2, 3, 10, 11 (then +16) of the
    # MMA's accumulator, which the e4m3 operand wants at positions 4..7 (then 20..23).
    assert order[4:8] == [2, 3, 10, 11] and order[20:24] == [18, 19, 26, 27]
    assert sorted(order[:32]) == list(range(32)) and order[32:36] == [32, 33, 40, 41]
