"""Ending a process without the interpreter's slow teardown.

After a reconstruction, Python's own finalisation took 0.6-0.9 s on the 2-core machine (a
fresh process that only imports PyTorch takes 0.45 s to exit): the modules of PyTorch, Numba and
MediaPipe are torn down and their native state is freed one object at a time. FaceCLIP needs
none of it, since every result is complete (written atomically) before a command returns. So
the ``faceclip`` command and the batch worker processes end with ``os._exit`` once the exit
handlers have run (temporary folders, logging) and standard output and error are flushed.
Library code never calls these: only the command's entry point and the workers it starts.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

__all__ = ["end_promptly_at_exit", "leave_now"]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass


def leave_now(code: int) -> NoReturn:
    """End the process with exit status ``code``: the exit handlers run (all of them, as at a
    normal exit), standard output and error are flushed, and the interpreter's teardown is
    skipped."""
    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code)


def _end_now() -> None:
    _flush()
    os._exit(0)


def end_promptly_at_exit() -> None:
    """Make a normal exit of this process skip the interpreter's teardown, for worker processes
    whose exit another process waits for. The exit handlers registered after this call still run
    (they run last-registered first); those registered before it, the interpreter's own clean-up
    (logging's flush, multiprocessing's, which the worker has already run), do not, and the exit
    status becomes 0. A process killed by a signal is not affected."""
    atexit.register(_end_now)
