"""`python -m experiments.bench`: how close training gets to this device's matrix-multiply peak.

    python -m experiments.bench                                      # this device's default presets
    python -m experiments.bench --preset nanogpt-cpu shakespeare-cpu --precision fp32 bf16 --csv bench.csv

1. The matmul peak per precision: square products of 512..4096 (and 8192 on CUDA), median time per
   size, best size.
2. Per-run fixed cost of the tiny preset (imports, data from the token cache, model build), in a fresh
   interpreter, as a run pays it.
3. For each preset x precision x impl x compile: full training steps through the lab's own
   Trainer.train_step (batch, forward, backward, clip, AdamW), median of --steps after --warmup, each
   combination in its own process (so peak memory and compile caches are its own), on one thread per
   physical core (the peak's; --threads to change). Columns:
   step_ms, tokens_per_s, achieved GFLOP/s, mfu = achieved / measured peak of that precision,
   mfu_datasheet = achieved / the GPU's datasheet peak (experiments/datasheets.py; empty for a device
   it does not list), peak memory, batch preparation time and its fraction of a step, and the FLOPs
   formula (model.flops_per_token(): 6 N + 12 L d T, N = parameters but the lookup tables, full-context attention).
   On CUDA every time is the GPU's own, from CUDA events recorded around the work: no host sync
   between steps (a sync per step would time the launch queue draining, not the step).

Timings on a shared machine vary by ~10%: compare rows of one invocation; the load average is printed.
`--breakdown` profiles a few more steps and prints where they go (matmuls, attention, norms, casts,
optimizer, between ops; experiments/step_profile.py). `--without` adds rows with one optimisation switched off, for before/after in the same invocation;
the kernel and optimizer switches are timed step by step in turn with the base row in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments import files, interrupts, step_profile
from experiments.benchmark import describe_device, fixed_cost, matmul_peak, measure, run_spec
from experiments.bench_table import COLUMNS, loadavg, print_summary, row_for
from experiments.datasheets import datasheet_peak
from experiments.schema import AT_LEAST_0, Field, positive_int
from components.kernels.settings import BF16_KERNELS
from registry import SpecError

BATCH_SIZE = {"nanogpt-cpu": 12, "shakespeare-cpu": 16, "gpt2-124m": 16}  # the recipes' batches; others 32
KNOBS = {  # --without: what each switches off
    "fused_kernels": "the fused CPU kernels (attention, dropout, GELU, output cross-entropy): stock ops instead",
    "c_kernels": "the C loops inside the fused kernels: the same algorithms as torch ops",
    "heads_attention": "the whole-head C attention (float32, no bias, context <= 384): SDPA's flash kernel "
                       "or the lab's blocked kernel instead",
    "fused_adamw": "the fused AdamW: torch's default per-parameter loop",
    "allocator": "the glibc allocator tuning: freed activations go back to the OS",
    **{f"bf16_{k}": f"bf16 rows only: the bf16 path of the fused {k.replace('_', '-')} kernel: the stock op under "
                    "autocast instead" for k in sorted(BF16_KERNELS)},
}
BF16_KNOBS = tuple(f"bf16_{k}" for k in sorted(BF16_KERNELS))
RUNTIME_KNOBS = ("fused_kernels", "c_kernels", "heads_attention", "fused_adamw", *BF16_KNOBS)  # switched between steps in one process


def in_subprocess(mode: str, cfg: dict[str, Any], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """(result, wall seconds) of `python -m experiments.bench --MODE cfg` in a fresh interpreter."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", f"--{mode}", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"bench worker failed ({mode}, {cfg}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][6:]), wall


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", help="presets to time (default: nanogpt-cpu shakespeare-cpu on CPU, "
                                               "gpt2-124m on CUDA)")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                   help="default: fp32, plus bf16 where the device has bf16 matrix units")
    p.add_argument("--impl", nargs="+", default=["sdpa"], choices=["sdpa", "naive"], help="attention kernel")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--steps", type=int, default=30, help="timed steps per combination (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-size", type=int, help="override the presets' recipe batch sizes")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: one per physical core, "
                                               "the peak's; runs pick their own, see experiments/cpu_runtime.py)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--corpus", default="embedded", help="corpus for the batches (a name or a text file)")
    p.add_argument("--tokenizer", help="default: gpt2 for gpt2-124m, char otherwise")
    p.add_argument("--without", nargs="+", default=[], choices=sorted(KNOBS),
                   help="also time each float32 combination with this optimisation off: " +
                        "; ".join(f"{k}: {v}" for k, v in KNOBS.items()))
    p.add_argument("--breakdown", type=int, nargs="?", const=5, default=0, metavar="STEPS",
                   help="also profile STEPS (default 5) more steps of each combination and print where the time "
                        "goes: matmuls, attention, norms, casts, optimizer, ... (experiments/step_profile.py)")
    p.add_argument("--no-fixed-cost", action="store_true", help="skip the per-run fixed cost measurement")
    p.add_argument("--csv", help="write the table here too")
    p.add_argument("--measure", help=argparse.SUPPRESS)       # worker modes: a JSON config
    p.add_argument("--fixed-cost", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def combos(args: argparse.Namespace, device, precisions: list[str]) -> list[dict[str, Any]]:
    """One config per process: each base combination (with the runtime knobs of --without interleaved
    in it) and one per process-level knob (the allocator)."""
    presets = args.preset or (["gpt2-124m"] if device.type == "cuda" else ["nanogpt-cpu", "shakespeare-cpu"])
    out = []
    for preset in presets:
        for precision in precisions:
            for impl in args.impl:
                for compiled in ([False, True] if args.compile else [False]):
                    knobs = [k for k in args.without if precision == "bf16" or k not in BF16_KNOBS]
                    for without in [None, *(k for k in knobs if k not in RUNTIME_KNOBS)]:
                        out.append({"preset": preset, "precision": precision, "impl": impl, "compile": compiled,
                                    "without": without,
                                    "interleave": [k for k in knobs if k in RUNTIME_KNOBS] if without is None else [],
                                    "corpus": args.corpus, "device": args.device,
                                    "tokenizer": args.tokenizer or ("gpt2" if preset == "gpt2-124m" else "char"),
                                    "batch_size": args.batch_size or BATCH_SIZE.get(preset, 32),
                                    "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                                    "breakdown": args.breakdown})
    return out


# The options that are counts, under the spec's own rules and wording (experiments/schema.py).
POSITIVE, NOT_NEGATIVE = positive_int(1, "a count"), Field(0, int, "a count", AT_LEAST_0)
COUNTS = {"steps": POSITIVE, "warmup": NOT_NEGATIVE, "batch_size": POSITIVE, "threads": POSITIVE,
          "breakdown": NOT_NEGATIVE}


def checked(args: argparse.Namespace) -> tuple[Any, list[str], bool]:
    """(device, precisions to time, whether it has bf16 units), or a SpecError naming every bad option: checked
    here, with the spec's own rules and messages, since a worker meets them only after the peaks' timing."""
    from components.model import PRESETS
    from experiments import hardware
    from experiments.runner import bind_data
    from experiments.schema import TRAIN
    from experiments.spec import dedupe
    from registry import brief, choices_hint

    problems = [p for name, rule in COUNTS.items() if getattr(args, name) is not None
                and (p := rule.problem(getattr(args, name), "--" + name.replace("_", "-")))]
    problems += [f"--preset = {brief(p)} is not a preset{choices_hint(p, PRESETS, 'presets')}"
                 for p in args.preset or [] if p not in PRESETS]
    problems += filter(None, [TRAIN["device"].problem(args.device, "--device"), args.csv and csv_problem(args.csv)])
    problems += [f"--{name} lists {brief(v)} twice: each is timed once" for name in ("preset", "precision", "impl", "without")
                 for v in {v for v in getattr(args, name) or [] if (getattr(args, name) or []).count(v) > 1}]
    if problems:
        raise SpecError(problems)
    device = hardware.resolve_device(hardware.check_device(args.device))  # a device this machine has
    bf16_fast = hardware.bf16_is_fast(device)
    precisions = args.precision or (["fp32", "bf16"] if bf16_fast else ["fp32"])
    if "bf16" not in precisions and (unused := [k for k in args.without if k in BF16_KNOBS]):
        raise SpecError(f"--without {' '.join(unused)} switches a bf16 kernel off, but no bf16 row is timed: "
                        "add --precision bf16 (fp32 is timed alone where the CPU has no bf16 units)")
    runs = []
    for cfg in combos(args, device, precisions):  # the tokenizer, and anything else a worker's spec refuses
        try:
            runs.append(run_spec(cfg))
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(dedupe(problems))
    bind_data(runs, device=args.device)  # the corpus, and whether each model fits the device's memory
    return device, precisions, bf16_fast


def csv_problem(csv: str) -> str | None:
    """Why the table cannot be written to `csv`, or None: found out now, not after the timing."""
    path = Path(csv)
    if path.is_dir():
        return f"--csv = {csv!r} is a folder; give the path of a file to write the table to"
    if not path.parent.exists():  # the write would make it: say so now instead
        return f"--csv = {csv!r}: its folder {str(path.parent)!r} does not exist; create it or give another path"
    try:  # the file the write starts with (experiments/files.py), removed again
        tmp, fd = files.temporary_beside(path)
        os.close(fd)
        tmp.unlink()
    except OSError as err:
        return f"--csv = {csv!r} cannot be written: {write_problem(err)}"
    return None


def write_problem(err: OSError) -> str:
    """What went wrong, in the words the results folder's errors use (experiments/files.py)."""
    return files.FILESYSTEM_PROBLEMS.get(err.errno, (err.strerror or type(err).__name__,))[0]


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when done, 2 for a bad option (one line on stderr, before anything is timed), 1 when the
    table cannot be written at the end (it is printed above), 130 when interrupted."""
    args = parse_args(argv)
    for mode in ("measure", "fixed_cost"):
        if getattr(args, mode):
            result = (measure if mode == "measure" else fixed_cost)(json.loads(getattr(args, mode)))
            print("BENCH " + json.dumps(result), flush=True)
            return 0
    import torch

    from experiments.cpu_runtime import DEFAULT_THREADS

    try:
        device, precisions, bf16_fast = checked(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads or DEFAULT_THREADS)
    print(f"device: {describe_device(device)}; torch {torch.__version__}; threads "
          f"{torch.get_num_threads() if device.type == 'cpu' else '-'}; bf16 matrix units: "
          f"{'yes' if bf16_fast else 'no'}; loadavg {loadavg()}", flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 peak a run gets (TF32, as train.py sets)
    peaks = measure_peaks(device, precisions)
    if not args.no_fixed_cost:
        print_fixed_cost(args, device)
    rows = time_combos(args, device, precisions, peaks, bf16_fast)
    print_summary(rows)
    if args.csv:
        try:
            files.write_csv(Path(args.csv), rows, COLUMNS)
        except OSError as err:  # checked up front, but a disk fills up and folders move
            print(f"error: cannot write the table to --csv = {args.csv!r}: {write_problem(err)}; it is printed "
                  "above", file=sys.stderr)
            return 1
        print(f"-> {args.csv}")
    return 0


def measure_peaks(device, precisions: list[str]) -> dict[str, float]:
    """The matmul peak of each precision, GFLOP/s."""
    import torch

    peaks = {}
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        sizes = (512, 1024, 2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048, 4096)
        peak = matmul_peak(device, dtype, sizes)
        peaks[precision] = peak["gflops"]
        sheet = datasheet_peak(describe_device(device), precision) if device.type == "cuda" else None
        print(f"matmul peak {precision}: {peak['gflops']:.1f} GFLOP/s  (by size: {peak['by_size']})"
              + (f"; datasheet {sheet:.0f} GFLOP/s, measured / datasheet {peak['gflops'] / sheet:.2f}" if sheet else ""),
              flush=True)
    return peaks


def print_fixed_cost(args: argparse.Namespace, device) -> None:
    cfg = combos(args, device, ["fp32"])[0] | {"preset": "tiny", "batch_size": 32, "impl": "sdpa",
                                               "compile": False, "tokenizer": "char"}
    in_subprocess("fixed-cost", cfg)  # the first one may build the token cache
    cost, wall = in_subprocess("fixed-cost", cfg)
    print("fixed cost per run (tiny preset, token cache warm): " + ", ".join(
        f"{k[:-2]} {v:.2f} s" for k, v in cost.items()) + f"; fresh process in total {wall:.2f} s", flush=True)


def time_combos(args: argparse.Namespace, device, precisions: list[str], peaks: dict[str, float],
                bf16_fast: bool) -> list[dict[str, Any]]:
    """One table row per combination (and per --without knob), each timed in its own process."""
    rows = []
    for cfg in combos(args, device, precisions):
        if cfg["precision"] == "bf16" and not bf16_fast:
            # emulated bf16 runs ~20-100x slower than float32: a few steps show it
            cfg |= {"steps": min(cfg["steps"], 3), "warmup": min(cfg["warmup"], 1), "breakdown": min(cfg["breakdown"], 2)}
            print(f"  note: no bf16 matrix units here; {cfg['preset']} bf16 is timed over {cfg['steps']} steps only")
        results, _ = in_subprocess("measure", cfg)
        for variant, result in results.items():
            rows.append(row_for(cfg | {"without": None if variant == "-" else variant}, result, peaks[cfg["precision"]]))
            sheet, watch = rows[-1]["mfu_datasheet"], result.get("compile")
            print(f"  {cfg['preset']} {cfg['precision']} {cfg['impl']} compile={cfg['compile']} "
                  f"without={variant}: {rows[-1]['step_ms']} ms/step, mfu {rows[-1]['mfu']:.3f} of the measured "
                  f"peak" + (f", {sheet:.3f} of the datasheet's" if sheet else "")
                  + (f"; {watch['compile_graphs']} graph(s), {watch['eager_steps']} step(s) uncompiled" if watch else ""),
                  flush=True)
            if result.get("breakdown"):
                print(step_profile.format_breakdown(f"  {cfg['preset']} {cfg['precision']} without={variant}",
                                                    result["breakdown"]), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
