"""FLUX.1 [dev] pipeline from its real configs with random weights (no download)."""

from __future__ import annotations

from typing import Any

import torch

from engine.pipelines import configs
from engine.pipelines._build import random_model, random_transformers_model
from engine.pipelines.tokenizer import clip_tokenizer, t5_tokenizer

SIZES = {
    "dev": (configs.FLUX_DEV_TRANSFORMER, configs.FLUX_VAE, configs.CLIP_L, configs.T5_XXL),
    "tiny": (
        configs.FLUX_TINY_TRANSFORMER,
        configs.FLUX_TINY_VAE,
        configs.CLIP_TINY,
        configs.T5_TINY,
    ),
}


def build_flux_transformer(
    size: str = "dev",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> torch.nn.Module:
    """FluxTransformer2DModel of the given size with seeded random weights."""
    from diffusers import FluxTransformer2DModel

    return random_model(
        FluxTransformer2DModel, SIZES[size][0], device=device, dtype=dtype, seed=seed
    )


def build_flux_pipeline(
    size: str = "dev",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    transformer: torch.nn.Module | None = None,
) -> Any:
    """A `FluxPipeline` with every component (CLIP-L, T5-XXL, VAE, transformer) from config."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t_cfg, vae_cfg, clip_cfg, t5_cfg = SIZES[size]
    if transformer is None:
        transformer = build_flux_transformer(size, device=device, dtype=dtype, seed=seed)
    vae = random_model(AutoencoderKL, vae_cfg, device=device, dtype=dtype, seed=seed + 1)
    text_encoder = random_transformers_model(
        CLIPTextModel, CLIPTextConfig, clip_cfg, device=device, dtype=dtype, seed=seed + 2
    )
    text_encoder_2 = random_transformers_model(
        T5EncoderModel, T5Config, t5_cfg, device=device, dtype=dtype, seed=seed + 3
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs.FLUX_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(clip_cfg["vocab_size"], clip_cfg["max_position_embeddings"]),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(t5_cfg["vocab_size"], 512),
        transformer=transformer,
    )


def flux_transformer_inputs(
    transformer: torch.nn.Module,
    *,
    height: int = 1024,
    width: int = 1024,
    text_len: int = 512,
    batch: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one denoising call at the given resolution (packed 2x2 latents)."""
    cfg = transformer.config
    p = next(transformer.parameters())
    device, dtype = p.device, p.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    h, w = height // 16, width // 16
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    inputs = {
        "hidden_states": torch.randn(batch, h * w, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), 0.75),
        "img_ids": img_ids.reshape(h * w, 3),
        "txt_ids": torch.zeros(text_len, 3),
    }
    out = {
        k: v.to(device=device, dtype=dtype if k not in ("img_ids", "txt_ids") else v.dtype)
        for k, v in inputs.items()
    }
    if cfg.guidance_embeds:
        out["guidance"] = torch.full((batch,), 3.5, device=device, dtype=torch.float32)
    out["return_dict"] = False
    return out
