"""Shared fixtures for the kernel tests.

Without a CUDA device the kernels run in Triton's interpreter, which has to be chosen
before Triton is first imported; this conftest is loaded before the test modules import
it. On a GPU the same tests run compiled kernels at full model sizes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TOLERANCES = {
    torch.bfloat16: {"atol": 1.5e-2, "rtol": 1.5e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
}
# ||out - ref|| / ||ref|| bound: a few units of the output format's rounding.
REL_NORM = {torch.bfloat16: 6e-3, torch.float16: 8e-4, torch.float32: 1e-6}


@pytest.fixture(scope="session")
def device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    from kernels._utils import INTERPRETING

    if not INTERPRETING:
        # Something imported Triton (torch.compile does) before this conftest could pick the
        # interpreter; CPU tensors cannot reach compiled Triton kernels.
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 and there is no GPU")
    return "cpu"


@pytest.fixture(params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def poisoned():
    """Allocate an output filled with NaN, so elements a kernel forgets to write fail."""

    def make(shape, dtype, device) -> torch.Tensor:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    return make


@pytest.fixture
def assert_matches():
    """Compare a kernel output with a float32 reference under the output dtype's tolerances."""

    def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
        assert out.dtype == dtype
        assert out.shape == ref.shape
        assert not torch.isnan(out).any(), "unwritten (NaN) elements in the output"
        out32, ref32 = out.float(), ref.float()
        tol = TOLERANCES[dtype]
        torch.testing.assert_close(
            out32, ref32, atol=tol["atol"] * scale, rtol=tol["rtol"] * scale
        )
        rel = (out32 - ref32).norm() / ref32.norm().clamp_min(1e-30)
        assert rel <= REL_NORM[dtype] * scale, f"relative error {rel:.2e}"

    return check
