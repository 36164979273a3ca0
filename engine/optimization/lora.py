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


def _slot_layers(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """Module name -> peft LoRA layer holding `adapter_name` (cached on the model)."""
    cache = model.__dict__.setdefault("_mediagate_lora_layers", {})
    if adapter_name not in cache:
        cache[adapter_name] = {
            name: m
            for name, m in model.named_modules()
            if hasattr(m, "lora_A")
            and isinstance(getattr(m, "lora_A", None), nn.ModuleDict)
            and adapter_name in m.lora_A
        }
    return cache[adapter_name]


@torch.no_grad()
def _swap_into_slot(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_name: str,
    alphas: dict[str, float] | None,
) -> None:
    layers = _slot_layers(model, adapter_name)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for kind in ("lora_A", "lora_B"):
            marker = f".{kind}."
            if marker in key:
                module = key.split(marker)[0]
                pairs.setdefault(module, {})[kind] = value
                break
        else:
            raise ValueError(f"not a LoRA weight in peft layout: {key}")
    unknown = sorted(set(pairs) - set(layers))
    if unknown:
        raise ValueError(f"the adapter targets layers outside the LoRA slot: {unknown[:5]}")
    for name, layer in layers.items():
        a_slot = layer.lora_A[adapter_name].weight
        b_slot = layer.lora_B[adapter_name].weight
        pair = pairs.get(name)
        if pair is None:
            # Layers the adapter leaves alone contribute nothing (B = 0).
            b_slot.zero_()
            continue
        a, b = pair["lora_A"], pair["lora_B"]
        rank = a.shape[0]
        if rank > a_slot.shape[0]:
            raise ValueError(f"adapter rank {rank} exceeds the slot's rank {a_slot.shape[0]}")
        a_slot[:rank].copy_(a, non_blocking=True)
        a_slot[rank:].zero_()
        b_slot[:, :rank].copy_(b, non_blocking=True)
        b_slot[:, rank:].zero_()
        alpha = (alphas or {}).get(name, rank)
        scaling = layer.scaling[adapter_name]
        if isinstance(scaling, torch.Tensor):
            scaling.fill_(alpha / rank)
        else:
            layer.scaling[adapter_name] = alpha / rank


def hotswap_lora(
    target: Any,
    state_dict: dict[str, torch.Tensor],
    *,
    adapter_name: str = SLOT,
    alphas: dict[str, float] | None = None,
    via_diffusers: bool = False,
) -> float:
    """Swap `state_dict`'s LoRA into the slot of a pipeline or model; returns seconds taken.

    The weights are copied straight into the slot's tensors (peft's hot-swap rules: smaller
    ranks zero-padded, untouched layers zeroed, scaling alpha/rank updated in place), which
    takes milliseconds where diffusers' loader re-validates the whole adapter on each swap.
    A pipeline's state dict is first converted by diffusers (Kohya and other layouts).
    `via_diffusers=True` uses diffusers' own `hotswap=True` loader instead.
    """
    start = time.perf_counter()
    if via_diffusers:
        if hasattr(target, "load_lora_weights"):
            target.load_lora_weights(state_dict, adapter_name=adapter_name, hotswap=True)
        else:
            target.load_lora_adapter(
                state_dict, prefix=None, adapter_name=adapter_name, hotswap=True
            )
    else:
        model = target
        if hasattr(target, "load_lora_weights"):
            model = getattr(target, "transformer", None) or target.unet
            prefix = "transformer." if getattr(target, "transformer", None) is not None else "unet."
            converted = target.lora_state_dict(state_dict)
            sd = converted[0] if isinstance(converted, tuple) else converted
            network_alphas = (
                converted[1] if isinstance(converted, tuple) and len(converted) > 1 else None
            )
            others = [k for k in sd if not k.startswith(prefix)]
            if others:
                raise ValueError(f"hot-swap covers the denoiser only, got {others[:3]}")
            state_dict = {k[len(prefix) :]: v for k, v in sd.items()}
            if network_alphas and alphas is None:
                alphas = {
                    k[len(prefix) :].removesuffix(".alpha"): float(v)
                    for k, v in network_alphas.items()
                    if k.startswith(prefix)
                }
        _swap_into_slot(model, state_dict, adapter_name, alphas)
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
