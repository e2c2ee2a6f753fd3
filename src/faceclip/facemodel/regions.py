"""Named vertex regions derived from the 68 landmarks of a model's mean shape.

Neither ICT-FaceKit nor BFM ships nose / forehead / cheek masks, so they are derived once, at
conversion time, from the frontal (x, y) projection of the mean shape (mm, +Y up, +Z toward the
viewer) and the iBUG-68 landmark positions:

- ``nose``: inside the polygon through the inner eye corners (39, 42), the nose-wing landmarks
  (35, 33, 31) pushed out by 4 mm, and the bridge (27);
- ``mouth``: inside the outer lip contour (48-59), dilated by 3 mm;
- ``eyes`` (surface part): inside each eye contour (36-41, 42-47), dilated by 3 mm;
- ``forehead``: above the eyebrows (highest brow landmark + 8 mm), between the outer eye corners'
  x extended by 15 mm;
- ``cheek_left`` / ``cheek_right``: between the lower eyelid and the mouth-corner height,
  lateral of the nose and mouth regions, inside the jaw contour;
- ``skin``: the given face area minus eyes and mouth interior (lips are kept: they are skin for
  a photometric loss, coloured differently, which the albedo handles).

Only front-facing vertices (normal z > 0 is approximated by z above the face's median z) of the
face area are considered, so the back of the head never enters a frontal region.
"""

from __future__ import annotations

import numpy as np


def inside_polygon(points_xy: np.ndarray, polygon_xy: np.ndarray) -> np.ndarray:
    """(N, 2) points, (P, 2) closed polygon -> (N,) bool, even-odd rule."""
    x, y = points_xy[:, 0:1], points_xy[:, 1:2]
    px, py = polygon_xy[:, 0][None], polygon_xy[:, 1][None]
    qx, qy = np.roll(polygon_xy[:, 0], -1)[None], np.roll(polygon_xy[:, 1], -1)[None]
    crosses = (py > y) != (qy > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = px + (y - py) * (qx - px) / (qy - py)
    return ((crosses & (x < x_at)).sum(axis=1) % 2) == 1


def _dist_to_polygon(points_xy: np.ndarray, polygon_xy: np.ndarray) -> np.ndarray:
    """(N, 2), (P, 2) -> (N,) distance to the closed polygon's boundary."""
    a = polygon_xy[None]  # (1, P, 2)
    b = np.roll(polygon_xy, -1, axis=0)[None]
    p = points_xy[:, None]  # (N, 1, 2)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1).min(axis=1)


def _in_dilated(points_xy: np.ndarray, polygon_xy: np.ndarray, radius_mm: float) -> np.ndarray:
    return inside_polygon(points_xy, polygon_xy) | (_dist_to_polygon(points_xy, polygon_xy) <= radius_mm)


def derive_regions(
    mean_mm: np.ndarray,
    landmarks68: np.ndarray,
    face_vertices: np.ndarray,
    eye_geometry: np.ndarray | None = None,
    mouth_interior: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Derive named regions.

    Args:
        mean_mm: (V, 3) mean shape in mm (+Y up, +Z toward viewer).
        landmarks68: (68,) vertex indices.
        face_vertices: (N,) indices of the face surface area (candidates for all surface regions).
        eye_geometry: indices of separate eye geometry (eyeballs, sockets...), added to ``eyes``.
        mouth_interior: indices of mouth-interior geometry (socket, gums, teeth, tongue).

    Returns:
        name -> sorted int64 vertex indices: face, skin, eyes, mouth_interior, nose, mouth,
        forehead, cheek_left, cheek_right, cheeks.
    """
    face_vertices = np.unique(face_vertices.astype(np.int64))
    lm = mean_mm[landmarks68]  # (68, 3)
    lm2 = lm[:, :2]
    pts = mean_mm[face_vertices, :2]
    # Frontal half: vertices in front of the ears' depth (landmark 0/16 z) minus a margin.
    front = mean_mm[face_vertices, 2] > min(lm[0, 2], lm[16, 2]) - 10.0

    def sel(mask: np.ndarray) -> np.ndarray:
        return face_vertices[mask & front]

    eye_r = _in_dilated(pts, lm2[36:42], 3.0)
    eye_l = _in_dilated(pts, lm2[42:48], 3.0)
    mouth = _in_dilated(pts, lm2[48:60], 3.0)
    inner_mouth = inside_polygon(pts, lm2[60:68])
    nose_center_x = lm2[30, 0]
    wings = lm2[[35, 33, 31]].copy()
    wings[0, 0] += 4.0 * np.sign(wings[0, 0] - nose_center_x)
    wings[2, 0] += 4.0 * np.sign(wings[2, 0] - nose_center_x)
    wings[:, 1] -= 2.0
    nose_poly = np.vstack([lm2[[39]], lm2[[27]], lm2[[42]], wings])
    nose = _in_dilated(pts, nose_poly, 1.0)

    brow_top = lm2[17:27, 1].max()
    x_lo = min(lm2[36, 0], lm2[45, 0]) - 15.0
    x_hi = max(lm2[36, 0], lm2[45, 0]) + 15.0
    forehead = (pts[:, 1] > brow_top + 8.0) & (pts[:, 0] > x_lo) & (pts[:, 0] < x_hi)

    eye_low = min(lm2[[40, 41, 46, 47], 1])
    mouth_corner_y = lm2[[48, 54], 1].mean()
    jaw = inside_polygon(pts, np.vstack([lm2[0:17], lm2[[26, 17]]]))
    band = (pts[:, 1] < eye_low - 4.0) & (pts[:, 1] > mouth_corner_y - 5.0) & jaw
    lateral = ~nose & ~mouth & ~eye_r & ~eye_l
    # Subject's left is +X (landmarks 42-47 are the subject's left eye).
    x_mid = lm2[[27, 30, 33, 51, 57, 8], 0].mean()
    x_nose_r = lm2[31, 0] - 6.0 * np.sign(lm2[35, 0] - lm2[31, 0])
    x_nose_l = lm2[35, 0] + 6.0 * np.sign(lm2[35, 0] - lm2[31, 0])
    left_sign = np.sign(lm2[45, 0] - x_mid)
    cheek_l = band & lateral & ((pts[:, 0] - x_nose_l) * left_sign > 0)
    cheek_r = band & lateral & ((pts[:, 0] - x_nose_r) * -left_sign > 0)

    eyes = np.concatenate([sel(eye_r | eye_l), np.asarray(eye_geometry if eye_geometry is not None else [], np.int64)])
    mouth_int = np.concatenate(
        [sel(inner_mouth), np.asarray(mouth_interior if mouth_interior is not None else [], np.int64)]
    )
    skin_mask = ~eye_r & ~eye_l & ~inner_mouth
    regions = {
        "face": face_vertices,
        "skin": sel(skin_mask),
        "eyes": eyes,
        "mouth_interior": mouth_int,
        "nose": sel(nose),
        "mouth": sel(mouth),
        "forehead": sel(forehead),
        "cheek_left": sel(cheek_l),
        "cheek_right": sel(cheek_r),
        "cheeks": sel(cheek_l | cheek_r),
    }
    return {k: np.unique(v.astype(np.int64)) for k, v in regions.items()}
