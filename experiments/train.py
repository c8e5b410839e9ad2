"""Train one run: AdamW, warm-up + schedule, clipping, accumulation, eval, checkpoints, exact resume.

Everything a run needs to continue bit-for-bit after a crash lives in its checkpoint: model,
optimizer, step, every RNG state and the metrics so far. Batches are a pure function of
(seed, split, step), and the learning rate a pure function of the step, so nothing else is needed.
"""
from __future__ import annotations

import contextlib
import math
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from components.model import GPT, ModelConfig
from experiments import files
from experiments.spec import RunSpec

METRIC_COLUMNS = ["step", "tokens", "lr", "train_loss", "val_loss", "val_bpb", "elapsed_s"]
LOG_EVERY = 10  # steps between host syncs for the progress bar and the divergence check


# -- device and precision ------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked (CUDA or a CPU with bf16 units); auto = bf16 on CUDA only."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -- optimisation --------------------------------------------------------------------------------
def lr_at(step: int, train: dict[str, Any]) -> float:
    """Linear warm-up to lr over `warmup` steps, then cosine / linear decay to min_lr, or constant."""
    lr, min_lr, warmup, steps = train["lr"], train["min_lr"], train["warmup"], train["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if train["schedule"] == "constant" or steps <= warmup:
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if train["schedule"] == "cosine" else 1 - progress
    return min_lr + (lr - min_lr) * decay


def make_optimizer(model: torch.nn.Module, train: dict[str, Any], device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train["lr"], betas=tuple(train["betas"]),
                             fused=device.type == "cuda" or None)


# -- RNG state -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


# -- one run -------------------------------------------------------------------------------------
class Diverged(Exception):
    pass


class Stopped(Exception):
    """Raised by an on_eval callback to end a run early with a status of its own (a pruned trial)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


class Trainer:
    """Trains `run` on `dataset`, writing metrics.csv, checkpoint.pt, samples.txt into `run_dir`."""

    def __init__(self, run: RunSpec, dataset, run_dir: Path, device: torch.device, show_progress: bool = False,
                 on_eval: Callable[[dict[str, float]], None] | None = None):
        from experiments.data import Batches

        self.on_eval = on_eval  # sees each metrics row; may raise Stopped (e.g. Optuna pruning)
        self.run, self.dataset, self.dir, self.device = run, dataset, run_dir, device
        self.train_cfg = run.train
        self.show_progress = show_progress
        seed_everything(run.seed)
        self.model = GPT(ModelConfig(vocab_size=dataset.vocab_size, **run.model)).to(device)
        self.step_model = torch.compile(self.model) if run.train["compile"] else self.model
        self.optimizer = make_optimizer(self.model, run.train, device)
        self.dtype = autocast_dtype(run.train["precision"], device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        ctx = run.model["context_length"]
        # One global batch per step, split into grad_accum micro-batches: the data a step sees does
        # not depend on how it is accumulated.
        self.accum = run.train["grad_accum"]
        self.batches = Batches(dataset, context_length=ctx, batch_size=run.train["batch_size"] * self.accum,
                               seed=run.seed, device=str(device))
        self.eval_sets = {split: self.batches.eval_batches(split, run.train["eval_batches"]) for split in ("train", "val")}
        self.tokens_per_step = run.train["batch_size"] * run.train["grad_accum"] * ctx
        self.step, self.metrics, self.train_seconds, self.wall_seconds = 0, [], 0.0, 0.0

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "metrics": self.metrics, "train_seconds": self.train_seconds,
                 "wall_seconds": self.wall_seconds}
        files.atomic_write(self.checkpoint_path, lambda f: torch.save(state, f), mode="wb")

    def resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step, self.metrics = state["step"], state["metrics"]
        self.train_seconds, self.wall_seconds = state["train_seconds"], state["wall_seconds"]
        files.write_csv(self.dir / "metrics.csv", self.metrics, METRIC_COLUMNS)  # drop rows past the checkpoint
        return True

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses = {}
        for split, batches in self.eval_sets.items():
            total = torch.zeros((), device=self.device)
            for x, y in batches:
                for xm, ym in zip(x.chunk(self.accum), y.chunk(self.accum)):
                    with autocast(self.device, self.dtype):
                        total += self.step_model(xm, ym)[1].float()
            losses[split] = (total / (len(batches) * self.accum)).item()
        self.model.train()
        return losses

    def record(self, elapsed: float) -> dict[str, float]:
        losses = self.evaluate()
        row = {"step": self.step, "tokens": self.step * self.tokens_per_step, "lr": lr_at(max(self.step - 1, 0), self.train_cfg),
               "train_loss": losses["train"], "val_loss": losses["val"],
               "val_bpb": self.dataset.bits_per_byte(losses["val"], "val"), "elapsed_s": round(elapsed, 3)}
        self.metrics.append(row)
        files.write_csv(self.dir / "metrics.csv", self.metrics, METRIC_COLUMNS)
        if not all(math.isfinite(row[k]) for k in ("train_loss", "val_loss")):
            raise Diverged(f"loss is not finite at step {self.step}")
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    # -- the loop ---------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        cfg = self.train_cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum, total = self.accum, torch.zeros((), device=self.device)
        x, y = self.batches.batch("train", self.step)                          # (batch_size * accum, T)
        for xm, ym in zip(x.chunk(accum), y.chunk(accum)):                     # (batch_size, T) each
            with autocast(self.device, self.dtype):
                _, loss = self.step_model(xm, ym)
            (loss / accum).backward()  # mean over the global batch, whatever the accumulation
            total += loss.detach()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / accum

    def fit(self) -> dict[str, Any]:
        """Train to the last step (resuming if a checkpoint exists); return the summary."""
        from tqdm import tqdm

        cfg = self.train_cfg
        resumed_at = self.step if self.resume() else None
        start_wall = time.perf_counter() - self.wall_seconds
        status, error = "done", None
        bar = tqdm(total=cfg["steps"], initial=self.step, desc=self.run.run_id, unit="step", leave=False,
                   disable=not self.show_progress, dynamic_ncols=True)
        try:
            if not self.metrics:
                self.record(0.0)
            running = torch.zeros((), device=self.device)
            while self.step < cfg["steps"]:
                t0 = time.perf_counter()
                running += self.train_step()
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                if self.step % LOG_EVERY == 0:
                    mean = (running / LOG_EVERY).item()  # the only per-interval host sync
                    running.zero_()
                    if not math.isfinite(mean):
                        raise Diverged(f"training loss is not finite near step {self.step}")
                    bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{self.tokens_per_step * self.step / max(self.train_seconds, 1e-9):,.0f}")
                if self.step % cfg["eval_every"] == 0 or self.step == cfg["steps"]:
                    self.record(time.perf_counter() - start_wall)
                every = cfg["checkpoint_every"]
                if (every and self.step % every == 0) or self.step == cfg["steps"]:
                    self.wall_seconds = time.perf_counter() - start_wall
                    self.save_checkpoint()
        except Diverged as err:
            status, error = "diverged", str(err)
        except Stopped as err:
            status, error = err.status, str(err)
        finally:
            bar.close()
        self.wall_seconds = time.perf_counter() - start_wall
        if status == "done":
            self.write_sample()
        return self.summary(status, error, resumed_at)

    # -- outputs ----------------------------------------------------------------------------------
    def write_sample(self) -> None:
        cfg, tok = self.run.sample, self.dataset.tokenizer
        if cfg["tokens"] == 0:
            return
        prompt_ids = tok.encode(cfg["prompt"]) if cfg["prompt"] is not None else [int(t) for t in self.dataset.val[:16]]
        idx = torch.tensor([prompt_ids or [0]], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.run.seed)
        with autocast(self.device, self.dtype):
            out = self.model.generate(idx, cfg["tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"],
                                      generator=generator)
        files.write_text(self.dir / "samples.txt", tok.decode(out[0].tolist()) + "\n")

    def summary(self, status: str, error: str | None, resumed_at: int | None) -> dict[str, Any]:
        finite = [m for m in self.metrics if math.isfinite(m["val_loss"])]
        last = self.metrics[-1] if self.metrics else {}
        best = min(finite, key=lambda m: m["val_loss"]) if finite else {}
        return {
            "run_id": self.run.run_id, "status": status, "error": error, "steps": self.step,
            "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
            "final_val_bpb": last.get("val_bpb"), "best_val_loss": best.get("val_loss"),
            "best_val_bpb": best.get("val_bpb"), "params": self.model.num_params(),
            "flops_per_token": self.model.flops_per_token(), "tokens_seen": self.step * self.tokens_per_step,
            "tokens_per_s": self.step * self.tokens_per_step / self.train_seconds if self.train_seconds else None,
            "wall_s": round(self.wall_seconds, 3), "train_s": round(self.train_seconds, 3),
            "resumed_at_step": resumed_at, "device": str(self.device), "precision": self.train_cfg["precision"],
            "autocast": str(self.dtype).replace("torch.", "") if self.dtype else "fp32",
            "tokenizer": self.dataset.tokenizer.name, "vocab_size": self.dataset.vocab_size,
            "corpus": self.dataset.corpus_name, "corpus_sha256": self.dataset.corpus_sha256,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        }


def load_model(run_dir: Path, device: str = "cpu"):
    """(model, tokenizer, run spec) of a trained run, from its checkpoint."""
    import yaml

    from registry import TOKENIZER, load_all

    load_all()  # the tokenizer registry fills on import of components.tokenizer
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    tokenizer = TOKENIZER.build(files.read_json(run_dir / "tokenizer.json"), {"text": ""})
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, **spec["model"]))
    state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, spec
