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
- **Workers** (``workers=N``): N workers, each loading the models once and using
  ``cpu_count // N`` threads, so N workers do not oversubscribe the cores: this process (in a
  thread) and N - 1 spawned processes. Every photo's computation is the same function as in a
  single process (:func:`reconstruct_item`).
- **Backends**: ``backend="local"`` (the above) or ``backend="ray"``: the same function runs on
  Ray actors, each loading the models once, on a local Ray instance or on the cluster at
  ``address`` (:mod:`faceclip.distributed`); this process still plans the names, writes the
  manifest and resumes.
- **URLs** (:mod:`faceclip.io.remote`): photos and ``out_dir`` may be fsspec URLs
  (``s3://bucket/results``). A photo at a URL is read into a local temporary file; a result
  for an ``out_dir`` URL is made in a local temporary folder and then uploaded, its marker file
  last, so a killed run leaves no result that looks complete. Such an ``out_dir`` has no run
  lock, and its manifest is uploaded whole, at most every :data:`REMOTE_MANIFEST_SECONDS` and at
  the end (a killed run may lose the last lines: ``--resume`` then redoes those photos).
  ``file://`` URLs are local paths.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from faceclip.errors import FaceClipError
from faceclip.reconstruction import (FaceOutput, ImageReport, ReconstructOptions, Reconstructor, check_options,
                                   expand_inputs, reconstruct_one, resolve_method)
from faceclip.io import remote
from faceclip.io.files import atomic_open
from faceclip.io.outputs import (MARKER_NAME, NameAllocator, OutputError, check_output_root,
                                 clean_stale_temporaries, remove_stale_results, write_result_folder)

__all__ = ["BACKENDS", "MANIFEST_NAME", "expand_sources", "plan_output_names", "read_manifest",
           "reconstruct_batch", "reconstruct_item", "run_batch"]

log = logging.getLogger(__name__)

#: The manifest file in the output folder.
MANIFEST_NAME = "results.jsonl"
#: The lock file a run holds in its output folder.
LOCK_NAME = ".faceclip-run.lock"
#: Options that do not change a result (not part of ``options_sha``).
_OPTIONS_NOT_IN_RESULTS = ("overwrite", "device")
#: Where the photos of a batch are reconstructed: ``local`` (this machine's processes) or ``ray``.
BACKENDS = ("local", "ray")
#: An ``out_dir`` URL's manifest is uploaded at most this often (seconds), and at the end.
REMOTE_MANIFEST_SECONDS = 5.0

#: A photo of a batch: a local path, or a URL (canonical, see :func:`faceclip.io.remote.resolve`).
Source = Path | str
#: Where results go: a local folder (``Path``) or a folder URL (``str``).
Target = Path | str


def options_signature(options: ReconstructOptions) -> dict:
    """The options that change a result, JSON-able (recorded in the manifest): the options as
    they are resolved (a method name as the options it stands for, the texture size the mode
    gives), so that equivalent spellings give the same signature."""
    import dataclasses

    flat = resolve_method(options).flat()
    if flat["texture_px"] is None:
        flat["texture_px"] = 512 if flat["fast"] else 1024
    sig = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
           for k, v in flat.items() if k not in _OPTIONS_NOT_IN_RESULTS}
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


def plan_output_names(paths: list[Source], taken: set[str] | None = None) -> list[str]:
    """Safe, unique folder names for the photos of a batch, in input order.

    ``photo`` twice gives ``photo`` and ``photo-2``; a name of the form ``<other>_face<k>``
    where ``<other>`` is another photo's name is suffixed too, so that it cannot collide with
    the face folders of a photo with several faces. ``taken``: names already in use (the
    manifest, and folders of other photos from earlier runs) that no photo may get.
    """
    names = NameAllocator()
    for name in [MANIFEST_NAME, *(taken or ())]:
        names.claim(name)
    bases = [names.claim(Path(remote.name_of(p)).stem) for p in paths]
    lower = {b.lower() for b in bases}
    for i, b in enumerate(bases):
        m = re.fullmatch(r"(.+)_face\d+", b, flags=re.IGNORECASE)
        if m and m.group(1).lower() in lower:
            bases[i] = names.claim(b)
    return bases


