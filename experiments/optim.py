"""The optimizer side of a training step: the learning-rate schedule, AdamW (fused, without
torch.optim's wrapper) with weight decay on matrices only, and gradient-norm clipping."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from experiments.schema import TrainSettings


def lr_at(step: int, train: TrainSettings) -> float:
    """Linear warm-up to lr over `warmup` steps, then cosine / linear decay to min_lr, or constant."""
    lr, min_lr, warmup, steps = train.lr, train.min_lr, train.warmup, train.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if train.schedule == "constant" or steps <= warmup:
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if train.schedule == "cosine" else 1 - progress
    return min_lr + (lr - min_lr) * decay


def make_optimizer(model: torch.nn.Module, train: TrainSettings, device: torch.device):
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params):
        return FusedAdamW(groups, lr=train.lr, betas=tuple(train.betas))
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas))


@torch.no_grad()
def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (same arithmetic) in four ops: on the CPU torch's own loops over
    the parameters in Python (~2 ops each), since its foreach path is for accelerators only."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


class FusedAdamW:
    """torch.optim.AdamW(fused=True), the same kernel (aten::_fused_adamw_) and state_dict layout,
    without torch.optim's wrapper.

    Why: constructing any torch.optim optimizer imports torch._dynamo (~1-2 s, most of a small run's
    start-up cost), and torch's default on the CPU is a Python loop of ~10 ops per parameter, which
    costs more than the update of a small model; the fused kernel updates every tensor in one call.
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float = 1e-8):
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "eps": eps, **g, "params": list(g["params"])}
                             for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p not in self.state:
            self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], [], steps, lr=g["lr"], beta1=g["betas"][0],
                                beta2=g["betas"][1], weight_decay=g["weight_decay"], eps=g["eps"],
                                amsgrad=False, maximize=False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters by index across the groups, in order."""
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                                  "params": [index[p] for p in g["params"]]} for g in self.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reads its own state_dict and torch.optim.AdamW's."""
        params = [p for g in self.param_groups for p in g["params"]]
        for g, saved in zip(self.param_groups, state["param_groups"]):
            g.update({k: saved[k] for k in ("lr", "eps", "weight_decay") if k in saved})
            g["betas"] = tuple(saved.get("betas", g["betas"]))
        self.state = {params[int(i)]: {k: v.to(params[int(i)].device) for k, v in s.items()}
                      for i, s in state["state"].items()}
        for s in self.state.values():
            s["step"] = s["step"].to(torch.float32)
