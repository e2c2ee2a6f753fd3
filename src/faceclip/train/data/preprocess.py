"""Photo preprocessing: :func:`preprocess_folder` walks a folder of photos once and writes a face
cache (aligned crops, landmarks, skin masks; ``manifest.json``, ``failures.tsv``), with its
options, report and failure types, and :func:`read_manifest`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceclip.errors import InputError

log = logging.getLogger(__name__)

CACHE_FORMAT = "faceclip-face-cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.tsv"
FACES_DIR = "faces"
BUILD_HINT = "build it with: faceclip prepare-data PHOTOS --out CACHE  (Python: faceclip.train.data.preprocess_folder)"
_FLUSH_EVERY = 25  # manifest is rewritten after this many processed images (a killed run keeps its work)


# =========================================================================== photos: preprocessing


@dataclass(frozen=True)
class PreprocessFailure:
    """A file that gave no face: ``reason`` is ``unreadable``, ``no_face``, ``too_small`` or ``error``."""

    path: str
    reason: str
    message: str


@dataclass
class PreprocessReport:
    """What :func:`preprocess_folder` did.

    Attributes:
        cache_dir: the cache.
        n_images: image files found under the source folder.
        n_processed: files processed by this run (new, changed, or processed with other options).
        n_skipped: files already in the cache, unchanged (not processed again).
        n_faces: faces in the cache after the run.
        n_new_faces: faces written by this run.
        failures: every file of the source that has no face in the cache, with its reason
            (also in ``cache_dir/failures.tsv``).
        seconds: wall time of the run.
        seconds_processing: time spent on the processed files (load, detect, align, mask, write).
    """

    cache_dir: Path
    n_images: int = 0
    n_processed: int = 0
    n_skipped: int = 0
    n_faces: int = 0
    n_new_faces: int = 0
    failures: list[PreprocessFailure] = field(default_factory=list)
    seconds: float = 0.0
    seconds_processing: float = 0.0

    @property
    def ms_per_processed_image(self) -> float:
        """Mean processing time per processed file (ms), 0 if none was processed."""
        return 1000.0 * self.seconds_processing / self.n_processed if self.n_processed else 0.0


@dataclass(frozen=True)
class _Options:
    detector: str
    all_faces: bool
    min_face_px: float
    min_score: float
    crop_px: int
    cnn_fallback: bool
    landmarks: str = "mediapipe"

    def signature(self) -> str:
        from faceclip.detect.frontend import CNN_FALLBACK_MAX_SIDE_PX

        # The CNN fallback runs on a copy of bounded size (as in `faceclip reconstruct`): photos of
        # caches built when it ran at full size are processed again.
        fallback = ({"cnn_fallback_max_side_px": CNN_FALLBACK_MAX_SIDE_PX}
                    if self.detector == "hog" and self.cnn_fallback else {})
        return json.dumps({"version": CACHE_VERSION, **asdict(self), **fallback}, sort_keys=True)


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def preprocess_folder(
    src_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    detector: str = "auto",
    all_faces: bool = False,
    min_face_px: float = 32.0,
    min_score: float = 0.3,
    crop_px: int = 224,
    cnn_fallback: bool = False,
    progress: bool = True,
    landmarks: str = "mediapipe",
) -> PreprocessReport:
    """Detect, align and mask every face of a photo folder (recursively) into a training cache.

    Per photo: :func:`faceclip.io.images.load_image` (EXIF rotation, any format),
    :func:`faceclip.detect.frontend.faces_by_policy` (the faces ``faceclip reconstruct`` would
    take: ``detector`` and ``landmarks`` as there; weak detections below ``min_score`` dropped
    when a confident one exists; the largest face, or all faces of at least ``min_face_px``),
    :func:`faceclip.detect.align_face` to an ``crop_px`` crop and
    :func:`faceclip.detect.skin_mask`. Each face becomes ``cache_dir/faces/<key>_<k>.npz``
    (``crop`` uint8 (S, S, 3), ``landmarks`` float32 (68, 2) crop pixels, ``skin_mask`` and
    ``valid`` bool (S, S), ``image_to_crop`` (3, 3), ``box`` (4,), ``score``, ``source``,
    ``face_index``), written atomically. ``manifest.json`` records every file (size, mtime,
    options, faces or failure) and is rewritten every few files, so an interrupted run keeps
    its work; ``failures.tsv`` lists failures as ``path<TAB>reason<TAB>message``.

    A re-run skips files whose relative path, size, modification time and options are
    unchanged (failures included), processes the others, and forgets files that no longer
    exist (deleting their faces). One bad file never stops the run: it is logged and listed.

    Args:
        src_dir: folder of photos (any depth; files with an image suffix; ``cache_dir`` is
            skipped if it lies inside).
        cache_dir: the cache folder (created).
        detector: ``"auto"`` (MediaPipe + dlib HOG), ``"mediapipe"``, ``"hog"`` or ``"cnn"``
            (dlib's MMOD CNN; ~2 s per photo on a CPU).
        landmarks: ``"mediapipe"`` (68 points from the calibrated mesh map) or ``"dlib68"``.
        all_faces: keep every face of a photo, not only the largest.
        min_face_px: smaller faces (shorter box side, photo pixels) are not used.
        min_score: detections scoring below this are dropped when a stronger one exists.
        crop_px: crop side ``S``.
        cnn_fallback: try the CNN detector on photos where HOG finds nothing (slow).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`PreprocessReport`.

    Raises:
        InputError: ``src_dir`` is not a folder, or ``cache_dir`` was built from another
            folder or is not a face cache.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    src = Path(src_dir).expanduser().resolve()
    cache = Path(cache_dir).expanduser().resolve()
    if not src.is_dir():
        raise InputError(f"{src_dir}: not a folder of photos")
    from faceclip.detect.frontend import DETECTORS, LANDMARKERS

    if detector not in DETECTORS:
        raise InputError(f"unknown face detector {detector!r}", hint="use one of: " + ", ".join(DETECTORS))
    if landmarks not in LANDMARKERS:
        raise InputError(f"unknown landmarks {landmarks!r}", hint="use one of: " + ", ".join(LANDMARKERS))
    opts = _Options(detector, bool(all_faces), float(min_face_px), float(min_score), int(crop_px), bool(cnn_fallback),
                    landmarks)
    sig = opts.signature()
    manifest = _open_manifest(cache, src, crop_px)
    entries: dict[str, dict[str, Any]] = manifest["images"]
    files = _walk_images(src, exclude=cache)
    report = PreprocessReport(cache_dir=cache, n_images=len(files))

    rels = {f.relative_to(src).as_posix(): f for f in files}
    for gone in sorted(set(entries) - set(rels)):
        _remove_faces(cache, entries.pop(gone).get("faces", []))

    todo = []
    for rel, path in rels.items():
        try:
            st = path.stat()
        except OSError:  # vanished since the walk: processing reports it as unreadable
            todo.append((rel, path, None))
            continue
        e = entries.get(rel)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns and e.get("options") == sig \
                and all((cache / name).is_file() for name in e.get("faces", [])):
            report.n_skipped += 1
        else:
            todo.append((rel, path, st))

    dirty = 0
    try:
        for rel, path, st in tqdm(todo, desc="prepare-data", unit="image", disable=not progress):
            t0 = time.perf_counter()
            old_faces = set(entries.get(rel, {}).get("faces", []))
            entry: dict[str, Any] = {"size": st.st_size if st else -1, "mtime_ns": st.st_mtime_ns if st else -1,
                                     "options": sig}
            try:
                names = _process_image(path, rel, cache, opts)
                entry.update(status="ok", faces=names)
                report.n_new_faces += len(names)
            except _Failed as exc:
                entry.update(status="failed", reason=exc.reason, message=exc.message, faces=[])
                log.info("%s: skipped (%s): %s", rel, exc.reason, exc.message)
            except Exception as exc:  # one bad file never stops the run
                log.debug("%s: unexpected failure", rel, exc_info=True)
                entry.update(status="failed", reason="error", message=f"{type(exc).__name__}: {exc}", faces=[])
                log.warning("%s: skipped (error): %s: %s", rel, type(exc).__name__, exc)
            _remove_faces(cache, sorted(old_faces - set(entry["faces"])))
            entries[rel] = entry
            report.n_processed += 1
            report.seconds_processing += time.perf_counter() - t0
            dirty += 1
            if dirty >= _FLUSH_EVERY:
                _write_manifest(cache, manifest)
                dirty = 0
    finally:
        _write_manifest(cache, manifest)
        _write_failures(cache, entries)

    report.n_faces = sum(len(e.get("faces", [])) for e in entries.values())
    report.failures = _failures_of(entries)
    report.seconds = time.perf_counter() - t_start
    log.info("prepare-data %s: %d images (%d processed, %d unchanged), %d faces in the cache, %d failures",
             src, report.n_images, report.n_processed, report.n_skipped, report.n_faces, len(report.failures))
    return report


def _process_image(path: Path, rel: str, cache: Path, opts: _Options) -> list[str]:
    """Detect, align and mask the faces of one photo; write their npz files; return their names."""
    from faceclip.detect import FacePolicy, NoFaceError, align_face, skin_mask
    from faceclip.detect.frontend import faces_by_policy
    from faceclip.io.images import load_image
    from faceclip.io.files import atomic_path

    try:
        rgb = load_image(path)
    except InputError as exc:
        raise _Failed("unreadable", exc.message) from exc
    policy = FacePolicy(all_faces=opts.all_faces, min_face_px=opts.min_face_px, min_score=opts.min_score)
    try:  # the faces `faceclip reconstruct` would take from this photo (the same rule)
        selected = faces_by_policy(rgb, policy, opts.detector, opts.landmarks, source=rel,  # type: ignore[arg-type]
                                   cnn_fallback=opts.cnn_fallback)
    except NoFaceError as exc:
        raise _Failed(exc.reason, "no face found" if exc.reason == "no_face" else exc.message) from exc
    key = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:16]
    names = []
    for k, face in enumerate(selected):
        aligned = align_face(rgb, face.landmarks, size_px=opts.crop_px)
        mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)
        name = f"{FACES_DIR}/{key}_{k}.npz"
        with atomic_path(cache / name) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, crop=aligned.crop, landmarks=aligned.landmarks.astype(np.float32), skin_mask=mask,
                valid=aligned.valid, image_to_crop=aligned.transform.matrix, box=face.box,
                score=np.float64(face.score), source=np.str_(rel), face_index=np.int64(k))
        names.append(name)
    return names


