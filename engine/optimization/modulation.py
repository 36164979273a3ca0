"""FLUX's adaLN modulations for a whole generation in one pass over their weights.

Every FLUX block turns the step's conditioning vector silu(temb) into its shifts, scales
and gates through a linear of its own: 77 matrix-vector products per step that stream
27 % of the model's weights (3.2 B parameters) to produce one row each. temb depends only
on the timestep, the guidance and the pooled text embedding, and a pipeline knows every
timestep of a generation before the first step. So when the pipeline's scheduler sets its
timesteps, the first step computes the rows of all of them at once (16 rows per pass over
the weights) into a table; each step then copies its row into the buffer the blocks read.

The adaLN linears become `BankedModulation` layers (same parameters and state-dict keys)
that return their slice of that buffer; `ModulationTableHook`, outside the CUDA graph,
fills it before each call: from the table when the call's timestep, guidance and pooled
embedding equal one of its keys, exactly, otherwise by running the linears on this call's
temb, as before. Behind a captured graph the row is picked on the GPU and the step
launched before the host learns whether it matched; a call that did not runs again. A
pipeline that passes timesteps in another form than FLUX's (`t.expand(batch).to(dtype) /
1000`) finds no row once per condition and keeps the per-step products after that. A
change to the weights (a LoRA fused in) drops the tables.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

HOOK_NAME = "mediagate_modulation_table"
ROWS_PER_PASS = 16
"""Conditioning rows per pass over the weights: the fp8 GEMV's most (kernels.fp8_gemv), so
fp8 layers keep their bf16 activations."""
MAX_TABLES = 4
"""Tables per schedule: one per distinct (guidance, pooled) condition, e.g. a prompt and its
negative under true classifier-free guidance."""


class BankedModulation:
    """Mixin for an adaLN linear whose output for this call was computed ahead of it."""

    modulation: torch.Tensor
    """(batch, out_features): this layer's slice of the model's modulation buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.modulation

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's own linear of `x`."""
        return super().forward(x)  # type: ignore[misc]


_BANKED: dict[type, type] = {}


def _banked_class(cls: type) -> type:
    if cls not in _BANKED:
        _BANKED[cls] = type(f"Banked{cls.__name__}", (BankedModulation, cls), {})
    return _BANKED[cls]


def _base(layer: nn.Module) -> nn.Module:
    return getattr(layer, "base_layer", layer)  # peft's LoRA wrapper keeps its delta live


def flux_modulation_layers(model: nn.Module) -> list[nn.Module]:
    """The adaLN linears of a FLUX transformer, in the order its forward applies them."""
    layers: list[nn.Module] = []
    # children(), not iteration: a chained compile makes the lists iterate as chains.
    for block in model.transformer_blocks.children():
        layers += [_base(block.norm1.linear), _base(block.norm1_context.linear)]
    for block in model.single_transformer_blocks.children():
        layers.append(_base(block.norm.linear))
    layers.append(_base(model.norm_out.linear))
    return layers


