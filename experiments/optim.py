"""The optimizer side of a training step: the learning-rate schedule, AdamW (fused, without
torch.optim's wrapper) with weight decay on matrices only, and gradient-norm clipping."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from components.kernels import grad_clip

if TYPE_CHECKING:
    from experiments.schema import TrainSettings


def lr_at(step: int, train: TrainSettings) -> float:
    """Linear warm-up to lr over `warmup` steps (0 .. warmup - 1), then cosine / linear decay from lr at
    step `warmup` to min_lr at the last step (steps - 1), or constant. A decay needs two steps: a run with
    fewer after its warm-up stays at lr."""
    lr, min_lr, warmup, steps = train.lr, train.min_lr, train.warmup, train.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if train.schedule == "constant" or steps - warmup < 2:
        return lr
    progress = min(1.0, (step - warmup) / (steps - 1 - warmup))
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
    """torch.nn.utils.clip_grad_norm_'s rule: every gradient scaled by max_norm / (norm + 1e-6) where that
    is below 1; returns the norm before clipping. On the CPU two C calls for all the gradients
    (components/kernels/grad_clip.py); elsewhere four ops (torch's own clip loops over the parameters
    in Python, ~2 ops each, since its foreach path is for accelerators only)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = grad_clip.clip_(grads, max_norm)
    if norm is not None:
        return torch.tensor(norm, dtype=torch.float32)
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
        self.step_counts: dict[int, torch.Tensor] = {}  # group index -> its parameters' step counts

    def _states(self, index: int, group: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """The states of a group's parameters, made on first use. Their step counts are views of one
        tensor, so one op advances them all (torch's foreach add on the CPU is an op per parameter:
        ~0.1 ms a step for a 4-layer model)."""
        params = group["params"]
        if index not in self.step_counts and params:
            counts = torch.tensor([float(self.state[p]["step"]) if p in self.state else 0.0 for p in params],
                                  dtype=torch.float32, device=params[0].device)
            for i, p in enumerate(params):
                old = self.state.get(p, {})
                self.state[p] = {"step": counts[i],
                                 "exp_avg": old.get("exp_avg", torch.zeros_like(p, memory_format=torch.preserve_format)),
                                 "exp_avg_sq": old.get("exp_avg_sq", torch.zeros_like(p, memory_format=torch.preserve_format))}
            self.step_counts[index] = counts
        return [self.state[p] for p in params]

    def all_states(self) -> list[dict[str, torch.Tensor]]:
        """Every parameter's state, in the groups' order (made where missing)."""
        return [s for index, g in enumerate(self.param_groups) for s in self._states(index, g)]

    @torch.no_grad()
    def step(self) -> None:
        for index, g in enumerate(self.param_groups):
            states = self._states(index, g)
            with_grad = [i for i, p in enumerate(g["params"]) if p.grad is not None]
            if not with_grad:
                continue
            if len(with_grad) == len(states):
                self.step_counts[index].add_(1)
            else:  # only the parameters that have a gradient take a step
                states = [states[i] for i in with_grad]
                torch._foreach_add_([s["step"] for s in states], 1)
            params = [g["params"][i] for i in with_grad]
            torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], lr=g["lr"],
                                beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                                eps=g["eps"], amsgrad=False, maximize=False)

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
        self.step_counts = {}  # the loaded counts are linked again on the next step
