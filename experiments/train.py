"""Train one run: AdamW, warm-up + schedule, clipping, accumulation, eval, checkpoints, exact resume.

Everything a run needs to continue bit-for-bit after a crash lives in its checkpoint: model,
optimizer, step, every RNG state and the metrics so far. Batches are a pure function of
(seed, split, step), and the learning rate a pure function of the step, so nothing else is needed.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from components.model import GPT, ModelConfig
from experiments import ddp, evaluate, files
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


BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 AMX / AVX512-BF16; aarch64 FEAT_BF16


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / aarch64
            return set(value.split())
    return set()


def cpu_has_bf16_units(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX or Arm BF16). Without such
    units bf16 matmuls are emulated: ~20x slower than float32 on an AVX2 EPYC, ~4x on an AVX-512
    Xeon without AVX512-BF16 (where oneDNN still reports bf16 as supported, so its flag is not used)."""
    flags = cpu_flags() if flags is None else flags
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): oneDNN's own check is the best there is
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked; auto = bf16 on CUDA (with bf16 support), float32 elsewhere.

    An explicit bf16 is honoured on any device (its numerics are what one may want to study), with a
    warning where the hardware has no bf16 matrix units and it will run slower than float32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision != "bf16":
        return None
    if not bf16_is_fast(device):
        warnings.warn(f"precision bf16 on {device.type}: this device has no bf16 matrix units, so bf16 "
                      "matmuls are emulated and slower than float32", stacklevel=2)
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -- CPU runtime ---------------------------------------------------------------------------------
DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at import: one per physical core
SMALL_STEP_FLOPS = 2e8  # below this many FLOPs per step, ops are too small to split over threads


def cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, total) CPU jiffies of the machine, and this process's own busy jiffies; None off Linux."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()                          # fields after the command name
        return sum(values) - values[3] - values[4], sum(values), int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


class CpuThreads:
    """Intra-op threads of a CPU run: OMP_NUM_THREADS when set; one for small models; otherwise one
    per core that other processes leave free, re-decided every LOG_EVERY steps.

    Why: an op split over two threads waits for the slower one, so a thread that shares its core with
    another busy process makes every op wait out a time slice (measured up to 30x slower than one
    thread on a loaded 2-core machine), while on idle cores two threads ran the nanogpt-cpu step
    ~1.45x faster than one. Others' load = the machine's busy time minus this process's own.
    """

    def __init__(self, flops_per_step: float):
        self.reason, self.last = "", None
        if os.environ.get("OMP_NUM_THREADS"):
            self.reason = "OMP_NUM_THREADS"
        elif flops_per_step < SMALL_STEP_FLOPS:
            torch.set_num_threads(1)
            self.reason = "small model"
        else:
            first = cpu_jiffies()
            time.sleep(0.1)  # a first look at the others' load before the first step
            self.last = first
            self.update()

    def update(self) -> None:
        now = cpu_jiffies()
        if self.last is None or now is None:
            return
        (busy0, total0, own0), (busy1, total1, own1) = self.last, now
        self.last = now
        cpus = os.cpu_count() or 1
        if total1 <= total0:
            return
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * cpus
        threads = max(1, min(DEFAULT_THREADS, int(cpus - others + 0.5)))
        self.reason = f"{threads} of {DEFAULT_THREADS} cores free"
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc): without it every activation-sized tensor is a fresh
    mmap whose pages fault in again each step (~1,200 page faults per nanogpt-cpu step, ~35 with it)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune


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


def make_optimizer(model: torch.nn.Module, train: dict[str, Any], device: torch.device):
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params):
        return FusedAdamW(groups, lr=train["lr"], betas=tuple(train["betas"]))
    return torch.optim.AdamW(groups, lr=train["lr"], betas=tuple(train["betas"]))


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


