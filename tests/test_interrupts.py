"""Ctrl-C in every command ends with one line and exit status 130, never a traceback: while the
command's imports load (torch: seconds) and while it works (experiments/interrupts.py). The runner's
own message, with the run and the step, is tested in tests/test_hostile.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Presses Ctrl-C at the first import after the command has put its own handler in place.
WHILE_LOADING = """
import runpy, signal, sys
class CtrlCAtNextImport:
    def find_spec(self, name, path=None, target=None):
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCAtNextImport())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
raise SystemExit("the command ran to its end: Ctrl-C was never pressed")
"""

# Presses Ctrl-C as the command starts its work (every command begins by reading its arguments).
WHILE_WORKING = """
import argparse, runpy, sys
def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt
argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_intermixed_args = ctrl_c
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

RUN = "interrupted; rerun the same command to resume (finished runs are kept)"
LOADING_TORCH = {"experiments.run": RUN, "experiments.generate": "interrupted", "experiments.export": "interrupted"}
COMMANDS = {**LOADING_TORCH, "experiments.data": "interrupted", "experiments.bench": "interrupted",
            "experiments.status": "interrupted", "analysis": "interrupted"}  # these load no torch at import


def command(script: str, module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("module", sorted(LOADING_TORCH))
def test_ctrl_c_while_a_command_loads_is_one_line(module):
    proc = command(WHILE_LOADING, module)
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, LOADING_TORCH[module] + "\n", "")


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_ctrl_c_while_a_command_works_is_one_line(module):
    proc = command(WHILE_WORKING, module)
    assert (proc.returncode, proc.stderr) == (130, COMMANDS[module] + "\n")


# SIGTERM (kill, a scheduler's stop) as the command starts its work: the same clean stop as Ctrl-C.
TERMINATED_WHILE_WORKING = """
import argparse, os, runpy, signal, sys, time
def term(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_intermixed_args = term
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["experiments.run", "analysis"])
def test_sigterm_while_a_command_works_is_one_line(module):
    proc = command(TERMINATED_WHILE_WORKING, module)
    assert (proc.returncode, proc.stderr) == (130, COMMANDS[module] + "\n")


def test_a_sigterm_during_held_work_is_delivered_once_the_work_is_done():
    import os
    import signal

    from experiments import interrupts

    previous = signal.signal(signal.SIGTERM, interrupts.terminated)
    done = []
    try:
        with pytest.raises(interrupts.Terminated):
            with interrupts.ctrl_c_held():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the save")  # not cut short by the signal
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert done == ["the save"]
