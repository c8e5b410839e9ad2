"""`python -m experiments.status`: one row per planned run from what the runners wrote, during a
live two-process run too, without ever taking a run's lock; lock holders here and on other hosts;
the ETA from measured speeds."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments import progress, status

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"experiment": "live", "seeds": [0, 1], "data": {"corpus": "embedded", "tokenizer": "char"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "train": {"steps": 60, "batch_size": 4, "warmup": 2, "eval_every": 20, "eval_batches": 2},
        "sample": {"tokens": 0}, "grid": {"model.block": ["pre", "post"]}}


def test_status_during_a_live_two_process_run(tmp_path, lab_cache):
    from experiments.data import Embedded

    corpus = tmp_path / "docs.txt"  # a short text: a short final evaluation, so the runs are mostly training
    corpus.write_bytes(Embedded().read()[:40_000])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC | {"data": {"corpus": str(corpus), "tokenizer": "char"}}))
    results = tmp_path / "results"
    exp = results / "live"
    cmd = [sys.executable, "-m", "experiments.run", str(spec), "--results", str(results), "--no-report"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    snapshots, deadline = [], time.time() + 300
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if (exp / "experiment.json").is_file():
            snapshots.append(progress.experiment_runs(exp))
        time.sleep(0.05)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [line for out in outputs for line in out.splitlines() if line.startswith("[") and ": done" in line]
    assert len(trained) == 4, outputs                                     # every run trained once, in all

    pids, here = {p.pid for p in procs}, socket.gethostname()
    running = [r for snap in snapshots for r in snap if r["status"] == "running"]
    assert running, "no snapshot saw a run training"
    assert {r["where"] for r in running} <= {f"pid {pid} on {here}" for pid in pids}
    assert all(r["step"] is None or 0 <= r["step"] <= r["steps"] == 60 for r in running)
    assert any({"done", "running"} <= {r["status"] for r in snap} for snap in snapshots), \
        "no snapshot saw a finished run and a training one at once"
    assert all({r["status"] for r in snap} <= {"pending", "running", "done"} for snap in snapshots)

    text, unfinished = status.report(exp)
    assert not unfinished and text.startswith("live: 4 planned run(s): 4 done; nothing left to run")
    assert text.count(" done ") == 4 and text.count("60/60") == 4


def write_plan(exp: Path, n: int = 3) -> list[Path]:
    runs = [{"run_id": f"r{i}", "variant": f"v{i % 2}", "axes": {}, "seed": i, "steps": 100, "tokens_per_step": 50}
            for i in range(n)]
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"experiment": "e", "runs": runs, "search": None}))
    dirs = [exp / "runs" / r["run_id"] for r in runs]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def finish(run_dir: Path, wall_s: float = 10.0) -> None:
    (run_dir / "summary.json").write_text(json.dumps({"status": "done", "steps": 100, "final_val_bpb": 2.5,
                                                      "final_val_loss": 1.7, "tokens_per_s": 600.0, "wall_s": wall_s,
                                                      "tokens_seen": 5000}))


def test_a_lock_holder_is_running_with_its_pid_until_it_dies(tmp_path):
    done, held, _ = write_plan(tmp_path / "e")
    finish(done)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from experiments.files import RunLock; "
        f"lock = RunLock(Path({str(held)!r})); assert lock.acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rows = {r["run_id"]: r for r in progress.experiment_runs(tmp_path / "e")}
        assert rows["r1"]["status"] == "running" and rows["r1"]["where"] == f"pid {holder.pid} on {socket.gethostname()}"
        assert (rows["r0"]["status"], rows["r0"]["step"], rows["r0"]["val_bpb"]) == ("done", 100, 2.5)
        assert rows["r2"]["status"] == "pending"
    finally:
        holder.kill()
        holder.wait()
    assert progress.experiment_runs(tmp_path / "e")[1]["status"] == "pending"   # its lock died with it


def test_status_never_takes_a_lock(tmp_path, monkeypatch):
    """A runner that tried to take a run's lock while status held it, even briefly, would skip the run."""
    dirs = write_plan(tmp_path / "e")
    for d in dirs:
        (d / "lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")

    def refuse(*args):
        raise AssertionError("status took a lock")

    monkeypatch.setattr(fcntl, "flock", refuse)
    monkeypatch.setattr(fcntl, "lockf", refuse)
    text, unfinished = status.report(tmp_path / "e")
    assert unfinished and "3 pending" in text


