"""FLUX single blocks in `fast`: the modulated LayerNorm goes straight into fp8 rows that
the MLP and the fused QKV projection both read (engine/optimization/gelu_fp8.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.optimization import (  # noqa: E402
    drift,
    gelu_fp8,
    optimize,
)
from engine.pipelines import build_flux_transformer, flux_transformer_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fast_flux():
    model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=0)
    inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    with torch.no_grad():
        ref = model(**inputs)[0].float()
    # cuDNN's fp8 attention (its emulation on CPU), as `fast` runs FLUX on the GPU.
    optimize(
        model, "fast", attention="fp8", attention_fp8_backend="cudnn", attention_fp8_min_kv=0,
        compile=False,
    )
    return model, inputs, ref


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
    with pytest.raises(ValueError, match="no text stream"):
        block.attn.processor(block.attn, x, encoder_hidden_states=x, fp8_rows=rows)
