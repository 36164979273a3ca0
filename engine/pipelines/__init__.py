"""Diffusers pipelines built from their published configs with random weights.

Nothing is downloaded: benchmarks and tests need the real architectures and sizes, not
the trained weights. `size="tiny"` gives a twin with every architectural switch of the
full model and widths small enough for CPU tests.
"""

from engine.pipelines.flux import (
    build_flux_pipeline,
    build_flux_transformer,
    flux_transformer_inputs,
)
from engine.pipelines.sdxl import build_sdxl_unet, sdxl_unet_inputs
from engine.pipelines.wan import build_wan_pipeline, build_wan_transformer, wan_transformer_inputs

__all__ = [
    "build_flux_pipeline",
    "build_flux_transformer",
    "build_sdxl_unet",
    "build_wan_pipeline",
    "build_wan_transformer",
    "flux_transformer_inputs",
    "sdxl_unet_inputs",
    "wan_transformer_inputs",
]
