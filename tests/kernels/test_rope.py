import math

import pytest
import torch

from kernels.qk_norm import qk_launch
from kernels.rope import (
    apply_rope,
    apply_rope_reference,
    qk_rmsnorm_rope,
    qk_rmsnorm_rope_reference,
)

ON_GPU = torch.cuda.is_available()
SHAPES = (
    [(1, 24, 4608, 128), (2, 5, 333, 128), (3, 2, 7, 64)]
    if ON_GPU
    else [(2, 3, 7, 64), (1, 2, 33, 128)]
)


def flux_cos_sin(seq_len: int, head_dim: int, device):
    """cos/sin as FluxPosEmbed builds them: 3 axes (16, 56, 56 of 128), pairs repeated, fp32."""
    axes = [head_dim // 8, head_dim * 7 // 16]
    axes.append(head_dim - sum(axes))
    ids = torch.randint(0, 64, (seq_len, 3), device=device).float()
    cos_parts, sin_parts = [], []
    for i, dim in enumerate(axes):
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))
        angles = ids[:, i : i + 1] * freqs[None, :]
        cos_parts.append(angles.cos().repeat_interleave(2, dim=-1))
        sin_parts.append(angles.sin().repeat_interleave(2, dim=-1))
    return torch.cat(cos_parts, -1), torch.cat(sin_parts, -1)


def random_cos_sin(seq_len: int, head_dim: int, device):
    """Unrelated values per element, so a kernel that assumes repeated pairs fails."""
    angles = torch.rand(seq_len, head_dim, device=device) * 2 * math.pi
    return angles.cos(), angles.sin() * 1.5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tables", ["flux", "random"])
def test_apply_rope(shape, tables, dtype, device, poisoned, assert_matches):
    x = torch.randn(shape, dtype=dtype, device=device)
    make = flux_cos_sin if tables == "flux" else random_cos_sin
    cos, sin = make(shape[2], shape[3], device)
    out = poisoned(shape, dtype, device)
    qk_launch(x, None, None, None, cos, sin, 0.0, out, None, seq_dim=2)
    assert_matches(out, apply_rope_reference(x.float(), cos, sin), dtype)


def test_apply_rope_sequence_dim_1(dtype, device, assert_matches):
    x = torch.randn(2, 21, 3, 64, dtype=dtype, device=device)  # (B, S, H, Dh)
    cos, sin = random_cos_sin(21, 64, device)
    out = apply_rope(x, cos, sin, sequence_dim=1)
    assert_matches(out, apply_rope_reference(x.float(), cos, sin, sequence_dim=1), dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_qk_rmsnorm_rope(shape, dtype, device, poisoned, assert_matches):
    q = torch.randn(shape, dtype=dtype, device=device) * 2
    k = torch.randn(shape, dtype=dtype, device=device)
    qw = 1 + 0.2 * torch.randn(shape[-1], dtype=dtype, device=device)
    kw = 1 + 0.2 * torch.randn(shape[-1], dtype=dtype, device=device)
    cos, sin = random_cos_sin(shape[2], shape[3], device)
    q_out, k_out = poisoned(shape, dtype, device), poisoned(shape, dtype, device)
    qk_launch(q, k, qw, kw, cos, sin, 1e-6, q_out, k_out, seq_dim=2)
    q_ref, k_ref = qk_rmsnorm_rope_reference(
        q.float(), k.float(), qw.float(), kw.float(), cos, sin, 1e-6
    )
    assert_matches(q_out, q_ref, dtype, scale=1.5)
    assert_matches(k_out, k_ref, dtype, scale=1.5)


def test_qk_rmsnorm_rope_strided_sequence_dim_1(device, assert_matches):
    b, s, h, dh = 1, 17, 2, 64
    qkv = torch.randn(b, s, 3, h, dh, dtype=torch.bfloat16, device=device)
    q, k = qkv[:, :, 0], qkv[:, :, 1]  # (B, S, H, Dh), not contiguous
    qw = torch.rand(dh, dtype=torch.bfloat16, device=device) + 0.5
    kw = torch.rand(dh, dtype=torch.bfloat16, device=device) + 0.5
    cos, sin = flux_cos_sin(s, dh, device)
    q_out, k_out = qk_rmsnorm_rope(q, k, qw, kw, cos, sin, 1e-6, 1)
    q_ref, k_ref = qk_rmsnorm_rope_reference(
        q.float(), k.float(), qw.float(), kw.float(), cos, sin, 1e-6, 1
    )
    assert_matches(q_out, q_ref, torch.bfloat16, scale=1.5)
    assert_matches(k_out, k_ref, torch.bfloat16, scale=1.5)


def test_opcheck(device):
    q = torch.randn(1, 2, 9, 64, dtype=torch.bfloat16, device=device)
    k = torch.randn(1, 2, 9, 64, dtype=torch.bfloat16, device=device)
    w = torch.ones(64, dtype=torch.bfloat16, device=device)
    cos, sin = flux_cos_sin(9, 64, device)
    torch.library.opcheck(apply_rope, (q, cos, sin))
    torch.library.opcheck(qk_rmsnorm_rope, (q, k, w, w.clone(), cos, sin), {"eps": 1e-6})
