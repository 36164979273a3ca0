"""The tanh-GELU of each bf16 feed-forward inside its up projection's GEMM (kernels=("gelu_epilogue",)).

diffusers computes a feed-forward's activation as gelu(proj(x)): the GEMM writes its (M, N)
output in bf16 and a second pass reads it back to write the activation, 4 bytes of traffic
per element over the widest tensors of the block (FLUX's 4,096 × 12,288, Wan's 32,760 ×
8,960). cuBLASLt applies bias and tanh-GELU in its epilogue (`torch._addmm_activation`,
which inductor leaves to aten), on the fp32 accumulator, so the output is written once and
is eager's within bf16 rounding (eager rounds to bf16 before the GELU; the epilogue after).
Rewired on this instance, where the projection is a plain bf16 `nn.Linear`:
    - diffusers' GELU module (FLUX's double blocks, Wan): replaced by `ProjectionGELU`,
      which keeps the `proj` child, so state-dict keys and LoRA targets are unchanged;
    - FLUX's single blocks: `proj_mlp` becomes a `LinearGELU` holding the same parameters,
      and `act_mlp` an identity. (One class for every block: a hook object per layer would
      be a guard per block, and the blocks' shared compiled code would recompile.)
fp8 layers are left alone: their GELU already runs inside the next layer's quantizer
(engine/optimization/gelu_fp8.py).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels._utils import HALF_DTYPES


def linear_gelu_tanh(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """gelu_tanh(linear(x)), with the activation in the GEMM's epilogue on the GPU."""
    x2 = x.reshape(-1, linear.in_features)
    if x2.is_cuda and linear.bias is not None:
        out = torch._addmm_activation(linear.bias, x2, linear.weight.t(), use_gelu=True)
    else:
        # aten's CPU kernel takes the erf GELU; the GPU's epilogue is the tanh one.
        out = nn.functional.gelu(
            nn.functional.linear(x2, linear.weight, linear.bias), approximate="tanh"
        )
    return out.view(*x.shape[:-1], linear.out_features)


class ProjectionGELU(nn.Module):
    """diffusers' tanh-GELU module with the activation inside its projection's GEMM."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return linear_gelu_tanh(hidden_states, self.proj)


class LinearGELU(nn.Linear):
    """gelu_tanh(linear(x)) in one GEMM, holding a plain linear's parameters."""

    @classmethod
    def of(cls, linear: nn.Linear) -> LinearGELU:
        new = cls(linear.in_features, linear.out_features, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return linear_gelu_tanh(hidden_states, self)


def _plain_half_linear(layer: nn.Module) -> bool:
    return type(layer) is nn.Linear and layer.bias is not None and layer.weight.dtype in HALF_DTYPES


def fuse_gelu_into_gemms(model: nn.Module) -> int:
    """Move every bf16/fp16 tanh-GELU of this model into its projection's GEMM; returns how many."""
    from diffusers.models.activations import GELU
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (
                type(child) is GELU
                and child.approximate == "tanh"
                and _plain_half_linear(child.proj)
            ):
                setattr(module, name, ProjectionGELU(child.proj))
                n += 1
        if (
            isinstance(module, FluxSingleTransformerBlock)
            and type(module.act_mlp) is nn.GELU
            and module.act_mlp.approximate == "tanh"
            and _plain_half_linear(module.proj_mlp)
        ):
            module.proj_mlp = LinearGELU.of(module.proj_mlp)
            module.act_mlp = nn.Identity()
            n += 1
    return n