class _Table:
    def __init__(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        self.keys = keys  # (T, L) float32: timestep, guidance, pooled of each row's call
        self.rows = rows  # (T, batch, width)


class ModulationTableHook(ModelHook):
    """Fills the blocks' modulation buffer before each call of a FLUX transformer.

    With `check_after_launch` (a captured CUDA graph behind it) the row is picked on the
    GPU and the call launched at once; whether it was the call's own row is read back
    while the step runs, and a call that was not in the table runs again, its modulations
    computed. Otherwise the lookup is read back before the call."""

    def __init__(self, model: nn.Module, *, check_after_launch: bool = False) -> None:
        super().__init__()
        self.layers = flux_modulation_layers(model)
        self.widths = [layer.out_features for layer in self.layers]
        self.width = sum(self.widths)
        self.embed = model.time_text_embed
        self.signature = inspect.signature(type(model).forward)
        self.check_after_launch = check_after_launch
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.viewing: torch.Tensor | None = None
        self.schedule: torch.Tensor | None = None
        # By condition (the guidance and pooled tensors a pipeline passes every step); None:
        # that condition's calls are not in the schedule, and compute.
        self.tables: dict[tuple, _Table | None] = {}
        self.weights_seen: tuple | None = None
        self.found: torch.Tensor | None = None
        self.stats = {"from_table": 0, "computed": 0, "tables_built": 0, "run_again": 0}
        for layer in self.layers:
            layer.__class__ = _banked_class(type(layer))

    # ------------------------------------------------------------------ the schedule

    def new_schedule(self, timesteps: torch.Tensor) -> None:
        """The timesteps of the generation about to run (set by the scheduler)."""
        self.schedule = timesteps.detach().clone()
        self.tables = {}

    # ------------------------------------------------------------------ one call

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = self.signature.bind(module, *args, **kwargs).arguments
        hidden = call["hidden_states"]
        timestep, guidance = call["timestep"], call.get("guidance")
        pooled = call["pooled_projections"]
        batch, dtype = hidden.shape[0], hidden.dtype
        buffer = self._buffer(batch, dtype, hidden.device)
        with torch.no_grad():
            self._drop_tables_if_weights_changed()
            condition = _condition(guidance, pooled, batch, dtype)
            table = self._table(condition, guidance, pooled, batch, dtype)
            if table is None:
                self._compute(self._silu_temb(timestep, guidance, pooled, dtype), buffer)
                self.stats["computed"] += 1
                return self.fn_ref.original_forward(*args, **kwargs)
            found = self._pick(table, _key(timestep, guidance, pooled), buffer)
            late = self.check_after_launch
            if not late and not bool(found):  # reads back
                self._off_table(condition, timestep, guidance, pooled, buffer)
                return self.fn_ref.original_forward(*args, **kwargs)
            sent = self._send_back(found) if late else None
        out = self.fn_ref.original_forward(*args, **kwargs)
        if late and not self._received(sent, found):
            self.stats["run_again"] += 1
            with torch.no_grad():
                self._off_table(condition, timestep, guidance, pooled, buffer)
            return self.fn_ref.original_forward(*args, **kwargs)
        self.stats["from_table"] += 1
        return out

    def _off_table(self, condition, timestep, guidance, pooled, buffer) -> None:
        """A call its condition's table does not hold: it, and the rest of that condition's
        calls in this generation, compute their modulations."""
        self.tables[condition] = None
        self.stats["computed"] += 1
        self._compute(self._silu_temb(timestep, guidance, pooled, buffer.dtype), buffer)

    def _buffer(self, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        # One buffer per batch size, never freed: a captured CUDA graph reads it in place.
        spec = (batch, dtype, device)
        if spec not in self.buffers:
            self.buffers[spec] = torch.empty(batch, self.width, dtype=dtype, device=device)
        buffer = self.buffers[spec]
        if self.viewing is not buffer:
            for layer, part in zip(self.layers, buffer.split(self.widths, dim=1), strict=True):
                layer.modulation = part
            self.viewing = buffer
        return buffer

    def _silu_temb(self, timestep, guidance, pooled, dtype: torch.dtype) -> torch.Tensor:
        # FluxTransformer2DModel.forward's own first lines, with the embedder run eagerly
        # (a compiled one would recompile for the table's batch of rows).
        timestep = timestep.to(dtype) * 1000
        if guidance is None:
            temb = self.embed.forward(timestep, pooled)
        else:
            temb = self.embed.forward(timestep, guidance.to(dtype) * 1000, pooled)
        return nn.functional.silu(temb)

    def _compute(self, x: torch.Tensor, out: torch.Tensor) -> None:
        for layer, part in zip(self.layers, out.split(self.widths, dim=-1), strict=True):
            part.copy_(layer.compute(x))

    # ------------------------------------------------------------------ tables

    def _table(self, condition, guidance, pooled, batch: int, dtype) -> _Table | None:
        if condition not in self.tables:
            if self.schedule is None or len(self.tables) >= MAX_TABLES:
                return None
            self.tables[condition] = self._build(guidance, pooled, batch, dtype)
            self.stats["tables_built"] += 1
        return self.tables[condition]

    def _pick(self, table: _Table, key: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        """Copy the row whose key equals `key` (the first row if none does) into `buffer`,
        without waiting for the GPU; returns whether one did, on the GPU."""
        match = (table.keys == key).all(dim=1)
        index = match.int().argmax().reshape(1)
        torch.index_select(table.rows, 0, index, out=buffer.view(1, *buffer.shape))
        return match.any()

    def _send_back(self, found: torch.Tensor) -> torch.cuda.Event | None:
        """Start copying `found` to the host, ahead of the step in the stream."""
        if found.device.type != "cuda":
            return None
        if self.found is None:
            self.found = torch.empty((), dtype=torch.bool, pin_memory=True)
        self.found.copy_(found, non_blocking=True)
        sent = torch.cuda.Event()
        sent.record()
        return sent

    def _received(self, sent: torch.cuda.Event | None, found: torch.Tensor) -> bool:
        if sent is None:
            return bool(found)
        sent.synchronize()  # the lookup only: the step is queued behind it and runs on
        return bool(self.found)

    def _build(self, guidance, pooled, batch: int, dtype: torch.dtype) -> _Table:
        assert self.schedule is not None
        steps = self.schedule.numel()
        # FluxPipeline: timestep = t.expand(batch).to(latents.dtype); the call gets it / 1000.
        timesteps = self.schedule.to(pooled.device)[:, None].expand(steps, batch).to(dtype) / 1000
        guidance_rows = None if guidance is None else guidance.reshape(-1).repeat(steps)
        pooled_rows = pooled.repeat(steps, 1)
        keys = torch.stack(
            [_key(timesteps[i], guidance, pooled) for i in range(steps)]
        ).contiguous()
        x = self._silu_temb(timesteps.reshape(-1), guidance_rows, pooled_rows, dtype)
        # Whole passes of ROWS_PER_PASS rows, zeros after the last: one shape for the kernels
        # whatever the step count (Triton compiles anew for a row count of another kind).
        padded = -(-x.shape[0] // ROWS_PER_PASS) * ROWS_PER_PASS
        x = nn.functional.pad(x, (0, 0, 0, padded - x.shape[0]))
        rows = torch.empty(padded, self.width, dtype=dtype, device=pooled.device)
        for start in range(0, padded, ROWS_PER_PASS):
            self._compute(x[start : start + ROWS_PER_PASS], rows[start : start + ROWS_PER_PASS])
        return _Table(keys, rows[: steps * batch].view(steps, batch, self.width))

    def _drop_tables_if_weights_changed(self) -> None:
        seen = tuple(
            (id(t), t._version)
            for layer in self.layers
            for t in (layer.weight, layer.bias)
            if t is not None
        )
        if seen != self.weights_seen:
            self.tables = {}
            self.weights_seen = seen


def _condition(guidance, pooled, batch: int, dtype: torch.dtype) -> tuple:
    # The tensors themselves (address and version), not their values: no read-back. A
    # condition that reaches a table built for other values finds no row, and computes.
    same = [(t.data_ptr(), t._version, tuple(t.shape)) for t in (guidance, pooled) if t is not None]
    return (*same, batch, dtype)


def _key(timestep, guidance, pooled) -> torch.Tensor:
    parts = [timestep.reshape(-1)] + ([] if guidance is None else [guidance.reshape(-1)])
    return torch.cat([p.float() for p in (*parts, pooled.reshape(-1))])


def tabulate_flux_modulations(
    model: nn.Module, scheduler: Any = None, *, check_after_launch: bool = False
) -> ModulationTableHook | None:
    """Bank a FLUX transformer's adaLN linears and register the hook that fills them
    (outside the hooks registered so far); with `scheduler`, each generation's timesteps,
    as the scheduler sets them, seed its tables. Returns None for other models."""
    if type(model).__name__ != "FluxTransformer2DModel":
        return None
    hook = ModulationTableHook(model, check_after_launch=check_after_launch)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(hook, HOOK_NAME)
    if scheduler is not None and hasattr(scheduler, "set_timesteps"):
        set_timesteps = scheduler.set_timesteps

        # Pipelines read set_timesteps' signature (custom sigmas, timesteps): keep it.
        @functools.wraps(set_timesteps)
        def set_and_tabulate(*args: Any, **kwargs: Any) -> Any:
            out = set_timesteps(*args, **kwargs)
            hook.new_schedule(scheduler.timesteps)
            return out

        scheduler.set_timesteps = set_and_tabulate
    return hook
