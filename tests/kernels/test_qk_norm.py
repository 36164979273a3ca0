import pytest
import torch

from kernels.qk_norm import qk_launch, qk_rmsnorm, qk_rmsnorm_reference

ON_GPU = torch.cuda.is_available()
SHAPES = (
    [(1, 24, 4608, 128), (2, 5, 333, 128), (3, 2, 7, 64)]
    if ON_GPU
    else [(2, 3, 7, 64), (1, 2, 33, 128)]
)


def _weights(n, dtype, device):
    return (
        1 + 0.2 * torch.randn(n, dtype=dtype, device=device),
        1 + 0.2 * torch.randn(n, dtype=dtype, device=device),
    )


def _run(q, k, qw, kw, poisoned, eps=1e-6):
    q_out = poisoned(q.shape, q.dtype, q.device)
    k_out = poisoned(k.shape, k.dtype, k.device)
    qk_launch(q, k, qw, kw, None, None, eps, q_out, k_out)
    return q_out, k_out


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype, device, poisoned, assert_matches):
    q = torch.randn(shape, dtype=dtype, device=device) * 3
    k = torch.randn(shape, dtype=dtype, device=device)
    qw, kw = _weights(shape[-1], dtype, device)
    q_out, k_out = _run(q, k, qw, kw, poisoned)
    q_ref, k_ref = qk_rmsnorm_reference(q.float(), k.float(), qw.float(), kw.float())
    assert_matches(q_out, q_ref, dtype)
    assert_matches(k_out, k_ref, dtype)


def test_strided_views_of_a_fused_projection(dtype, device, poisoned, assert_matches):
    # q and k as diffusers gets them: (B, S, H, Dh) slices of one qkv tensor, seen as (B, H, S, Dh).
    b, s, h, dh = 2, 41, 3, 64
    qkv = torch.randn(b, s, 3, h, dh, dtype=dtype, device=device)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous()
    qw, kw = _weights(dh, dtype, device)
    q_out, k_out = _run(q, k, qw, kw, poisoned)
    q_ref, k_ref = qk_rmsnorm_reference(q.float(), k.float(), qw.float(), kw.float())
    assert_matches(q_out, q_ref, dtype)
    assert_matches(k_out, k_ref, dtype)


def test_norm_across_heads_with_different_lengths(dtype, device, poisoned, assert_matches):
    # Wan normalizes q and k over all heads at once: rows of H * Dh; cross-attention k is shorter.
    n = 1536 if ON_GPU else 192
    q = torch.randn(2, 19, n, dtype=dtype, device=device)
    k = torch.randn(2, 7, n, dtype=dtype, device=device)
    qw, kw = _weights(n, dtype, device)
    q_out, k_out = _run(q, k, qw, kw, poisoned, eps=1e-5)
    q_ref, k_ref = qk_rmsnorm_reference(q.float(), k.float(), qw.float(), kw.float(), 1e-5)
    assert_matches(q_out, q_ref, dtype)
    assert_matches(k_out, k_ref, dtype)


def test_public_op_and_opcheck(device):
    q = torch.randn(1, 2, 9, 64, dtype=torch.bfloat16, device=device)
    k = torch.randn(1, 2, 9, 64, dtype=torch.bfloat16, device=device)
    qw, kw = _weights(64, torch.bfloat16, device)
    q_out, k_out = qk_rmsnorm(q, k, qw, kw)
    assert q_out.shape == q.shape and k_out.dtype == k.dtype
    torch.library.opcheck(qk_rmsnorm, (q, k, qw, kw), {"eps": 1e-6})
