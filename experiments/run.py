"""`python -m experiments.run SPEC`: train every run a spec names, record results, write the report.

Re-running a spec skips finished runs and resumes unfinished ones from their checkpoints; two
runner processes on one spec share the work through per-run locks. A spec with a search block (or
--storage / --workers) goes to the search's command, experiments/search/cli.py.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from pathlib import Path

from tqdm import tqdm

from experiments import ddp, metrics
from experiments.records import rebuild_runs_csv, report_is_stale, start_experiment, text_table, write_report
from experiments.runner import Runner, bind_data, dry_run_table
from experiments.search import cli as search_cli
from experiments.spec import RunSpec, load_spec
from registry import SpecError, catalogue

SHOWN_COLUMNS = ("run_id", "variant", "seed", "status", metrics.FINAL_VAL_LOSS, metrics.FINAL_VAL_BPB,
                 metrics.PARAMS, metrics.TOKENS_PER_S, metrics.WALL_S)

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
            return search_cli.main(spec, Path(args.spec), args)
        datasets = bind_data(spec.runs, device=args.device)
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
    """Train the runs one after another (or follow rank 0 under torchrun), print the table, write the report."""
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
            loss = (summary or {}).get(metrics.FINAL_VAL_LOSS)
            print(f"[{len(outcomes)}/{len(runs)}] {run.run_id} {run.variant} seed={run.seed}: {outcome}"
                  + (f", val loss {loss:.4f}" if isinstance(loss, float) else ""), flush=True)
    rows = rebuild_runs_csv(exp_dir)
    shown = {r.run_id for r in runs}
    print(text_table([{k: r.get(k) for k in SHOWN_COLUMNS} for r in rows if r["run_id"] in shown]))
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
