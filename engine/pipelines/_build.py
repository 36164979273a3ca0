"""Instantiate a model class from a config with seeded random weights, on the target device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _keep_fp32(model: torch.nn.Module) -> list[str]:
    return list(getattr(model, "_keep_in_fp32_modules", None) or [])


def cast_keeping_fp32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but leave the modules the class pins to fp32, as from_pretrained does."""
    keep = _keep_fp32(model)
    for mname, module in model.named_modules():
        for pname, param in list(module._parameters.items()):
            full = f"{mname}.{pname}" if mname else pname
            if param is None or not param.is_floating_point() or param.dtype == dtype:
                continue
            if any(k in full.split(".") for k in keep):
                continue
            module._parameters[pname] = torch.nn.Parameter(
                param.data.to(dtype), requires_grad=False
            )
        for bname, buf in list(module._buffers.items()):
            full = f"{mname}.{bname}" if mname else bname
            if buf is None or not buf.is_floating_point() or buf.dtype == dtype:
                continue
            if any(k in full.split(".") for k in keep):
                continue
            module._buffers[bname] = buf.to(dtype)
    return model


def random_model(
    factory: Any,
    config: dict[str, Any],
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    seed: int,
) -> torch.nn.Module:
    """Build `factory(**config)` with weights drawn from `seed`, directly on `device`.

    Classes without fp32-pinned modules are built in `dtype` directly, so that a 12B model
    never exists in fp32; the others are built in fp32 and cast (their pinned buffers, such
    as rotary tables, keep full precision).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    build_dtype = dtype if not getattr(factory, "_keep_in_fp32_modules", None) else torch.float32
    with torch.device(device), _default_dtype(build_dtype), torch.no_grad():
        model = factory(**config)
    model = cast_keeping_fp32(model, dtype)
    model.eval().requires_grad_(False)
    return model


def random_transformers_model(
    model_cls: Any,
    config_cls: Any,
    config: dict[str, Any],
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    seed: int,
) -> torch.nn.Module:
    """A transformers model (text encoder) built from its config with seeded random weights."""
    cfg = config_cls(**config)
    device = torch.device(device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device), _default_dtype(dtype), torch.no_grad():
        model = model_cls(cfg)
    model = model.to(dtype)
    model.eval().requires_grad_(False)
    return model
