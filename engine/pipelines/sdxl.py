"""SDXL's UNet (the UNet case of the engine) from its real config with random weights."""

from __future__ import annotations

from typing import Any

import torch

from engine.pipelines import configs
from engine.pipelines._build import random_model

SIZES = {"base": configs.SDXL_UNET, "tiny": configs.SDXL_TINY_UNET}


def build_sdxl_unet(
    size: str = "base",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> torch.nn.Module:
    """UNet2DConditionModel with SDXL's layout and seeded random weights."""
    from diffusers import UNet2DConditionModel

    return random_model(UNet2DConditionModel, SIZES[size], device=device, dtype=dtype, seed=seed)


def sdxl_unet_inputs(
    unet: torch.nn.Module,
    *,
    height: int = 1024,
    width: int = 1024,
    text_len: int = 77,
    batch: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one UNet call (text embeddings and SDXL's size conditioning)."""
    cfg = unet.config
    p = next(unet.parameters())
    g = torch.Generator(device="cpu").manual_seed(seed)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    sample = torch.randn(batch, cfg.in_channels, height // 8, width // 8, generator=g)
    return {
        "sample": sample.to(p.device, p.dtype),
        "timestep": torch.tensor(500.0, device=p.device),
        "encoder_hidden_states": torch.randn(
            batch, text_len, cfg.cross_attention_dim, generator=g
        ).to(p.device, p.dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, pooled, generator=g).to(p.device, p.dtype),
            "time_ids": torch.tensor(
                [[height, width, 0, 0, height, width]] * batch, dtype=p.dtype, device=p.device
            ),
        },
        "return_dict": False,
    }
