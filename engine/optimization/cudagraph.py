"""Whole-denoiser CUDA graphs, one per input signature, through a diffusers model hook.

A denoising step launches one to two thousand kernels. When the GPU work per step is
long (FLUX at 1024^2) the CPU stays ahead and graphs gain little; at small resolutions,
small batches or with many cheap kernels, launch gaps dominate and a replay removes them.
`mode="auto"` measures both on the first call of each signature and keeps the faster.

Inputs are copied into static buffers before a replay and outputs are cloned after it,
because a pipeline may call the denoiser twice per step (classifier-free guidance) and
keep the first result while the second replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

HOOK_NAME = "mediagate_cuda_graph"
_SCALARS = (type(None), bool, int, float, str)


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph | None
    static_leaves: list[Any]
    static_out: Any
    use_graph: bool
    eager_ms: float | None = None
    graph_ms: float | None = None
    error: str | None = None


@dataclass
class CUDAGraphStats:
    """What the hook decided per signature (for the optimization report)."""

    decisions: list[dict[str, Any]] = field(default_factory=list)


def _signature(args: tuple, kwargs: dict) -> tuple | None:
    leaves, spec = tree_flatten((args, kwargs))
    key: list[Any] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if not leaf.is_cuda or leaf.requires_grad:
                return None
            key.append((tuple(leaf.shape), tuple(leaf.stride()), leaf.dtype, leaf.device.index))
        elif isinstance(leaf, _SCALARS):
            key.append(leaf)
        else:
            return None
    return tuple(key)


class CUDAGraphHook(ModelHook):
    """Replays a captured graph of the model's forward for each input signature seen."""

    def __init__(self, mode: str = "auto", warmup: int = 2, trials: int = 3) -> None:
        super().__init__()
        if mode not in ("auto", "always"):
            raise ValueError(f"mode must be 'auto' or 'always', got {mode!r}")
        self.mode = mode
        self.warmup = warmup
        self.trials = trials
        self.entries: dict[tuple, _Entry] = {}
        self.stats = CUDAGraphStats()
        self.pool = None
        self.enabled = True

    def _call(self, *args, **kwargs):
        return self.fn_ref.original_forward(*args, **kwargs)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if not self.enabled or torch.is_grad_enabled() or torch.cuda.is_current_stream_capturing():
            return self._call(*args, **kwargs)
        key = _signature(args, kwargs)
        if key is None:
            return self._call(*args, **kwargs)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._capture(key, args, kwargs)
        if not entry.use_graph:
            return self._call(*args, **kwargs)
        return self._replay(entry, args, kwargs)

    def _replay(self, entry: _Entry, args: tuple, kwargs: dict):
        leaves, _ = tree_flatten((args, kwargs))
        for static, new in zip(entry.static_leaves, leaves, strict=True):
            if isinstance(static, torch.Tensor) and static.data_ptr() != new.data_ptr():
                static.copy_(new)
        entry.graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, entry.static_out)

    def _time(self, fn, n: int) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n

    def _capture(self, key: tuple, args: tuple, kwargs: dict) -> _Entry:
        leaves, spec = tree_flatten((args, kwargs))
        static_leaves = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        s_args, s_kwargs = tree_unflatten(static_leaves, spec)
        run = lambda: self._call(*s_args, **s_kwargs)  # noqa: E731
        # Warm up on a side stream (compiles, autotunes, allocates) so capture sees steady state.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = run()
        except Exception as exc:  # capture can fail on a host sync inside forward: run eagerly then
            torch.cuda.synchronize()
            entry = _Entry(
                None, static_leaves, None, use_graph=False, error=f"{type(exc).__name__}: {exc}"
            )
            self.entries[key] = entry
            self.stats.decisions.append({"use_graph": False, "error": entry.error})
            return entry
        entry = _Entry(graph, static_leaves, static_out, use_graph=True)
        if self.mode == "auto":
            entry.eager_ms = self._time(run, self.trials)
            entry.graph_ms = self._time(graph.replay, self.trials)
            # Keep graphs only where they pay: replays also cost the input copies.
            entry.use_graph = entry.graph_ms < entry.eager_ms * 0.99
            if not entry.use_graph:
                entry.graph, entry.static_out = None, None
        self.entries[key] = entry
        self.stats.decisions.append(
            {"use_graph": entry.use_graph, "eager_ms": entry.eager_ms, "graph_ms": entry.graph_ms}
        )
        return entry

    def reset(self) -> None:
        """Drop every captured graph (after weights were replaced by new tensors, say)."""
        self.entries.clear()


def apply_cuda_graphs(model: torch.nn.Module, mode: str = "auto") -> CUDAGraphHook:
    """Register the CUDA-graph hook on this model instance (innermost of our hooks)."""
    registry = HookRegistry.check_if_exists_or_initialize(model)
    hook = CUDAGraphHook(mode=mode)
    registry.register_hook(hook, HOOK_NAME)
    return hook