def test_a_runner_on_another_host_is_judged_by_its_progress_file(tmp_path):
    run_dir = write_plan(tmp_path / "e", n=1)[0]
    (run_dir / "lock").write_text("pid 4242 on gpu-node-7\n")
    now = time.time()
    (run_dir / "progress.json").write_text(json.dumps({"step": 40, "steps": 100, "tokens_per_s": 900.0,
                                                       "val_bpb": 3.0, "host": "gpu-node-7", "pid": 4242,
                                                       "updated": now - 20, "interval_s": 5.0}))
    assert progress.holder(run_dir, progress.flock_holders(), now) == {"host": "gpu-node-7", "pid": 4242}
    [row] = progress.experiment_runs(tmp_path / "e")
    assert (row["status"], row["step"], row["tokens_per_s"], row["where"]) == ("running", 40, 900.0,
                                                                                "pid 4242 on gpu-node-7")
    assert progress.holder(run_dir, progress.flock_holders(), now + 3600) is None  # silent for an hour: not running


def test_the_eta_comes_from_measured_speeds(tmp_path):
    done, live, waiting = write_plan(tmp_path / "e")       # variants v0, v1, v0
    finish(done, wall_s=10.0)                              # v0: 5000 tokens in 10 s -> 500 tokens/s
    rows = progress.experiment_runs(tmp_path / "e")
    rows[1] |= {"status": "running", "step": 60, "tokens_per_s": 1000.0}
    seconds, runners = progress.eta_seconds(rows)
    # v1 (no finished run of its own) at the overall 500 tok/s: 40 steps x 50 = 2000 tokens -> 4 s;
    # the pending v0 run: 5000 tokens at 500 tok/s -> 10 s; one runner is training.
    assert (seconds, runners) == (pytest.approx(14.0), 1)
    assert progress.eta_seconds(rows, extra_runs=2)[0] == pytest.approx(14.0 + 2 * 10.0)
    assert status.duration(14) == "14 s" and status.duration(125) == "2 min 05 s" and status.duration(7300) == "2 h 01 min"


def test_the_command_refuses_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert status.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no experiment.json" in err and err.count("\n") == 1


def test_a_run_whose_length_is_not_known_yet_counts_as_the_common_one(tmp_path):
    done, _, waiting = write_plan(tmp_path / "e")
    finish(done, wall_s=10.0)
    rows = progress.experiment_runs(tmp_path / "e")
    rows[2] |= {"steps": None, "tokens_per_step": None}    # a search's second seed, not started yet
    assert progress.eta_seconds(rows)[0] == pytest.approx(10.0 + 10.0)


