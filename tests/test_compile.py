"""torch.compile in grids: every run of a 6-configuration grid in one process runs compiled, and a run
that fell back to eager says so in its summary (issue 18, item 3)."""
from __future__ import annotations

import pytest
import torch

from compile_grid import SMALL_GRID, train_grid
from experiments import compiling

STEPS = 8


def check_compiled(summary: dict) -> None:
    assert summary["status"] == "done", summary.get("error")
    assert summary["compiled"] is True
    assert (summary["compiled_steps"], summary["eager_steps"]) == (STEPS, 0)
    # one graph for the evaluation at step 0, one for training; none later (from dynamo's own counter)
    assert summary["compile_graphs"] == len(summary["compile_graph_steps"]) >= 2
    assert summary["recompiles_after_step_2"] == 0


def test_every_run_of_a_grid_runs_compiled_under_a_tight_recompile_limit(tmp_path, lab_cache, monkeypatch):
    """The mechanism, cheaply: dynamo's 'eager' backend (its graphs, no code generation) and a
    recompile limit that one configuration's graphs fill. A fresh dynamo per run keeps each of 3
    configurations under it, and the counted graph calls show every step went through a compiled graph."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    with torch._dynamo.config.patch(recompile_limit=2):
        summaries = train_grid(tmp_path, "cpu", STEPS, SMALL_GRID)
    assert len(summaries) == 3
    for summary in summaries:
        check_compiled(summary)


def test_a_batch_that_does_not_divide_the_evaluation_windows_keeps_one_static_training_graph(
        tmp_path, lab_cache, monkeypatch):
    """32 evaluation windows in micro-batches of 5 leave a last one of 2, which runs uncompiled: a second
    shape through the compiled model made dynamo recompile it, the training step included, for any batch."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    with torch._dynamo.config.patch(recompile_limit=2):
        [summary] = train_grid(tmp_path, "cpu", STEPS, {"model.positional": ["learned"]}, batch_size=5)
    check_compiled(summary)
    assert summary["compile_graphs"] == 2


def test_a_run_that_fell_back_to_eager_says_so(tmp_path, lab_cache, monkeypatch):
    """The same without the fresh start per run: the later runs train uncompiled, and their
    summaries say so (the check above can fail)."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    monkeypatch.setattr(compiling, "fresh_start", compiling.CompileWatch)  # no torch._dynamo.reset()
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=2), pytest.warns(UserWarning, match="ran uncompiled"):
            summaries = train_grid(tmp_path, "cpu", STEPS, SMALL_GRID)
    finally:
        torch._dynamo.reset()
    check_compiled(summaries[0])
    for summary in summaries[1:]:
        assert summary["status"] == "done"
        assert summary["compiled"] is False and (summary["compiled_steps"], summary["eager_steps"]) == (0, STEPS)


@pytest.mark.slow
def test_every_run_of_a_6_config_grid_runs_compiled(tmp_path, lab_cache):
    """6 configurations through torch.compile's default backend (inductor, C++ code on the CPU) and
    dynamo's default recompile limit: ~3 minutes on a loaded 2-core machine."""
    assert compiling.BACKEND == "inductor"
    summaries = train_grid(tmp_path, "cpu", STEPS)
    assert len(summaries) == 6
    for summary in summaries:
        check_compiled(summary)
