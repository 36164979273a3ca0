"""LoRA hot-swap on a compiled denoiser without recompiling.

A compiled graph bakes in which layers carry LoRA matrices and of what rank. So before
compiling we give the model one adapter "slot": a LoRA of the largest rank we will accept
on every linear of its repeated blocks, initialised to zero (B = 0, no effect), with its
scalings turned into tensors (peft's `prepare_model_for_compiled_hotswap`). Swapping an
adapter in then only copies values into those tensors (smaller ranks zero-padded, layers
the adapter does not touch zeroed), which neither the compiled code nor a captured CUDA
graph can tell from a change of input.
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from torch import nn

SLOT = "default_0"


def _block_linear_names(model: nn.Module) -> dict[str, list[str]]:
    """For each ModuleList of repeated blocks, the relative names of the linears in its blocks."""
    classes = set(getattr(model, "_repeated_blocks", None) or [])
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if type(module[0]).__name__ not in classes:
            continue
        rel: set[str] = set()
        for block in module:
            for child_name, child in block.named_modules():
                parts = child_name.split(".")
                if "base_layer" in parts or any(p.startswith("lora_") for p in parts):
                    continue
                # peft's LoRA wrapper stands where the linear was (it has a base_layer).
                if isinstance(child, nn.Linear) or hasattr(child, "base_layer"):
                    rel.add(child_name)
        found[name] = sorted(rel)
    return found


def has_lora(model: nn.Module) -> bool:
    """Whether peft LoRA layers are present in `model`."""
    return bool(getattr(model, "peft_config", None))


def add_lora_slot(model: nn.Module, rank: int) -> str:
    """Give `model` a zero LoRA adapter of `rank` on its blocks' linears, ready for hot-swap.

    If the partner already loaded an adapter, its layers become the slot instead (padded to
    `rank`), so later adapters must target a subset of its layers.
    """
    from peft import LoraConfig
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap

    if not has_lora(model):
        found = _block_linear_names(model)
        lists = list(found)
        rel = sorted({r for names in found.values() for r in names})
        if not lists:
            raise ValueError(
                f"{type(model).__name__} declares no repeated blocks to put LoRA layers on"
            )
        pattern = r"^(?:{})\.\d+\.(?:{})$".format(
            "|".join(re.escape(n) for n in lists), "|".join(re.escape(n) for n in rel)
        )
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=pattern, init_lora_weights=True)
        model.add_adapter(config, adapter_name=SLOT)
        name = SLOT
    else:
        name = next(iter(model.peft_config))
    prepare_model_for_compiled_hotswap(
        model, target_rank=rank, config=model.peft_config, check_compiled="warn"
    )
    return name


def compiled_frame_count() -> int:
    """Frames dynamo has compiled in this process so far (a recompile increments it)."""
    from torch._dynamo.utils import counters

    return int(sum(counters["frames"].values())) if "frames" in counters else 0


def hotswap_lora(
    target: Any, state_dict: dict[str, torch.Tensor], *, adapter_name: str = SLOT
) -> float:
    """Swap `state_dict`'s LoRA into the slot of a pipeline or model; returns seconds taken."""
    start = time.perf_counter()
    if hasattr(target, "load_lora_weights"):
        target.load_lora_weights(state_dict, adapter_name=adapter_name, hotswap=True)
    else:
        target.load_lora_adapter(state_dict, prefix=None, adapter_name=adapter_name, hotswap=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def random_lora_state_dict(
    model: nn.Module,
    *,
    rank: int,
    seed: int = 0,
    scale: float = 0.02,
    every: int = 1,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """A LoRA (peft key format) of `rank` on the blocks' attention projections, random values.

    Used by tests and the benchmark to stand in for a partner's trained adapter.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for list_name, rel in _block_linear_names(model).items():
        targets = [
            r for r in rel if r.split(".")[-1] in ("to_q", "to_k", "to_v") or r.endswith("to_out.0")
        ]
        blocks = model.get_submodule(list_name)
        for i in range(0, len(blocks), every):
            for r in targets:
                layer = blocks[i].get_submodule(r)
                base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
                out_f, in_f = base.out_features, base.in_features
                key = f"{prefix}{list_name}.{i}.{r}"
                sd[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
                sd[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * scale
    return sd
