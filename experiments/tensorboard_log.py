"""TensorBoard event files of one run, written while it trains: its curves and its HParams.

Events go to runs/<run_id>/tensorboard/<variant> seed=<seed>/, so `tensorboard --logdir
results/<experiment>` names every run by its variant and seed (the run id keeps them apart). Only
the process that writes results writes events (rank 0 under torchrun). The tags (README.md,
*TensorBoard*, explains them to users), all against the optimizer step:

    train/loss_running   mean training loss of the last 10 steps (nats/token): the live curve
    train/loss, train/bpb    at each evaluation, on the fixed training windows (metrics.csv)
    val/loss, val/bpb        at each evaluation, on the fixed validation windows (metrics.csv)
    opt/lr                   learning rate
    opt/grad_norm            gradient norm before clipping, mean of the last 10 steps (when train.grad_clip > 0)
    speed/tokens_per_s       training tokens per second over the last 10 steps
    final/val_loss, final/val_bpb  the exact score of the whole validation text, at the last step
    final/test_loss, final/test_bpb  the same for a test text, when the spec holds one out

HParams: each run is a session whose hyperparameters are its run id, variant, seed and axes (a
search's trial parameters) and whose metrics are the tags above; TensorBoard builds the table from
all the runs under --logdir. A resumed run purges the events its crashed attempt wrote past its
checkpoint.
"""
from __future__ import annotations

import functools
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from experiments import metrics
from experiments.schema import label

FOLDER = "tensorboard"
FLUSH_S = 10  # the writer's thread flushes at least this often; every evaluation flushes at once
# HParams' session statuses are unknown, success, failure and running: a pruned run is none of them.
STATUS = {"done": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "failed": "STATUS_FAILURE"}
EVAL_TAGS = {metrics.TRAIN_LOSS: "train/loss", metrics.TRAIN_BPB: "train/bpb",
             metrics.VAL_LOSS: "val/loss", metrics.VAL_BPB: "val/bpb"}
FINAL_TAGS = {f"final_{split}_{unit}": f"final/{split}_{unit}" for split in ("val", "test") for unit in ("loss", "bpb")}


def board_dir(run_dir: Path, variant: str, seed: int) -> Path:
    """runs/<run_id>/tensorboard/<variant> seed=<seed>: what TensorBoard calls the run."""
    name = re.sub(r"[/\\\x00]", "_", f"{variant} seed={seed}")[:200]
    return run_dir / FOLDER / name


def guarded(method):
    """A Board method that never fails its run: the first error is a warning, and the Board stops writing."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # a full disk, a protobuf mismatch: the run goes on without events
            self.broken = True
            print(f"warning: TensorBoard events of run {self.run_id} stop here ({type(err).__name__}: {err})",
                  file=sys.stderr)
            return None
    return call


def hparam(value: Any) -> bool | int | float | str:
    """A value as TensorBoard's HParams take it: a bool, number or string (a component as its label)."""
    return value if isinstance(value, (bool, int, float, str)) else label(value)


class Board:
    """The TensorBoard writer of one run. `resumed_at`: the step a resumed run continues from."""

    def __init__(self, run, run_dir: Path, resumed_at: int | None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.run_id, self.broken = run.run_id, False
        self.dir = board_dir(run_dir, run.variant, run.seed)
        # purge_step: TensorBoard drops what an earlier attempt wrote from this step on; a run that starts
        # from step 0 again (killed before its first checkpoint, a checkpoint set aside) drops it all.
        if resumed_at is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.writer = SummaryWriter(str(self.dir), purge_step=None if resumed_at is None else resumed_at + 1,
                                    flush_secs=FLUSH_S)
        hparams = {"run_id": run.run_id, "variant": run.variant, "seed": run.seed,
                   **{key: hparam(value) for key, value in run.axes.items()}}
        self.session("session_start_info", hparams=hparams, group_name=self.dir.name)

    @classmethod
    def open(cls, run, run_dir: Path, resumed_at: int | None) -> Board | None:
        """A Board, or None (with a warning) when TensorBoard cannot be imported: the run goes on."""
        try:
            return cls(run, run_dir, resumed_at)
        except ImportError as err:
            print(f"warning: no TensorBoard events for run {run.run_id} ({err}); install the project's "
                  "dependencies (pip install -e .) or set train.tensorboard=false", file=sys.stderr)
        except Exception as err:  # a folder it cannot write: the run goes on without events
            print(f"warning: no TensorBoard events for run {run.run_id} ({type(err).__name__}: {err})",
                  file=sys.stderr)
        return None

    @guarded
    def interval(self, step: int, loss: float, lr: float, tokens_per_s: float, grad_norm: float | None) -> None:
        """What the loop knows every 10 steps (it syncs with the device then anyway)."""
        self.writer.add_scalar("train/loss_running", loss, step)
        self.writer.add_scalar("opt/lr", lr, step)
        self.writer.add_scalar("speed/tokens_per_s", tokens_per_s, step)
        if grad_norm is not None:
            self.writer.add_scalar("opt/grad_norm", grad_norm, step)

    @guarded
    def evaluation(self, row: dict[str, float]) -> None:
        """One row of metrics.csv; flushed, so a TensorBoard watching the folder shows it now."""
        step = int(row[metrics.STEP])
        for column, tag in EVAL_TAGS.items():
            if row.get(column) is not None:
                self.writer.add_scalar(tag, row[column], step)
        self.writer.flush()

    @guarded
    def close(self, status: str, step: int, summary: dict[str, Any] | None = None) -> None:
        """The exact final scores (a finished run's), the session's end, and the file closed."""
        for key, tag in FINAL_TAGS.items():
            value = (summary or {}).get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, step)
        self.session("session_end_info", status=STATUS.get(status, "STATUS_UNKNOWN"), step=step)
        self.writer.close()

    def session(self, kind: str, step: int = 0, **fields: Any) -> None:
        """An HParams session message (start: hyperparameters; end: status) as TensorBoard reads it."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        if kind == "session_start_info":
            info = plugin_data_pb2.SessionStartInfo(group_name=fields["group_name"], start_time_secs=time.time())
            for name, value in fields["hparams"].items():
                field = {bool: "bool_value", str: "string_value"}.get(type(value), "number_value")
                setattr(info.hparams[name], field, value)
            data, tag = plugin_data_pb2.HParamsPluginData(session_start_info=info), metadata.SESSION_START_INFO_TAG
        else:
            info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(fields["status"]), end_time_secs=time.time())
            data, tag = plugin_data_pb2.HParamsPluginData(session_end_info=info), metadata.SESSION_END_INFO_TAG
        summary = Summary()
        summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
        self.writer._get_file_writer().add_summary(summary, step)
