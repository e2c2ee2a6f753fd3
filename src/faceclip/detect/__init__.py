"""Faces in: detection, 68 landmarks, alignment to a square crop (with its exact inverse), skin mask.

Typical use (images from :func:`faceclip.io.images.load_image`, ``(H, W, 3)`` uint8 RGB)::

    from faceclip.io.images import load_image
    from faceclip.detect import detect_faces, select_faces, align_face, skin_mask

    rgb = load_image("photo.jpg")
    face = select_faces(detect_faces(rgb))[0]          # largest face, NoFaceError if none
    aligned = align_face(rgb, face.landmarks)          # 224 x 224 crop + transform
    mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)
    back = aligned.transform.crop_to_image(aligned.landmarks)   # == face.landmarks

Coordinates everywhere: pixels, x right, y down, origin at the top-left corner, pixel
centres at +0.5. dlib is imported only when a detector is first used.
"""

from __future__ import annotations

from faceclip.detect.align import (
    DEFAULT_CROP_PX,
    FIVE_POINT_TEMPLATE,
    AlignedFace,
    SimilarityTransform,
    align_face,
    estimate_similarity,
    five_points_from_68,
    warp_to_crop,
)
from faceclip.detect.detector import detect_boxes, detect_faces, predict_landmarks
from faceclip.detect.overlay import draw_faces
from faceclip.detect.select import FacePolicy, NoFaceError, select_faces
from faceclip.detect.skin import face_region_mask, skin_mask
from faceclip.detect.types import LANDMARK_GROUPS_68, Face

__all__ = [
    "DEFAULT_CROP_PX",
    "FIVE_POINT_TEMPLATE",
    "LANDMARK_GROUPS_68",
    "AlignedFace",
    "Face",
    "FacePolicy",
    "NoFaceError",
    "SimilarityTransform",
    "align_face",
    "detect_boxes",
    "detect_faces",
    "draw_faces",
    "estimate_similarity",
    "face_region_mask",
    "five_points_from_68",
    "predict_landmarks",
    "select_faces",
    "skin_mask",
    "warp_to_crop",
]