def _key(source: Source) -> str:
    """The manifest's key of a photo: its absolute path, or its URL."""
    return str(source) if remote.is_url(source) else os.path.abspath(source)


def _manifest_text(out_dir: Target) -> str | None:
    """The manifest's text, or None when there is none."""
    if isinstance(out_dir, str):
        return remote.read_text(remote.join(out_dir, MANIFEST_NAME))
    path = Path(out_dir) / MANIFEST_NAME
    return path.read_text(errors="replace") if path.is_file() else None


def _check_manifest_is_ours(out_dir: Target, overwrite: bool) -> None:
    """A ``results.jsonl`` that faceclip did not write (no header line) is never replaced."""
    if isinstance(out_dir, str):
        where, text, link = remote.join(out_dir, MANIFEST_NAME), _manifest_text(out_dir), False
    else:
        path = Path(out_dir) / MANIFEST_NAME
        if overwrite or not os.path.lexists(path):
            return
        try:
            with open(path) as fh:
                text = fh.readline()
        except (OSError, UnicodeDecodeError):
            text = ""
        where, link = str(path), path.is_symlink()
    if overwrite or text is None:
        return
    try:
        head = json.loads(text.split("\n", 1)[0])
    except ValueError:
        head = None
    if not (isinstance(head, dict) and "faceclip_manifest" in head) or link:
        raise OutputError(f"{where}: exists and was not written by faceclip; refusing to replace it",
                          hint="move it away, choose another --out, or pass --overwrite")


def read_manifest(out_dir: Target) -> dict[str, list[dict]]:
    """Manifest lines per photo (absolute path or URL), in file order; a torn last line is ignored.

    ``out_dir``: a local folder, or a folder URL (``str``).
    """
    entries: dict[str, list[dict]] = {}
    for line in (_manifest_text(out_dir) or "").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(rec, dict) and isinstance(rec.get("image_abs"), str):
            entries.setdefault(rec["image_abs"], []).append(rec)
    return entries