def _walk_images(src: Path, exclude: Path) -> list[Path]:
    from faceclip.io.images import IMAGE_SUFFIXES

    out = []
    for root, dirs, names in os.walk(src):
        r = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (r / d).resolve() != exclude)
        out.extend(r / n for n in sorted(names) if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES)
    return out


def _open_manifest(cache: Path, src: Path, crop_px: int) -> dict[str, Any]:
    path = cache / MANIFEST_NAME
    if not path.exists():
        if cache.exists() and not cache.is_dir():
            raise InputError(f"{cache}: exists and is not a folder")
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": str(src), "crop_px": crop_px, "images": {}}
    manifest = read_manifest(cache)
    if manifest.get("source") != str(src):
        raise InputError(f"{cache}: this cache was built from {manifest.get('source')}, not {src}",
                         hint="use a separate cache folder per photo folder")
    if manifest.get("crop_px") != crop_px:
        raise InputError(f"{cache}: this cache holds {manifest.get('crop_px')} px crops, not {crop_px} px",
                         hint="use a separate cache folder per crop size")
    return manifest


def read_manifest(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of a face cache.

    Raises:
        InputError: the folder or manifest is missing, unreadable or not a face cache.
    """
    cache = Path(cache_dir)
    path = cache / MANIFEST_NAME
    if not cache.is_dir():
        raise InputError(f"{cache_dir}: no such face cache", hint=BUILD_HINT)
    if not path.is_file():
        raise InputError(f"{cache_dir}: not a face cache (no {MANIFEST_NAME})", hint=BUILD_HINT)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})", hint="delete the cache folder and " + BUILD_HINT[0].lower()
                         + BUILD_HINT[1:]) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or "images" not in manifest:
        raise InputError(f"{path}: not a FaceCLIP face-cache manifest", hint=BUILD_HINT)
    if manifest.get("version") != CACHE_VERSION:
        raise InputError(f"{path}: face-cache version {manifest.get('version')}, this FaceCLIP reads {CACHE_VERSION}",
                         hint="build the cache again into a new folder")
    return manifest


def _write_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    from faceclip.io.files import atomic_path

    with atomic_path(cache / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _failures_of(entries: dict[str, dict[str, Any]]) -> list[PreprocessFailure]:
    return [PreprocessFailure(rel, e.get("reason", "error"), e.get("message", ""))
            for rel, e in sorted(entries.items()) if e.get("status") != "ok"]


def _write_failures(cache: Path, entries: dict[str, dict[str, Any]]) -> None:
    from faceclip.io.files import atomic_path

    lines = ["path\treason\tmessage"]
    for f in _failures_of(entries):
        lines.append("\t".join([f.path, f.reason, " ".join(f.message.split())]))
    with atomic_path(cache / FAILURES_NAME) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _remove_faces(cache: Path, names: Sequence[str]) -> None:
    for name in names:
        try:
            (cache / name).unlink()
        except FileNotFoundError:
            pass
