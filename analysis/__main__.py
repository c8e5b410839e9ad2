"""`python -m analysis results/<experiment>`: write plots/*.png and report.md for an experiment."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import interrupts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Write results/<experiment>/report.md and plots/*.png: seed statistics, "
                    "paired effects vs the baseline, and plots.")
    parser.add_argument("experiment", type=Path,
                        help="an experiment folder written by `python -m experiments.run`, "
                             "e.g. results/quickstart")
    parser.add_argument("--out", metavar="DIR",
                        help="write report.md and plots/ into DIR instead of the experiment folder "
                             "(e.g. for an experiment on read-only storage)")
    parser.add_argument("--consecutive", action="store_true",
                        help="also compare each named variant with the one listed before it "
                             "(the steps of a ladder, e.g. specs/seed_ladder.yaml)")
    return parser


def out_problem(experiment: Path, out: str | None) -> str | None:
    """Why --out cannot take this experiment's report (empty, a file, another experiment's or a run's
    folder, whose report.md a rerun would then never repair), or None."""
    if out is None:
        return None
    if not out.strip():
        return "is empty (an unset shell variable?): give the folder to write report.md and plots/ into."
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        return f"{out!r} is a file, not a folder."
    from experiments.files import RESULTS_MARKS

    if folder.resolve() != experiment.resolve() and (lab := [n for n in RESULTS_MARKS if (folder / n).exists()]):
        return (f"{out!r} is a folder of the lab's results (it holds {lab[0]}), not {experiment}'s: its report "
                "would be replaced by this one. Give a folder of its own, or leave --out out to write into "
                f"{experiment}.")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status (2 for bad input, with a message on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:        # argparse has already printed its usage message
        return int(exit_.code or 0)
    from analysis.tables import ExperimentError, check_experiment_dir

    try:
        check_experiment_dir(args.experiment)     # fail fast, before importing matplotlib
    except ExperimentError as err:
        print(f"error: cannot analyse {args.experiment}: {err} Pass the folder "
              "that `python -m experiments.run <spec.yaml>` wrote, i.e. results/<experiment> "
              "containing runs.csv and experiment.json.", file=sys.stderr)
        return 2
    if problem := out_problem(args.experiment, args.out):
        print(f"error: --out {problem} Nothing was written.", file=sys.stderr)
        return 2
    try:
        from analysis.report import write_report

        path = write_report(args.experiment, consecutive=args.consecutive, out=args.out and Path(args.out))
    except ExperimentError as err:                # a file in the folder that cannot be read: it names it
        print(f"error: cannot analyse {args.experiment}: {err} Nothing was written.", file=sys.stderr)
        return 2
    except OSError as err:
        from experiments.files import FILESYSTEM_PROBLEMS

        what, _ = FILESYSTEM_PROBLEMS.get(err.errno, (err.strerror or type(err).__name__, ""))
        print(f"error: cannot write the report for {args.experiment}: {what} ({err.filename or args.out}). "
              "Check that the folder is writable and the disk is not full, or write the report "
              "elsewhere with --out DIR.", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
