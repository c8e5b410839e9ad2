"""TensorBoard event files in every run folder: the curves of metrics.csv and more, live at each
evaluation, HParams per run, and a resumed run's events purged past its checkpoint. Read back with
tensorboard's own EventAccumulator."""
from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from experiments.tensorboard_log import Board, board_dir
from tiny_runs import SPEC, tiny_runs


def accumulator(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def curve(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def hparams_data(acc: EventAccumulator, tag: str):
    return plugin_data_pb2.HParamsPluginData.FromString(acc.SummaryMetadata(tag).plugin_data.content)


def test_a_finished_run_holds_its_curves_and_hparams():
    run_dir = tiny_runs()["baseline"]
    [events] = list((run_dir / "tensorboard").iterdir())
    assert events.name == "baseline seed=0"                        # what TensorBoard calls the run
    acc = accumulator(events)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    val_bpb = curve(acc, "val/bpb")
    steps = SPEC["train"]["steps"]
    assert [s for s, _ in val_bpb] == [int(r["step"]) for r in rows] == [0, steps]
    assert [v for _, v in val_bpb] == pytest.approx([float(r["val_bpb"]) for r in rows], rel=1e-6)
    for tag, column in (("val/loss", "val_loss"), ("train/loss", "train_loss"), ("train/bpb", "train_bpb")):
        assert [v for _, v in curve(acc, tag)] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
    assert curve(acc, "final/val_bpb") == [(steps, pytest.approx(summary["final_val_bpb"], rel=1e-6))]
    live = {"train/loss_running", "opt/lr", "opt/grad_norm", "speed/tokens_per_s"}
    assert live <= set(acc.Tags()["scalars"])
    assert [s for s, _ in curve(acc, "train/loss_running")] == list(range(10, steps + 1, 10))
    start = hparams_data(acc, "_hparams_/session_start_info").session_start_info
    assert start.hparams["variant"].string_value == "baseline" and start.hparams["seed"].number_value == 0
    assert start.hparams["run_id"].string_value == run_dir.name
    end = hparams_data(acc, "_hparams_/session_end_info").session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


def fake_run(variant: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(run_id="abc123", variant=variant, seed=1,
                                 axes={"model.attention": {"name": "grouped_query", "n_kv_heads": 2}, "train.lr": 0.01})


def row(step: int, value: float) -> dict[str, float]:
    return {"step": step, "lr": 1e-3, "train_loss": value, "val_loss": value, "val_bpb": value, "train_bpb": value}


def test_events_are_live_at_each_evaluation_and_a_resume_purges_the_rest(tmp_path):
    run = fake_run("data.corpus=a/b.txt")
    folder = board_dir(tmp_path, run.variant, run.seed)
    assert folder.parent == tmp_path / "tensorboard" and "/" not in folder.name
    board = Board(run, tmp_path, resumed_at=None)
    for step in (0, 10, 20, 30):
        board.evaluation(row(step, 5.0 - step / 100))
    assert [s for s, _ in curve(accumulator(folder), "val/bpb")] == [0, 10, 20, 30]   # before any close
    board.close("failed", 30)                                                        # the crashed attempt
    resumed = Board(run, tmp_path, resumed_at=10)                                     # its checkpoint was at 10
    for step in (20, 30, 40):
        resumed.evaluation(row(step, 1.0))
    resumed.close("done", 40, {"final_val_bpb": 0.9, "final_val_loss": 0.8})
    acc = accumulator(folder)
    assert curve(acc, "val/bpb") == [(0, 5.0), (10, pytest.approx(4.9)), (20, 1.0), (30, 1.0), (40, 1.0)]
    assert curve(acc, "final/val_bpb") == [(40, pytest.approx(0.9))]
    start = hparams_data(acc, "_hparams_/session_start_info").session_start_info
    assert start.hparams["model.attention"].string_value == "grouped_query(n_kv_heads=2)"
    assert start.hparams["train.lr"].number_value == pytest.approx(0.01)
    again = Board(run, tmp_path, resumed_at=None)  # trained again from step 0 (its checkpoint set aside, say)
    again.evaluation(row(0, 3.0))
    again.close("failed", 0)
    assert curve(accumulator(folder), "val/bpb") == [(0, 3.0)]  # one curve, not the earlier attempt's beside it


def test_a_pruned_run_ends_its_session_and_a_writer_error_never_stops_a_run(tmp_path, capsys):
    run = fake_run("pruned")
    board = Board(run, tmp_path / "a", resumed_at=None)
    board.evaluation(row(0, 3.0))
    board.close("pruned", 10)
    end = hparams_data(accumulator(board.dir), "_hparams_/session_end_info").session_end_info
    assert end.status == api_pb2.STATUS_UNKNOWN                    # HParams has no status for 'pruned'

    board = Board(run, tmp_path / "b", resumed_at=None)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    board.writer.add_scalar = full_disk
    assert board.evaluation(row(0, 3.0)) is None and board.broken   # a warning, and no more events
    board.interval(10, 3.0, 1e-3, 100.0, None)
    board.close("done", 10)
    assert capsys.readouterr().err.count("warning: TensorBoard events of run abc123 stop here (OSError") == 1
