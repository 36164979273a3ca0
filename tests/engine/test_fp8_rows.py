"""Norms straight into fp8 rows in `fast`: FLUX single blocks (the MLP and the fused QKV
read one set, engine/optimization/gelu_fp8.py), FLUX double blocks and Wan blocks (every
norm, the residual joined in the same pass, engine/optimization/fp8_rows.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.optimization import (  # noqa: E402
    drift,
    fp8_rows,
    gelu_fp8,
    optimize,
    report_of,
)
from engine.pipelines import (  # noqa: E402
    build_flux_transformer,
    build_wan_transformer,
    flux_transformer_inputs,
    wan_transformer_inputs,
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fast(build="flux", **kwargs):
    if build == "flux":
        model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=0)
        inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    else:
        model = build_wan_transformer("tiny", seed=0)
        inputs = wan_transformer_inputs(model, height=32, width=32, num_frames=5, text_len=16)
    with torch.no_grad():
        ref = model(**inputs)[0].float()
    # cuDNN's fp8 attention (its emulation on CPU), as `fast` runs FLUX and Wan on the GPU.
    optimize(
        model, "fast", attention="fp8", attention_fp8_backend="cudnn", attention_fp8_min_kv=0,
        compile=False, **kwargs,
    )  # fmt: skip
    return model, inputs, ref


def _fast_flux():
    return _fast("flux")


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(x, *args):
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(module, name, counted)
    return calls


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0].float()


def test_single_blocks_read_their_norm_as_fp8_rows(monkeypatch):
    model, inputs, ref = _fast_flux()
    calls = []
    real = gelu_fp8.adaln_rows

    def counted(x, shift, scale, eps, prefix=None):
        calls.append((tuple(x.shape), None if prefix is None else tuple(prefix.shape)))
        return real(x, shift, scale, eps, prefix)

    monkeypatch.setattr(gelu_fp8, "adaln_rows", counted)
    rows = _run(model, inputs)
    singles = len(model.single_transformer_blocks)
    assert len(calls) == singles >= 1
    (image, text) = calls[0]
    assert text[1] == 16 and image[1] == inputs["hidden_states"].shape[1]  # read in place

    calls.clear()
    monkeypatch.setattr(gelu_fp8, "_norm_into_fp8_rows", lambda block, x: False)
    through_bf16 = _run(model, inputs)
    assert not calls
    # The same codes either way, up to where the fused kernel rounds (fp32 throughout).
    assert drift(rows, through_bf16)["cosine"] >= 0.9999
    d = drift(rows, ref)
    assert d["rel_l2"] <= 6e-2 and d["cosine"] >= 0.998, d


def test_processor_refuses_fp8_rows_beside_a_text_stream():
    model, inputs, _ = _fast_flux()
    block = model.transformer_blocks[0]
    x = torch.zeros(1, 4, block.attn.inner_dim, dtype=torch.bfloat16)
    rows = (x.to(torch.float8_e4m3fn), torch.ones(1, 4, 1))
    with pytest.raises(ValueError, match="needs its rows too"):
        block.attn.processor(block.attn, x, encoder_hidden_states=x, fp8_rows=rows)
    with pytest.raises(ValueError, match="fp8_context_rows needs encoder_hidden_states"):
        block.attn.processor(block.attn, x, fp8_rows=rows, fp8_context_rows=rows)


@pytest.mark.parametrize("build", ["flux", "wan"])
def test_block_norms_go_into_fp8_rows(build, monkeypatch):
    model, inputs, ref = _fast(build)
    assert "norm_fp8" in report_of(model).kernels
    blocks = model.transformer_blocks if build == "flux" else model.blocks
    adaln = _counting(monkeypatch, fp8_rows, "adaln_rows")
    joined = _counting(monkeypatch, fp8_rows, "residual_rows")
    rows = _run(model, inputs)
    # FLUX: norm1 of each stream, then each stream's residual + norm2. Wan: norm1, then the
    # residual + norm2 (cross attention) and the residual + norm3 (feed-forward).
    assert len(adaln) == (2 if build == "flux" else 1) * len(blocks) >= 1
    assert len(joined) == 2 * len(blocks)
    if build == "flux":
        assert {adaln[0][1], adaln[1][1]} == {16, inputs["hidden_states"].shape[1]}

    adaln.clear()
    monkeypatch.setattr(fp8_rows, "_flux_double_reads_rows", lambda *a: False)
    monkeypatch.setattr(fp8_rows, "_wan_reads_rows", lambda *a: False)
    through_bf16 = _run(model, inputs)
    assert not adaln  # diffusers' forward, the norms through bf16 and the linears' quantizers
    assert drift(rows, through_bf16)["cosine"] >= 0.9999
    d = drift(rows, ref)
    assert d["rel_l2"] <= 6e-2 and d["cosine"] >= 0.998, d


def test_wan_cross_attention_norm_is_its_affine_layer_norm():
    model, _, _ = _fast("wan")
    block = model.blocks[0]
    with torch.no_grad():
        block.norm2.weight.normal_(1.0, 0.2)
        block.norm2.bias.normal_(0.0, 0.2)
    x = torch.randn(1, 8, block.norm2.normalized_shape[0]).to(torch.bfloat16)
    y = torch.randn_like(x)
    gate = torch.rand(1, 1, x.shape[-1])
    scale, shift = fp8_rows._affine_as_modulation(block.norm2, x)
    res, q, s = fp8_rows.residual_rows(x, y, gate, shift, scale, block.norm2.eps)
    expected_res = (x.float() + y * gate).type_as(x)
    assert torch.equal(res, expected_res)
    expected = block.norm2(res.float()).type_as(x).float()
    torch.testing.assert_close(q.float() * s, expected, rtol=0.07, atol=0.02)


def test_lora_wrapped_blocks_run_diffusers_forward():
    model, inputs, _ = _fast("wan", lora_rank=4)
    assert not fp8_rows._wan_reads_rows(
        model.blocks[0], inputs["hidden_states"].to(torch.bfloat16), torch.zeros(1, 6, 8)
    )
    _run(model, inputs)


def test_unknown_kernel_names_are_refused():
    model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=0)
    with pytest.raises(ValueError, match="unknown kernels"):
        optimize(model, "fast", kernels=("gelu_fp8", "no_such_kernel"), compile=False)
