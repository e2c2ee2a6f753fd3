"""Ending a process without the interpreter's slow teardown.

After a reconstruction, Python's own finalisation took 0.6-0.9 s on the 2-core machine (a
fresh process that only imports PyTorch takes 0.45 s to exit): the modules of PyTorch, Numba and
MediaPipe are torn down and their native state is freed one object at a time. FaceCLIP needs
none of it, since every result is complete (written atomically) before a command returns. So
the ``faceclip`` command and the batch worker processes end with ``os._exit`` once the exit
handlers have run (temporary folders, logging) and standard output and error are flushed.
Only the command's entry point calls :func:`leave_now`, and only the worker processes of a
batch (:func:`faceclip.batch.reconstruct_batch` with ``workers`` > 1) install
:func:`end_promptly_at_exit`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["end_promptly_at_exit", "leave_now"]


def _flush() -> bool:
    """Flush standard output and error; False when one could not be written (a closed pipe)."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            ok = False
    return ok


def leave_now(code: int) -> NoReturn:
    """End the process with exit status ``code`` as a normal exit would, without the
    interpreter's teardown: other threads are waited for, the exit handlers run, standard output
    and error are flushed (status 120, as Python gives, when that fails on a successful run).
    Under a profiler or tracer (``python -m cProfile``) it exits the normal way, so that their
    reports are written."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    try:
        wait_for_threads = getattr(threading, "_shutdown", None)  # CPython's first step of an exit
        if wait_for_threads is not None:
            wait_for_threads()
        atexit._run_exitfuncs()
    finally:
        flushed = _flush()
        os._exit(120 if code == 0 and not flushed else code)


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
