"""torch.compile for a run: a fresh dynamo state per run, and a record of whether it really ran compiled.

Why: every model the lab builds shares one `GPT.forward` code object, so dynamo counts the graphs of
all the configurations a process trains against one recompile limit (8). In a grid of more than a
few architectures the later runs reached it and trained uncompiled without a word (configs 9-12 of
12). So each run starts dynamo afresh (torch._dynamo.reset()), and its compiled graphs are wrapped
to count their calls: a step whose forward did not go through a compiled graph ran eagerly, and the
summary says so (`compiled`), with how many graphs dynamo built and when.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

BACKEND = "inductor"  # torch.compile's default; the tests of the mechanism use a cheaper one
LATE_STEP = 2          # graphs compiled after this many steps are recompiles a warm run should not need


class CompileWatch:
    """Counts the graphs compiled for one run (and the step each was compiled at) and the calls of
    the compiled graphs, so each step can be told compiled or eager."""

    def __init__(self) -> None:
        self.step = 0                        # the run's step, as the trainer last told it
        self.graph_steps: list[int] = []     # the step at which each graph was compiled
        self.calls = 0                       # calls of compiled graphs so far
        self.compiled_steps = self.eager_steps = 0
        self._calls_at_start = 0
        self._dynamo_graphs_at_start = dynamo_graphs()

    def backend(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        """A torch.compile backend: BACKEND's compiled graph, counted."""
        self.graph_steps.append(self.step)
        compiled = torch._dynamo.lookup_backend(BACKEND)(gm, example_inputs)

        @functools.wraps(compiled)
        def counted(*args: Any) -> Any:
            self.calls += 1
            return compiled(*args)

        return counted

    def start_step(self, step: int) -> None:
        self.step, self._calls_at_start = step, self.calls

    def end_step(self) -> None:
        """A step whose forward ran no compiled graph ran eagerly."""
        if self.calls > self._calls_at_start:
            self.compiled_steps += 1
        else:
            self.eager_steps += 1

    def summary(self) -> dict[str, Any]:
        """summary.json's compile record: whether every step trained here ran compiled, and the graphs."""
        return {"compiled": self.compiled_steps > 0 and self.eager_steps == 0,
                "compiled_steps": self.compiled_steps, "eager_steps": self.eager_steps,
                "compile_graphs": dynamo_graphs() - self._dynamo_graphs_at_start,
                "compile_graph_steps": list(self.graph_steps),
                f"recompiles_after_step_{LATE_STEP}": sum(s > LATE_STEP for s in self.graph_steps)}

    def warn_if_eager(self, run_id: str) -> None:
        if self.eager_steps:
            warnings.warn(f"run {run_id}: train.compile is true but {self.eager_steps} of "
                          f"{self.eager_steps + self.compiled_steps} steps ran uncompiled (dynamo fell back to "
                          "eager; see TORCH_LOGS=recompiles)", stacklevel=2)


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled in this process (its own counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def compile_for_run(model: torch.nn.Module, watch: CompileWatch) -> torch.nn.Module:
    """torch.compile(model) through the watch's counting backend."""
    return torch.compile(model, backend=watch.backend)


class NotCompiled:
    """The watch of a run without train.compile: nothing to count."""

    step = 0

    def start_step(self, step: int) -> None:
        pass

    def end_step(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"compiled": False}

    def warn_if_eager(self, run_id: str) -> None:
        pass


def fresh_start() -> CompileWatch:
    """Forget every graph compiled so far (each run gets its own, under its own recompile limit)."""
    torch._dynamo.reset()
    return CompileWatch()


def watch_for(compiled: bool) -> CompileWatch | NotCompiled:
    """A run's watch: a fresh dynamo and a CompileWatch with train.compile, else a NotCompiled."""
    return fresh_start() if compiled else NotCompiled()
