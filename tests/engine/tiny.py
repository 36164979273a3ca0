"""Tiny FLUX and Wan transformers with their inputs, as the engine tests build them."""

from __future__ import annotations

import torch

from engine.pipelines import (
    build_flux_transformer,
    build_wan_transformer,
    flux_transformer_inputs,
    wan_transformer_inputs,
)


def tiny_flux(seed: int = 0):
    """A bf16 tiny FLUX transformer and its inputs at 64×64 with 16 text tokens."""
    model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=seed)
    return model, flux_transformer_inputs(model, height=64, width=64, text_len=16)


def tiny_wan():
    """A tiny Wan transformer and its inputs at 32×32, 5 frames, 16 text tokens."""
    model = build_wan_transformer("tiny", seed=0)
    return model, wan_transformer_inputs(model, height=32, width=32, num_frames=5, text_len=16)


def tiny(build: str):
    return tiny_flux() if build == "flux" else tiny_wan()


@torch.no_grad()
def run(model, inputs) -> torch.Tensor:
    """The model's output on `inputs`, in fp32."""
    return model(**inputs)[0].float()
