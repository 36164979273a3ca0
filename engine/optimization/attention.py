"""Pick the fastest exact attention backend on this device, by measuring it.

Every candidate computes the same softmax(QK^T/sqrt(d))V in bf16 with fp32 statistics,
so the choice changes speed, not the function. Which one wins depends on the GPU, the
head dimension and the library versions (cuDNN's fused attention leads on Hopper at
head_dim 128 with recent cuDNN; FlashAttention-2 elsewhere), so we time them on the shape
the model will see rather than trust a table.
"""

from __future__ import annotations

import torch

# diffusers backend names; each is a torch SDPA kernel pinned through `sdpa_kernel`.
CUDA_CANDIDATES = ("_native_cudnn", "_native_flash", "_native_efficient", "native")


def _time_backend(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, iters: int, via_op: bool
) -> float:
    # Time the call the model will make: diffusers' dispatch (whose cuDNN path copies q, k
    # and v head-major first) or our sequence-major op.
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from engine.optimization.sdpa import sdpa_bshd

    def call():
        return sdpa_bshd(q, k, v, name) if via_op else dispatch_attention_fn(q, k, v, backend=name)

    for _ in range(2):
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def probe_attention_backends(
    *,
    heads: int,
    head_dim: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    iters: int = 5,
    via_op: bool = False,
) -> dict[str, float]:
    """Milliseconds per call of each available backend at (1, seq_len, heads, head_dim)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, seq_len, heads, head_dim, device=device, dtype=dtype, generator=g)
        for _ in range(3)
    )
    timings: dict[str, float] = {}
    for name in CUDA_CANDIDATES:
        try:
            timings[name] = _time_backend(name, q, k, v, iters, via_op)
        except Exception:  # a backend this build or GPU lacks is simply not a candidate
            continue
    return timings


def attention_shape(model: torch.nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) of the model's first attention module, if it has one."""
    from diffusers.models.attention import AttentionModuleMixin

    for module in model.modules():
        if isinstance(module, AttentionModuleMixin) and hasattr(module, "heads"):
            head_dim = getattr(module, "head_dim", None) or module.inner_dim // module.heads
            return int(module.heads), int(head_dim)
    return None


def choose_attention_backend(
    model: torch.nn.Module,
    *,
    device: torch.device,
    seq_len: int = 4608,
    requested: str = "auto",
    via_op: bool = False,
) -> tuple[str | None, dict[str, float]]:
    """The backend to set on `model` (None keeps diffusers' default) and the probe's timings."""
    if requested != "auto":
        return requested, {}
    if device.type != "cuda":
        return None, {}
    shape = attention_shape(model)
    if shape is None:
        return None, {}
    timings = probe_attention_backends(
        heads=shape[0], head_dim=shape[1], seq_len=seq_len, device=device
    )
    if not timings:
        return None, {}
    return min(timings, key=timings.get), timings
