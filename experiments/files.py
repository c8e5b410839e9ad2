"""Atomic file writes and per-run locks: a crash never leaves a half-written file or a stuck run."""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from registry import cut

TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w",
                 before_replace: Callable[[], None] | None = None) -> None:
    """Write through `write(file)` into a temporary file beside `path`, then rename it into place
    (calling `before_replace()` just before). The file gets the permissions the umask gives any new
    file; a failure (a full disk, say) leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = temporary_beside(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a full disk fails in write(), which names no file: name ours
        raise


def temporary_beside(path: Path) -> tuple[Path, int]:
    """A new file `.<name>.<random>.tmp` next to `path`, opened for writing. Created with mode 0666 so
    the umask decides, as for every other file (tempfile.mkstemp would make it 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files of writes that a crash interrupted (`.<name>.*.tmp`). Call it only
    while holding the folder's lock: another process's write in progress looks the same."""
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


STALE_TMP_S = 3600  # a temporary file or folder untouched this long is a crash's: a write in progress keeps it fresh


RESULTS_MARKS = ("experiment.json", "runs.csv", "spec.yaml", "checkpoint.pt", "summary.json")  # an experiment's or run's folder
OWNER = "owner.json"  # in a staging folder: the host, pid namespace and pid writing it


def pid_namespace() -> int | None:
    """This process's pid namespace (containers sharing a host name do not share it), None where unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def own(folder: Path) -> None:
    """Name this process as the writer of a staging folder, so that one it leaves behind when killed is
    removed at once by the next (remove_stale_leftovers) rather than after an hour."""
    write_json(folder / OWNER, {"host": socket.gethostname(), "pid_ns": pid_namespace(), "pid": os.getpid()})


def owner_dead(folder: Path) -> bool:
    """Whether a staging folder's writer (own) was a process of this host that no longer runs."""
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        if owner["host"] != socket.gethostname() or owner.get("pid_ns") != pid_namespace():
            return False  # another machine's or container's process: its pid means nothing here
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):  # no owner named, or alive under another user
        return False
    return False


def remove_stale_leftovers(folder: Path, older_than: float = STALE_TMP_S) -> None:
    """Delete the temporary files and folders (`.<name>.*.tmp`) in a folder no lock guards (an
    experiment's own: runs.csv, experiment.json, the analysis's staging folder) once they have not
    been touched for `older_than` seconds, or at once when their writer died (own): another process's
    write in progress is left alone."""
    now = time.time()
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - tmp.lstat().st_mtime <= older_than and not (tmp.is_dir() and owner_dead(tmp)):
                continue
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()


FREE_SPACE, WRITABLE, MOVE = "free some space", "pass --results with a folder you can write", "move it out of the way"
FILESYSTEM_PROBLEMS = {  # errno -> (what happened, what to do)
    errno.ENOSPC: ("no space is left on the disk", FREE_SPACE), errno.EDQUOT: ("the disk quota is used up", FREE_SPACE),
    errno.EROFS: ("the file system is read-only", WRITABLE), errno.EACCES: ("permission is denied", WRITABLE),
    errno.EPERM: ("the operation is not permitted", WRITABLE),
    errno.ENAMETOOLONG: ("a file name is too long", "pass a shorter --results path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", f"{MOVE}, or {WRITABLE}"),
    errno.EEXIST: ("a file is in the way of a folder", f"{MOVE}, or {WRITABLE}"),
    errno.EISDIR: ("a folder is in the way of a file", f"{MOVE}, or {WRITABLE}"),
}


def storage_failed(err: BaseException) -> bool:
    """Whether `err` says the disk cannot take more (full, over quota, read-only): every later write fails too."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def not_a_file(path: Path) -> str | None:
    """Why `path` is not a regular file to read ('does not exist', 'is a folder', ...), or None when it
    is one. Reading a FIFO would wait forever and a device (/dev/zero) would never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a link that leads nowhere" if path.is_symlink() else "does not exist"
    except OSError as err:  # a link loop, a path through a file, no permission on a folder above
        return f"cannot be reached ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    return None if stat.S_ISREG(mode) else "is not a regular file (a pipe, a device or a socket)"


def os_error_message(err: OSError, results: Path) -> str:
    """One paragraph for a failed file operation under the results folder: what, where, what to do."""
    what, advice = FILESYSTEM_PROBLEMS.get(err.errno, (err.strerror or type(err).__name__, "fix that"))
    where = str(err.filename or results)
    where = where if len(where) <= 200 else where[:100] + "..." + where[-97:]
    return (f"cannot write the results under {cut(str(results))!r}: {what} ({where}). Files are written whole or "
            f"not at all, and finished runs are kept: {advice}, then rerun the same command")


def write_text(path: Path, text: str, only_if_changed: bool = False) -> None:
    """Write `text` to `path` atomically; with only_if_changed, leave a file that already holds it
    alone (a finished experiment on read-only storage can then be listed again)."""
    if only_if_changed and same_text(path, text):
        return
    atomic_write(path, lambda f: f.write(text))


def same_text(path: Path, text: str) -> bool:
    try:
        return path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False


def write_json(path: Path, data: Any, only_if_changed: bool = False) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n", only_if_changed)


def write_yaml(path: Path, data: Any) -> None:
    import yaml  # here, not at the top: `python -m experiments.data` imports this module and stays lean

    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str], only_if_changed: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue(), only_if_changed)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class RunLock:
    """An exclusive lock on one run folder, held by an open file with flock.

    The kernel drops a flock when its process dies, however it dies, so a lock whose process is
    gone is simply free again: no stale-lock guessing. The file records who holds it, for people.
    """

    PATIENCE_S = 1.0  # how long acquire() waits out a lock someone holds only for a moment (a probe)

    def __init__(self, run_dir: Path):
        self.path = run_dir / "lock"
        self._file = None

    def acquire(self, patience: float | None = None) -> bool:
        """Take the lock; False when another process holds it for longer than `patience` seconds
        (held_elsewhere() holds it for a moment, which must not read as a run training elsewhere)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        deadline = time.monotonic() + (self.PATIENCE_S if patience is None else patience)
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    return False
                time.sleep(0.01)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
        except OSError:  # a full disk: give the lock back before saying so
            f.close()
            raise
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def held_elsewhere(self) -> bool:
        """True when another live process holds this lock. A shared lock taken for a moment on a
        read-only handle: it writes nothing (read-only storage is fine) and names no holder."""
        if self._file is not None:
            return False
        try:
            f = open(self.path, "rb")
        except OSError:
            return False
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return False
        return False

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        got = self.acquire()
        try:
            yield got
        finally:
            if got:
                self.release()
