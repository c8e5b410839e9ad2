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
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write report.md and plots/ into DIR instead of the experiment folder "
                             "(e.g. for an experiment on read-only storage)")
    parser.add_argument("--consecutive", action="store_true",
                        help="also compare each named variant with the one listed before it "
                             "(the steps of a ladder, e.g. specs/seed_ladder.yaml)")
    return parser


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
    try:
        from analysis.report import write_report

        path = write_report(args.experiment, consecutive=args.consecutive, out=args.out)
    except ExperimentError as err:                # a file in the folder that cannot be read: it names it
        print(f"error: cannot analyse {args.experiment}: {err} Nothing was written.", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report for {args.experiment}: {err}. "
              "Check that the folder is writable and the disk is not full, or write the report "
              "elsewhere with --out DIR.", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
