"""Decoded images to PIL with the arithmetic on the GPU.

diffusers' `VaeImageProcessor.postprocess(..., output_type="pil")` copies the decoded
image to the host as float32 (12 MB at 1024²) and scales, rounds and casts it with numpy:
14.9 ms per 1024² image on an H100's host, a fifth of everything around FLUX's
transformer. Here the same float32 multiply, round-half-to-even and cast run where the
image already is, and only the uint8 pixels (3 MB) cross to the host. The pixels are the
same bytes: both sides round identical float32 values the same way.
"""

from __future__ import annotations

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor


class DevicePilImageProcessor(VaeImageProcessor):
    """`VaeImageProcessor` whose "pil" output is quantized to uint8 on the image's device."""

    def postprocess(self, image, output_type: str = "pil", do_denormalize=None):
        if output_type != "pil" or not isinstance(image, torch.Tensor) or image.ndim != 4:
            return super().postprocess(image, output_type, do_denormalize)
        image = self._denormalize_conditionally(image, do_denormalize)
        pixels = (image.permute(0, 2, 3, 1).float() * 255).round().to(torch.uint8).cpu().numpy()
        if pixels.shape[-1] == 1:
            return [PIL.Image.fromarray(p.squeeze(), mode="L") for p in pixels]
        return [PIL.Image.fromarray(p) for p in pixels]


def use_device_postprocess(pipeline) -> bool:
    """Give this pipeline instance the device-side PIL conversion; False where it has none."""
    processor = getattr(pipeline, "image_processor", None)
    if type(processor) is not VaeImageProcessor:
        return False  # subclasses (depth, masks) postprocess differently: left as they are
    pipeline.image_processor = DevicePilImageProcessor.from_config(processor.config)
    return True
