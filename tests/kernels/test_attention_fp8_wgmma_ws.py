"""The warp-specialized Gluon fp8 attention against the plain one (Hopper only).

Both run the same arithmetic in the same order per query row, so their outputs must agree
to the bit (a rescale skipped when no row's max moved multiplies by exactly 1); the plain
kernel is itself tested against the quantized math in torch.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_attention_fp8_wgmma import _operands, hopper


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize(
    "b, s_q, s_kv, h",
    [(1, 4608, 4608, 3), (2, 1000, 1000, 2), (1, 300, 2000, 2), (1, 128, 128, 1), (1, 77, 129, 2)],
)
@pytest.mark.parametrize("stages, lazy_rescale", [(2, True), (3, True), (2, False)])
def test_matches_the_plain_kernel_bit_for_bit(b, s_q, s_kv, h, stages, lazy_rescale):
    from kernels.attention_fp8_wgmma import attention_fp8_wgmma, transpose_v
    from kernels.attention_fp8_wgmma_ws import attention_fp8_wgmma_ws

    q8, k8, v8, dq, dk, _ = _operands(b, s_q, s_kv, h, 128)
    vt8 = transpose_v(v8)
    plain = attention_fp8_wgmma(q8, k8, vt8, dq, dk, s_kv)
    ws = attention_fp8_wgmma_ws(q8, k8, vt8, dq, dk, s_kv, stages=stages, lazy_rescale=lazy_rescale)
    assert ws.shape == (b, s_q, h, 128) and ws.dtype == torch.bfloat16
    torch.testing.assert_close(ws, plain, rtol=0, atol=0)


@pytest.mark.gpu
@hopper
def test_padded_keys_are_left_out():
    from kernels.attention_fp8_wgmma import transpose_v
    from kernels.attention_fp8_wgmma_ws import attention_fp8_wgmma_ws

    q8, k8, v8, dq, dk, _ = _operands(1, 256, 300, 2, 128)
    poisoned_k, poisoned_v = k8.clone(), v8.clone()
    poisoned_k[:, 300:] = 100.0
    poisoned_v[:, 300:] = 100.0
    clean = attention_fp8_wgmma_ws(q8, k8, transpose_v(v8), dq, dk, 300)
    poisoned = attention_fp8_wgmma_ws(q8, poisoned_k, transpose_v(poisoned_v), dq, dk, 300)
    torch.testing.assert_close(clean, poisoned, rtol=0, atol=0)


def test_rejects_bad_operands():
    from kernels.attention_fp8_wgmma import transpose_v
    from kernels.attention_fp8_wgmma_ws import attention_fp8_wgmma_ws

    e4m3 = torch.float8_e4m3fn
    q8 = torch.zeros(1, 64, 2, 128, dtype=e4m3)
    k8 = torch.zeros(1, 128, 2, 128, dtype=e4m3)
    d = torch.ones(1)
    with pytest.raises(ValueError, match="shapes"):
        attention_fp8_wgmma_ws(q8[..., :64], k8, transpose_v(k8), d, d)
    with pytest.raises(ValueError, match="kv_len"):
        attention_fp8_wgmma_ws(q8, k8, transpose_v(k8), d, d, kv_len=129)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        attention_fp8_wgmma_ws(q8.to(torch.bfloat16), k8, transpose_v(k8), d, d)
    with pytest.raises(ValueError, match="head dim of 128"):
        small = q8[..., :64].contiguous(), k8[..., :64].contiguous()
        attention_fp8_wgmma_ws(*small, transpose_v(small[1]), d, d, lazy_rescale=True)
