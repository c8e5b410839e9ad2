"""Train one run: the Trainer's loop (accumulation, clipping, schedule), evaluation, metrics.csv,
checkpoints, exact resume, samples and the summary.

Everything a run needs to continue bit-for-bit after a crash lives in its checkpoint: model,
optimizer, step, every RNG state and the metrics so far. Batches are a pure function of
(seed, split, step), and the learning rate a pure function of the step, so nothing else is needed.
The optimizer is in optim.py, the CPU's threads and allocator in cpu_runtime.py, the device and
precision in hardware.py, the RNG state and loading a trained run in checkpoint.py.
"""
from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from components.model import GPT
from experiments import checkpoint, compiling, ddp, evaluate, files, metrics
from experiments.checkpoint import rng_state, seed_everything, set_rng_state
from experiments.cpu_runtime import CpuThreads, tune_cpu_allocator
from experiments.data import TRAIN_STREAM, Batches
from experiments.hardware import autocast, autocast_dtype, resolve_precision, tf32_enabled
from experiments.optim import clip_grad_norm, lr_at, make_optimizer
from experiments.progress import ProgressFile
from experiments.schema import EVAL_ROWS, ModelConfig
from experiments.spec import RunSpec
from experiments.tensorboard_log import Board

METRIC_COLUMNS = metrics.EVAL_COLUMNS  # metrics.csv
LOG_EVERY = 10  # steps between host syncs for the progress bar, the divergence check and the thread count
CHECKPOINT_KEYS = {"step", "model", "optimizer", "rng", "metrics", "train_seconds", "wall_seconds"}


def rank_seed(seed: int, step: int) -> int:
    """Torch's seed on a rank > 0 (from the start or a resumed step): its own dropout masks."""
    return (seed * 1_000_003 + ddp.rank() * 7919 + step) % 2**63


# -- one run -------------------------------------------------------------------------------------
class Diverged(Exception):
    """A loss turned NaN or infinite: the run stops with status `diverged`."""


