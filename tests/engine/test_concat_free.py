"""kernels=("concat_free",): a FLUX single block's proj_out without the concatenation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.hooks import HookRegistry  # noqa: E402

from engine.optimization import drift, optimize, report_of  # noqa: E402
from engine.optimization.concat_free import HOOK_NAME, linear_of_concat  # noqa: E402
from engine.pipelines import build_flux_transformer, flux_transformer_inputs  # noqa: E402
from tests.engine.tiny import run as _run  # noqa: E402

AOT = {"compile_backend": "aot_eager"}


def test_linear_of_concat_is_the_linear_of_the_concatenation():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(24 + 40, 16)
    a = torch.randn(2, 5, 24, generator=g)
    b = torch.randn(2, 5, 40, generator=g)
    torch.testing.assert_close(linear_of_concat(lin, a, b), lin(torch.cat([a, b], -1)))


def test_exact_single_blocks_skip_the_concatenation(monkeypatch):
    model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=0)
    inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    keys = list(model.state_dict())
    ref = _run(model, inputs)
    optimize(model, "exact", compile=False)
    assert "concat_free" in report_of(model).kernels
    singles = list(model.single_transformer_blocks)
    assert all(HookRegistry.check_if_exists_or_initialize(b).get_hook(HOOK_NAME) for b in singles)
    widths = []
    real_cat = torch.cat

    def cat(tensors, dim=0, **kw):
        widths.append(tensors[0].shape[-1] if dim in (-1, 2) else None)
        return real_cat(tensors, dim, **kw)

    monkeypatch.setattr(torch, "cat", cat)
    d = drift(_run(model, inputs), ref)
    monkeypatch.setattr(torch, "cat", real_cat)
    assert d["rel_l2"] <= 1e-2 and d["cosine"] >= 0.9999, d
    # No concatenation along the channels (the attention output beside the MLP's) is left.
    block = model.single_transformer_blocks[0]
    assert block.proj_out.in_features - block.proj_mlp.out_features not in widths
    assert {k for k in keys if "proj_out" in k} <= set(model.state_dict())


def test_compiled_blocks_share_their_code_and_match_eager():
    """One hook per block, one compiled frame for all of them: more single blocks than the
    recompile limit run without recompiling."""
    from diffusers import FluxTransformer2DModel

    from engine.pipelines.flux import SIZES

    config = {**SIZES["tiny"][0], "num_layers": 1, "num_single_layers": 4}
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**config).to(torch.bfloat16)
    inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    ref = _run(model, inputs)
    with torch._dynamo.config.patch(recompile_limit=3):
        optimize(model, "exact", **AOT)
        d = drift(_run(model, inputs), ref)
        _run(model, inputs)
    assert d["rel_l2"] <= 2e-2 and d["cosine"] >= 0.9998, d