# -- bad input: a clear "error: " line and exit status 2, or a damaged run shown without a crash ---------------
@pytest.mark.parametrize("content, says", [
    (b"{bad", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[1, 2]", "holds a JSON list"),
    (b'{"runs": {"r0": {}}}', "'runs' = {'r0': {}} must be a list of the planned runs"),
    (b'{"runs": [{"variant": "v"}]}', "'runs' = [{'variant': 'v'}] has entry 0 = {'variant': 'v'}; it must be"),
    (b'{"runs": [], "seeds": 5}', "'seeds' = 5 must be a list of integer seeds"),
    (b'{"runs": [], "search": "yes"}', "'search' = 'yes' must be null or an object with the search's storage"),
    (b'{"runs": [], "search": [1]}', "'search' = [1] must be null or an object"),
    (b'{"runs": [], "search": {"mode": "search", "trials": "x"}}', "'search' = {'mode': 'search', 'trials': 'x'} has "
                                                                   "'trials' = 'x'; it must be"),
])
def test_a_damaged_experiment_json_is_named_with_exit_status_2(tmp_path, capsys, content, says):
    write_plan(tmp_path / "e")
    (tmp_path / "e" / "experiment.json").write_bytes(content)
    assert status.main([str(tmp_path / "e")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert str(tmp_path / "e" / "experiment.json") in err and says in err and "run the experiment's spec again" in err


def test_a_run_with_a_binary_metrics_csv_is_shown_and_named_not_a_crash(tmp_path, capsys):
    done, broken, waiting = write_plan(tmp_path / "e")
    finish(done)
    finish(broken)
    (broken / "metrics.csv").write_bytes(b"step,tokens,val_bpb\n0,0,4.0\n\x80\x81\xfe\xff\x00garbage\n")
    (waiting / "metrics.csv").write_bytes(b"step,tokens,val_bpb\n0,0,4.0\n20,1000,3.\xff5\n")  # a damaged cell
    assert status.main([str(tmp_path / "e")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("e: 3 planned run(s): 2 done, 1 pending")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("r")}
    assert rows["r1"][3:6] == ["done", "100/100", "2.5000"]          # summary.json still says where it stands
    assert rows["r2"][3:6] == ["pending", "20/100", "-"]             # what metrics.csv can still give
    assert "stopped at step 20: a rerun resumes it" in out           # it started, and will resume
    assert "of training left once a runner starts (measured speeds; none is running)" in out.splitlines()[0]
    assert f"warning: {broken / 'metrics.csv'} is damaged (byte 0x80 at offset" in out
    assert f"{waiting / 'metrics.csv'} is damaged (byte 0xff" in out


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "1e400", "1e9", "0", "-1"])
def test_watch_refuses_an_interval_it_cannot_sleep_before_printing(tmp_path, capsys, monkeypatch, seconds):
    write_plan(tmp_path / "e")                    # pending runs: a watch would sleep
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"slept {s}"))
    assert status.main([str(tmp_path / "e"), f"--watch={seconds}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --watch = ") and err.count("\n") == 1
    assert "positive number of seconds, at most 86400" in err


def test_watch_sleeps_the_interval_it_was_given(tmp_path, capsys, monkeypatch):
    write_plan(tmp_path / "e")
    slept = []

    def sleep(s):
        slept.append(s)
        raise KeyboardInterrupt                   # Ctrl-C while watching: a quiet end

    monkeypatch.setattr(time, "sleep", sleep)
    assert status.main([str(tmp_path / "e"), "--watch", "86400"]) == 0 and slept == [86400.0]
    assert "3 pending" in capsys.readouterr().out


@pytest.mark.parametrize("n, watch", [(3000, []), (3000, ["--watch", "0.05"]), (3, ["--watch", "0.05"])])
def test_a_closed_stdout_ends_the_command_quietly(tmp_path, n, watch):
    """`status ... | head -1`: no BrokenPipeError traceback, the status a command killed by SIGPIPE gets; 3000
    rows are more than a pipe holds (the first print meets the closed pipe), 3 meet it at the watch's next."""
    write_plan(tmp_path / "e", n=n)
    proc = subprocess.Popen([sys.executable, "-m", "experiments.status", str(tmp_path / "e"), *watch], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(f"e: {n} planned run(s): {n} pending")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == ""


def test_a_running_trial_whose_worker_died_here_is_not_shown_running(tmp_path):
    """Every worker killed: Optuna keeps the trials RUNNING until their heartbeat is stale, but a pid
    of this host that is gone is not running (as the runs' rows already say)."""
    import optuna

    exp = tmp_path / "e"
    write_plan(exp, n=1)
    plan = {"experiment": "e", "search": {"mode": "search", "trials": 3, "storage": "sqlite:///study.db"}}
    study = optuna.create_study(storage=f"sqlite:///{exp / 'study.db'}", study_name="e")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    for pid, host in ((dead.pid, here), (os.getpid(), here), (4242, "gpu-node-7")):
        trial = study.ask()
        trial.set_user_attr("pid", pid)
        trial.set_user_attr("host", host)
    line, to_plan = status.search_line(plan, exp, seeds=2)
    assert f"running trials: 1 (pid {os.getpid()} on {here}), 2 (pid 4242 on gpu-node-7);" in line
    assert f"trials whose worker died: 0 (pid {dead.pid} on {here})" in line
    assert to_plan == 2                           # the dead worker's trial is to be run again: 1 trial x 2 seeds


def test_a_results_folder_given_for_an_experiment_names_the_experiments_in_it(tmp_path, capsys):
    write_plan(tmp_path / "results" / "ablate")
    write_plan(tmp_path / "results" / "quick")
    assert status.main([str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "is not an experiment folder" in err and "the experiments in it are ablate, quick: give one" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("damage", [{"steps": "x"}, {"steps": float("inf")}, {"steps": 1e400}])
def test_a_finished_run_with_a_damaged_step_count_shows_it_unknown(tmp_path, capsys, damage):
    run_dir = write_plan(tmp_path / "e", n=1)[0]
    finish(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | damage))   # json writes inf as Infinity
    assert status.main([str(tmp_path / "e")]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("r0"))
    assert row[3:6] == ["done", "-", "2.5000"]


@pytest.mark.parametrize("damage", [{"step": "x"}, {"step": float("inf")}, {"interval_s": "x"},
                                    {"interval_s": float("inf")}, {"tokens_per_s": float("-inf")}])
def test_a_remote_runs_damaged_progress_file_shows_its_values_unknown(tmp_path, capsys, damage):
    run_dir = write_plan(tmp_path / "e", n=1)[0]
    (run_dir / "lock").write_text(json.dumps({"host": "otherhost", "pid": 1}))
    (run_dir / "progress.json").write_text(json.dumps({"step": 40, "steps": 100, "tokens_per_s": 900.0, "val_bpb": 3.0,
                                                       "host": "otherhost", "pid": 1, "updated": time.time(),
                                                       "interval_s": 5.0} | damage))
    assert status.main([str(tmp_path / "e")]) == 0
    [row] = progress.experiment_runs(tmp_path / "e")
    assert (row["status"], row["where"]) == ("running", "pid 1 on otherhost")   # a bad interval: the default one
    assert row["step"] == (None if "step" in damage else 40)
    assert row["tokens_per_s"] == (None if "tokens_per_s" in damage else 900.0)


def test_an_experiment_json_with_a_bare_search_flag_or_no_runs_is_shown(tmp_path, capsys):
    write_plan(tmp_path / "e")
    plan = json.loads((tmp_path / "e" / "experiment.json").read_text())
    (tmp_path / "e" / "experiment.json").write_text(json.dumps(plan | {"search": True}))
    assert status.main([str(tmp_path / "e")]) == 0 and "3 pending" in capsys.readouterr().out
    (tmp_path / "e" / "experiment.json").write_text(json.dumps(plan | {"runs": None}))   # nothing planned yet
    assert status.main([str(tmp_path / "e")]) == 0 and "0 planned run(s)" in capsys.readouterr().out


def test_a_done_summary_without_its_final_scores_shows_the_run_unfinished(tmp_path, capsys):
    """As the runner reads it: such a run is trained again by a rerun (experiments/records.read_summary)."""
    done, damaged, diverged = write_plan(tmp_path / "e")
    for run_dir in (done, damaged, diverged):
        finish(run_dir)
    summary = json.loads((damaged / "summary.json").read_text())
    (damaged / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "final_val_loss"}))
    (diverged / "summary.json").write_text(json.dumps(summary | {"status": "diverged", "final_val_bpb": None,
                                                                 "final_val_loss": None}))
    assert status.main([str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("e: 3 planned run(s): 1 done, 1 pending, 1 diverged")
    assert f"warning: {damaged / 'summary.json'} cannot be read" in out and "run r1 is shown unfinished" in out
    assert out.count("warning") == 1
