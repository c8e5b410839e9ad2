"""`python -m experiments.run SPEC`: train every run a spec names, record results, write the report.

Re-running a spec skips finished runs and resumes unfinished ones from their checkpoints; two
runner processes on one spec share the work through per-run locks.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments import ddp, files
from experiments.spec import RunSpec, Spec, label, load_spec
from registry import SpecError, format_problems

FINISHED = ("done", "diverged", "pruned")
RUN_COLUMNS = ["run_id", "variant", "seed", "status", "params", "flops_per_token", "tokens_seen",
               "final_train_loss", "final_val_loss", "final_val_bpb", "best_val_loss", "best_val_bpb",
               "tokens_per_s", "wall_s", "tokenizer", "corpus"]
RUN_OUTPUTS = ("checkpoint.pt", "metrics.csv", "summary.json", "samples.txt", "error.txt")


# -- data binding --------------------------------------------------------------------------------
def bind_data(runs: list[RunSpec]) -> dict[tuple, Any]:
    """Load (or read from cache) every dataset the runs use, check each run fits its data, and bind
    the corpus hash into each run id. Every problem is raised at once, before anything is written."""
    from experiments.data import load_dataset

    datasets: dict[tuple, Any] = {}
    problems: list[str] = []
    for run in runs:
        key = data_key(run)
        if key not in datasets:
            try:
                datasets[key] = load_dataset(run.data["corpus"], run.data["tokenizer"], run.data["val_fraction"],
                                             run.data["test_fraction"])
            except SpecError as err:
                datasets[key] = None
                problems += err.problems
        ds = datasets[key]
        if ds is None:
            continue
        try:
            ds.check_context(run.model["context_length"])
            if run.sample["prompt"] is not None:
                ds.tokenizer.encode(run.sample["prompt"])
        except SpecError as err:
            problems += err.problems
        run.bind_corpus(ds.corpus_sha256)
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return datasets


def data_key(run: RunSpec) -> tuple:
    return (run.data["corpus"], repr(run.data["tokenizer"]), run.data["val_fraction"], run.data["test_fraction"])


# -- the plan ------------------------------------------------------------------------------------
def axis_values(run: RunSpec) -> dict[str, str]:
    return {k: label(v) for k, v in run.axes.items()}


def plan_record(spec: Spec, runs: list[RunSpec], search: dict | None = None) -> dict[str, Any]:
    return {"experiment": spec.experiment, "axes": spec.axes, "variants": spec.variants, "seeds": spec.seeds,
            "runs": [{"run_id": r.run_id, "variant": r.variant, "axes": axis_values(r), "seed": r.seed} for r in runs],
            "baseline": spec.baseline, "search": search}


def model_size(run: RunSpec, vocab_size: int) -> tuple[int, int]:
    """(parameters, FLOPs per token), built on the meta device: sizes only, no memory."""
    import torch

    from components.model import GPT, ModelConfig

    with torch.device("meta"):
        model = GPT(ModelConfig(vocab_size=vocab_size, **run.model))
    return model.num_params(), model.flops_per_token()


def dry_run_table(runs: list[RunSpec], datasets: dict[tuple, Any]) -> str:
    rows = []
    for run in runs:
        params, flops = model_size(run, datasets[data_key(run)].vocab_size)
        tokens = run.train["steps"] * run.train["batch_size"] * run.train["grad_accum"] * run.model["context_length"]
        rows.append({"run_id": run.run_id, "variant": run.variant, **axis_values(run), "seed": run.seed,
                     "params": f"{params:,}", "flops/token": f"{flops:,}", "tokens": f"{tokens:,}"})
    return text_table(rows)


def text_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


# -- results -------------------------------------------------------------------------------------
def code_version() -> str:
    """The lab's git commit (with '-dirty' for uncommitted changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_status(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.exists():
        return files.read_json(summary)["status"]
    if files.RunLock(run_dir).held_elsewhere():
        return "running"
    return "pending"


