"""`python -m experiments.run SPEC [KEY=VALUE ...]`: train every run a spec names, record results, write the report.

KEY=VALUE overrides set dotted spec keys before the spec is checked (experiments/overrides.py).

Re-running a spec skips finished runs and resumes unfinished ones from their checkpoints; two
runner processes on one spec share the work through per-run locks. A spec with a search block (or
--storage / --workers) goes to the search's command, experiments/search/cli.py.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import time
from pathlib import Path

from experiments import interrupts

INTERRUPTED = "interrupted; rerun the same command to resume (finished runs are kept)"
if __name__ == "__main__":  # Ctrl-C while the imports below load (torch: seconds) ends quietly too
    interrupts.quiet_while_loading(INTERRUPTED)

from tqdm import tqdm

from experiments import budget, ddp, files, metrics, overrides
from experiments.records import (rebuild_runs_csv, report_is_stale, results_problem, rules_note, runs_not_in_plan,
                                 start_experiment, text_table, write_report)
from experiments.runner import Interrupted, Runner, bind_data, dry_run_table
from experiments.schema import TRAIN
from experiments.search import cli as search_cli
from experiments.spec import RunSpec
from registry import SpecError, catalogue

SHOWN_COLUMNS = ("run_id", "variant", "seed", "status", metrics.FINAL_VAL_LOSS, metrics.FINAL_VAL_BPB,
                 metrics.PARAMS, metrics.TOKENS_PER_S, metrics.WALL_S)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="the experiment spec (YAML)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="set a dotted spec key, the value read as YAML: train.steps=100 'seeds=[0, 1]' "
                        "model.attention.impl=naive train.tensorboard=false")
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
    return p.parse_intermixed_args(argv)  # options may come between the overrides


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when every run finished, 1 when one failed or the results cannot be written,
    2 for a spec in error, 130 when interrupted (Ctrl-C). Never a traceback for any of these."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return interrupts.run_main(lambda: run_reporting_errors(argv), INTERRUPTED)


def run_reporting_errors(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return run_command(args, argv)
    except Interrupted as err:  # during a run: says which, and at which step
        print(f"{err}; rerun the same command to resume", file=sys.stderr)
        return interrupts.EXIT_STATUS
    except BrokenPipeError:  # stdout closed (`... --dry-run | head`): not the results folder's fault
        raise
    except OSError as err:  # the results folder: read-only, full, a file in the way, a name too long ...
        print(f"error: {files.os_error_message(err, Path(args.results))}", file=sys.stderr)
        return 1


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    """The command line's work; `argv` is what results/<experiment>/spec.yaml records it ran as."""
    if args.list:
        print(catalogue())
        return 0
    if not args.spec:
        print("error: give a spec file, e.g. python -m experiments.run specs/quickstart.yaml", file=sys.stderr)
        return 2
    try:
        device_problem = args.device and TRAIN["device"].problem(args.device, "--device")
        if device_problem:
            raise SpecError(device_problem)
        spec, original, changes = overrides.load_spec_with(args.spec, args.overrides)
        for note in overrides.override_notes(original, changes, spec) if ddp.launch_rank() == 0 else ():
            print(f"warning: {note}", file=sys.stderr)
        spec_text = overrides.spec_record(args.spec, original, changes, argv)
        if problem := results_problem(args.results, spec.experiment):
            raise SpecError(problem)
        if args.dry_run and changes:
            print(overrides.describe(original, changes))
        if search_cli.wanted(spec, args):
            if ddp.launched():
                raise SpecError("a search (or --storage / --workers) runs trials in parallel by itself; "
                                "start it without torchrun")
            return search_cli.main(spec, spec_text, args)
        fixed_warmups = budget.fixed_warmups(spec.runs)
        datasets = bind_data(spec.runs, device=args.device)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = [r for r in spec.runs if not args.only or fnmatch.fnmatch(r.run_id, args.only)
            or fnmatch.fnmatch(r.variant, args.only)]
    if not runs:  # before anything is written: a typo in the glob should not look like a finished experiment
        names = sorted({r.variant for r in spec.runs})
        print(f"error: --only = {args.only!r} matches no run id or variant; the variants are "
              f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''} (run ids: --dry-run)", file=sys.stderr)
        return 2
    chosen = {id(r) for r in runs}
    if (note := budget.warmup_shares_note([r for r in fixed_warmups if id(r) in chosen])) and ddp.launch_rank() == 0:
        print(f"warning: {note}", file=sys.stderr)
    if args.dry_run:
        print(dry_run_table(runs, datasets))
        return 0
    exp_dir = Path(args.results) / spec.experiment
    ddp.init()  # under torchrun: every rank walks this plan, rank 0 alone writes (experiments/ddp.py)
    try:
        if ddp.is_writer():
            start_experiment(exp_dir, spec, spec_text, spec.runs)
        return run_all(exp_dir, runs, datasets, args)
    except SpecError as err:  # another spec is running under this experiment's name
        print(f"error: {err}", file=sys.stderr)
        return 2
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
            print(f"[{len(outcomes)}/{len(runs)}] {run.run_id} {run.variant} seed={run.seed}: "
                  f"{outcome_text(outcome, summary)}", flush=True)
    rows = rebuild_runs_csv(exp_dir)
    shown = {r.run_id for r in runs}
    print(text_table([{k: r.get(k) for k in SHOWN_COLUMNS} for r in rows if r["run_id"] in shown]))
    if missing := shown - {r["run_id"] for r in rows}:
        print(f"warning: experiment.json now holds another plan: another spec started as '{exp_dir.name}' while "
              f"this one ran. This command's {len(missing)} run(s) are in {exp_dir / 'runs'}, but runs.csv and "
              "the report follow the other spec; give each spec an experiment name of its own", file=sys.stderr)
    print(f"{tally(outcomes)} in {time.perf_counter() - t0:.1f} s -> {exp_dir / 'runs.csv'}")
    if old := runs_not_in_plan(exp_dir):
        print(f"note: {len(old)} run folder(s) under {exp_dir / 'runs'} are not in the current spec (an earlier "
              f"version of it made them): {', '.join(old[:10])}{' ...' if len(old) > 10 else ''}; runs.csv and the "
              "report leave them out. Delete them, or give the edited spec an experiment name of its own")
    if note := rules_note(rows):
        print(f"warning: {note}", file=sys.stderr)
    ran = sum(o not in ("skipped", "running elsewhere") for o in outcomes.values())
    if not args.no_report and (ran or report_is_stale(exp_dir)):
        report = write_report(exp_dir)
        if report:
            print(f"report: {report}")
    failed = [rid for rid, o in outcomes.items() if o == "failed"]
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(
            f"{rid} (see {exp_dir / 'runs' / rid / 'error.txt'})" for rid in failed), file=sys.stderr)
    return 1 if failed else 0


