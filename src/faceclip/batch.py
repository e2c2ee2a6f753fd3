"""Many photos: planned output names, a manifest written as results complete, resumable runs,
and a pool of worker processes.

The job of ``faceclip reconstruct`` over a list of photos::

    reports = run_batch(paths, Path("results"), ReconstructOptions(), workers=2, resume=True)

- **Names** are planned once, up front, in input order (:func:`plan_output_names`), so they do
  not depend on which worker finishes first: a photo's folder is ``<name>/`` (one face) or
  ``<name>_face<k>/`` (several), and a photo whose own name looks like another photo's face
  folder (``group_face1.png`` beside ``group.jpg``) is moved aside to ``group_face1-2``.
- **Manifest**: ``<out>/results.jsonl`` starts with a header line (``{"faceclip_manifest": 1}``)
  and gets one JSON line per face (``status: "ok"``, its folder, timings, landmark NME) or per
  failed photo (``status: "failed"``, the reason), written and flushed as each photo completes.
  Lines of earlier runs for other photos are kept; a ``results.jsonl`` without the header (not
  written by faceclip) is refused unless ``overwrite``.
- **Resume** (``resume=True``): photos whose faces are all ``ok`` in the manifest, made with the
  same options (each line carries ``options_sha``, a hash of the options that change results)
  and with their folders still in place, are skipped; failed and missing photos, and photos
  done with other options, are done again. Result folders
  are written atomically, so a run killed at any point (Ctrl-C, SIGKILL) leaves complete results
  or none, and resuming it gives the same results as an uninterrupted run.
- **One run at a time** per output folder: a run holds an exclusive lock on
  ``<out>/.faceclip-run.lock`` (``flock``; it works across hosts on NFS that supports locks;
  the file is removed when the run ends); a second run into the same folder stops at once with a
  clear message. While it holds the lock, a
  run removes every temporary folder it finds there (a killed run's, from any host); where the
  filesystem has no locks it warns and removes only those of processes that no longer exist.
- **Workers** (``workers=N``): N processes, each loading the models once and using
  ``cpu_count // N`` threads, so N workers do not oversubscribe the cores. Every photo's
  computation is the same function as in a single process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterable
from pathlib import Path

from faceclip.fit.pipeline import (FaceOutput, ImageReport, ReconstructOptions, Reconstructor, check_options,
                                   reconstruct_one)
from faceclip.io.files import atomic_open
from faceclip.io.outputs import (MARKER_NAME, NameAllocator, OutputError, check_output_root,
                                 clean_stale_temporaries)

__all__ = ["MANIFEST_NAME", "plan_output_names", "read_manifest", "reconstruct_batch", "run_batch"]

log = logging.getLogger(__name__)

#: The manifest file in the output folder.
MANIFEST_NAME = "results.jsonl"
#: The lock file a run holds in its output folder.
LOCK_NAME = ".faceclip-run.lock"
#: Options that do not change a result (not part of ``options_sha``).
_OPTIONS_NOT_IN_RESULTS = ("overwrite", "device")


def options_signature(options: ReconstructOptions) -> dict:
    """The options that change a result, JSON-able (recorded in the manifest)."""
    from dataclasses import asdict

    sig = {k: v for k, v in asdict(options).items() if k not in _OPTIONS_NOT_IN_RESULTS}
    return json.loads(json.dumps(sig, default=str))


def options_sha(options: ReconstructOptions) -> str:
    """Short hash of :func:`options_signature`."""
    import hashlib

    return hashlib.sha256(json.dumps(options_signature(options), sort_keys=True).encode()).hexdigest()[:16]


class RunLock:
    """Exclusive lock of an output folder for one run (a context manager).

    Attributes:
        held: True when the lock is held; False where the filesystem offers no locks.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.fd: int | None = None
        self.held = False

    def __enter__(self) -> RunLock:
        import socket

        try:
            import fcntl
        except ImportError:  # Windows: no flock
            log.warning("no file locks on this platform: make sure no other run writes to %s", self.path.parent)
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(10):  # the file is removed at the end of a run: lock the one that is in place
            try:
                self.fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the run lock ({exc.strerror})",
                                  hint="is the output folder writable?") from None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    who = os.read(self.fd, 200).decode(errors="replace").strip() or "unknown"
                except OSError:
                    who = "unknown"
                os.close(self.fd)
                self.fd = None
                raise OutputError(f"another faceclip run is writing to {self.path.parent} ({who})",
                                  hint="wait for it to finish, or choose another --out") from None
            except OSError as exc:  # a filesystem without locks
                log.warning("%s: file locks are not supported here (%s); make sure no other run writes to this "
                            "folder", self.path.parent, exc.strerror)
                os.close(self.fd)
                self.fd = None
                return self
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(self.fd)  # locked a file the previous run had just removed: try again
            self.fd = None
        if self.fd is None:
            raise OutputError(f"{self.path}: could not take the run lock", hint="try again")
        self.held = True
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # still holding the lock; the next run checks it locked the file in place
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        self.held = False


