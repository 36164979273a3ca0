"""Text encoders and the image VAE's decoder compiled per pipeline instance."""

from __future__ import annotations

import pytest
import torch

from engine.optimization import optimize, report_of
from engine.optimization.components import compile_encoders_and_vae, repeated_layers
from engine.pipelines import build_flux_pipeline, build_wan_pipeline

CALL = {"prompt": "a cat", "height": 64, "width": 64, "num_inference_steps": 2}


def _images(pipe) -> torch.Tensor:
    out = pipe(**CALL, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    return out.float()


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_encoder_layers_and_vae_decoder_compile_and_match():
    ref = _images(build_flux_pipeline("tiny", seed=0))
    pipe = build_flux_pipeline("tiny", seed=0)
    other = build_flux_pipeline("tiny", seed=0)
    # optimize() compiles CUDA components only; here CPU ones, traced by dynamo and run by
    # the eager backend, so outputs must match bit for bit.
    names = compile_encoders_and_vae(pipe, devices=("cpu",), backend="eager")
    assert names == ["text_encoder", "text_encoder_2", "vae.decoder"]
    t5_layers = repeated_layers(pipe.text_encoder_2)
    assert len(t5_layers) == pipe.text_encoder_2.config.num_layers
    assert all(_compiled(layer) for layer in t5_layers)
    assert all(_compiled(layer) for layer in repeated_layers(pipe.text_encoder))
    assert _compiled(pipe.vae.decoder) and not _compiled(pipe.vae.encoder)
    # Per instance: a second pipeline from the same classes is untouched.
    assert not _compiled(other.vae.decoder)
    assert not any(_compiled(layer) for layer in repeated_layers(other.text_encoder_2))
    torch.testing.assert_close(_images(pipe), ref, rtol=0, atol=0)


def test_repeated_layers_takes_the_outermost_lists():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([Block(), Block(), Block()])
    model.mixed = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()])
    assert repeated_layers(model) == list(model.blocks)


def test_optimize_leaves_cpu_components_and_reports_none():
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", compile=False)
    assert report_of(pipe).compiled_components == []
    assert not _compiled(pipe.vae.decoder)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_optimize_compiles_components_on_gpu(tmp_path):
    kw = dict(CALL, output_type="pt")
    ref_pipe = build_flux_pipeline("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    ref = ref_pipe(**kw, generator=torch.Generator("cuda").manual_seed(0)).images.float()
    pipe = build_flux_pipeline("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    optimize(pipe, "exact", cache_dir=tmp_path)
    assert report_of(pipe).compiled_components == ["text_encoder", "text_encoder_2", "vae.decoder"]
    out = pipe(**kw, generator=torch.Generator("cuda").manual_seed(0)).images.float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wan_pipeline_compiles_its_text_encoder_and_leaves_the_video_vae(tmp_path):
    kw = {"prompt": "a cat", "height": 32, "width": 32, "num_frames": 5,
          "num_inference_steps": 2, "output_type": "pt"}
    ref_pipe = build_wan_pipeline("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    ref = ref_pipe(**kw, generator=torch.Generator("cuda").manual_seed(0)).frames.float()
    pipe = build_wan_pipeline("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    optimize(pipe, "exact", cache_dir=tmp_path)
    assert report_of(pipe).compiled_components == ["text_encoder"]
    out = pipe(**kw, generator=torch.Generator("cuda").manual_seed(0)).frames.float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999
