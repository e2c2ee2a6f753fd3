"""Landmark files: the JSON record per image, overlay PNGs, atomic writes, batch output names.

This is the library side of ``faceclip landmarks``; the CLI only loops, shows progress and
prints. The JSON record of one image is::

    {"image": PATH, "width": W, "height": H,
     "faces": [{"box": [x0, y0, x1, y1], "score": S, "landmarks68": [[x, y], ... 68 pairs]}]}

in original-image pixels (x right, y down, origin at the image's top-left corner, pixel
centres at +0.5), faces largest first.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceclip.detect.detector import DEFAULT_MAX_SIDE_PX
from faceclip.detect.frontend import DetectorChoice, LandmarkChoice, detect_and_landmark
from faceclip.detect.overlay import draw_faces
from faceclip.detect.types import Face
from faceclip.errors import InputError
from faceclip.io.images import DEFAULT_MAX_PIXELS, read_image

__all__ = [
    "LandmarksOptions",
    "landmarks_record",
    "plan_landmark_outputs",
    "process_landmarks_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_png_atomic",
]


@dataclass(frozen=True)
class LandmarksOptions:
    """Settings of a landmarks run (see :func:`faceclip.detect.frontend.detect_and_landmark`).

    Attributes:
        detector, landmarks, upsample, threshold, max_side_px: passed to ``detect_and_landmark``.
        min_face_px: drop faces whose shorter box side is smaller (pixels).
        largest_only: keep only the largest face of each image.
        max_pixels: decompression-bomb guard of the image loader.
        landmark_net: a dense landmark network file: each face also gets the network's 68 +
            N points and sigmas (``network_points`` in its record), and its ``landmarks68``
            become the network's (see :mod:`faceclip.detect.landmark_net`).
    """

    detector: DetectorChoice = "auto"
    landmarks: LandmarkChoice = "mediapipe"
    upsample: int | None = None
    threshold: float = 0.0
    max_side_px: int | None = DEFAULT_MAX_SIDE_PX
    min_face_px: float = 0.0
    largest_only: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    landmark_net: str | None = None


def landmarks_record(image: str | Path, width: int, height: int, faces: list[Face]) -> dict[str, Any]:
    """The JSON-ready record of one image (format in the module docstring)."""
    return {"image": str(image), "width": int(width), "height": int(height), "faces": [f.to_dict() for f in faces]}


def process_landmarks_file(
    path: str | Path,
    options: LandmarksOptions | None = None,
    *,
    json_path: Path | None = None,
    overlay_path: Path | None = None,
) -> dict[str, Any]:
    """Load one image, detect faces and landmarks, write the requested outputs.

    Outputs are written atomically (a temporary file renamed into place), so a failure
    never leaves a partial file.

    Returns:
        The image's JSON record.

    Raises:
        InputError: the image cannot be read (message names the file).
        ModelNotInstalledError: dlib or its model files are missing.
    """
    opts = options or LandmarksOptions()
    img = read_image(path, max_pixels=opts.max_pixels)
    faces = detect_and_landmark(img.rgb, opts.detector, opts.landmarks, upsample=opts.upsample,
                                threshold=opts.threshold, max_side_px=opts.max_side_px)
    faces = [f for f in faces if f.size_px >= opts.min_face_px]
    if opts.largest_only:
        faces = faces[:1]
    if opts.landmark_net:
        faces = [_with_network_points(img.rgb, f, opts.landmark_net) for f in faces]
    record = landmarks_record(path, img.width, img.height, faces)
    if overlay_path is not None:
        write_png_atomic(overlay_path, draw_faces(img.rgb, faces))
    if json_path is not None:
        write_json_atomic(json_path, record)
    return record


_LANDMARKERS: dict[str, Any] = {}


def _with_network_points(rgb: np.ndarray, face: Face, net_path: str) -> Face:
    """The face with the dense landmark network's points (its 68 replace the front-end's)."""
    from dataclasses import replace

    from faceclip.detect.landmark_net import DenseLandmarker

    if face.landmarks is None:
        return face
    if net_path not in _LANDMARKERS:
        _LANDMARKERS.clear()
        _LANDMARKERS[net_path] = DenseLandmarker(net_path)
    pts = _LANDMARKERS[net_path].predict(rgb, face.landmarks)
    return replace(face, landmarks=pts.landmarks68, extra={**face.extra, "network_points": pts})


def plan_landmark_outputs(
    images: list[Path], json_out: Path | None, overlay_dir: Path | None
) -> list[tuple[Path | None, Path | None]]:
    """Output paths ``(json_path, overlay_path)`` for each image, decided before any work.

    ``json_out`` ending in ``.json`` names the file of a single image; otherwise it is a
    folder receiving ``<stem>.json`` per image. Overlays go to
    ``<overlay_dir>/<stem>_landmarks.png``. Images sharing a stem get ``-2``, ``-3``...
    suffixes in input order; names are made safe (no ``.``/``..``, separators or control
    characters).

    Raises:
        InputError: a ``.json`` file was given for several images, or an output path
            would overwrite one of the input images.
    """
    single_json = json_out is not None and json_out.suffix.lower() == ".json" and not json_out.is_dir()
    if single_json and len(images) != 1:
        raise InputError(
            f"--json {json_out}: a single .json file can only hold one image, got {len(images)} images",
            hint="give a folder instead (one <name>.json per image)",
        )
    stems = _unique_stems(images)
    plan: list[tuple[Path | None, Path | None]] = []
    for stem in stems:
        jp = None if json_out is None else (json_out if single_json else json_out / f"{stem}.json")
        op = None if overlay_dir is None else overlay_dir / f"{stem}_landmarks.png"
        plan.append((jp, op))
    inputs = {_real(p) for p in images}
    for out in (p for pair in plan for p in pair if p is not None):
        if _real(out) in inputs:
            raise InputError(f"output {out} would overwrite an input image", hint="choose another output folder")
    return plan


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    from faceclip.io.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Serialise ``obj`` as JSON (fully, before touching the disk) and write it atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def write_png_atomic(path: Path, rgb: np.ndarray) -> Path:
    """Encode an ``(H, W, 3)`` uint8 RGB array as PNG and write it atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def _real(path: Path) -> str:
    """Canonical path for comparisons; never raises (a symbolic-link loop stays as given)."""
    return os.path.realpath(os.path.abspath(path))


def _unique_stems(images: list[Path]) -> list[str]:
    """Safe, unique output stems in input order (see :mod:`faceclip.io.outputs`)."""
    from faceclip.io.outputs import NameAllocator

    names = NameAllocator()
    return [names.claim(Path(p).stem) for p in images]
