"""Rendering a reconstructed face with a new expression: photo overlays, crops, CLIP inputs.

The face is drawn textured with the texture the reconstruction unwrapped from the photo,
unlit (that texture already holds the photo's light), on the narrow face area without the
eyeballs (:func:`face_triangle_mask`). Only those vertices are evaluated, so a render costs a
fraction of the whole head.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from faceclip.edit.result import ResultFace
from faceclip.fit.texture import Window, face_window, overlay_triangle_mask, paste_window, window_camera
from faceclip.render.camera import PerspectiveCamera
from faceclip.render.renderer import MeshRenderer

#: Colour of the canvas where no photo is available (uint8 RGB).
CANVAS_RGB = (128, 128, 128)


def to_uint8(image: Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def label(image: np.ndarray, text: str) -> np.ndarray:
    """uint8 (H, W, 3) with ``text`` in white on a black box at the top left (a new array)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((8, 6), text)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((8, 6), text, fill=(255, 255, 255))
    return np.asarray(im)


def crop_photo(photo: np.ndarray | None, win: Window, fill=CANVAS_RGB) -> np.ndarray:
    """The part of ``photo`` under ``win``, resampled to ``win.out_size`` (outside: ``fill``)."""
    import cv2

    h, w = win.out_size
    if photo is None:
        return np.full((h, w, 3), fill, np.uint8)
    s = win.scale
    sx = sy = 1.0
    if s < 1:  # warpAffine has no area filter: shrink (by about s) first, then place exactly
        small = cv2.resize(photo, (max(1, round(photo.shape[1] * s)), max(1, round(photo.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / photo.shape[1], small.shape[0] / photo.shape[0]
        photo = small
    # pixel centres: x_out + 0.5 = (x_in + 0.5 - x0) * s, with x_in + 0.5 = (x_small + 0.5) / sx
    M = np.array([[s / sx, 0.0, 0.5 * s / sx - 0.5 - win.x0 * s],
                  [0.0, s / sy, 0.5 * s / sy - 0.5 - win.y0 * s]])
    return cv2.warpAffine(photo, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=tuple(int(c) for c in fill))


def face_triangle_mask(model) -> Tensor:
    """(F,) bool: the narrow face area without the eyeballs, so the photo's own eyes show
    through the eye openings (where the texture of an eyeball seen from the side is poor);
    closing lids still cover them. Models without that region: the overlay triangles."""
    region = model.regions.get("face_narrow")
    if region is None or len(region) == 0:
        return overlay_triangle_mask(model)
    keep = torch.zeros(model.n_vertices, dtype=torch.bool)
    keep[region.cpu()] = True
    return keep[model.triangles.cpu()].all(1)


class FaceRenderer:
    """Textured renders of one :class:`ResultFace` for any expression coefficients.

    Args:
        face: the reconstruction.
    """

    def __init__(self, face: ResultFace) -> None:
        model = face.model
        keep = face_triangle_mask(model)
        tri = model.triangles.cpu()[keep]
        used, inverse = torch.unique(tri, return_inverse=True)
        self.face = face
        self.vertex_ids = used  # (V',) model vertices drawn
        self.triangles = inverse.reshape(-1, 3)  # (F', 3) into vertex_ids
        self.renderer = MeshRenderer(self.triangles, uv=model.uv.cpu()[keep])
        self.texture = torch.from_numpy(np.array(face.texture)).float() / 255.0  # (Ht, Wt, 3)
        with torch.no_grad():
            self.neutral = model.vertices(face.identity)[0, used]  # (V', 3) this identity, no expression
        self.basis = model.expression_basis_mm[:, used]  # (K, V', 3)

    def vertices(self, expression: Tensor) -> Tensor:
        """(B, K) expression -> (B, V', 3) drawn vertices in mm (differentiable)."""
        return self.neutral + torch.einsum("bk,kvc->bvc", expression.to(self.basis.dtype), self.basis)

    def square_window(self, size_px: int, expressions: Tensor | None = None, margin: float = 0.12) -> Window:
        """A square window of the photo around the face (all ``expressions``), ``size_px`` wide."""
        e = self.face.expression if expressions is None else expressions
        xy = self.face.camera.project(self.vertices(e).reshape(1, -1, 3))[0].detach()
        lo, hi = xy.min(0).values, xy.max(0).values
        side = float((hi - lo).max()) * (1 + 2 * margin)
        cx, cy = [float(v) for v in (lo + hi) / 2]
        side_i = max(2, int(np.ceil(side)))
        return Window(int(np.floor(cx - side_i / 2)), int(np.floor(cy - side_i / 2)), side_i, side_i,
                      size_px / side_i)

    def camera_for(self, win: Window) -> PerspectiveCamera:
        return window_camera(self.face.camera, win)

    def render(self, expression: Tensor, camera: PerspectiveCamera) -> tuple[Tensor, Tensor]:
        """Differentiable textured render: (B, K) -> image (B, H, W, 3) on black and alpha (B, H, W)."""
        out = self.renderer(self.vertices(expression), camera.expand(expression.shape[0]),
                            texture=self.texture)
        return out.image, out.alpha

    def composite(self, expression: Tensor, camera: PerspectiveCamera, background: np.ndarray) -> np.ndarray:
        """(1, K) -> uint8 (H, W, 3): the face over ``background`` (H, W, 3) of the camera's size."""
        with torch.no_grad():
            image, alpha = self.render(expression, camera)
        bg = torch.from_numpy(background).float() / 255.0
        return to_uint8(image[0] + (1 - alpha[0, ..., None]) * bg)

    def crop(self, expression: Tensor, win: Window) -> np.ndarray:
        """uint8 (S, S, 3): the face with ``expression`` over the photo, inside ``win``."""
        return self.composite(expression, self.camera_for(win), crop_photo(self.face.photo, win))

    def overlay(self, expression: Tensor, max_side_px: int = 1024) -> np.ndarray:
        """uint8 (H, W, 3): the whole photo (or a grey canvas) with the face drawn over it."""
        face = self.face
        h, w = face.image_size
        photo = face.photo if face.photo is not None else np.full((h, w, 3), CANVAS_RGB, np.uint8)
        with torch.no_grad():
            verts = self.vertices(expression)
        win = face_window(face.camera, verts, (h, w), max_side_px=max_side_px)
        with torch.no_grad():
            image, alpha = self.render(expression, window_camera(face.camera, win))
        return paste_window(photo, image[0].clamp(0, 1).numpy(), alpha[0].clamp(0, 1).numpy(), win)
