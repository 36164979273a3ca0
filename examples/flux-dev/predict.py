"""FLUX.1 [dev] text-to-image on mediagate's engine.

The pipeline is diffusers' FluxPipeline built from FLUX.1 [dev]'s published configs
(transformer, VAE, CLIP-L and T5-XXL text encoders) with RANDOM weights: this package
ships no checkpoint, so its images are noise-like patterns, not pictures of the prompt.
Speed, memory and billing are those of the real model. A partner with the weights replaces
`build_flux_pipeline(...)` by `FluxPipeline.from_pretrained(<weights dir>, torch_dtype=
torch.bfloat16)`; everything else stays as it is.

`setup()` calls `engine.optimize(pipe, mode="fast")` (bf16, fused QKV, fp8 linears,
regional torch.compile with the on-disk compile cache) and warms it up once, so the first
request does not pay for compilation. `FLUX_SIZE=tiny` builds a tiny twin for CPU tests.
"""

from __future__ import annotations

import math
import os

from engine import Input, Model, Prediction


class Predictor(Model):
    def setup(self) -> None:
        """Build the pipeline, optimize it and compile it once at the default size."""
        import torch

        import engine
        from engine.pipelines import build_flux_pipeline

        size = os.environ.get("FLUX_SIZE", "dev")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = build_flux_pipeline(size, device=self.device, dtype=torch.bfloat16)
        self.pipe.set_progress_bar_config(disable=True)
        mode = os.environ.get("FLUX_MODE", "fast")
        # Compilation on a CPU-only host would take minutes for no gain: optimize without it.
        engine.optimize(self.pipe, mode=mode, compile=self.device == "cuda")
        self.side = 1024 if size == "dev" else 64
        from engine.optimization import warmup

        warmup(
            self.pipe, prompt="warm-up", height=self.side, width=self.side, num_inference_steps=2
        )

    def predict(
        self,
        prompt: str = Input(description="What to draw"),
        steps: int = Input(default=28, ge=1, le=50, description="Denoising steps"),
        guidance: float = Input(
            default=3.5, ge=0.0, le=10.0, description="Guidance (FLUX dev's distilled scale)"
        ),
        seed: int = Input(default=0, description="Random seed; the same seed gives the same image"),
    ) -> Prediction:
        import torch

        def on_step(pipe, i, t, tensors):
            self.progress(i + 1, steps)
            return {}

        generator = torch.Generator(device=self.device).manual_seed(seed)
        image = self.pipe(
            prompt,
            height=self.side,
            width=self.side,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            callback_on_step_end=on_step,
        ).images[0]
        width, height = image.size
        return Prediction(output=image, units={"megapixels": math.ceil(width * height / 1_000_000)})
