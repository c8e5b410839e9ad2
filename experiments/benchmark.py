"""The bench's measurements (`python -m experiments.bench` runs them, each combination in a fresh process):
the matmul peak, the timed training steps of one combination with its --without variants interleaved,
and a run's fixed cost. The command's help (experiments/bench.py) says what each column means."""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments import resources, step_profile


# -- timing --------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Times pieces of work by key: on CUDA with events recorded on the stream around the work (the
    GPU's own time, read after one sync at the end), elsewhere with the wall clock."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[tuple[Any, Any, Any]] = []

    def now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def time(self, key: Any, work) -> None:
        start = self.now()
        work()
        self.marks.append((key, start, self.now()))

    def seconds(self) -> dict[Any, list[float]]:
        """Each key's times, in the order they were taken."""
        sync(self.device)
        out: dict[Any, list[float]] = {}
        for key, start, end in self.marks:
            out.setdefault(key, []).append(start.elapsed_time(end) / 1e3 if self.cuda else end - start)
        return out


# -- the peak ------------------------------------------------------------------------------------


def matmul_peak(device, dtype, sizes=(512, 1024, 2048, 4096), seconds: float = 1.0,
                max_single_s: float = 2.0) -> dict[str, Any]:
    """Sustained FLOP/s: the median product time at each square size (the statistic the steps are
    timed with; a best-of-repeats on a ~1 ms product picks up timer and clock outliers, measured up
    to +17% here), the best size reported. A size is skipped when one product would take more than
    max_single_s at the rate measured so far (bf16 emulated on a CPU without bf16 units: ~1 GFLOP/s)."""
    import torch
    by_size: dict[int, float] = {}
    for n in sizes:
        if by_size and 2 * n ** 3 / by_size[max(by_size)] > max_single_s:
            break  # one product would take too long at the rate of the last size
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up: first-call allocations and kernel selection
        sync(device)
        times: list[float] = []
        while sum(times) < seconds or len(times) < 5:
            clock = Clock(device)
            clock.time(n, lambda: a @ b)
            times.append(clock.seconds()[n][0])
            if times[-1] > max_single_s:
                break
        by_size[n] = 2 * n ** 3 / statistics.median(times)
    return {"gflops": max(by_size.values()) / 1e9, "by_size": {n: round(v / 1e9, 1) for n, v in by_size.items()}}


# -- one combination, in its own process ---------------------------------------------------------
def run_spec(cfg: dict[str, Any]):
    """The RunSpec the bench trains: the preset at its recipe's batch, on the bench corpus."""
    from experiments.spec import parse_spec

    model = {"preset": cfg["preset"], "attention": {"name": "multi_head", "impl": cfg["impl"]}}
    raw = {"experiment": "bench", "seeds": [0],
           "data": {"corpus": cfg["corpus"], "tokenizer": cfg["tokenizer"]},
           "model": model,
           "train": {"batch_size": cfg["batch_size"], "precision": cfg["precision"], "compile": cfg["compile"],
                     "device": cfg["device"], "steps": cfg["warmup"] + cfg["steps"] + 1, "warmup": 0,
                     "eval_batches": 1, "eval_every": 10**6}}
    return parse_spec(raw).runs[0]