def rebuild_runs_csv(exp_dir: Path) -> list[dict[str, Any]]:
    """runs.csv from experiment.json's plan and the run folders (the source of truth)."""
    plan = files.read_json(exp_dir / "experiment.json")
    rows = []
    for entry in plan["runs"]:
        run_dir = exp_dir / "runs" / entry["run_id"]
        summary_path = run_dir / "summary.json"
        summary = files.read_json(summary_path) if summary_path.exists() else {}
        row = {"run_id": entry["run_id"], "variant": entry["variant"], **entry["axes"], "seed": entry["seed"],
               **{k: entry[k] for k in ("trial", "state") if k in entry}}
        row |= {k: summary.get(k) for k in RUN_COLUMNS if k not in row}
        row["status"] = summary.get("status") or run_status(run_dir)
        rows.append(row)
    extra = [k for k in ("trial", "state") if any(k in r for r in rows)]
    columns = ["run_id", "variant", *plan["axes"], "seed", *extra] + [c for c in RUN_COLUMNS[3:]]
    files.write_csv(exp_dir / "runs.csv", rows, columns)
    return rows


# -- executing runs ------------------------------------------------------------------------------
class Runner:
    """Executes runs into results/<experiment>/runs/<run_id>/, one at a time, under per-run locks."""

    def __init__(self, exp_dir: Path, datasets: dict[tuple, Any], device: str | None = None,
                 force: bool = False, show_progress: bool = False):
        self.exp_dir, self.datasets, self.device_override = exp_dir, datasets, device
        self.force, self.show_progress = force, show_progress
        self.commit = code_version()

    def execute(self, run: RunSpec, on_eval=None) -> tuple[str, dict[str, Any] | None]:
        """Train `run` unless it is finished or another process holds it; (outcome, summary).
        `on_eval(metrics_row)` is called at every evaluation and may raise train.Stopped."""
        run_dir = self.exp_dir / "runs" / run.run_id
        lock = files.RunLock(run_dir)
        if not lock.acquire():
            ddp.broadcast(False)  # under torchrun the other ranks skip it with rank 0 (a no-op otherwise)
            return "running elsewhere", None
        try:
            summary_path = run_dir / "summary.json"
            if summary_path.exists() and not self.force:
                summary = files.read_json(summary_path)
                if summary["status"] in FINISHED:
                    ddp.broadcast(False)
                    return "skipped", summary
            ddp.broadcast(True)
            if self.force:
                self.force_clean(run_dir)
            summary = self.train(run, run_dir, on_eval)
            return summary["status"], summary
        finally:
            lock.release()

    def follow(self, run: RunSpec) -> None:
        """A rank > 0 under torchrun: train `run` alongside rank 0 when rank 0 trains it; write nothing."""
        from experiments.train import Trainer

        if ddp.broadcast(None):
            Trainer(run, self.datasets[data_key(run)], self.exp_dir / "runs" / run.run_id, self.device_for(run)).fit()

    def device_for(self, run: RunSpec):
        """--device, else the run's train.device; under torchrun each rank on its own GPU."""
        from experiments.train import resolve_device

        return resolve_device(ddp.device(self.device_override or run.train["device"]))

    @staticmethod
    def force_clean(run_dir: Path) -> None:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)

    def train(self, run: RunSpec, run_dir: Path, on_eval=None) -> dict[str, Any]:
        import torch

        from experiments.train import Trainer

        ds = self.datasets[data_key(run)]
        files.write_yaml(run_dir / "spec.yaml", run.to_dict())
        files.write_json(run_dir / "tokenizer.json", ds.tokenizer.spec())
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        device = self.device_for(run)
        (run_dir / "summary.json").unlink(missing_ok=True)  # a failed attempt's summary is stale now
        try:
            summary = Trainer(run, ds, run_dir, device, show_progress=self.show_progress, on_eval=on_eval).fit()
            (run_dir / "error.txt").unlink(missing_ok=True)
        except Exception as err:  # one broken run must not stop the others
            files.write_text(run_dir / "error.txt", traceback.format_exc())
            summary = {"run_id": run.run_id, "status": "failed", "error": f"{type(err).__name__}: {err}",
                       "device": str(device), "torch": torch.__version__}
            if ddp.active():  # the other ranks are inside this run's collectives: end them all (torchrun does)
                files.write_json(run_dir / "summary.json", summary)
                raise
        summary |= {"experiment": run.experiment, "variant": run.variant, "seed": run.seed,
                    "git_commit": self.commit, "host": socket.gethostname(), "started": started,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        files.write_json(run_dir / "summary.json", summary)
        return summary


def start_experiment(exp_dir: Path, spec: Spec, spec_path: Path, runs: list[RunSpec]) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, exp_dir / ".spec.yaml.tmp")
    os.replace(exp_dir / ".spec.yaml.tmp", exp_dir / "spec.yaml")
    files.write_json(exp_dir / "experiment.json", plan_record(spec, runs))