def _result_marker(out_dir: Target, folder: str) -> dict | None:
    """The marker file of the result folder ``folder`` (a name) in ``out_dir``, or None."""
    try:
        if isinstance(out_dir, str):
            text = remote.read_text(remote.join(out_dir, folder, MARKER_NAME))
        else:
            text = (Path(out_dir) / folder / MARKER_NAME).read_text()
        marker = json.loads(text) if text is not None else None
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _done_faces(lines: list[dict], out_dir: Target, sha: str | None = None) -> list[dict] | None:
    """The ok face entries of a photo if it is completely done (its folders present, complete
    and written for this photo, with options of hash ``sha`` when given), else None."""
    if not lines or any(rec.get("status") != "ok" for rec in lines):
        return None
    if sha is not None and any(rec.get("options_sha") != sha for rec in lines):
        return None
    for rec in lines:
        marker = _result_marker(out_dir, str(rec.get("folder", "")))
        if marker is None or marker.get("image") is None or marker.get("in_progress") \
                or _key(str(marker["image"])) != rec.get("image_abs"):
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

    def _first_lines(self) -> list[str]:
        """A header, then the lines kept from earlier runs (this run's follow)."""
        from faceclip import __version__

        header = {"faceclip_manifest": 1, "version": __version__, "options_sha": self.sha,
                  "options": options_signature(self.options)}
        return [json.dumps(header)] + [json.dumps(rec) for lines in self.keep.values() for rec in lines]

    def _open(self) -> None:
        with atomic_open(self.path, "w") as fh:  # never through a link
            fh.writelines(line + "\n" for line in self._first_lines())
        self.fh = open(self.path, "a")

    def _records(self, report: ImageReport) -> list[dict]:
        """The manifest lines of one photo's report."""
        base = {"image": str(report.image), "image_abs": _key(report.image), "options_sha": self.sha,
                "finished": round(time.time(), 3)}
        if report.error is not None:
            return [{**base, "status": "failed", "face_index": None, "reason": report.error,
                     "seconds": round(report.seconds, 4)}]
        return [{**base, "status": "ok", "face_index": f.face_index, "folder": remote.name_of(f.folder),
                 "landmark_nme": round(f.landmark_nme, 5), "seconds": f.seconds} for f in report.faces]

    def add(self, report: ImageReport) -> None:
        if self.fh is None:
            self._open()
        for rec in self._records(report):
            self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class _RemoteManifest(_Manifest):
    """The manifest of an ``out_dir`` URL: kept in memory and uploaded whole (object stores
    cannot append), at most every ``interval`` seconds and at :meth:`close`."""

    def __init__(self, out_url: str, keep: dict[str, list[dict]], options: ReconstructOptions,
                 interval: float = REMOTE_MANIFEST_SECONDS) -> None:
        self.keep, self.options, self.sha = keep, options, options_sha(options)
        self.url = remote.join(out_url, MANIFEST_NAME)
        self.lines: list[str] | None = None
        self.interval = interval
        self.sent = 0.0  # time.monotonic() of the last upload
        self.dirty = False

    def add(self, report: ImageReport) -> None:
        if self.lines is None:
            self.lines = self._first_lines()
        self.lines += [json.dumps(rec) for rec in self._records(report)]
        self.dirty = True
        if time.monotonic() - self.sent >= self.interval:
            try:
                self._upload()
            except Exception as exc:  # noqa: BLE001 - a passing network error: tried again later
                log.warning("%s: could not upload the manifest (%s); trying again later", self.url, exc)
                self.sent = time.monotonic()

    def _upload(self) -> None:
        remote.write_text(self.url, "".join(line + "\n" for line in self.lines or []))
        self.sent, self.dirty = time.monotonic(), False

    def close(self) -> None:
        if not self.dirty:
            return
        try:
            self._upload()
        except Exception as exc:  # noqa: BLE001 - reported as one clear error
            raise OutputError(f"{self.url}: could not upload the manifest ({type(exc).__name__}: {exc})",
                              hint="the results are written; run the same command with --resume to write it") \
                from None


# --------------------------------------------------------------------------- one photo, any backend


def _retarget_json(folder: Path, old: str, new: str) -> None:
    """Replace the JSON string ``old`` by ``new`` in the folder's JSON files (params.json and the
    marker name the photo they were made from: the local copy of a photo read from a URL)."""
    before, after = json.dumps(old), json.dumps(new)
    for f in sorted(folder.iterdir()):
        if f.suffix == ".json" and f.is_file():
            f.write_text(f.read_text().replace(before, after))


def _copy_files(src: Path, dst: Path) -> None:
    """Copy the files of a staged result folder into ``dst`` (its marker is made anew)."""
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != MARKER_NAME:
            shutil.copy2(f, dst / f.name)


def _publish(face: FaceOutput, source: Source, out: Target, overwrite: bool) -> FaceOutput:
    """Move one staged face folder to its place in ``out`` (a local folder: atomically, through
    :func:`~faceclip.io.outputs.write_result_folder`; a URL: uploaded, marker last)."""
    staged = Path(face.folder)
    if isinstance(out, str):
        folder: Target = remote.join(out, staged.name)
        files: list = remote.publish_folder(staged, folder, overwrite=overwrite)
    else:
        marker = json.loads((staged / MARKER_NAME).read_text())
        meta = {k: v for k, v in marker.items() if k not in ("tool", "version", "files")}
        folder = out / staged.name
        files = write_result_folder(folder, functools.partial(_copy_files, staged), meta=meta, overwrite=overwrite)
    return dataclasses.replace(face, image=source, folder=folder, files=files)


def _remove_stale(out: Target, base: str, faces: list[FaceOutput], image: str) -> None:
    """Remove the folders of this photo's faces that an earlier run found and this one did not."""
    names = [remote.name_of(f.folder) for f in faces]
    if isinstance(out, str):
        removed = remote.remove_stale_folders(out, base, names, image)
    else:
        removed = remove_stale_results(out, base, [out / n for n in names], image)
    for stale in removed:
        log.info("removed %s: an earlier result of %s for a face this run did not find", stale, image)