class Switch:
    """Sets the runtime knobs for the next step: timing them step by step in turn in one process
    compares them under the same machine load (this machine's speed drifts by ~10% over minutes)."""

    def __init__(self, trainer):
        from components.kernels import settings

        self.trainer, self.own_optimizer, self.torch_adamw = trainer, trainer.optimizer, None
        self.kernels = settings.current()  # the process's own setting: each knob switches one part off

    def set(self, knob: str | None) -> None:
        import torch

        from components.kernels import settings
        settings.configure(dataclasses.replace(self.kernels, fused=self.kernels.fused and knob != "fused_kernels",
                                               c_loops=self.kernels.c_loops and knob != "c_kernels",
                                               heads_attention=self.kernels.heads_attention and knob != "heads_attention",
                                               bf16=self.kernels.bf16 - {(knob or "").removeprefix("bf16_")}))
        self.trainer.optimizer = self.own_optimizer
        if knob == "fused_adamw":
            if self.torch_adamw is None:
                groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")}
                          for g in self.own_optimizer.param_groups]
                cfg = self.trainer.train_cfg
                self.torch_adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
            self.trainer.optimizer = self.torch_adamw


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Time full training steps of one combination and of its interleaved variants (a fresh process)."""
    import torch

    from experiments.cpu_runtime import DEFAULT_THREADS
    from experiments.hardware import resolve_device
    from experiments.runner import bind_data, data_key
    from experiments.train import Trainer

    run = run_spec(cfg)
    dataset = bind_data([run])[data_key(run)]
    device = resolve_device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resources.reset_peak_rss()
    rss_before = resources.rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(run, dataset, Path(tmp), device, tune_allocator=cfg["without"] != "allocator")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    elif device.type == "cpu":
        torch.set_num_threads(DEFAULT_THREADS)  # the device's peak is all cores'; see --threads
    switch, variants = Switch(trainer), [cfg["without"], *cfg.get("interleave", [])]
    t = time.perf_counter()
    for variant in variants:
        switch.set(variant)
        for _ in range(cfg["warmup"]):
            trainer.train_step()
    sync(device)
    warmup_s = time.perf_counter() - t
    clock = Clock(device)
    for i in range(cfg["steps"]):
        for variant in variants[i % len(variants):] + variants[:i % len(variants)]:  # each goes first in turn
            switch.set(variant)
            clock.time(variant, trainer.train_step)
    switch.set(cfg["without"])
    for i in range(cfg["steps"]):
        clock.time(("batch",), lambda: trainer.batches.batch("train", i))
    measured = clock.seconds()
    breakdown = (step_profile.profile_steps(trainer.train_step, cfg["breakdown"], device.type == "cuda")
                 if cfg.get("breakdown") else None)
    times, batch_times = {v: measured[v] for v in variants}, measured[("batch",)]
    model = trainer.model
    peak_mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resources.peak_rss_mb() - rss_before)
    common = {"warmup_s": warmup_s, "batch_s": statistics.median(batch_times),
              "tokens_per_step": trainer.tokens_per_step, "flops_per_token": model.flops_per_token(),
              "matmul_params": model.matmul_params(),
              "dims": {k: model.config.__dict__[k] for k in ("n_layers", "d_model", "context_length")},
              "threads": torch.get_num_threads() if device.type == "cpu" else None, "device": describe_device(device),
              "compile": trainer.compile_watch.summary() if cfg["compile"] else None}
    results = {}
    for variant, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3  # within the data
        # one process: its peak memory is the largest variant's, so only the first row reports it
        results[variant or "-"] = common | {"step_s": statistics.median(ts), "step_iqr_s": q[2] - q[0],
                                             "peak_mem_mb": peak_mem if variant == cfg["without"] else None,
                                             "breakdown": breakdown if variant == cfg["without"] else None}
    return results


def fixed_cost(cfg: dict[str, Any]) -> dict[str, float]:
    """Imports, data from the token cache and model build of one run, in this fresh process."""
    marks = {"start": time.perf_counter()}
    import torch  # noqa: F401

    from experiments.hardware import resolve_device
    from experiments.runner import bind_data, data_key
    from experiments.train import Trainer
    marks["imports"] = time.perf_counter()
    run = run_spec(cfg)
    dataset = bind_data([run])[data_key(run)]
    marks["data"] = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(run, dataset, Path(tmp), resolve_device(cfg["device"]))
    marks["build"] = time.perf_counter()
    names = list(marks)
    return {f"{b}_s": marks[b] - marks[a] for a, b in zip(names, names[1:])}


def describe_device(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"{platform.processor() or platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
