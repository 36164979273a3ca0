"""Regional compilation and the on-disk cache of compiled artefacts.

The denoiser's repeated blocks (FLUX's 19 double and 38 single blocks, Wan's 30) share
one class each, so compiling the class's forward once per instance set costs one compile
per block type instead of one for the whole 57-block graph: seconds instead of minutes,
with the same kernels inside each block. Models without `_repeated_blocks` (the SDXL
UNet) are compiled whole.

Inductor's FX-graph cache and Triton's kernel cache live under one directory we choose,
so a restarted replica that mounts the same directory skips code generation; the
"mega-cache" artefact file (`torch.compiler.save_cache_artifacts`) carries the same
content as a single portable file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

ARTIFACT_FILE = "compile-artifacts.bin"


def default_cache_dir() -> Path:
    """MEDIAGATE_COMPILE_CACHE, else ~/.cache/mediagate/compile."""
    env = os.environ.get("MEDIAGATE_COMPILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mediagate" / "compile"


def configure_cache(cache_dir: str | os.PathLike | None) -> Path:
    """Point inductor's and Triton's caches at `cache_dir` and load a saved artefact file.

    These settings are process-wide by nature (one cache per process); they change where
    compiled code is stored, never what any model computes.
    """
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):
        pass
    artifact = path / ARTIFACT_FILE
    if artifact.is_file() and hasattr(torch.compiler, "load_cache_artifacts"):
        try:
            torch.compiler.load_cache_artifacts(artifact.read_bytes())
        except Exception:  # a stale artefact from another torch build is only a lost speed-up
            pass
    return path


def save_cache_artifacts(cache_dir: str | os.PathLike) -> int:
    """Write the process's compiled artefacts to one file in `cache_dir`; returns its size."""
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return 0
    result = torch.compiler.save_cache_artifacts()
    if result is None:
        return 0
    blob = result[0]
    target = Path(cache_dir) / ARTIFACT_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(target)
    return len(blob)


class _BlockChain(torch.nn.Module):
    """Consecutive repeated blocks run as one compiled region (one graph for all of them)."""

    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        super().__init__()
        # A plain list: registering the blocks here would give them a second name.
        self.__dict__["blocks"] = blocks

    def forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        for block in self.blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states, encoder_hidden_states, *args, **kwargs
            )
        return encoder_hidden_states, hidden_states


class _ChainedModuleList(torch.nn.ModuleList):
    """A block list that the model's forward iterates as chains; names and weights unchanged."""

    def __iter__(self):
        return iter(self.__dict__["_mg_chains"])


def group_repeated_blocks(model: torch.nn.Module, sizes: dict[str, int]) -> list[torch.nn.Module]:
    """Make the model's loop over each listed block class run `size` blocks per call.

    Only block lists whose blocks take and return `(encoder_hidden_states, hidden_states)`
    (FLUX's double and single blocks) can be chained. State-dict names, LoRA targets and
    `len()` of the list stay as they were; returns the chain modules to compile."""
    chains: list[torch.nn.Module] = []
    for module in list(model.modules()):
        if not isinstance(module, torch.nn.ModuleList) or not len(module):
            continue
        name = type(module[0]).__name__
        size = sizes.get(name, 1)
        if size <= 1 or any(type(b).__name__ != name for b in module):
            continue
        if name not in ("FluxTransformerBlock", "FluxSingleTransformerBlock"):
            raise ValueError(f"{name} blocks cannot be chained")
        blocks = list(torch.nn.ModuleList.__iter__(module))
        own = [_BlockChain(blocks[i : i + size]) for i in range(0, len(blocks), size)]
        module.__class__ = _ChainedModuleList
        module.__dict__["_mg_chains"] = own
        chains += own
    return chains


def compile_model(
    model: torch.nn.Module,
    *,
    mode: str | None = None,
    fullgraph: bool = True,
    dynamic: bool | None = None,
    options: dict[str, Any] | None = None,
    backend: str = "inductor",
    skip: set[torch.nn.Module] | None = None,
    group: dict[str, int] | None = None,
    rest: bool = False,
) -> str:
    """Compile `model` in place: its repeated blocks when it declares them, else whole.

    Blocks in `skip` stay eager (a block carrying a hook dynamo cannot trace). `group`
    maps a block class to how many consecutive blocks one compiled region spans, so that
    inductor can fuse across their boundaries (residual add into the next block's norm).
    `rest` also compiles each top-level module outside the block lists (embedders,
    rotary tables, output norm and projection), which otherwise run as many small eager
    kernels before the first block can start."""
    kwargs: dict[str, Any] = {"fullgraph": fullgraph, "dynamic": dynamic, "backend": backend}
    if options:
        kwargs["options"] = options
    elif mode is not None:
        kwargs["mode"] = mode
    if rest and getattr(model, "_repeated_blocks", None):
        for child in model.children():
            # A bare torch.nn layer (one linear) is one kernel already, and dynamo skips it.
            if not type(child).__module__.startswith("torch."):
                child.compile(**kwargs)
    group = {k: v for k, v in (group or {}).items() if v > 1}
    if group and getattr(model, "_repeated_blocks", None):
        if skip:
            raise ValueError("grouped blocks cannot leave single blocks eager")
        chains = group_repeated_blocks(model, group)
        grouped = {type(c.blocks[0]).__name__ for c in chains}
        for chain in chains:
            chain.compile(**kwargs)
        for module in model.modules():
            name = type(module).__name__
            if name in model._repeated_blocks and name not in grouped:
                module.compile(**kwargs)
        sizes = ",".join(f"{k}x{v}" for k, v in sorted(group.items()))
        return "regional:" + ",".join(model._repeated_blocks) + f" (chained {sizes})"
    if getattr(model, "_repeated_blocks", None):
        if not skip:
            model.compile_repeated_blocks(**kwargs)
            return "regional:" + ",".join(model._repeated_blocks)
        # diffusers' compile_repeated_blocks, minus the skipped blocks.
        eager = 0
        for module in model.modules():
            if type(module).__name__ in model._repeated_blocks:
                if module in skip:
                    eager += 1
                else:
                    module.compile(**kwargs)
        return "regional:" + ",".join(model._repeated_blocks) + f" ({eager} eager)"

    # Compile the instance's forward rather than `_call_impl`, so that model hooks added
    # afterwards (CUDA graphs, step caching) wrap the compiled code instead of being traced.
    model.forward = torch.compile(model.forward, **kwargs)
    return "whole"