def _reconstruct_staged(rec: Reconstructor, source: Source, out: Target, base: str) -> ImageReport:
    """:func:`reconstruct_item` for a photo at a URL or an ``out`` URL, in a local temporary folder."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faceclip-stage-") as tmp:
        try:
            report = _stage_and_publish(rec, source, out, base, Path(tmp))
        except FaceClipError as exc:
            report = ImageReport(source, error=exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
        except Exception as exc:  # noqa: BLE001 - reading or writing one photo must not end the batch
            log.debug("failure on %s", source, exc_info=True)
            report = ImageReport(source, error=f"{type(exc).__name__}: {exc}")
    report.seconds = time.perf_counter() - t0
    return report


def _stage_and_publish(rec: Reconstructor, source: Source, out: Target, base: str, tmp: Path) -> ImageReport:
    """Read the photo into ``tmp`` (a URL), make its faces in ``tmp/out``, publish them to ``out``."""
    photo = remote.fetch(source, tmp) if isinstance(source, str) else source
    stage = tmp / "out"
    stage.mkdir()
    report = reconstruct_one(rec, photo, stage, base)
    report.image = source
    if report.error is not None:
        report.error = report.error.replace(str(photo), str(source))
        return report
    if photo != source:  # params.json and the marker name the URL, not the local copy
        for face in report.faces:
            _retarget_json(Path(face.folder), str(photo), str(source))
    report.faces = [_publish(f, source, out, rec.options.outputs.overwrite) for f in report.faces]
    _remove_stale(out, base, report.faces, str(source))
    return report


def reconstruct_item(rec: Reconstructor, source: Source, out: Target, base: str) -> ImageReport:
    """One photo of a batch into ``out/<base>[_face<k>]``: the function every backend runs.

    A local photo into a local folder is :func:`~faceclip.reconstruction.reconstruct_one` as it
    is. A photo at a URL is read into a local temporary file first (``params.json`` and the
    marker still name the URL); for an ``out`` URL the faces are made in a local temporary folder
    and uploaded (:func:`faceclip.io.remote.publish_folder`). Never raises but on Ctrl-C: a
    failure is the report's ``error``.

    Args:
        rec: the models, loaded once per process.
        source: the photo: a local path, or a URL (``str``).
        out: the output folder: a local folder (``Path``), or a URL (``str``).
        base: the photo's planned folder name (:func:`plan_output_names`).
    """
    if isinstance(source, Path) and isinstance(out, Path):
        return reconstruct_one(rec, source, out, base)
    return _reconstruct_staged(rec, source, out, base)


# --------------------------------------------------------------------------- backends

_WORKER: Reconstructor | None = None
_WORKER_ERROR: BaseException | None = None
#: A photo's work: ``(index in the batch, photo, output folder, planned folder name)``.
_Task = tuple[int, Source, Target, str]


def _make_reconstructor(options: ReconstructOptions, threads: int) -> Reconstructor:
    """The models of one worker (a process or a Ray actor), which uses ``threads`` threads
    (PyTorch's, and so the rasterizer's, and OpenCV's)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return Reconstructor(options)


def _end_with_parent() -> None:
    """End this worker process as soon as the process that started it has ended (killed with
    SIGKILL, say): a pool worker would otherwise wait for work forever, and it ignores Ctrl-C."""
    import multiprocessing.connection

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="faceclip-parent-watch", daemon=True).start()


def _init_worker(options: ReconstructOptions, threads: int) -> None:
    """Load the models once per worker. A failure is kept and raised by the first task (an
    initializer that raises would make the pool start new workers forever)."""
    global _WORKER, _WORKER_ERROR
    from faceclip.quick_exit import end_promptly_at_exit

    end_promptly_at_exit()  # the pool's shutdown waits for its workers to exit: skip their teardown
    _end_with_parent()
    try:
        _WORKER = _make_reconstructor(options, threads)
    except Exception as exc:  # noqa: BLE001 - re-raised in _work, reported by the caller
        _WORKER_ERROR = exc


