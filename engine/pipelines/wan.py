"""Wan 2.1 text-to-video (1.3B) pipeline from its real configs with random weights."""

from __future__ import annotations

from typing import Any

import torch

from engine.pipelines import configs
from engine.pipelines._build import random_model, random_transformers_model
from engine.pipelines.tokenizer import t5_tokenizer

SIZES = {
    "1.3b": (configs.WAN_1_3B_TRANSFORMER, configs.WAN_VAE, configs.UMT5_XXL),
    "tiny": (configs.WAN_TINY_TRANSFORMER, configs.WAN_TINY_VAE, configs.UMT5_TINY),
}


def build_wan_transformer(
    size: str = "1.3b",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> torch.nn.Module:
    """WanTransformer3DModel with seeded random weights (rotary tables and norms kept fp32)."""
    from diffusers import WanTransformer3DModel

    return random_model(
        WanTransformer3DModel, SIZES[size][0], device=device, dtype=dtype, seed=seed
    )


def build_wan_pipeline(
    size: str = "1.3b",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    transformer: torch.nn.Module | None = None,
    with_text_encoder: bool = True,
) -> Any:
    """A `WanPipeline` (UMT5-XXL, Wan VAE, transformer, UniPC flow scheduler) from config."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    t_cfg, vae_cfg, te_cfg = SIZES[size]
    if transformer is None:
        transformer = build_wan_transformer(size, device=device, dtype=dtype, seed=seed)
    # The Wan VAE runs in fp32 in the reference pipeline; its decode is a small share of the time.
    vae = random_model(AutoencoderKLWan, vae_cfg, device=device, dtype=torch.float32, seed=seed + 1)
    text_encoder = (
        random_transformers_model(
            UMT5EncoderModel, UMT5Config, te_cfg, device=device, dtype=dtype, seed=seed + 2
        )
        if with_text_encoder
        else None
    )
    return WanPipeline(
        tokenizer=t5_tokenizer(te_cfg["vocab_size"], 512),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**configs.WAN_SCHEDULER),
        transformer=transformer,
    )


def wan_transformer_inputs(
    transformer: torch.nn.Module,
    *,
    height: int = 480,
    width: int = 832,
    num_frames: int = 81,
    text_len: int = 512,
    batch: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one denoising call for a video of the given size."""
    cfg = transformer.config
    p = transformer.proj_out.weight
    device, dtype = p.device, p.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    t = (num_frames - 1) // 4 + 1
    latents = torch.randn(batch, cfg.in_channels, t, height // 8, width // 8, generator=g)
    return {
        "hidden_states": latents.to(device=device, dtype=dtype),
        "timestep": torch.full((batch,), 750.0).to(device),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.text_dim, generator=g).to(
            device, dtype
        ),
        "return_dict": False,
    }
