"""Decoded images to PIL on the image's device: the same pixels as diffusers' host path."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.image_processor import VaeImageProcessor, VaeImageProcessorLDM3D  # noqa: E402

from engine.optimization import optimize, report_of  # noqa: E402
from engine.optimization.postprocess import (  # noqa: E402
    DevicePilImageProcessor,
    use_device_postprocess,
)
from engine.pipelines import build_flux_pipeline  # noqa: E402


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_pixels_are_the_bytes_diffusers_produces(dtype, channels):
    g = torch.Generator().manual_seed(0)
    # Decoder output spills past [-1, 1] and lands on rounding ties: both are exercised.
    image = (torch.randn(2, channels, 33, 47, generator=g) * 0.8).to(dtype)
    image[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255 - 1, 3.0]).to(dtype)
    stock = VaeImageProcessor(vae_scale_factor=16)
    ours = DevicePilImageProcessor.from_config(stock.config)
    want, got = stock.postprocess(image, "pil"), ours.postprocess(image, "pil")
    assert [im.mode for im in got] == [im.mode for im in want]
    for w, o in zip(_pixels(want), _pixels(got), strict=True):
        assert w.dtype == o.dtype == np.uint8
        np.testing.assert_array_equal(o, w)
    # Per-image denormalize flags and the other output types take diffusers' own path.
    flags = [True, False]
    for w, o in zip(
        _pixels(stock.postprocess(image, "pil", flags)),
        _pixels(ours.postprocess(image, "pil", flags)),
        strict=True,
    ):
        np.testing.assert_array_equal(o, w)
    np.testing.assert_array_equal(ours.postprocess(image, "np"), stock.postprocess(image, "np"))


def test_optimize_gives_only_this_pipeline_the_device_postprocess():
    pipe = build_flux_pipeline("tiny", device="cpu", dtype=torch.float32, seed=0)
    other = build_flux_pipeline("tiny", device="cpu", dtype=torch.float32, seed=0)
    optimize(pipe, "exact", compile=False, cuda_graphs=False)
    assert type(pipe.image_processor) is DevicePilImageProcessor
    assert type(other.image_processor) is VaeImageProcessor
    assert report_of(pipe).device_postprocess is True
    assert (
        pipe.image_processor.config.vae_scale_factor
        == other.image_processor.config.vae_scale_factor
    )
    # A processor diffusers subclassed for another purpose is left as it is, and so is a
    # pipeline without one.
    depth = SimpleNamespace(image_processor=VaeImageProcessorLDM3D())
    kept = depth.image_processor
    assert use_device_postprocess(depth) is False and depth.image_processor is kept
    assert use_device_postprocess(object()) is False