def _run_task(rec: Reconstructor, task: _Task) -> ImageReport:
    """:func:`reconstruct_item` for one task."""
    _, source, out, base = task
    return reconstruct_item(rec, source, out, base)


def _work(task: _Task) -> tuple[int, ImageReport]:
    if _WORKER is None:
        raise _WORKER_ERROR if _WORKER_ERROR is not None else RuntimeError("worker not initialised")
    return task[0], _run_task(_WORKER, task)


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _run_here(options: ReconstructOptions, tasks: list[_Task], finish: Callable[[int, ImageReport], None]) -> None:
    """Every task in this process."""
    rec = Reconstructor(options)
    for task in tasks:
        finish(task[0], _run_task(rec, task))


#: The report of a photo whose worker process died.
_WORKER_DIED = "a worker process died (killed, or out of memory); run again with --resume to retry"


def _sigint_settable() -> bool:
    """Whether this thread can change SIGINT's handler and put the present one back: only the
    main thread can, and not when the handler was set outside Python (``signal.signal`` cannot
    restore ``None``)."""
    return threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None


class _SpawnProcessIgnoringCtrlC(multiprocessing.context.SpawnProcess):
    """A spawned process that ignores SIGINT from its start: the ignored disposition is
    inherited through ``exec``, and Python then installs no KeyboardInterrupt handler. Ctrl-C,
    which a terminal sends to the whole process group, is left to the parent, which lets each
    worker finish the photos it holds (no traceback from a worker, no photo cut short)."""

    def start(self) -> None:
        if not _sigint_settable():
            return super().start()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class _SpawnContextIgnoringCtrlC(multiprocessing.context.SpawnContext):
    Process = _SpawnProcessIgnoringCtrlC


def _run_pool(options: ReconstructOptions, tasks: list[_Task], workers: int,
              finish: Callable[[int, ImageReport], None]) -> None:
    """The tasks on ``workers`` workers: this process and ``workers - 1`` spawned processes,
    each loading the models once.

    This process works too, in a thread (its main thread hands out the tasks and records the
    results): one process fewer to start, and one copy of the models fewer in memory. Tasks go
    out in input order to whichever worker is free; a spawned process holds at most one task
    besides its current one, and none while fewer tasks than workers are left. If a spawned
    process dies, the pool breaks: the photos the spawned processes held fail (``--resume``
    retries them) and this process does the rest. On Ctrl-C or an error no more photos are
    started; the photos in progress, and those queued on the spawned processes, are finished and
    recorded before the exception goes on.
    """
    n = min(workers, len(tasks))
    threads = _threads_per_worker(n)
    todo = collections.deque(tasks)
    todo_lock = threading.Lock()
    stop = threading.Event()
    pool_broken = threading.Event()
    results: queue.SimpleQueue = queue.SimpleQueue()  # finished futures, (task, report), an error or _HERE_DONE

    def take() -> _Task | None:
        with todo_lock:
            return todo.popleft() if todo and not stop.is_set() else None

    def work_here() -> None:
        try:
            rec = Reconstructor(options)
            while (task := take()) is not None:
                results.put((task, _run_task(rec, task)))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            results.put(exc)
        results.put(_HERE_DONE)

    in_flight: dict[Future, _Task] = {}
    here: threading.Thread | None = None
    with _thread_counts(threads):  # the process's: this thread's and the worker thread's
        try:
            with ProcessPoolExecutor(n - 1, mp_context=_SpawnContextIgnoringCtrlC(), initializer=_init_worker,
                                     initargs=(options, threads)) as pool:

                def feed() -> None:
                    while not pool_broken.is_set() and len(in_flight) < _pool_share(n, len(todo)):
                        task = take()
                        if task is None:
                            return
                        try:
                            fut = pool.submit(_work, task)
                        except BrokenProcessPool:  # a process died since the last result
                            pool_broken.set()
                            with todo_lock:
                                todo.appendleft(task)
                            return
                        in_flight[fut] = task
                        fut.add_done_callback(results.put)

                current = None  # a result taken from the queue and not yet recorded
                try:
                    feed()  # first: the spawned processes start while this one loads its models
                    here = threading.Thread(target=work_here, name="faceclip-batch-worker", daemon=True)
                    here.start()
                    here_running = True
                    while here_running or in_flight:
                        try:
                            current = results.get(timeout=_LOST_AFTER_S)
                        except queue.Empty:
                            if getattr(pool, "_broken", False):  # CPython's flag, set when a process died
                                _fail_lost(in_flight, finish)
                                pool_broken.set()
                            continue
                        with _ctrl_c_deferred():  # a result is recorded whole, then more work goes out
                            item, current = current, None
                            if item is _HERE_DONE:
                                here_running = False
                                continue
                            if isinstance(item, BaseException):
                                raise item
                            if isinstance(item, Future):
                                task = in_flight.pop(item, None)
                                if task is None:  # already reported lost by _fail_lost
                                    continue
                                try:
                                    _, report = item.result()
                                except BrokenProcessPool:  # a process was killed (out of memory, a signal)
                                    pool_broken.set()
                                    report = ImageReport(task[1], error=_WORKER_DIED)
                            else:
                                task, report = item
                            finish(task[0], report)
                            feed()
                    for task in todo:  # handed back by feed() after this process's worker had ended
                        finish(task[0], ImageReport(task[1], error=_WORKER_DIED))
                except BaseException:
                    stop.set()  # no more photos start here or on the pool, which finishes those it holds
                    if current is not None:  # Ctrl-C came between taking it and recording it
                        results.put(current)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            stop.set()
            if here is not None:  # its current photo is finished, not left half-written
                here.join()
            _record_finished(results, in_flight, finish)  # photos done after an error or Ctrl-C


