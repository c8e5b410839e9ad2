"""`python -m experiments.export RUN_DIR --format hf --out DIR`: a trained run as a Hugging Face GPT-2.

Writes `config.json` and `model.safetensors` that `transformers.GPT2LMHeadModel.from_pretrained(DIR)`
loads with no network; the run's tokenizer in a form `AutoTokenizer.from_pretrained(DIR)` loads (GPT-2's
vocab.json + merges.txt, or a one-token-per-character / per-byte tokenizer.json plus the lab's own
spec of it as lab_tokenizer.json); and a short README.md saying which. Only runs whose components all
have a GPT-2 equivalent can be exported; any other choice is named in one error before anything is written.

Exporting needs `safetensors` (pip install '.[hf]'); loading the result needs `transformers`.
"""
from __future__ import annotations

import argparse
import sys

from experiments import interrupts

if __name__ == "__main__":  # Ctrl-C while the imports below load (torch: seconds) ends quietly too
    interrupts.quiet_while_loading(interrupts.INTERRUPTED)

from experiments import files
from experiments.hf_export import CannotWrite, export_hf
from registry import SpecError, cut


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run folder: results/<experiment>/runs/<run_id>")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Hugging Face GPT2LMHeadModel (the only one)")
    p.add_argument("--out", required=True, help="folder to write (created if missing; the files of an earlier export in it are replaced, "
                                               "anyone else's are not)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export_hf(args.run_dir, args.out)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CannotWrite as err:  # as python -m experiments.run answers a results folder it cannot write
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # reading the run (a checkpoint it may not read, say)
        what, _ = files.FILESYSTEM_PROBLEMS.get(err.errno, (err.strerror or type(err).__name__, ""))
        print(f"error: cannot read the run {cut(args.run_dir)!r}: {what} ({err.filename or args.run_dir})",
              file=sys.stderr)
        return 1
    print(f"wrote {result['out']}/config.json and model.safetensors ({result['params']:,} parameters): "
          f"load with transformers.GPT2LMHeadModel.from_pretrained({str(result['out'])!r})")
    print(f"tokenizer: {result['tokenizer_note']}")
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
