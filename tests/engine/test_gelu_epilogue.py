"""kernels=("gelu_epilogue",): a bf16 feed-forward's tanh-GELU inside its up projection's GEMM."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.models.activations import GELU  # noqa: E402

from engine.optimization import drift, optimize, report_of  # noqa: E402
from engine.optimization.gelu_epilogue import (  # noqa: E402
    LinearGELU,
    ProjectionGELU,
    fuse_gelu_into_gemms,
    linear_gelu_tanh,
)
from engine.pipelines import (  # noqa: E402
    flux_transformer_inputs,
)
from tests.engine.tiny import run as _run  # noqa: E402
from tests.engine.tiny import tiny as _tiny  # noqa: E402

AOT = {"compile_backend": "aot_eager"}


def test_linear_gelu_is_the_tanh_gelu_of_the_linear():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(32, 48).to(torch.bfloat16)
    x = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16)
    out = linear_gelu_tanh(x, lin)
    ref = torch.nn.functional.gelu(lin(x).float(), approximate="tanh")
    assert out.shape == (2, 5, 48) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("build", ["flux", "wan"])
def test_exact_runs_each_gelu_in_its_gemm_and_matches_eager(build):
    model, inputs = _tiny(build)
    plain, _ = _tiny(build)
    optimize(plain, "exact", kernels=(), compile=False)
    assert not any(isinstance(m, ProjectionGELU) for m in plain.modules())
    ref = _run(model, inputs)
    optimize(model, "exact", **AOT)
    assert "gelu_epilogue" in report_of(model).kernels
    assert not any(type(m) is GELU for m in model.modules())
    assert any(isinstance(m, ProjectionGELU) for m in model.modules())
    if build == "flux":
        singles = list(model.single_transformer_blocks)
        assert singles and all(isinstance(b.act_mlp, torch.nn.Identity) for b in singles)
        assert all(type(b.proj_mlp) is LinearGELU for b in singles)
    # Names are unchanged, so LoRA targets and checkpoints still match.
    assert list(model.state_dict()) == list(plain.state_dict())
    d = drift(_run(model, inputs), ref)
    assert d["rel_l2"] <= 2e-2 and d["cosine"] >= 0.9998, d


def test_fp8_feed_forwards_and_fp32_linears_are_left_alone():
    model, _ = _tiny("flux")
    optimize(model, "fast", compile=False)
    assert "gelu_epilogue" not in report_of(model).kernels
    assert not any(isinstance(m, ProjectionGELU) for m in model.modules())
    fp32, _ = _tiny("wan")
    assert fuse_gelu_into_gemms(fp32.float()) == 0


def test_blocks_share_their_compiled_code():
    """No per-layer objects for dynamo to guard on: more single blocks than the recompile
    limit still run one compiled frame (a hook per proj_mlp recompiled per block)."""
    from diffusers import FluxTransformer2DModel

    from engine.pipelines.flux import SIZES

    config = {**SIZES["tiny"][0], "num_layers": 1, "num_single_layers": 4}
    model = FluxTransformer2DModel(**config).to(torch.bfloat16)
    inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    with torch._dynamo.config.patch(recompile_limit=3):
        optimize(model, "exact", **AOT)
        _run(model, inputs)
        _run(model, inputs)


def test_benchmark_part_times_every_way_and_reports_the_error():
    from bench.enginebench.gelu_epilogue import gelu_epilogue_table, measure_shape

    row = measure_shape(16, 32, 128, torch.device("cpu"), iters=1)
    assert all(row[k] > 0 for k in ("linear", "linear + gelu", "epilogue, compiled"))
    assert row["rel L2, epilogue"] < 1e-2
    table = gelu_epilogue_table({"rows": [{"shape": "tiny", **row}]})
    assert len(table) == 3 and table[2].startswith("| tiny |")
