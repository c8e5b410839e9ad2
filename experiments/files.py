"""Atomic file writes and per-run locks: a crash never leaves a half-written file or a stuck run."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(file)` into a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    import yaml  # here, not at the top: `python -m experiments.data` imports this module and stays lean

    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class RunLock:
    """An exclusive lock on one run folder, held by an open file with flock.

    The kernel drops a flock when its process dies, however it dies, so a lock whose process is
    gone is simply free again: no stale-lock guessing. The file records who holds it, for people.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "lock"
        self._file = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def held_elsewhere(self) -> bool:
        """True when another live process holds this lock (checked without keeping it)."""
        if not self.path.exists() or self._file is not None:
            return False
        if self.acquire():
            self.release()
            return False
        return True

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        got = self.acquire()
        try:
            yield got
        finally:
            if got:
                self.release()
