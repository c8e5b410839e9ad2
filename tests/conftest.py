"""Shared fixtures."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Tiny models run fastest on one thread, and two busy threads on a shared 2-core machine can be 30x
# slower than one; subprocesses the tests start inherit this too.
if not os.environ.get("OMP_NUM_THREADS"):  # unset or empty: an empty one would leave the thread count to the load
    os.environ["OMP_NUM_THREADS"] = "1"
# `precision: auto` on the CPU means fp32 in the tests whatever the CPU (with bf16 units it would
# otherwise time both and may pick bf16); tests/test_precision.py unsets this to test the choice.
os.environ.setdefault("LAB_CPU_PRECISION", "fp32")


@pytest.fixture
def lab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder, set as $LAB_CACHE_DIR: a test never reads or fills the user's cache."""
    path = tmp_path / "lab-cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(path))
    return path


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """subprocess.Popen replaced by a process that exits at once: the (command, environment) of each
    process the test starts, in order (search workers, say)."""
    started = []

    class FakeProcess:
        pid = 1

        def __init__(self, cmd, env=None, **_):
            started.append((cmd, env))

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    return started
