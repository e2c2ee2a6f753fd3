"""Quick-look images of a face model: shaded front and side views of the mean face and a few
expressions, tiled into one PNG so a person can check that a model is right.

This uses a small painter's-algorithm drawing (orthographic, flat Lambert shading) with Pillow,
independent of the differentiable renderer, so it works even where torch rendering is not set up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from faceclip.io.files import atomic_path

if TYPE_CHECKING:  # io sits below facemodel: the model is only a type here
    from faceclip.facemodel.base import FaceModel

DEFAULT_EXPRESSIONS = ("jawOpen", "mouthSmile_L+mouthSmile_R", "eyeBlink_L+eyeBlink_R", "browInnerUp_L+browInnerUp_R")


def rotation_y(angle_rad: float) -> np.ndarray:
    """(3, 3) rotation about +Y (positive turns the face toward its left, i.e. +X to -Z)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def draw_mesh(
    vertices_mm: np.ndarray,
    triangles: np.ndarray,
    size_px: int = 384,
    yaw_rad: float = 0.0,
    color=(0.78, 0.66, 0.58),
    vertex_colors: np.ndarray | None = None,
    background=(255, 255, 255),
    extent_mm: float | None = None,
) -> Image.Image:
    """Draw a mesh orthographically along -Z, flat-shaded with a light from the front-top.

    Args:
        vertices_mm: (V, 3); triangles: (F, 3); yaw_rad: turn of the head about +Y.
        vertex_colors: optional (V, 3) in [0, 1]; else a uniform ``color``.
        extent_mm: side of the square view in mm (default: fit the mesh with a margin).
    """
    v = np.asarray(vertices_mm, dtype=np.float64)
    v = (v - v.mean(axis=0)) @ rotation_y(yaw_rad).T
    f = np.asarray(triangles, dtype=np.int64)
    p = v[f]  # (F, 3, 3)
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    visible = n[:, 2] > 0
    light = np.array([0.0, 0.5, 1.0]) / np.linalg.norm([0.0, 0.5, 1.0])
    shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
    base = np.asarray(color)[None].repeat(len(f), 0) if vertex_colors is None \
        else np.asarray(vertex_colors)[f].mean(axis=1)
    rgb = np.clip(base * shade[:, None], 0, 1)
    ext = extent_mm or 1.1 * float(np.ptp(v[:, :2], axis=0).max())
    scale = size_px / ext
    xy = np.stack([size_px / 2 + p[..., 0] * scale, size_px / 2 - p[..., 1] * scale], axis=-1)
    order = np.argsort(p[:, :, 2].mean(axis=1))
    img = Image.new("RGB", (size_px, size_px), background)
    draw = ImageDraw.Draw(img)
    for t in order[visible[order]]:
        c = tuple(int(255 * x + 0.5) for x in rgb[t])
        draw.polygon([tuple(q) for q in xy[t]], fill=c, outline=c)
    return img


def _expression_coeffs(model: FaceModel, spec: str) -> torch.Tensor:
    coeffs = torch.zeros(1, model.n_expression)
    for name in spec.split("+"):
        coeffs[0, model.expression_index(name)] = 1.0
    return coeffs


def save_model_preview(model: FaceModel, out_path: Path, size_px: int = 384,
                       expressions: tuple[str, ...] = DEFAULT_EXPRESSIONS) -> Path:
    """Write a PNG tiling the mean face (front, 3/4, profile) and a few expressions.

    Expressions that the model does not name (e.g. BFM's PCA components) are replaced by the
    first components at +2 (pca) or 1 (blendshape).
    """
    tiles: list[tuple[str, Image.Image]] = []
    mean = model.mean_mm.detach().cpu().numpy()
    tri = model.triangles.cpu().numpy()
    ext = 1.1 * float(np.ptp(mean[:, :2] - mean.mean(0)[:2], axis=0).max())
    for label, yaw in (("mean, front", 0.0), ("mean, 3/4", np.deg2rad(-35)), ("mean, profile", np.deg2rad(-90))):
        tiles.append((label, draw_mesh(mean, tri, size_px, yaw, extent_mm=ext)))
    for i, spec in enumerate(expressions):
        try:
            coeffs = _expression_coeffs(model, spec)
        except KeyError:
            coeffs = torch.zeros(1, model.n_expression)
            coeffs[0, i % model.n_expression] = 2.0 if model.expression_range == "pca" else 1.0
            spec = f"component {i % model.n_expression}"
        verts = model.vertices(expression=coeffs.to(model.device))[0].detach().cpu().numpy()
        tiles.append((spec, draw_mesh(verts, tri, size_px, 0.0, extent_mm=ext)))
    cols = 4 if len(tiles) > 4 else len(tiles)
    rows = (len(tiles) + cols - 1) // cols
    label_h = 22
    sheet = Image.new("RGB", (cols * size_px, rows * (size_px + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (label, tile) in enumerate(tiles):
        x, y = (k % cols) * size_px, (k // cols) * (size_px + label_h)
        sheet.paste(tile, (x, y + label_h))
        draw.text((x + 6, y + 4), f"{model.name}/{model.geometry}: {label}", fill=(0, 0, 0))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path
