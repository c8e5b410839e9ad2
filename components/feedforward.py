"""Position-wise feed-forward sub-layers (the block's MLP)."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.kernels import fused
from registry import FEEDFORWARD, Range

Mult = Annotated[float, Range(0, low_open=True)]  # hidden width = int(mult * d_model)


def hidden_width_problems(dims: dict, options: dict) -> list[str]:
    if int(options["mult"] * dims["d_model"]) < 1:
        return [f"mult = {options['mult']:g} leaves a hidden width of 0 with d_model = {dims['d_model']}: "
                "mult * d_model must be at least 1"]
    return []


class TwoLayerMLP(nn.Module):
    """Linear(d -> mult*d) -> activation -> Linear(mult*d -> d) -> dropout."""

    def __init__(self, *, d_model: int, dropout: float, mult: float, activation: nn.Module) -> None:
        super().__init__()
        hidden = int(mult * d_model)
        self.up = nn.Linear(d_model, hidden)
        self.activation = activation
        self.down = nn.Linear(hidden, d_model)
        self.down.residual_projection = True  # GPT-2 init scales it by 1/sqrt(residual branches)
        self.dropout = fused.Dropout(dropout)

    @classmethod
    def check_dims(cls, dims: dict, options: dict) -> list[str]:
        return hidden_width_problems(dims, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


@FEEDFORWARD.register("gelu_mlp")
class GeluMLP(TwoLayerMLP):
    """Two-layer MLP with GELU, 4x wide (Hendrycks & Gimpel 2016; the tutorial's and GPT-2's)."""

    def __init__(self, *, d_model: int, dropout: float, mult: Mult = 4.0,
                 approximate: Literal["tanh", "none"] = "tanh") -> None:
        # GPT-2 used the tanh approximation ("gelu_new"); "none" is the exact erf form.
        activation = TanhGELU() if approximate == "tanh" else nn.GELU(approximate=approximate)
        super().__init__(d_model=d_model, dropout=dropout, mult=mult, activation=activation)


class TanhGELU(nn.GELU):
    """nn.GELU(approximate="tanh") through the fused CPU kernel (same function, no tanh)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.gelu_tanh(x)


@FEEDFORWARD.register("relu_mlp")
class ReluMLP(TwoLayerMLP):
    """Two-layer MLP with ReLU, 4x wide (Vaswani et al. 2017)."""

    def __init__(self, *, d_model: int, dropout: float, mult: Mult = 4.0) -> None:
        super().__init__(d_model=d_model, dropout=dropout, mult=mult, activation=nn.ReLU())


@FEEDFORWARD.register("swiglu")
class SwiGLU(nn.Module):
    """Gated MLP: (Swish(x W) * x V) W2 (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, *, d_model: int, dropout: float, mult: Mult = 8 / 3) -> None:
        super().__init__()
        # 8/3 x wide keeps the parameter count of a 4x two-layer MLP (three matrices instead of two).
        hidden = int(mult * d_model)
        self.gate_and_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.down.residual_projection = True
        self.dropout = fused.Dropout(dropout)

    @classmethod
    def check_dims(cls, dims: dict, options: dict) -> list[str]:
        return hidden_width_problems(dims, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_and_up(x).chunk(2, dim=-1)                       # (B, T, hidden) each
        return self.dropout(self.down(F.silu(gate) * up))
