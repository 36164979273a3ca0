import pytest
import torch

from kernels.adaln_norm import adaln_layernorm, adaln_layernorm_launch, adaln_layernorm_reference

ON_GPU = torch.cuda.is_available()
SHAPES = [(1, 4608, 3072), (2, 333, 3072), (3, 7, 128)] if ON_GPU else [(3, 7, 128), (2, 33, 200)]


def _modulation(kind: str, shape, dtype, device):
    b, d = shape[0], shape[-1]
    mod_shape = {"per_sample": (b, d), "per_sample_3d": (b, 1, d), "per_token": shape}[kind]
    return torch.randn(mod_shape, dtype=dtype, device=device) * 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype, device, poisoned, assert_matches):
    x = torch.randn(shape, dtype=dtype, device=device) * 2 + 0.5
    shift = _modulation("per_sample", shape, dtype, device)
    scale = _modulation("per_sample", shape, dtype, device)
    out = adaln_layernorm_launch(x, shift, scale, 1e-6, poisoned(shape, dtype, device))
    ref = adaln_layernorm_reference(x.float(), shift.float(), scale.float(), 1e-6)
    assert_matches(out, ref, dtype)


@pytest.mark.parametrize("kind", ["per_sample_3d", "per_token"])
@pytest.mark.parametrize("late_mod", [False, True], ids=["early_mod", "late_mod"])
def test_modulation_layouts(kind, late_mod, dtype, device, poisoned, assert_matches):
    shape = (2, 45, 160)
    x = torch.randn(shape, dtype=dtype, device=device)
    shift = _modulation(kind, shape, dtype, device)
    scale = _modulation(kind, shape, dtype, device)
    out = adaln_layernorm_launch(
        x, shift, scale, 1e-5, poisoned(shape, dtype, device), late_mod=late_mod
    )
    ref = adaln_layernorm_reference(x.float(), shift.float(), scale.float(), 1e-5)
    assert_matches(out, ref, dtype)


def test_public_op_two_dim_rows(device, assert_matches):
    x = torch.randn(19, 96, dtype=torch.bfloat16, device=device)
    shift = torch.randn(96, dtype=torch.bfloat16, device=device)
    scale = torch.randn(96, dtype=torch.bfloat16, device=device)
    out = adaln_layernorm(x, shift, scale)
    assert out.is_contiguous()
    assert_matches(out, adaln_layernorm_reference(x.float(), shift.float(), scale.float()), x.dtype)


def test_opcheck(device):
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, device=device)
    mod = torch.randn(2, 64, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(adaln_layernorm, (x, mod, mod.clone()), {"eps": 1e-6})
