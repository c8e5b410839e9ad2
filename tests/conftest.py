"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def lab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder, set as $LAB_CACHE_DIR: a test never reads or fills the user's cache."""
    path = tmp_path / "lab-cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(path))
    return path