@contextlib.contextmanager
def _thread_counts(threads: int) -> Iterator[None]:
    """PyTorch's and OpenCV's thread counts set to ``threads`` for the block, then restored."""
    import cv2
    import torch

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])


def _pool_share(workers: int, left: int) -> int:
    """How many photos the ``workers - 1`` spawned processes of :func:`_run_pool` may hold when
    ``left`` photos are not yet handed out: one running and one queued each, so none waits for
    the results to come back, but only one each once fewer than ``workers`` are left, so that
    this process gets its share of a small batch and of a batch's end."""
    return (workers - 1) * (2 if left >= workers else 1)


#: Seconds without any result after which :func:`_run_pool` checks whether its pool broke.
_LOST_AFTER_S = 5.0


def _fail_lost(in_flight: dict[Future, _Task], finish: Callable[[int, ImageReport], None]) -> None:
    """Report the photos of a broken pool that will never complete as failed.

    When a process dies, the pool fails the work it holds; but CPython 3.11 marks the pool broken
    without holding its lock, so a photo submitted at that instant can be left with a future that
    no one completes. Called once the pool has been broken for :data:`_LOST_AFTER_S` seconds with
    no result, by which time every other future has been failed.
    """
    for fut in [f for f in in_flight if not f.done()]:
        task = in_flight.pop(fut)
        fut.cancel()
        finish(task[0], ImageReport(task[1], error=_WORKER_DIED))


