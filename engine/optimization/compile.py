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


def compile_model(
    model: torch.nn.Module,
    *,
    mode: str | None = None,
    fullgraph: bool = True,
    dynamic: bool | None = None,
    options: dict[str, Any] | None = None,
    backend: str = "inductor",
    skip: set[torch.nn.Module] | None = None,
) -> str:
    """Compile `model` in place: its repeated blocks when it declares them, else whole.

    Blocks in `skip` stay eager (a block carrying a hook dynamo cannot trace)."""
    kwargs: dict[str, Any] = {"fullgraph": fullgraph, "dynamic": dynamic, "backend": backend}
    if options:
        kwargs["options"] = options
    elif mode is not None:
        kwargs["mode"] = mode
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