def plan_output_names(paths: list[Path], taken: set[str] | None = None) -> list[str]:
    """Safe, unique folder names for the photos of a batch, in input order.

    ``photo`` twice gives ``photo`` and ``photo-2``; a name of the form ``<other>_face<k>``
    where ``<other>`` is another photo's name is suffixed too, so that it cannot collide with
    the face folders of a photo with several faces. ``taken``: names already in use (the
    manifest, and folders of other photos from earlier runs) that no photo may get.
    """
    names = NameAllocator()
    for name in [MANIFEST_NAME, *(taken or ())]:
        names.claim(name)
    bases = [names.claim(Path(p).stem) for p in paths]
    lower = {b.lower() for b in bases}
    for i, b in enumerate(bases):
        m = re.fullmatch(r"(.+)_face\d+", b, flags=re.IGNORECASE)
        if m and m.group(1).lower() in lower:
            bases[i] = names.claim(b)
    return bases


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _check_manifest_is_ours(out_dir: Path, overwrite: bool) -> None:
    """A ``results.jsonl`` that faceclip did not write (no header line) is never replaced."""
    path = Path(out_dir) / MANIFEST_NAME
    if overwrite or not os.path.lexists(path):
        return
    try:
        with open(path) as fh:
            head = json.loads(fh.readline())
    except (OSError, ValueError, UnicodeDecodeError):
        head = None
    if not (isinstance(head, dict) and "faceclip_manifest" in head) or path.is_symlink():
        raise OutputError(f"{path}: exists and was not written by faceclip; refusing to replace it",
                          hint="move it away, choose another --out, or pass --overwrite")


def read_manifest(out_dir: Path) -> dict[str, list[dict]]:
    """Manifest lines per photo (absolute path), in file order; a torn last line is ignored."""
    entries: dict[str, list[dict]] = {}
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(rec, dict) and isinstance(rec.get("image_abs"), str):
            entries.setdefault(rec["image_abs"], []).append(rec)
    return entries


