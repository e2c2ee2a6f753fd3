"""Backend switch: eager PyTorch ops, or compiled Numba kernels for CPU tensors.

``auto`` (the default) uses the Numba kernels of :mod:`._numba_ops` for CPU float32 / float64
tensors when ``numba`` can be imported, and the PyTorch code otherwise (CUDA tensors, other
dtypes, numba missing). ``torch`` always uses the PyTorch code (the reference the tests
compare against); ``numba`` asks for the compiled kernels and raises if numba is missing
(CUDA tensors still take the PyTorch path). Select with :func:`set_backend` or the
environment variable ``FACECLIP_RENDER_BACKEND`` (read at import).

Compilation: kernels are compiled on first use (a few seconds per kernel and dtype) and
cached on disk (``cache=True``), next to the source when that folder is writable, else under
``$FACECLIP_HOME/numba_cache`` (or the system temp folder); ``NUMBA_CACHE_DIR`` wins when set.
Later processes load the machine code in milliseconds.

Threads: kernels are serial, GIL-free (``nogil=True``) functions of a work range; :func:`launch`
splits the range over :func:`kernel_threads` threads (the caller plus a small pool; by default
``torch.get_num_threads()``). Numba's own ``parallel=True`` threading layers
were measured 2-4x slower end to end on 2 cores: the OpenMP layer shares ``libgomp`` with
PyTorch (launching it resets PyTorch's thread count, and its workers spin between kernels),
and ``workqueue`` hands even single-threaded work to a worker thread.
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["set_backend", "get_backend", "numba_available", "use_numba"]

_CHOICES = ("auto", "torch", "numba")
_backend = os.environ.get("FACECLIP_RENDER_BACKEND", "auto").strip().lower() or "auto"
if _backend not in _CHOICES:
    _backend = "auto"
_kernels: ModuleType | None = None
_import_error: Exception | None = None
_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _set_cache_dir() -> None:
    """Point Numba's cache at a writable folder when the package folder is read-only."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    if os.access(here, os.W_OK):
        return
    home = os.environ.get("FACECLIP_HOME")
    base = Path(home) if home else Path(tempfile.gettempdir()) / "faceclip"
    cache = base / "numba_cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    try:  # numba already imported elsewhere: its config was read at import
        import numba.core.config as cfg

        cfg.CACHE_DIR = str(cache)
    except ImportError:
        pass


def kernels() -> ModuleType | None:
    """The compiled-kernel module, or None when numba cannot be imported."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            _set_cache_dir()
            from faceclip.render import _numba_kernels

            _kernels = _numba_kernels
        except Exception as exc:  # ImportError, or a broken llvmlite
            _import_error = exc
    return _kernels


def numba_available() -> bool:
    """Whether the Numba kernels can be used."""
    return kernels() is not None


def set_backend(name: str) -> None:
    """Select ``"auto"``, ``"torch"`` or ``"numba"`` for this process (see the module docstring)."""
    global _backend
    name = name.lower()
    if name not in _CHOICES:
        raise ValueError(f"render backend must be one of {_CHOICES}, got {name!r}")
    if name == "numba" and not numba_available():
        raise RuntimeError(f"the numba render backend needs numba: {_import_error}")
    _backend = name


def get_backend() -> str:
    """The selected backend name."""
    return _backend


def use_numba(*tensors: torch.Tensor) -> bool:
    """True when the Numba kernels should handle these tensors (CPU, float32/float64)."""
    if _backend == "torch":
        return False
    for t in tensors:
        if t.device.type != "cpu" or (t.is_floating_point() and t.dtype not in (torch.float32, torch.float64)):
            return False
    if _backend == "numba" and not numba_available():
        raise RuntimeError(f"the numba render backend needs numba: {_import_error}")
    return numba_available()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="faceclip-render")
        return _POOL


def kernel_threads() -> int:
    """Threads per kernel launch: ``FACECLIP_RENDER_KERNEL_THREADS`` if set (> 0), else
    ``torch.get_num_threads()``.

    On the shared 2-core development machine (load ~2.5) two threads were slower than one for
    both backends, kernels or not (PyTorch's OpenMP regions wait for a descheduled worker);
    there, ``torch.set_num_threads(1)`` is the faster setting.
    """
    n = int(os.environ.get("FACECLIP_RENDER_KERNEL_THREADS", "0"))
    return torch.get_num_threads() if n <= 0 else n


_CHUNKS_PER_THREAD = 3  # work is shared out in this many pieces per thread (load balance)


class _Chunks:
    """Contiguous pieces of ``[0, n_items)`` handed out one at a time to whichever thread asks
    first: a thread that is descheduled (busy machine) simply takes fewer pieces, and the
    caller never waits for a worker that has not started."""

    def __init__(self, n_items: int, pieces: int) -> None:
        self.bounds = [n_items * k // pieces for k in range(pieces + 1)]
        self.next = 0
        self.done = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def run(self, kernel, args) -> None:
        pieces = len(self.bounds) - 1
        while True:
            with self.cond:
                k = self.next
                if k >= pieces or self.error is not None:
                    return
                self.next += 1
            try:
                kernel(*args, self.bounds[k], self.bounds[k + 1])
            except BaseException as exc:  # re-raised in the calling thread
                with self.cond:
                    self.error = exc
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def wait(self) -> None:
        """Block until every piece handed out has finished (all are handed out by then)."""
        with self.cond:
            while self.done < self.next:
                self.cond.wait()
        if self.error is not None:
            raise self.error


def launch(kernel, n_items: int, *args):
    """Run ``kernel(*args, lo, hi)`` over ``[0, n_items)`` on :func:`kernel_threads` threads
    (the calling thread and pool workers; kernels release the GIL), sharing the range out in
    contiguous pieces on demand (see :class:`_Chunks`)."""
    threads = min(kernel_threads(), n_items)
    if threads <= 1:
        return kernel(*args, 0, n_items)
    work = _Chunks(n_items, min(n_items, threads * _CHUNKS_PER_THREAD))
    for _ in range(threads - 1):
        _pool().submit(work.run, kernel, args)
    work.run(kernel, args)
    work.wait()
