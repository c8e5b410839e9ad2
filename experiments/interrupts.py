"""Ctrl-C in a command: one line on stderr and exit status 130, never a traceback, also while the
command's imports (torch: seconds) are still loading. Standard library only, so that an entry point
can import it before anything heavy."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from typing import Callable, Iterator

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
INTERRUPTED = "interrupted"


def quiet_while_loading(message: str) -> None:
    """Until `run_main` starts, Ctrl-C prints `message` and exits at once: call it at the top of a
    `python -m` module, before the imports that take seconds."""
    def interrupted(signum, frame) -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)

    signal.signal(signal.SIGINT, interrupted)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's stop, `docker stop`, `timeout`), taken as Ctrl-C: the same clean stop."""


def terminated(signum, frame) -> None:
    raise Terminated()


def run_main(main: Callable[[], int], message: str) -> int:
    """`main()`'s exit status; Ctrl-C (or SIGTERM) during it prints `message` and gives 130; a reader that
    closed the pipe on stdout (`... | head -1`) ends the command quietly with 141, as SIGPIPE would."""
    with contextlib.suppress(ValueError):  # not the main thread: the handlers stay as they are
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, terminated)
    try:
        return main()
    except KeyboardInterrupt:
        print(message, file=sys.stderr, flush=True)
        return EXIT_STATUS
    except BrokenPipeError:
        if not stdout_is_a_pipe():  # a socket (a study's database, say): a real error
            raise
        # Python's advice: point stdout at /dev/null, so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) until the block ends, then deliver it: around work that must not stop half
    way (a checkpoint's torch.save, whose C++ writer aborts the process if its callback raises; the renames
    that put a new report in place). Only the main thread receives signals; a handler set outside
    Python (getsignal: None) cannot be put back, so it is left alone."""
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    if threading.current_thread() is not threading.main_thread() or not held:
        yield
        return
    pressed: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pressed.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pressed:
        signal.raise_signal(pressed[0])  # to the handler that was in place: a KeyboardInterrupt, usually
