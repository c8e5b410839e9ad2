"""Ctrl-C in a command: one line on stderr and exit status 130, never a traceback, also while the
command's imports (torch: seconds) are still loading. Standard library only, so that an entry point
can import it before anything heavy."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C
INTERRUPTED = "interrupted"


def quiet_while_loading(message: str) -> None:
    """Until `run_main` starts, Ctrl-C prints `message` and exits at once: call it at the top of a
    `python -m` module, before the imports that take seconds."""
    def interrupted(signum, frame) -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)

    signal.signal(signal.SIGINT, interrupted)


def run_main(main: Callable[[], int], message: str) -> int:
    """`main()`'s exit status; Ctrl-C during it prints `message` and gives 130."""
    with contextlib.suppress(ValueError):  # not the main thread: the handler stays as it is
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return main()
    except KeyboardInterrupt:
        print(message, file=sys.stderr, flush=True)
        return EXIT_STATUS
