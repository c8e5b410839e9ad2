"""python -m experiments.generate: samples from a run with its own tokenizer; bad input is one error line."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import generate
from tiny_runs import tiny_runs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir() -> Path:
    return tiny_runs()["baseline"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = generate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_is_the_models_argmax_path(run_dir: Path, capsys) -> None:
    code, out, _ = cli(capsys, run_dir, "--prompt", "import ", "--tokens", 12, "--temperature", 0)
    model, tokenizer, _ = generate.load_run(run_dir)
    expected = model.generate(torch.tensor([tokenizer.encode("import ")]), 12, temperature=0)
    assert code == 0 and out == tokenizer.decode(expected[0].tolist()) + "\n"
    assert out.startswith("import ") and len(out) == len("import ") + 12 + 1


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(run_dir: Path, capsys) -> None:
    args = (run_dir, "--prompt", "def ", "--tokens", 30, "--temperature", 1.0, "--top-k", 50)
    first, second = cli(capsys, *args, "--seed", 7)[1], cli(capsys, *args, "--seed", 7)[1]
    assert first == second
    top1 = cli(capsys, run_dir, "--prompt", "def ", "--tokens", 30, "--temperature", 1.0, "--top-k", 1, "--seed", 3)[1]
    greedy = cli(capsys, run_dir, "--prompt", "def ", "--tokens", 30, "--temperature", 0)[1]
    assert top1 == greedy


def test_defaults(run_dir: Path, capsys) -> None:
    # No prompt here nor in the run's sample section: sampling starts from token 0, which is not printed.
    code, out, _ = cli(capsys, run_dir, "--seed", 0)
    assert code == 0 and len(out) == 200 + 1


def bad_run(tmp_path: Path, run_dir: Path, drop: str) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / drop).unlink()
    return copy


BAD_INPUT = {  # case: (argv from the run folder and a scratch folder, what the error must say)
    "missing": (lambda run, tmp: [tmp / "nowhere", "--prompt", "x"], "does not exist"),
    "no_checkpoint": (lambda run, tmp: [bad_run(tmp, run, "checkpoint.pt")], "has no checkpoint.pt"),
    "no_spec": (lambda run, tmp: [bad_run(tmp, run, "spec.yaml")], "is not a run folder: it lacks spec.yaml"),
    "unknown_char": (lambda run, tmp: [run, "--prompt", "caf\u00e9"], "cannot encode the character '\u00e9'"),
    "bad_numbers": (lambda run, tmp: [run, "--tokens", -1, "--temperature", -0.5, "--top-k", 0], "3 problems"),
    "bad_device": (lambda run, tmp: [run, "--device", "gpu7"], "not a device name"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_error(run_dir: Path, tmp_path: Path, capsys, case: str) -> None:
    make_argv, expected = BAD_INPUT[case]
    code, out, err = cli(capsys, *make_argv(run_dir, tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err


def test_cli_entry_point_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "experiments.generate", str(tmp_path / "nowhere")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: run folder")