def _done_faces(lines: list[dict], out_dir: Path, sha: str | None = None) -> list[dict] | None:
    """The ok face entries of a photo if it is completely done (its folders present and
    written for this photo, with options of hash ``sha`` when given), else None."""
    if not lines or any(rec.get("status") != "ok" for rec in lines):
        return None
    if sha is not None and any(rec.get("options_sha") != sha for rec in lines):
        return None
    for rec in lines:
        try:
            marker = json.loads((out_dir / str(rec.get("folder", "")) / MARKER_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("image") is None \
                or os.path.abspath(str(marker["image"])) != rec.get("image_abs"):
            return None
    return lines


class _Manifest:
    """Appends one JSON line per face or failed photo, flushed and synced as photos complete.

    The file is (re)written only when the first photo completes, so a run that fails before
    any photo (a missing model, say) leaves the output folder as it was.
    """

    def __init__(self, out_dir: Path, keep: dict[str, list[dict]], options: ReconstructOptions) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.keep = keep
        self.fh = None
        self.options = options
        self.sha = options_sha(options)

    def _open(self) -> None:
        from faceclip import __version__

        with atomic_open(self.path, "w") as fh:  # never through a link
            # a header, the lines kept from earlier runs, then this run's
            fh.write(json.dumps({"faceclip_manifest": 1, "version": __version__, "options_sha": self.sha,
                                 "options": options_signature(self.options)}) + "\n")
            for lines in self.keep.values():
                for rec in lines:
                    fh.write(json.dumps(rec) + "\n")
        self.fh = open(self.path, "a")

    def add(self, report: ImageReport) -> None:
        if self.fh is None:
            self._open()
        base = {"image": str(report.image), "image_abs": _key(report.image), "options_sha": self.sha}
        if report.error is not None:
            lines = [{**base, "status": "failed", "face_index": None, "reason": report.error,
                      "seconds": round(report.seconds, 4)}]
        else:
            lines = [{**base, "status": "ok", "face_index": f.face_index, "folder": f.folder.name,
                      "landmark_nme": round(f.landmark_nme, 5), "seconds": f.seconds} for f in report.faces]
        for rec in lines:
            self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# --------------------------------------------------------------------------- worker processes

_WORKER: Reconstructor | None = None
_WORKER_ERROR: BaseException | None = None


def _init_worker(options: ReconstructOptions, threads: int) -> None:
    """Load the models once per worker. A failure is kept and raised by the first task (an
    initializer that raises would make the pool start new workers forever)."""
    import torch

    global _WORKER, _WORKER_ERROR
    torch.set_num_threads(threads)
    try:
        _WORKER = Reconstructor(options)
    except Exception as exc:  # noqa: BLE001 - re-raised in _work, reported by the caller
        _WORKER_ERROR = exc


def _work(task: tuple[int, str, str, str]) -> tuple[int, ImageReport]:
    index, path, out_dir, base = task
    if _WORKER is None:
        raise _WORKER_ERROR if _WORKER_ERROR is not None else RuntimeError("worker not initialised")
    return index, reconstruct_one(_WORKER, Path(path), Path(out_dir), base)


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def run_batch(paths: list[Path], out_dir: Path, options: ReconstructOptions, *, workers: int = 1,
              resume: bool = False, show_progress: bool = True,
              on_report: Callable[[ImageReport], None] | None = None) -> list[ImageReport]:
    """Reconstruct ``paths`` into ``out_dir``; see the module docstring.

    Args:
        paths: photos, in the order that decides their folder names.
        out_dir: output folder (checked and created before any model is loaded).
        options: reconstruction options (checked first).
        workers: processes (1: this process).
        resume: skip photos the manifest lists as done; redo the rest.
        show_progress: a progress bar on stderr.
        on_report: called in this process with each photo's report as it completes.

    Returns:
        One :class:`ImageReport` per photo, in input order.
    """

    if workers < 1:
        from faceclip.errors import FaceClipError

        raise FaceClipError(f"--workers {workers}: must be at least 1")
    check_options(options)
    out_dir = check_output_root(Path(out_dir))
    with RunLock(out_dir) as lock:
        return _run_locked(paths, out_dir, options, workers, resume, show_progress, on_report, lock.held)


def _run_locked(paths, out_dir: Path, options: ReconstructOptions, workers: int, resume: bool, show_progress: bool,
                on_report, locked: bool) -> list[ImageReport]:
    from tqdm import tqdm

    for stale in clean_stale_temporaries(out_dir, any_pid=locked):
        log.info("removed %s, left by an interrupted run", stale)
    _check_manifest_is_ours(out_dir, options.overwrite)
    paths = [Path(p) for p in paths]
    earlier = read_manifest(out_dir)
    batch_keys = {_key(p) for p in paths}
    # Photos of earlier runs that are not in this batch keep their lines (and their folders
    # stay theirs); this batch's photos get this run's lines (or, resuming, their earlier ones).
    keep: dict[str, list[dict]] = {k: v for k, v in earlier.items() if k not in batch_keys}
    taken = {str(rec["folder"]) for lines in keep.values() for rec in lines if rec.get("folder")}
    bases = plan_output_names(paths, taken)
    if not resume:
        earlier = {}
    reports: list[ImageReport | None] = [None] * len(paths)
    todo: list[int] = []
    sha = options_sha(options)
    for i, p in enumerate(paths):
        done = _done_faces(earlier.get(_key(p), []), out_dir, sha)
        if done is None:
            todo.append(i)
            continue
        keep[_key(p)] = done
        faces = [FaceOutput(p, int(rec["face_index"]), out_dir / rec["folder"], [], float(rec["landmark_nme"]),
                            dict(rec.get("seconds", {}))) for rec in done]
        reports[i] = ImageReport(p, faces=faces, skipped=True)
    manifest = _Manifest(out_dir, keep, options)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="reconstruct", unit="image",
               disable=None if show_progress else True)

    def finish(i: int, report: ImageReport) -> None:
        reports[i] = report
        manifest.add(report)
        if on_report is not None:
            on_report(report)
        bar.update(1)

    try:
        if todo and (workers == 1 or len(todo) == 1):
            rec = Reconstructor(options)
            for i in todo:
                finish(i, reconstruct_one(rec, paths[i], out_dir, bases[i]))
        elif todo:
            ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start is unsafe
            n = min(workers, len(todo))
            with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                     initargs=(options, _threads_per_worker(n))) as pool:
                futures = {pool.submit(_work, (i, str(paths[i]), str(out_dir), bases[i])): i for i in todo}
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        _, report = fut.result()
                    except BrokenProcessPool:  # a worker was killed (out of memory, a signal)
                        report = ImageReport(paths[i], error="a worker process died (killed, or out of memory); "
                                                             "run again with --resume to retry")
                    finish(i, report)
    finally:
        bar.close()
        manifest.close()
    return [r for r in reports if r is not None]


def reconstruct_batch(inputs: Iterable[Path], out_dir: Path, options: ReconstructOptions | None = None,
                      show_progress: bool = True, workers: int = 1, resume: bool = False) -> list[ImageReport]:
    """Reconstruct many photos; one failing photo never stops the others.

    :func:`run_batch` with default options. Returns one :class:`ImageReport` per input, in
    input order (``error`` set for failures).
    """
    return run_batch(list(inputs), Path(out_dir), options or ReconstructOptions(), workers=workers,
                     resume=resume, show_progress=show_progress)