def outcome_text(outcome: str, summary: dict | None) -> str:
    """How a run ended, in its progress line: a done run's validation loss (flagged where a uniform guess
    would score better) and the step it resumed from, a diverged or failed one's reason."""
    summary = summary or {}
    loss = summary.get(metrics.FINAL_VAL_LOSS)
    if outcome == "done" and isinstance(loss, float):
        text = f"done, val loss {loss:.4f}"
        if isinstance(vocab := summary.get("vocab_size"), int) and vocab > 1 and loss > math.log(vocab):
            text += f" (worse than a uniform guess over its {vocab:,} tokens: ln {vocab:,} = {math.log(vocab):.2f})"
        if isinstance(resumed := summary.get("resumed_at_step"), int):
            text += f", resumed from step {resumed}"
        return text
    if outcome in ("diverged", "failed", "pruned") and summary.get("error"):
        return f"{outcome} ({str(summary['error']).splitlines()[0][:120]})"
    return outcome


def tally(outcomes: dict[str, str]) -> str:
    """'2 trained, 1 diverged, 1 failed, 3 already done, 0 running elsewhere': each run once, by how it ended."""
    counts = {"trained": sum(o == "done" for o in outcomes.values())}
    for outcome in ("diverged", "pruned", "failed"):
        if n := sum(o == outcome for o in outcomes.values()):
            counts[outcome] = n
    counts["already done"] = sum(o == "skipped" for o in outcomes.values())
    counts["running elsewhere"] = sum(o == "running elsewhere" for o in outcomes.values())
    return ", ".join(f"{n} {name}" for name, n in counts.items())


if __name__ == "__main__":
    sys.exit(main())
