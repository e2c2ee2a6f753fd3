"""Sliding jaw-contour landmarks.

A detector's jaw landmarks (0-16) lie on the face's *silhouette*, which slides over the 3D
surface as the head turns: at 40 degrees of yaw the far-side contour runs over the cheek, not
the jaw. Fixed model vertices would pull the jaw toward the cheek. Following the "landmark
marching" idea of 3DDFA / Zhu et al. 2015, each upper-jaw landmark owns a horizontal band of
candidate vertices on the mean face (same height, same side, from the nose wing out to the
landmark); at every fitting step the candidate that lies furthest outward in the image (the
silhouette point of that band) stands in for the landmark. The chin landmarks (6-10) stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.render.camera import PerspectiveCamera

SLIDING = tuple(range(0, 6)) + tuple(range(11, 17))


@dataclass
class ContourBands:
    """Candidate vertices of the sliding landmarks.

    Attributes:
        landmark_ids: (K,) which of the 68 landmarks slide.
        candidates: (K, M) vertex indices, padded by repeating the landmark's own vertex.
        side: (K,) +1 for the subject's left (landmarks 9-16, model +X), -1 for the right.
    """

    landmark_ids: Tensor
    candidates: Tensor
    side: Tensor

    def to(self, device) -> "ContourBands":
        return ContourBands(self.landmark_ids.to(device), self.candidates.to(device), self.side.to(device))


def build_contour_bands(model: FaceModel, half_height_mm: float = 3.0, margin_mm: float = 3.0) -> ContourBands:
    """Bands of candidate vertices for the sliding jaw landmarks of ``model``."""
    v = model.mean_mm.detach().cpu().numpy()
    lm = model.landmarks68.cpu().numpy()
    face = model.regions["face"].cpu().numpy()
    nose_half_width = 0.5 * abs(v[lm[35], 0] - v[lm[31], 0])
    rows, sides = [], []
    for k in SLIDING:
        p = v[lm[k]]
        side = 1.0 if p[0] > 0 else -1.0
        q = v[face]
        sel = (
            (np.abs(q[:, 1] - p[1]) <= half_height_mm)
            & (q[:, 0] * side >= nose_half_width)
            & (q[:, 0] * side <= abs(p[0]) + margin_mm)
            & (q[:, 2] >= p[2] - margin_mm)
        )
        rows.append(np.unique(np.concatenate([[lm[k]], face[sel]])))
        sides.append(side)
    m = max(len(r) for r in rows)
    cand = np.stack([np.concatenate([r, np.full(m - len(r), r[0])]) for r in rows])
    return ContourBands(torch.tensor(SLIDING), torch.from_numpy(cand.astype(np.int64)),
                        torch.tensor(sides, dtype=torch.float32))


@torch.no_grad()
def select_contour_vertices(bands: ContourBands, vertices_mm: Tensor, camera: PerspectiveCamera,
                            rows: Tensor | None = None) -> Tensor:
    """Pick, per batch element and sliding landmark, the outermost candidate in the image.

    Args:
        vertices_mm: (B, V, 3) model-space vertices, or (B, N, 3) rows of a vertex subset.
        camera: B cameras (including the head pose).
        rows: (V_full,) map from vertex index to row of ``vertices_mm`` when it is a subset.

    Returns:
        (B, K) chosen vertex indices (of the full mesh).
    """
    B = vertices_mm.shape[0]
    K, M = bands.candidates.shape
    flat = bands.candidates.reshape(-1)
    pts = vertices_mm[:, flat if rows is None else rows[flat]]  # (B, K*M, 3)
    xy = camera.project(pts).reshape(B, K, M, 2)
    # Image direction of the model's +X axis (the subject's left) at the head centre.
    centre = vertices_mm.mean(1, keepdim=True)  # (B, 1, 3)
    x_end = centre + torch.tensor([10.0, 0.0, 0.0], dtype=centre.dtype, device=centre.device)
    ends = camera.project(torch.cat([centre, x_end], 1))  # (B, 2, 2)
    d = ends[:, 1] - ends[:, 0]
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)  # (B, 2)
    score = (xy * d[:, None, None, :]).sum(-1) * bands.side.view(1, K, 1)  # (B, K, M)
    best = score.argmax(-1)  # (B, K)
    return bands.candidates.unsqueeze(0).expand(B, -1, -1).gather(2, best.unsqueeze(-1)).squeeze(-1)


def landmark_vertex_ids(model: FaceModel, bands: ContourBands | None, vertices_mm: Tensor,
                        camera: PerspectiveCamera, rows: Tensor | None = None) -> Tensor:
    """(B, 68) vertex index per landmark, with the sliding contour resolved (or fixed if None).

    ``vertices_mm`` may be a vertex subset addressed through ``rows`` (see
    :func:`select_contour_vertices`); the returned indices are full-mesh indices.
    """
    B = vertices_mm.shape[0]
    ids = model.landmarks68.to(vertices_mm.device).unsqueeze(0).expand(B, -1).clone()
    if bands is not None:
        ids[:, bands.landmark_ids] = select_contour_vertices(bands, vertices_mm, camera, rows)
    return ids