class Stopped(Exception):
    """Raised by an on_eval callback to end a run early with a status of its own (a pruned trial)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


class Trainer:
    """Trains `run` on `dataset`, writing metrics.csv, checkpoint.pt, samples.txt into `run_dir`.
    `tune_allocator=False` leaves glibc's allocator as it is (the bench's --without allocator)."""

    def __init__(self, run: RunSpec, dataset, run_dir: Path, device: torch.device, show_progress: bool = False,
                 on_eval: Callable[[dict[str, float]], None] | None = None, tune_allocator: bool = True):
        self.on_eval = on_eval  # sees each metrics row; may raise Stopped (e.g. Optuna pruning)
        self.run, self.dataset, self.dir, self.device = run, dataset, run_dir, device
        self.train_cfg = run.train
        self.show_progress = show_progress
        seed_everything(run.seed)
        self.model = GPT(ModelConfig(vocab_size=dataset.vocab_size, **run.model)).to(device)
        self.params = list(self.model.parameters())  # walked once: the module tree costs ~130 us a walk
        self.writer = ddp.is_writer()  # under torchrun only rank 0 writes; see experiments/ddp.py
        if ddp.rank():
            torch.manual_seed(rank_seed(run.seed, 0))  # same weights (DDP broadcasts rank 0's), own dropout
        # A fresh dynamo per compiled run, each graph counted: summary.json says if it ran compiled.
        self.compile_watch = compiling.watch_for(run.train.compile)
        self.step_model = self.compiled(self.model)
        self.eval_model = self.step_model  # training goes through DDP under torchrun (see fit), eval does not
        self.optimizer = make_optimizer(self.model, run.train, device)
        self.precision = run.precision or resolve_precision(run.train.precision, device)  # bound: the run id's
        self.dtype = autocast_dtype(self.precision, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        ctx = run.model["context_length"]
        # One global batch per step, split into grad_accum micro-batches (and under torchrun over the
        # processes): the data a step sees does not depend on how it is accumulated or distributed.
        self.accum = run.train.grad_accum
        if run.train.batch_size % ddp.world():
            raise ValueError(f"train.batch_size = {run.train.batch_size} must be divisible by the "
                             f"{ddp.world()} processes that share each micro-batch")
        self.batches = Batches(dataset, context_length=ctx, batch_size=run.train.batch_size * self.accum,
                               seed=run.seed, device=str(device))
        # Every run of a seed scores the same evaluation windows, whatever its batch: each process its share
        self.eval_sets = {split: tuple(ddp.share(torch.cat(t)) for t in zip(*self.batches.eval_batches(
                              split, run.train.eval_batches))) for split in ("train", "val")}  # (x, y): (rows, T)
        self.eval_windows = run.train.eval_batches * EVAL_ROWS
        self.tokens_per_step = run.train.batch_size * run.train.grad_accum * ctx
        self.flops_per_token = self.model.flops_per_token()
        self.cpu_threads = self.setup_cpu(tune_allocator) if device.type == "cpu" else None
        self.step, self.metrics, self.train_seconds, self.wall_seconds = 0, [], 0.0, 0.0
        self.bytes_seen = 0  # UTF-8 bytes of the training targets so far (what a bytes budget counts)
        self.final_scores: dict[str, Any] = {}  # the exact final evaluation's, once the run is done
        # Live outputs, from the writing process only: TensorBoard events (opened in fit) and progress.json.
        self.board: Board | None = None
        self.progress = ProgressFile(run_dir, run.train.steps) if self.writer else None
        self.grad_norm_sum = torch.zeros((), device=device)  # over the steps since the last log_interval
        self.interval_from = (0, 0.0)  # (step, train_seconds) where that interval began
        self.discarded: str | None = None  # why a damaged checkpoint was set aside, if one was

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model torch.compile'd through the run's compile watch, or as it is without train.compile."""
        return compiling.compile_for_run(model, self.compile_watch) if self.run.train.compile else model

    def setup_cpu(self, tune_allocator: bool) -> CpuThreads:
        """The allocator and the intra-op threads of this run (experiments/cpu_runtime.py)."""
        if tune_allocator:
            tune_cpu_allocator()
        return CpuThreads(self.flops_per_token * self.tokens_per_step)

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def check_weights(self) -> None:
        """Diverged where a weight is not finite: the loss is only checked every LOG_EVERY steps and at
        evaluations, and a checkpoint must never keep weights from after a divergence."""
        if not all(bool(p.isfinite().all()) for p in self.params):
            raise Diverged(f"the weights are not finite at step {self.step}")

    def save_checkpoint(self) -> None:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "metrics": self.metrics, "train_seconds": self.train_seconds,
                 "wall_seconds": self.wall_seconds, "bytes_seen": self.bytes_seen, "rules": metrics.RULES_VERSION}
        checkpoint.save(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint's state (on the CPU), or None when there is none. A damaged one (checksum,
        truncation, a file that is more than data, weights that do not fit) is said so and removed: the
        run starts again from step 0 rather than fail the same way on every rerun."""
        if not self.checkpoint_path.exists():
            return None
        try:
            state = checkpoint.load(self.checkpoint_path)
            if type(rules := state.get("rules", 1)) is not int:
                raise checkpoint.DamagedCheckpoint(f"{self.checkpoint_path.name}: its rules version {rules!r} is "
                                                   "not a whole number")
            if rules != metrics.RULES_VERSION:
                self.set_aside_checkpoint(state, rules)
                return None
            missing = CHECKPOINT_KEYS - set(state)
            problem = (f"it lacks {sorted(missing)}" if missing
                       else checkpoint.fitting_problem(self.model, state["model"])
                       or checkpoint.optimizer_problem(self.optimizer, state["optimizer"]))
            if problem:
                raise checkpoint.DamagedCheckpoint(f"{self.checkpoint_path.name}: {problem}")
        except checkpoint.DamagedCheckpoint as err:
            self.discarded = str(err)
            print(f"warning: run {self.run.run_id}: {err}; training it again from step 0", file=sys.stderr, flush=True)
            checkpoint.discard(self.checkpoint_path)
            return None
        return state

    def set_aside_checkpoint(self, state: dict[str, Any], rules: int) -> None:
        """A checkpoint written under other training rules (metrics.RULES_VERSION): the run starts again from
        step 0 rather than finish under two sets of rules; the checkpoint is kept beside it, renamed."""
        kept = checkpoint.set_aside(self.checkpoint_path, f"rules{rules}")
        self.discarded = (f"its checkpoint (step {state.get('step')}) followed the lab's training rules v{rules}, "
                          f"not this code's v{metrics.RULES_VERSION}; kept as {kept.name}")
        print(f"warning: run {self.run.run_id}: {self.discarded}; training it again from step 0, so that it "
              "follows one set of rules", file=sys.stderr, flush=True)

    def resume(self) -> bool:
        if not self.writer:  # the other ranks get rank 0's state through share_state
            return False
        state = self.load_checkpoint()
        if state is None:
            return False
        # Loaded on the CPU: load_state_dict copies into the model's device, the optimizer moves its
        # state to each parameter's device, and the RNG states stay CPU tensors, as set_rng_state wants.
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step, self.metrics = state["step"], state["metrics"]
        self.train_seconds, self.wall_seconds = state["train_seconds"], state["wall_seconds"]
        self.bytes_seen = state.get("bytes_seen")  # an older checkpoint lacks it: count its batches again
        if self.bytes_seen is None:                 # (a batch is a pure function of the step)
            self.bytes_seen = sum(self.train_batch(step)[2] for step in range(self.step))
        files.write_csv(self.dir / "metrics.csv", self.metrics, METRIC_COLUMNS)  # drop rows past the checkpoint
        return True

    def share_state(self, resumed: bool) -> bool:
        """Under torchrun: rank 0's resumed state (step, metrics, optimizer moments) on every rank; the
        weights follow when DDP wraps the model. Returns whether rank 0 resumed."""
        if not ddp.active():
            return resumed
        resumed, self.step, self.metrics, self.train_seconds, self.wall_seconds, self.bytes_seen = ddp.broadcast(
            (resumed, self.step, self.metrics, self.train_seconds, self.wall_seconds, self.bytes_seen))
        if resumed:
            ddp.broadcast_tensors([s[k] for s in self.optimizer.all_states() for k in ("step", "exp_avg", "exp_avg_sq")])
            if ddp.rank():
                torch.manual_seed(rank_seed(self.run.seed, self.step))
        return resumed

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.compile_watch.step = self.step  # a graph compiled now is this step's
        self.model.eval()
        losses = {}
        rows = max(1, self.train_cfg.batch_size // ddp.world())  # a micro-batch, as in training
        for split, (x, y) in self.eval_sets.items():
            total = torch.zeros((), device=self.device)  # the windows' summed mean losses
            for xm, ym in zip(x.split(rows), y.split(rows)) if len(x) else ():  # a process may have no share
                # a shorter last micro-batch runs uncompiled: a second shape would make torch.compile
                # recompile the model, the training step included, for any batch size
                model = self.eval_model if len(xm) == rows else self.model
                with autocast(self.device, self.dtype):
                    total += model(xm, ym, return_logits=False)[1].float() * len(xm)
            losses[split] = (ddp.summed(total) / self.eval_windows).item()  # each window has T targets
        self.model.train()
        return losses

    def record(self, elapsed: float) -> dict[str, float]:
        """Evaluate, append the row to metrics.csv, and stop a diverged run; the row goes to on_eval."""
        losses = self.evaluate()
        tokens = self.step * self.tokens_per_step
        row = {metrics.STEP: self.step, metrics.TOKENS: tokens, metrics.BYTES: self.bytes_seen,
               metrics.FLOPS: tokens * self.flops_per_token,
               metrics.LR: lr_at(max(self.step - 1, 0), self.train_cfg),
               metrics.TRAIN_LOSS: losses["train"], metrics.VAL_LOSS: losses["val"],
               metrics.VAL_BPB: self.batches.eval_bits_per_byte("val", self.train_cfg.eval_batches, losses["val"]),
               metrics.TRAIN_BPB: self.batches.eval_bits_per_byte("train", self.train_cfg.eval_batches, losses["train"]),
               metrics.ELAPSED: round(elapsed, 3)}
        self.metrics.append(row)
        if self.writer:
            files.write_csv(self.dir / "metrics.csv", self.metrics, METRIC_COLUMNS)
            self.progress.update(self.step, self.tokens_per_s(), row[metrics.VAL_BPB], force=True)
        if self.board is not None:
            self.board.evaluation(row)
        if not all(math.isfinite(row[k]) for k in (metrics.TRAIN_LOSS, metrics.VAL_LOSS)):
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
        self.compile_watch.start_step(self.step)
        x, y, n_bytes = self.train_batch(self.step)                            # (batch_size * accum, T)
        self.bytes_seen += n_bytes
        x, y = ddp.shard(x), ddp.shard(y)                                      # this process's rows
        for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):     # (batch_size / world, T) each
            with self.grad_sync(i == accum - 1):
                with autocast(self.device, self.dtype):
                    _, loss = self.step_model(xm, ym, return_logits=False)
                (loss / accum).backward()  # mean over the global batch, whatever the accumulation
            total += loss.detach()
        if cfg.grad_clip > 0:
            self.grad_norm_sum += clip_grad_norm(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.compile_watch.end_step()
        self.step += 1
        return total / accum

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The step's (x, y), as Batches.batch draws them, and the UTF-8 bytes of y: the text it trains on."""
        windows = self.batches.windows("train", TRAIN_STREAM, step)
        return (*self.batches.to_device(windows), int(self.dataset.token_bytes[windows[:, 1:]].sum()))

    def grad_sync(self, last: bool):
        """Under DDP, gradients are averaged across ranks on the last micro-batch's backward only."""
        if last or not ddp.active():
            return contextlib.nullcontext()
        return self.step_model.no_sync()

    def fit(self) -> dict[str, Any]:
        """Train to the last step (resuming if a checkpoint exists); return the summary."""
        cfg = self.train_cfg
        resumed_at = self.step if self.share_state(self.resume()) else None
        if ddp.active():
            self.step_model = self.compiled(ddp.wrap(self.model))
        if self.writer and cfg.tensorboard:
            self.board = Board.open(self.run, self.dir, resumed_at)
        start_wall = time.perf_counter() - self.wall_seconds
        try:
            status, error = self.loop(start_wall)
            if status == "done":  # score the whole validation (and test) text: experiments/evaluate.py
                self.final_scores = evaluate.final_scores(self.model, self.dataset, cfg.batch_size, self.device,
                                                          self.dtype)
                if not math.isfinite(self.final_scores[metrics.FINAL_VAL_LOSS]):
                    status, error = "diverged", "the final validation loss is not finite"
            self.wall_seconds = time.perf_counter() - start_wall
            if status == "done" and self.writer:
                self.write_sample()
        except BaseException:
            if self.board is not None:
                self.board.close("failed", self.step)
            raise
        summary = self.summary(status, error, resumed_at)
        if self.board is not None:
            self.board.close(status, self.step, summary)
        return summary

    def loop(self, start_wall: float) -> tuple[str, str | None]:
        """The steps from here to the last, with evaluations, checkpoints and the live outputs; the
        run's (status, error) when they end: done, or diverged, or a status an on_eval callback chose."""
        cfg = self.train_cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.run.run_id, unit="step", leave=False,
                   disable=not self.show_progress, dynamic_ncols=True)
        try:
            if not self.metrics:
                self.record(0.0)
            running = torch.zeros((), device=self.device)
            self.interval_from = (self.step, self.train_seconds)
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                running += self.train_step()
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                if self.step % LOG_EVERY == 0:
                    bar.set_postfix(self.log_interval(running))
                    running.zero_()
                if self.progress is not None:
                    self.progress.update(self.step, self.tokens_per_s())
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    self.record(time.perf_counter() - start_wall)
                every = cfg.checkpoint_every
                if (every and self.step % every == 0) or self.step == cfg.steps:
                    self.check_weights()  # every rank: they hold the same weights, so they stop alike
                    if self.writer:
                        self.wall_seconds = time.perf_counter() - start_wall
                        self.save_checkpoint()
        except Diverged as err:
            return "diverged", str(err)
        except Stopped as err:
            return err.status, str(err)
        finally:
            bar.close()
            self.compile_watch.warn_if_eager(self.run.run_id)
        return "done", None

    def tokens_per_s(self) -> float | None:
        return self.tokens_per_step * self.step / self.train_seconds if self.train_seconds else None

    def log_interval(self, running: torch.Tensor) -> dict[str, str]:
        """Every LOG_EVERY steps, the loop's one host sync: the mean training loss (and gradient norm)
        of the interval, the divergence check, the thread count, TensorBoard; the progress bar's text."""
        from_step, from_seconds = self.interval_from
        steps, seconds = max(1, self.step - from_step), self.train_seconds - from_seconds
        self.interval_from = (self.step, self.train_seconds)
        mean = (ddp.mean(running) / steps).item()
        if self.cpu_threads is not None:
            self.cpu_threads.update()
        if not math.isfinite(mean):
            raise Diverged(f"training loss is not finite near step {self.step}")
        speed = self.tokens_per_step * steps / max(seconds, 1e-9)
        if self.board is not None:
            grad_norm = (self.grad_norm_sum / steps).item() if self.train_cfg.grad_clip > 0 else None
            self.board.interval(self.step, mean, lr_at(self.step - 1, self.train_cfg), speed, grad_norm)
        self.grad_norm_sum.zero_()
        return {"loss": f"{mean:.3f}", "tok_s": f"{self.tokens_per_s() or 0:,.0f}"}

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
        """summary.json: the status, the last and best evaluation, costs, and where and how it ran."""
        finite = [m for m in self.metrics if math.isfinite(m[metrics.VAL_LOSS])]
        last = self.metrics[-1] if self.metrics else {}
        best = min(finite, key=lambda m: m[metrics.VAL_LOSS]) if finite else {}
        losses = ({metrics.final(c): last.get(c) for c in (metrics.TRAIN_LOSS, metrics.VAL_LOSS, metrics.VAL_BPB)}
                  | {metrics.best(c): best.get(c) for c in (metrics.VAL_LOSS, metrics.VAL_BPB)})
        tokens = self.step * self.tokens_per_step
        if status == "diverged":  # its last finite evaluation (step 0's, maybe) is no result of the run
            losses |= {metrics.final(c): None for c in (metrics.TRAIN_LOSS, metrics.VAL_LOSS, metrics.VAL_BPB)}
        return {
            "run_id": self.run.run_id, "status": status, "error": error, "steps": self.step, **losses,
            metrics.PARAMS: self.model.num_params(), metrics.FLOPS_PER_TOKEN: self.flops_per_token,
            metrics.TOKENS_SEEN: tokens, metrics.BYTES_SEEN: self.bytes_seen,
            metrics.FLOPS_SEEN: tokens * self.flops_per_token, "budget": self.train_cfg.budget,
            metrics.TOKENS_PER_S: self.tokens_per_s(),
            metrics.WALL_S: round(self.wall_seconds, 3), metrics.TRAIN_S: round(self.train_seconds, 3),
            "resumed_at_step": resumed_at, "checkpoint_discarded": self.discarded,
            metrics.TRAINING_RULES: metrics.RULES_VERSION,
            "device": str(self.device), "precision": self.precision,
            "precision_setting": self.train_cfg.precision, "tf32": tf32_enabled(self.device),
            "autocast": str(self.dtype).replace("torch.", "") if self.dtype else "fp32",
            "tokenizer": self.dataset.tokenizer.name, "vocab_size": self.dataset.vocab_size,
            "corpus": self.dataset.corpus_name, "corpus_sha256": self.dataset.corpus_sha256,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(), "threads_reason": self.cpu_threads.reason if self.cpu_threads else None,
        } | self.compile_watch.summary() | self.final_scores  # a finished run's final_val_* are the exact ones
