"""Ulysses context parallel through diffusers' own seam (`ModelMixin.enable_parallelism`).

Every rank holds the whole model and 1/N of the sequence. The model's `_cp_plan` splits
the inputs along the sequence at the top and gathers the output at `proj_out`; inside
each attention call the ranks exchange sequence shards for head shards, run
full-sequence attention on H/N heads, and exchange back. `optimize` routes attention
through our processors, which make that exchange one packed all-to-all
(engine/optimization/ulysses.py); with `attention_op=False` diffusers' dispatch does it.
This module checks the preconditions early, with messages that say what to fix, and
turns the plan on.
"""

from __future__ import annotations

import torch
from torch import nn

# diffusers backends whose dispatch implements the Ulysses all-to-all (0.42.1), fastest
# first on Hopper at FLUX's head dim; `native` lets SDPA pick its kernel.
CP_BACKENDS = ("_native_cudnn", "_native_flash", "native")


def _heads(model: nn.Module) -> int | None:
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if heads is not None:
        return int(heads)
    from engine.optimization.attention import attention_shape

    shape = attention_shape(model)
    return shape[0] if shape else None


def check_context_parallel(model: nn.Module, degree: int) -> None:
    """Raise ValueError/RuntimeError unless `model` can run Ulysses over `degree` ranks here."""
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 2:
        raise ValueError(f"context_parallel must be an int >= 2 (ranks), got {degree!r}")
    if getattr(model, "_cp_plan", None) is None or not hasattr(model, "enable_parallelism"):
        raise ValueError(
            f"{type(model).__name__} has no context-parallel plan in diffusers "
            "(FLUX and Wan transformers have one)"
        )
    if getattr(model, "_parallel_config", None) is not None:
        raise RuntimeError(f"{type(model).__name__} already runs in parallel; optimize it once")
    heads = _heads(model)
    if heads is None or heads % degree:
        raise ValueError(
            f"Ulysses splits the attention heads over the ranks: {heads} heads do not divide "
            f"into context_parallel={degree}"
        )
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"context_parallel={degree} needs torch.distributed initialised with {degree} ranks "
            "(launch with `torchrun --nproc_per_node N` and call "
            "`torch.distributed.init_process_group()` before optimize)"
        )
    world = dist.get_world_size()
    if world != degree:
        raise RuntimeError(
            f"context_parallel={degree} but the process group has {world} ranks; "
            "launch exactly one process per GPU of the group"
        )
    device = _model_device(model)
    if device.type == "cuda":
        expected = dist.get_rank() % torch.cuda.device_count()
        if torch.cuda.device_count() < degree:
            raise RuntimeError(
                f"context_parallel={degree} needs one GPU per rank; "
                f"{torch.cuda.device_count()} visible"
            )
        if device.index != expected or torch.cuda.current_device() != expected:
            raise RuntimeError(
                f"rank {dist.get_rank()} must hold its model on cuda:{expected} and call "
                f"torch.cuda.set_device({expected}) first (model on {device}, current device "
                f"cuda:{torch.cuda.current_device()})"
            )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def context_parallel_backend(chosen: str | None, timings: dict[str, float]) -> str | None:
    """The attention backend to run with context parallel: `chosen` when dispatch can
    parallelise it, else the fastest probed one that can, else diffusers' default (None)."""
    if chosen is None or chosen in CP_BACKENDS:
        return chosen
    usable = {k: v for k, v in timings.items() if k in CP_BACKENDS}
    return min(usable, key=usable.get) if usable else "native"


def enable_context_parallel(model: nn.Module, degree: int) -> str:
    """Turn on Ulysses over `degree` ranks on this instance; returns a description."""
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=degree)
    if torch.accelerator.device_count() > 0:
        model.enable_parallelism(config=config)
    else:
        _enable_on_cpu(model, config)
    return f"ulysses:{degree}"


def _enable_on_cpu(model: nn.Module, cp_config) -> None:
    # diffusers 0.42.1's enable_parallelism places each rank on `rank % accelerator count`,
    # which divides by zero on a CPU-only host (gloo). These are its own steps, with the
    # CPU as the device, so CI checks the same hooks and dispatch the GPUs run.
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig
    from diffusers.models.attention import AttentionModuleMixin

    dist = torch.distributed
    mesh = dist.device_mesh.init_device_mesh(
        "cpu", mesh_shape=cp_config.mesh_shape, mesh_dim_names=cp_config.mesh_dim_names
    )
    config = ParallelConfig(context_parallel_config=cp_config)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    model._parallel_config = config
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(module, AttentionModuleMixin) and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(model, cp_config, model._cp_plan)


def modules_with_cp_hooks(model: nn.Module) -> set[nn.Module]:
    """Submodules carrying a context-parallel split/gather hook (Wan's sits on `blocks.0`).

    Dynamo cannot trace those hooks (they inspect the wrapped forward's signature), so a
    regional compile leaves such a block eager and compiles the others.
    """
    found = set()
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        names = getattr(registry, "hooks", {}) or {}
        if any(n.startswith(("cp_input---", "cp_output---")) for n in names):
            found.add(module)
    return found
