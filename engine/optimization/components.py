"""The pipeline's components around the denoiser: text encoders and the image VAE's decoder.

A FLUX.1-dev image at 1024² spent 141 ms outside the transformer on an H200 (prompt
encoding 32, VAE decode 87, conversion to PIL 22) in every mode, as eager kernels.
Compiling them per instance fuses their norms and activations into the neighbouring
kernels: the text encoders layer by layer (one compile per layer class, as the denoiser's
blocks are), the 2-D VAE's decoder whole (its up-blocks differ in width). That took the
same work to 72 ms (BENCHMARKS.md). The video VAEs decode frame chunks through a
Python-side cache and stay eager.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
IMAGE_VAES = ("AutoencoderKL",)


def device_of(model: nn.Module) -> torch.device:
    """Where a module's first parameter (or buffer) lives; CPU for an empty module."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def repeated_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of the outermost ModuleLists in `model` whose entries share one class."""
    layers: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():  # parents before children
        if any(name.startswith(prefix) for prefix in taken):
            continue  # inside a layer already compiled whole
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            if len({type(m) for m in module}) == 1:
                layers.extend(module)
                taken.append(f"{name}.")
    return layers


def compile_encoders_and_vae(
    pipeline: Any, *, devices: tuple[str, ...] = ("cuda",), **compile_kwargs: Any
) -> list[str]:
    """Compile the text encoders' repeated layers and an image VAE's decoder, in place.

    Only components on `devices` (device types) are compiled. Returns the names of the
    components compiled (e.g. "text_encoder_2", "vae.decoder").
    Component outputs are unchanged up to bf16 rounding: the same ops, fused.
    """
    compiled: list[str] = []
    for name in TEXT_ENCODERS:
        encoder = getattr(pipeline, name, None)
        if not isinstance(encoder, nn.Module) or device_of(encoder).type not in devices:
            continue
        layers = repeated_layers(encoder)
        for layer in layers:
            # Not fullgraph: encoder layers from transformers branch on config and flags.
            layer.compile(fullgraph=False, **compile_kwargs)
        if layers:
            compiled.append(name)
    vae = image_vae(pipeline, devices)
    if vae is not None and isinstance(getattr(vae, "decoder", None), nn.Module):
        vae.decoder.compile(fullgraph=False, **compile_kwargs)
        compiled.append("vae.decoder")
    return compiled


def image_vae(pipeline: Any, devices: tuple[str, ...] = ("cuda",)) -> nn.Module | None:
    """The pipeline's 2-D image VAE when it is on `devices`; None for video VAEs (3-D convs)."""
    vae = getattr(pipeline, "vae", None)
    if isinstance(vae, nn.Module) and type(vae).__name__ in IMAGE_VAES:
        if device_of(vae).type in devices:
            return vae
    return None
