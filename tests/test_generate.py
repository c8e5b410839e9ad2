"""python -m experiments.generate: samples from a run with its own tokenizer; bad input is one error line."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments import generate
from experiments.schema import MIN_TEMPERATURE
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


def folder_for(run_dir: Path, name: str) -> Path:
    (run_dir / name).mkdir()
    return run_dir


BAD_INPUT = {  # case: (argv from the run folder and a scratch folder, what the error must say)
    "missing": (lambda run, tmp: [tmp / "nowhere", "--prompt", "x"], "does not exist"),
    "no_checkpoint": (lambda run, tmp: [bad_run(tmp, run, "checkpoint.pt")], "has no checkpoint.pt"),
    "no_spec": (lambda run, tmp: [bad_run(tmp, run, "spec.yaml")], "is not a run folder: it lacks spec.yaml"),
    "a_file": (lambda run, tmp: [run / "spec.yaml"], "spec.yaml' is a file, not a run folder: give a folder"),
    "checkpoint_folder": (lambda run, tmp: [folder_for(bad_run(tmp, run, "checkpoint.pt"), "checkpoint.pt")],
                          "checkpoint.pt' is not a file: a run folder's checkpoint.pt is the file"),
    "unknown_char": (lambda run, tmp: [run, "--prompt", "caf\u00e9"], "cannot encode the character '\u00e9'"),
    "bad_numbers": (lambda run, tmp: [run, "--tokens", -1, "--temperature", -0.5, "--top-k", 0], "3 problems"),
    "bad_device": (lambda run, tmp: [run, "--device", "gpu7"], "not a device name"),
    "nan_temperature": (lambda run, tmp: [run, "--temperature", "nan"], "--temperature = nan is not finite: it must be 0 (greedy) or a number >= 1e-30"),
    "inf_temperature": (lambda run, tmp: [run, "--temperature", "inf"], "--temperature = inf is not finite: it must be 0 (greedy) or a number >= 1e-30"),
    "no_samples": (lambda run, tmp: [run, "--num-samples", 0], "--num-samples = 0 must be a positive integer"),
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


# -- end of text, seeds, several samples -----------------------------------------------------------
def end_of_text_run(folder: Path) -> Path:
    """A gpt2-tokenizer run folder whose model draws ' the' with p = 0.75 and <|endoftext|> with 0.25
    at every position: its final norm outputs one constant vector, which its head maps to those odds."""
    from components.model import GPT
    from components.tokenizer import GPT2Tokenizer
    from experiments.schema import ModelConfig
    from experiments.spec import parse_spec

    run = parse_spec({"experiment": "eot", "data": {"tokenizer": "gpt2"}, "sample": {"tokens": 0},
                      "model": {"d_model": 8, "n_layers": 1, "n_heads": 1, "context_length": 16, "head": "untied"}}).runs[0]
    tok = GPT2Tokenizer()
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, **run.model))
    [the] = tok.encode(" the")
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.head.linear.weight.zero_()
        model.head.linear.weight[:, 0] = -30.0                 # every other token: e^-30 of the odds
        model.head.linear.weight[tok.end_of_text, 0] = 0.0
        model.head.linear.weight[the, 0] = math.log(3.0)
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(run.to_dict()))
    (folder / "tokenizer.json").write_text(json.dumps(tok.spec()))
    torch.save({"model": model.state_dict()}, folder / "checkpoint.pt")
    return folder


def test_sampling_stops_at_end_of_text_and_no_stop_goes_on(tmp_path: Path, capsys) -> None:
    run = end_of_text_run(tmp_path / "eot")
    args = (run, "--prompt", "Hello", "--tokens", 60, "--temperature", 1.0)
    # A seed whose sample draws ' the' a few times first (p = 0.75 each), so the stop is seen mid-text.
    seed, stopped = next((seed, out) for seed in range(50)
                         if len((out := cli(capsys, *args, "--seed", seed)[1]).split()) >= 3)
    assert cli(capsys, *args, "--seed", seed)[1] == stopped                # --seed: the same text again
    stopped = stopped.removesuffix("\n")
    words = stopped.removeprefix("Hello").split()
    assert stopped.startswith("Hello") and set(words) == {"the"} and "<|endoftext|>" not in stopped
    assert len(words) < 60                                                 # it ended early, at end of text
    code, full, _ = cli(capsys, *args, "--seed", seed, "--no-stop")
    assert code == 0 and full.startswith(stopped + "<|endoftext|>")      # the same draws, then onwards
    assert len(full) > len(stopped) + len("<|endoftext|>")
    greedy = cli(capsys, run, "--prompt", "Hello", "--tokens", 5, "--temperature", 0)[1]
    assert greedy == "Hello" + " the" * 5 + "\n"                           # ' the' is the argmax: no end


def test_num_samples_draws_seed_seed_plus_1_and_so_on(run_dir: Path, capsys) -> None:
    args = (run_dir, "--prompt", "def ", "--tokens", 20, "--temperature", 1.0)
    code, out, err = cli(capsys, *args, "--num-samples", 3, "--seed", 11)
    assert code == 0 and err == ""
    parts = re.split(r"--- sample (\d) of 3 \(seed (\d+)\) ---\n", out)
    assert parts[0] == "" and parts[1::3] == ["1", "2", "3"] and parts[2::3] == ["11", "12", "13"]
    second = parts[6].removesuffix("\n")
    assert cli(capsys, *args, "--seed", 12)[1] == second + "\n"           # any sample can be drawn again alone
    code, out, err = cli(capsys, *args)                                     # no --seed: a fresh one, told
    seed = int(re.fullmatch(r"seed (\d+) \(pass --seed \d+ to draw the same sample again\)\n", err).group(1))
    assert cli(capsys, *args, "--seed", seed)[1] == out


# -- bounds: the spec schema's, refused before the weights load ------------------------------------
def schema_bounds() -> dict[str, int]:
    from experiments.schema import SAMPLE, TOP
    return {"seed": TOP["seeds"].range.high, "tokens": SAMPLE["tokens"].range.high, "top_k": SAMPLE["top_k"].range.high}


OUT_OF_BOUNDS = {  # case: (options, what the error must say, given the schema's bounds)
    "huge_seed": (["--seed", 10**20], lambda b: f"--seed = {10**20} must be an integer in [0, {b['seed']}]"),
    "negative_seed": (["--seed", -1], lambda b: f"--seed = -1 must be an integer in [0, {b['seed']}]"),
    "seed_plus_samples": (["--seed", 2**32 - 1, "--num-samples", 2], lambda b: f"give a --seed <= {b['seed'] - 1}"),
    "huge_tokens": (["--tokens", 10**11], lambda b: f"--tokens = {10**11} must be a positive integer <= {b['tokens']}"),
    "zero_tokens": (["--tokens", 0], lambda b: f"--tokens = 0 must be a positive integer <= {b['tokens']}"),
    "huge_top_k": (["--top-k", 10**20], lambda b: f"--top-k = {10**20} must be a positive integer <= {b['top_k']}"),
    "huge_num_samples": (["--num-samples", 10**20], lambda b: f"--num-samples = {10**20} must be a positive integer"),
    "tiny_temperature": (["--temperature", "1e-300"], lambda b: "--temperature = 1e-300 is too small to sample with"),
}


@pytest.mark.parametrize("case", OUT_OF_BOUNDS)
def test_out_of_bounds_options_are_refused_up_front(run_dir: Path, capsys, monkeypatch, case: str) -> None:
    monkeypatch.setattr(generate, "load_run", lambda *a, **k: pytest.fail("loaded the run for a bad option"))
    options, expected = OUT_OF_BOUNDS[case]
    code, out, err = cli(capsys, run_dir, *options)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected(schema_bounds()) in err


def test_edge_values_still_sample(run_dir: Path, capsys) -> None:
    largest = schema_bounds()["seed"]
    assert cli(capsys, run_dir, "--prompt", "def ", "--tokens", 3, "--seed", largest)[0] == 0
    assert cli(capsys, run_dir, "--prompt", "def ", "--tokens", 3, "--seed", 0, "--temperature", MIN_TEMPERATURE,
               "--top-k", schema_bounds()["top_k"])[0] == 0
