"""Versioned training rules (experiments/metrics.py): a checkpoint written under other rules is set aside
and its run trained again, and finished runs under different rules are named by the command and the report."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from analysis.report import write_report
from experiments import checkpoint, metrics
from tests.test_hostile import corpus, main, only_run, summary, write_spec  # noqa: F401  (corpus: a fixture)


def test_the_note_names_the_runs_under_other_rules_and_what_changed():
    assert metrics.rules_note({"a": metrics.RULES_VERSION, "b": metrics.RULES_VERSION}) is None
    assert metrics.rules_note({"a": 1, "b": 1}) is None  # one set of rules: comparable among themselves
    note = metrics.rules_note({"a": 1, "b": metrics.RULES_VERSION, "c": metrics.RULES_VERSION})
    assert note.startswith(f"1 of 3 finished run(s) followed the lab's training rules v1, not this code's "
                           f"v{metrics.RULES_VERSION}: a. What changed: in v2, the learning rate ends on min_lr")
    assert "--force" in note
    newer = metrics.rules_note({"a": metrics.RULES_VERSION + 1, "b": metrics.RULES_VERSION})
    assert "unknown to this code, which is older than the runs" in newer


def test_a_checkpoint_under_other_rules_is_kept_aside_and_its_run_trained_again(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    clean = summary(run_dir)
    assert clean[metrics.TRAINING_RULES] == metrics.RULES_VERSION
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state.pop("rules") == metrics.RULES_VERSION
    checkpoint.save(run_dir / "checkpoint.pt", state)  # as the code before versioned rules wrote it
    (run_dir / "summary.json").unlink()  # unfinished: the next invocation would resume it
    capsys.readouterr()

    assert main(spec, tmp_path / "r") == 0
    err = capsys.readouterr().err
    assert "followed the lab's training rules v1" in err and "training it again from step 0" in err
    again = summary(run_dir)
    assert again["resumed_at_step"] is None and "checkpoint.rules1.pt" in again["checkpoint_discarded"]
    assert again["final_val_loss"] == clean["final_val_loss"]  # from scratch, seeded: the very same run
    kept = checkpoint.load(run_dir / "checkpoint.rules1.pt")  # its checksum record moved with it
    assert kept["step"] == state["step"]
    assert all(torch.equal(kept["model"][name], weight) for name, weight in state["model"].items())

def test_finished_runs_under_different_rules_are_named_by_the_command_and_the_report(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.yaml", corpus, seeds=[0, 1])
    results = tmp_path / "r"
    assert main(spec, results) == 0
    exp_dir = results / "t"
    assert "training rules" not in capsys.readouterr().err
    assert "Training rules" not in write_report(exp_dir).read_text()

    old = sorted((exp_dir / "runs").iterdir())[0]
    record = json.loads((old / "summary.json").read_text())
    del record[metrics.TRAINING_RULES]  # a run the code before versioned rules finished
    (old / "summary.json").write_text(json.dumps(record))
    assert main(spec, results) == 0
    assert (f"1 of 2 finished run(s) followed the lab's training rules v1, not this code's v{metrics.RULES_VERSION}: "
            f"{old.name}.") in capsys.readouterr().err
    report = write_report(exp_dir).read_text()
    assert "**Training rules.** 1 of 2 finished run(s) followed the lab's training rules v1" in report
    assert f"{record['variant']} seed {record['seed']}" in report


def test_a_checkpoint_whose_rules_are_not_a_number_is_damaged_not_a_crash(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    state = checkpoint.load(run_dir / "checkpoint.pt")
    checkpoint.save(run_dir / "checkpoint.pt", state | {"rules": "a/b"})  # would name a file in another folder
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    assert main(spec, tmp_path / "r") == 0
    assert "its rules version 'a/b' is not a whole number; training it again from step 0" in capsys.readouterr().err