#: Put on the results queue of :func:`_run_pool` when this process's worker has ended.
_HERE_DONE = object()


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives during the block until its end, where it is raised
    again for the previous disposition (Python's handler raises KeyboardInterrupt). In the main
    thread only; elsewhere, and where SIGINT's handler was not set from Python, the block runs as
    is."""
    if not _sigint_settable():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _record_finished(results: queue.SimpleQueue, in_flight: dict[Future, _Task],
                     finish: Callable[[int, ImageReport], None]) -> None:
    """Pass the photos on :func:`_run_pool`'s results queue that were completed to ``finish``
    (after an error or Ctrl-C stopped its loop), so that the manifest lists them. A failure to
    record one is logged: the error that stopped the run is the one reported."""
    while True:
        try:
            item = results.get_nowait()
        except queue.Empty:
            return
        try:
            if isinstance(item, tuple):
                finish(item[0][0], item[1])
            elif isinstance(item, Future) and item in in_flight and not item.cancelled() and item.exception() is None:
                finish(in_flight.pop(item)[0], item.result()[1])
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("could not record a finished photo", exc_info=True)


def _run_ray(options: ReconstructOptions, tasks: list[_Task], workers: int, address: str | None,
             finish: Callable[[int, ImageReport], None]) -> None:
    """The tasks on ``workers`` Ray actors, each loading the models once (:mod:`faceclip.distributed`)."""
    from faceclip.distributed import WorkerLost, run_on_ray

    def on_result(task: _Task, result: ImageReport | WorkerLost) -> None:
        if isinstance(result, WorkerLost):
            result = ImageReport(task[1], error=f"{result}; run again with --resume to retry")
        finish(task[0], result)

    run_on_ray(tasks, functools.partial(_make_reconstructor, options), _run_task, on_result, workers=workers,
               address=address, local_cpus=workers * _threads_per_worker(workers))


# --------------------------------------------------------------------------- the batch


def expand_sources(items: Iterable[str]) -> list[Source]:
    """Command-line inputs -> photos, in order: paths as :func:`~faceclip.reconstruction.expand_inputs`
    expands them (files, folders, glob patterns; ``file://`` URLs too), and other URLs as
    :func:`faceclip.io.remote.list_images` does (a folder's images, a pattern's matches, a file).

    Raises:
        InputError: a pattern matching nothing, a folder without images, an unusable URL.
    """
    out: list[Source] = []
    for item in items:
        local = remote.local_path(item) if remote.is_url(item) else None
        if remote.is_url(item) and local is None:
            out.extend(remote.list_images(item))
        else:
            out.extend(expand_inputs([item if local is None else str(local)]))
    return out


def _as_location(item: Source) -> Source:
    """A path or a URL as the batch keeps it: a ``Path``, or a URL's canonical ``str``."""
    if isinstance(item, str) and remote.is_url(item):
        local = remote.local_path(item)
        return local if local is not None else remote.resolve(item)
    return Path(item)


def _check_backend(backend: str, address: str | None, workers: int, locations: list[Source]) -> None:
    """Refuse an unknown backend, ``address`` without Ray, and in-process URLs with several processes."""
    if workers < 1:
        raise FaceClipError(f"--workers {workers}: must be at least 1")
    if backend not in BACKENDS:
        raise FaceClipError(f"--backend {backend}: use one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise FaceClipError("--address needs --backend ray", hint="add --backend ray, or drop --address")
    if backend == "ray" or workers > 1:
        for loc in locations:
            scheme = str(loc).split("://", 1)[0] if isinstance(loc, str) else ""
            if scheme in remote.PROCESS_LOCAL_PROTOCOLS:
                raise FaceClipError(f"{loc}: {scheme}:// files live in this process only; worker processes "
                                    "cannot see them", hint="use --backend local --workers 1 (the default)")


def run_batch(paths: list[Source], out_dir: Target, options: ReconstructOptions, *, workers: int = 1,
              resume: bool = False, show_progress: bool = True,
              on_report: Callable[[ImageReport], None] | None = None, backend: str = "local",
              address: str | None = None) -> list[ImageReport]:
    """Reconstruct ``paths`` into ``out_dir``; see the module docstring.

    Args:
        paths: photos (local paths, or URLs as ``str``), in the order that decides their folder names.
        out_dir: output folder, a local path or a URL (checked and created before any model is loaded).
        options: reconstruction options (checked first).
        workers: processes, or Ray actors with ``backend="ray"`` (local backend, 1: this process).
        resume: skip photos the manifest lists as done; redo the rest.
        show_progress: a progress bar on stderr.
        on_report: called in this process with each photo's report as it completes.
        backend: ``"local"`` or ``"ray"`` (:data:`BACKENDS`).
        address: with ``backend="ray"``, the cluster to use (``HEAD:6379``, ``auto``); None:
            the Ray connection this process already has, or a new local Ray instance.

    Returns:
        One :class:`ImageReport` per photo, in input order.
    """
    check_options(options)
    sources = [_as_location(p) for p in paths]
    out = _as_location(out_dir)
    _check_backend(backend, address, workers, [*sources, out])
    if backend == "ray":
        from faceclip.distributed import check_ray

        check_ray(address)
    run = functools.partial(_run_locked, sources, options=options, workers=workers, resume=resume,
                            show_progress=show_progress, on_report=on_report, backend=backend, address=address)
    if isinstance(out, str):
        out = remote.check_output_url(out)
        log.warning("%s: no run lock at a URL; make sure no other run writes there", out)
        return run(out, locked=False)
    out = check_output_root(out)
    with RunLock(out) as lock:
        return run(out, locked=lock.held)


def _folder(out: Target, name: str) -> Target:
    return remote.join(out, name) if isinstance(out, str) else out / name


def _run_locked(sources: list[Source], out_dir: Target, *, options: ReconstructOptions, workers: int, resume: bool,
                show_progress: bool, on_report, backend: str, address: str | None, locked: bool) -> list[ImageReport]:
    from tqdm import tqdm

    if isinstance(out_dir, Path):
        for stale in clean_stale_temporaries(out_dir, any_pid=locked):
            log.info("removed %s, left by an interrupted run", stale)
    _check_manifest_is_ours(out_dir, options.outputs.overwrite)
    earlier = read_manifest(out_dir)
    batch_keys = {_key(p) for p in sources}
    # Photos of earlier runs that are not in this batch keep their lines (and their folders
    # stay theirs); this batch's photos get this run's lines (or, resuming, their earlier ones).
    keep: dict[str, list[dict]] = {k: v for k, v in earlier.items() if k not in batch_keys}
    taken = {str(rec["folder"]) for lines in keep.values() for rec in lines if rec.get("folder")}
    bases = plan_output_names(sources, taken)
    if not resume:
        earlier = {}
    reports: list[ImageReport | None] = [None] * len(sources)
    todo: list[int] = []
    sha = options_sha(options)
    for i, p in enumerate(sources):
        done = _done_faces(earlier.get(_key(p), []), out_dir, sha)
        if done is None:
            todo.append(i)
            continue
        keep[_key(p)] = done
        faces = [FaceOutput(p, int(rec["face_index"]), _folder(out_dir, rec["folder"]), [],
                            float(rec["landmark_nme"]), dict(rec.get("seconds", {}))) for rec in done]
        reports[i] = ImageReport(p, faces=faces, skipped=True)
    manifest = (_RemoteManifest if isinstance(out_dir, str) else _Manifest)(out_dir, keep, options)
    bar = tqdm(total=len(sources), initial=len(sources) - len(todo), desc="reconstruct", unit="image",
               disable=None if show_progress else True)

    def finish(i: int, report: ImageReport) -> None:
        reports[i] = report
        manifest.add(report)
        if on_report is not None:
            on_report(report)
        bar.update(1)

    tasks: list[_Task] = [(i, sources[i], out_dir, bases[i]) for i in todo]
    try:
        if tasks and backend == "ray":
            _run_ray(options, tasks, workers, address, finish)
        elif tasks and (workers == 1 or len(tasks) == 1):
            _run_here(options, tasks, finish)
        elif tasks:
            _run_pool(options, tasks, workers, finish)
    finally:
        bar.close()
        manifest.close()
    return [r for r in reports if r is not None]


def reconstruct_batch(inputs: Iterable[Source], out_dir: Target, options: ReconstructOptions | None = None,
                      show_progress: bool = True, workers: int = 1, resume: bool = False, backend: str = "local",
                      address: str | None = None) -> list[ImageReport]:
    """Reconstruct many photos; one failing photo never stops the others.

    :func:`run_batch` with default options. Returns one :class:`ImageReport` per input, in
    input order (``error`` set for failures).
    """
    return run_batch(list(inputs), out_dir, options or ReconstructOptions(), workers=workers,
                     resume=resume, show_progress=show_progress, backend=backend, address=address)