def write_report(exp_dir: Path) -> Path | None:
    try:
        from analysis.report import write_report as analyse
    except ImportError:
        return None
    try:
        return analyse(exp_dir)
    except Exception as err:  # the runs are safe on disk; a broken report must not hide that
        print(f"warning: the report could not be written ({type(err).__name__}: {err}); "
              f"retry with: python -m analysis {exp_dir}", file=sys.stderr)
        return None


def report_is_stale(exp_dir: Path) -> bool:
    report = exp_dir / "report.md"
    if not report.exists():
        return True
    newest = max((p.stat().st_mtime for p in exp_dir.glob("runs/*/summary.json")), default=0)
    return newest > report.stat().st_mtime


# -- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="the experiment spec (YAML)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--device", help="override train.device for every run: cpu, cuda, cuda:N, mps")
    p.add_argument("--dry-run", action="store_true", help="print the run table and train nothing")
    p.add_argument("--list", action="store_true", help="print the component catalogue")
    p.add_argument("--only", metavar="GLOB", help="only runs whose id or variant matches this glob")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--no-report", action="store_true", help="do not write the analysis report")
    p.add_argument("--workers", type=int, default=1,
                   help="search (or a grid as an Optuna study): N local worker processes on one study")
    p.add_argument("--storage", help="search (or grid as a study): Optuna storage URL shared by workers")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        from registry import catalogue
        print(catalogue())
        return 0
    if not args.spec:
        print("error: give a spec file, e.g. python -m experiments.run specs/quickstart.yaml", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        if spec.search is not None or args.storage or args.workers != 1:
            if ddp.launched():
                raise SpecError("a search (or --storage / --workers) runs trials in parallel by itself; "
                                "start it without torchrun")
            from experiments import search
            return search.main(spec, Path(args.spec), args)
        datasets = bind_data(spec.runs)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = [r for r in spec.runs if not args.only or fnmatch.fnmatch(r.run_id, args.only)
            or fnmatch.fnmatch(r.variant, args.only)]
    if args.dry_run:
        print(dry_run_table(runs, datasets))
        return 0
    exp_dir = Path(args.results) / spec.experiment
    ddp.init()  # under torchrun: every rank walks this plan, rank 0 alone writes (experiments/ddp.py)
    try:
        if ddp.is_writer():
            start_experiment(exp_dir, spec, Path(args.spec), spec.runs)
        return run_all(exp_dir, runs, datasets, args)
    finally:
        ddp.close()


def run_all(exp_dir: Path, runs: list[RunSpec], datasets: dict, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    runner = Runner(exp_dir, datasets, device=args.device, force=args.force, show_progress=interactive)
    if not ddp.is_writer():
        for run in runs:
            runner.follow(run)
        return 0
    outcomes: dict[str, str] = {}
    t0 = time.perf_counter()
    for run in tqdm(runs, desc=exp_dir.name, unit="run", disable=not interactive, dynamic_ncols=True):
        outcome, summary = runner.execute(run)
        outcomes[run.run_id] = outcome
        if not interactive and outcome != "skipped":
            loss = (summary or {}).get("final_val_loss")
            print(f"[{len(outcomes)}/{len(runs)}] {run.run_id} {run.variant} seed={run.seed}: {outcome}"
                  + (f", val loss {loss:.4f}" if isinstance(loss, float) else ""), flush=True)
    rows = rebuild_runs_csv(exp_dir)
    shown = {r.run_id for r in runs}
    print(text_table([{k: r.get(k) for k in ("run_id", "variant", "seed", "status", "final_val_loss",
                                            "final_val_bpb", "params", "tokens_per_s", "wall_s")}
                      for r in rows if r["run_id"] in shown]))
    trained = sum(o not in ("skipped", "running elsewhere") for o in outcomes.values())
    print(f"{trained} trained, {sum(o == 'skipped' for o in outcomes.values())} already done, "
          f"{sum(o == 'running elsewhere' for o in outcomes.values())} running elsewhere "
          f"in {time.perf_counter() - t0:.1f} s -> {exp_dir / 'runs.csv'}")
    if not args.no_report and (trained or report_is_stale(exp_dir)):
        report = write_report(exp_dir)
        if report:
            print(f"report: {report}")
    failed = [rid for rid, o in outcomes.items() if o == "failed"]
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(
            f"{rid} (see {exp_dir / 'runs' / rid / 'error.txt'})" for rid in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
