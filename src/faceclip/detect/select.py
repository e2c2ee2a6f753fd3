"""Which detected faces to reconstruct: one rule for every command.

Weak detections are dropped when a confident face exists, faces below a minimum size are
ignored, and the largest face is kept (or every face with ``all_faces``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faceclip.detect.types import Face
from faceclip.errors import InputError

__all__ = ["FacePolicy", "NoFaceError", "is_confident", "select_faces"]


class NoFaceError(InputError):
    """No face (or none that the policy accepts) was found in an image.

    ``reason``: ``"no_face"`` (nothing detected) or ``"too_small"`` (faces below the policy's
    minimum size).
    """

    def __init__(self, message: str, hint: str | None = None, reason: str = "no_face") -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


@dataclass(frozen=True)
class FacePolicy:
    """Face selection policy.

    Attributes:
        all_faces: keep every face that passes the size limit (CLI ``--all-faces``);
            otherwise only the largest.
        min_face_px: ignore faces whose shorter box side is below this (pixels). Faces
            much smaller than the 224-pixel crop give blurry, unreliable reconstructions.
        min_score: dlib HOG margin below which a face found by HOG alone counts as weak; weak
            faces are dropped when the image holds a confident one (a face-like badge next to a
            real face). MediaPipe's faces (confidence >= 0.5) are always confident.
    """

    all_faces: bool = False
    min_face_px: float = 32.0
    min_score: float = 0.3


def is_confident(face: Face, min_score: float) -> bool:
    """A face found by MediaPipe, or by a dlib detector with at least ``min_score``."""
    return "mediapipe" in face.detector or face.score >= min_score


def select_faces(faces: list[Face], policy: FacePolicy | None = None, *, source: str | Path = "image") -> list[Face]:
    """Apply a :class:`FacePolicy` to detected faces.

    Args:
        faces: detections (any order).
        policy: the policy (default: largest face of at least 32 px).
        source: image name for error messages.

    Returns:
        The selected faces, largest first (one face unless ``policy.all_faces``).

    Raises:
        NoFaceError: no face, or none as large as ``policy.min_face_px``.
    """
    policy = policy or FacePolicy()
    if not faces:
        raise NoFaceError(
            f"{source}: no face found",
            hint="the detectors find faces from about 40 px across; for strongly turned faces try --detector cnn",
        )
    confident = [f for f in faces if is_confident(f, policy.min_score)]
    faces = confident or faces
    kept = sorted((f for f in faces if f.size_px >= policy.min_face_px), key=lambda f: (-f.area, -f.score))
    if not kept:
        largest = max(f.size_px for f in faces)
        raise NoFaceError(
            f"{source}: {len(faces)} face(s) found, the largest is {largest:.0f} px, below the minimum of "
            f"{policy.min_face_px:.0f} px",
            hint="lower the minimum face size (--min-face-px) or use a larger photo",
            reason="too_small",
        )
    return kept if policy.all_faces else kept[:1]