def rank_seed(seed: int, step: int) -> int:
    """Torch's seed on a rank > 0 (from the start or a resumed step): its own dropout masks."""
    return (seed * 1_000_003 + ddp.rank() * 7919 + step) % 2**63


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
        self.writer = ddp.is_writer()  # under torchrun only rank 0 writes; see experiments/ddp.py
        if ddp.rank():
            torch.manual_seed(rank_seed(run.seed, 0))  # same weights (DDP broadcasts rank 0's), own dropout
        self.step_model = torch.compile(self.model) if run.train["compile"] else self.model
        self.eval_model = self.step_model  # training goes through DDP under torchrun (see fit), eval does not
        self.optimizer = make_optimizer(self.model, run.train, device)
        self.dtype = autocast_dtype(run.train["precision"], device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        ctx = run.model["context_length"]
        # One global batch per step, split into grad_accum micro-batches (and under torchrun over the
        # processes): the data a step sees does not depend on how it is accumulated or distributed.
        self.accum = run.train["grad_accum"]
        if run.train["batch_size"] % ddp.world():
            raise ValueError(f"train.batch_size = {run.train['batch_size']} must be divisible by the "
                             f"{ddp.world()} processes that share each micro-batch")
        self.batches = Batches(dataset, context_length=ctx, batch_size=run.train["batch_size"] * self.accum,
                               seed=run.seed, device=str(device))
        self.eval_sets = {split: [(ddp.shard(x), ddp.shard(y)) for x, y in self.batches.eval_batches(split, run.train["eval_batches"])]
                          for split in ("train", "val")}
        self.tokens_per_step = run.train["batch_size"] * run.train["grad_accum"] * ctx
        self.cpu_threads = self.setup_cpu() if device.type == "cpu" else None
        self.step, self.metrics, self.train_seconds, self.wall_seconds = 0, [], 0.0, 0.0
        self.final_scores: dict[str, Any] = {}  # the exact final evaluation's, once the run is done

    def setup_cpu(self) -> CpuThreads:
        """The allocator and the intra-op threads of this run (see CpuThreads)."""
        tune_cpu_allocator()
        return CpuThreads(self.model.flops_per_token() * self.tokens_per_step)

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
        if not self.writer:  # the other ranks get rank 0's state through share_state
            return False
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

    def share_state(self, resumed: bool) -> bool:
        """Under torchrun: rank 0's resumed state (step, metrics, optimizer moments) on every rank; the
        weights follow when DDP wraps the model. Returns whether rank 0 resumed."""
        if not ddp.active():
            return resumed
        resumed, self.step, self.metrics, self.train_seconds, self.wall_seconds = ddp.broadcast(
            (resumed, self.step, self.metrics, self.train_seconds, self.wall_seconds))
        if resumed:
            states = [self.optimizer._state(p) for g in self.optimizer.param_groups for p in g["params"]]
            ddp.broadcast_tensors([s[k] for s in states for k in ("step", "exp_avg", "exp_avg_sq")])
            if ddp.rank():
                torch.manual_seed(rank_seed(self.run.seed, self.step))
        return resumed

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
                        total += self.eval_model(xm, ym, return_logits=False)[1].float()
            losses[split] = (ddp.mean(total) / (len(batches) * self.accum)).item()  # equal shards: the global mean
        self.model.train()
        return losses

    def record(self, elapsed: float) -> dict[str, float]:
        losses = self.evaluate()
        row = {"step": self.step, "tokens": self.step * self.tokens_per_step, "lr": lr_at(max(self.step - 1, 0), self.train_cfg),
               "train_loss": losses["train"], "val_loss": losses["val"],
               "val_bpb": self.batches.eval_bits_per_byte("val", self.train_cfg["eval_batches"], losses["val"]),
               "elapsed_s": round(elapsed, 3)}
        self.metrics.append(row)
        if self.writer:
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
        x, y = ddp.shard(x), ddp.shard(y)                                      # this process's rows
        for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):     # (batch_size / world, T) each
            with self.grad_sync(i == accum - 1):
                with autocast(self.device, self.dtype):
                    _, loss = self.step_model(xm, ym, return_logits=False)
                (loss / accum).backward()  # mean over the global batch, whatever the accumulation
            total += loss.detach()
        if cfg["grad_clip"] > 0:
            clip_grad_norm(self.model.parameters(), cfg["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / accum

    def grad_sync(self, last: bool):
        """Under DDP, gradients are averaged across ranks on the last micro-batch's backward only."""
        if last or not ddp.active():
            return contextlib.nullcontext()
        return self.step_model.no_sync()

    def fit(self) -> dict[str, Any]:
        """Train to the last step (resuming if a checkpoint exists); return the summary."""
        from tqdm import tqdm

        cfg = self.train_cfg
        resumed_at = self.step if self.share_state(self.resume()) else None
        if ddp.active():
            self.step_model = ddp.wrap(self.model)
            if cfg["compile"]:
                self.step_model = torch.compile(self.step_model)
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
                    mean = (ddp.mean(running) / LOG_EVERY).item()  # the only per-interval host sync
                    running.zero_()
                    if self.cpu_threads is not None:
                        self.cpu_threads.update()
                    if not math.isfinite(mean):
                        raise Diverged(f"training loss is not finite near step {self.step}")
                    bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{self.tokens_per_step * self.step / max(self.train_seconds, 1e-9):,.0f}")
                if self.step % cfg["eval_every"] == 0 or self.step == cfg["steps"]:
                    self.record(time.perf_counter() - start_wall)
                every = cfg["checkpoint_every"]
                if self.writer and ((every and self.step % every == 0) or self.step == cfg["steps"]):
                    self.wall_seconds = time.perf_counter() - start_wall
                    self.save_checkpoint()
        except Diverged as err:
            status, error = "diverged", str(err)
        except Stopped as err:
            status, error = err.status, str(err)
        finally:
            bar.close()
        if status == "done":  # score the whole validation (and test) text: experiments/evaluate.py
            self.final_scores = evaluate.final_scores(self.model, self.dataset, cfg["batch_size"], self.device, self.dtype)
            if not math.isfinite(self.final_scores["final_val_loss"]):
                status, error = "diverged", "the final validation loss is not finite"
        self.wall_seconds = time.perf_counter() - start_wall
        if status == "done" and self.writer:
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
            "threads": torch.get_num_threads(), "threads_reason": self.cpu_threads.reason if self.cpu_threads else None,
        } | self.final_scores  # a finished run's final_val_* are the exact ones, not the last sampled row's


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
