"""From fitted parameters back to the photo: image-space camera, UV texture unwrap, overlay.

The fitting works in the aligned crop; the crop is a 2-D similarity of the photo, so the fitted
camera maps exactly to a camera of the original photo (:func:`image_camera`): a similarity of
the image plane is a rotation about the optical axis, a change of focal length and a shift of
the principal point. Everything here renders in original-image pixels through that camera,
restricted to a window around the face so that large photos stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.facemodel.params import FaceParams
from faceclip.render.backend import use_numba
from faceclip.render.camera import PerspectiveCamera
from faceclip.render.interpolate import interpolate_vertex_attributes
from faceclip.render.rasterize import Fragments, rasterize, rasterize_mesh
from faceclip.render.shading import sh_irradiance, sh_shade_vertices, vertex_normals


def image_camera(params: FaceParams, crop_to_image: np.ndarray, image_size: tuple[int, int]) -> PerspectiveCamera:
    """The camera of the original photo equivalent to the crop camera of ``params``.

    Args:
        params: fitted parameters (camera in crop pixels, principal point at the crop centre).
        crop_to_image: (2, 3) or (3, 3) similarity matrix, crop pixels -> image pixels.
        image_size: (H, W) of the photo.
    """
    M = np.asarray(crop_to_image, dtype=np.float64)[:2]
    a, b = M[0, 0], M[1, 0]
    s = float(np.hypot(a, b))
    rot2 = np.array([[a, -b], [b, a]]) / s
    cam = params.camera()
    dt = cam.R.dtype
    Rz = torch.eye(3, dtype=dt)
    Rz[:2, :2] = torch.from_numpy(rot2).to(dt)
    Rz = Rz.to(cam.device)
    c_crop = np.stack([cam.cx.detach().cpu().numpy(), cam.cy.detach().cpu().numpy()], -1)  # (B, 2)
    c_img = c_crop @ M[:, :2].T + M[:, 2]
    return PerspectiveCamera.create(
        Rz @ cam.R, cam.t @ Rz.T, torch.stack([cam.fx * s, cam.fy * s], -1), image_size,
        principal_point_px=torch.from_numpy(c_img).to(dt).to(cam.device),
    )


@dataclass
class Window:
    """A sub-rectangle of the photo rendered at ``scale`` (output pixels per photo pixel)."""

    x0: int
    y0: int
    width: int
    height: int
    scale: float

    @property
    def out_size(self) -> tuple[int, int]:
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))


def face_window(camera: PerspectiveCamera, vertices_mm: Tensor, image_size: tuple[int, int],
                max_side_px: int = 1024, margin_px: int = 4) -> Window:
    """Bounding window of the projected mesh inside the photo, with a render scale <= 1."""
    xy = camera.project(vertices_mm)[0].detach()
    h, w = image_size
    x0 = int(max(0, np.floor(float(xy[:, 0].min())) - margin_px))
    y0 = int(max(0, np.floor(float(xy[:, 1].min())) - margin_px))
    x1 = int(min(w, np.ceil(float(xy[:, 0].max())) + margin_px))
    y1 = int(min(h, np.ceil(float(xy[:, 1].max())) + margin_px))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    scale = min(1.0, max_side_px / max(x1 - x0, y1 - y0))
    return Window(x0, y0, x1 - x0, y1 - y0, scale)


def window_camera(camera: PerspectiveCamera, win: Window) -> PerspectiveCamera:
    """The camera whose image is ``win`` of ``camera``'s image, resampled by ``win.scale``."""
    s = win.scale
    return PerspectiveCamera.create(
        camera.R, camera.t, torch.stack([camera.fx * s, camera.fy * s], -1), win.out_size,
        principal_point_px=torch.stack([(camera.cx - win.x0) * s, (camera.cy - win.y0) * s], -1),
    )


def _bilinear(image: Tensor, xy: Tensor) -> Tensor:
    """Sample (H, W, C) at (N, 2) continuous pixel coordinates (centres at +0.5), clamped."""
    H, W, C = image.shape
    flat = image.reshape(H * W, C)
    x = (xy[:, 0] - 0.5).clamp(0, W - 1)
    y = (xy[:, 1] - 0.5).clamp(0, H - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    fx, fy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    r0, r1 = y0 * W, y1 * W
    top = torch.lerp(flat.index_select(0, r0 + x0), flat.index_select(0, r0 + x1), fx)
    bot = torch.lerp(flat.index_select(0, r1 + x0), flat.index_select(0, r1 + x1), fx)
    return torch.lerp(top, bot, fy)


#: A texel counts as seen when it lies at most this far (mm) behind the rendered depth.
DEPTH_TOLERANCE_MM = 3.0


def _visibility(cam_win: PerspectiveCamera, win: Window, depth_img: Tensor, pts_mm: Tensor,
                normals: Tensor, tol_mm: float = DEPTH_TOLERANCE_MM) -> tuple[Tensor, Tensor]:
    """Visibility weight in [0, 1] and photo pixel coordinates of model-space points.

    Args:
        depth_img: (h, w) depth of the window render (0 where empty).
        pts_mm: (N, 3) model-space points; normals: (N, 3) their unit normals.
    Returns:
        weight (N,), xy (N, 2) in photo pixels.
    """
    cam_pts = cam_win.to_camera(pts_mm)[0]  # (N, 3)
    xy_win = cam_win.camera_to_pixels(cam_pts.unsqueeze(0))[0]
    h, w = depth_img.shape
    col = (xy_win[:, 0]).floor().long()
    row = (xy_win[:, 1]).floor().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    pooled = _pooled_depth(depth_img)
    z_ref = pooled[row.clamp(0, h - 1), col.clamp(0, w - 1)]
    visible = inside & (cam_pts[:, 2] <= z_ref + tol_mm)
    n_cam = torch.matmul(normals, cam_win.R[0].T)
    view = -cam_pts / cam_pts.norm(dim=1, keepdim=True).clamp_min(1e-9)
    cos = (n_cam * view).sum(1)
    weight = visible.float() * ((cos - 0.1) / 0.4).clamp(0, 1)
    xy_img = torch.stack([xy_win[:, 0] / win.scale + win.x0, xy_win[:, 1] / win.scale + win.y0], 1)
    return weight, xy_img


@dataclass
class UVRaster:
    """The model's UV atlas rasterized once: which triangle and barycentrics each texel has.

    Attributes:
        size_px: texture side S.
        frag: fragments of the UV-space rasterization (``face`` indexes the model's triangles).
        face_texel: (N,) bool, texel belongs to the face area.
        gap, gap_source: flat indices of the uncovered texels and of the nearest covered texel
            of each (seam padding).
    """

    size_px: int
    frag: object
    face_texel: Tensor
    gap: np.ndarray
    gap_source: np.ndarray


_UV_CACHE: dict[tuple, UVRaster] = {}


def uv_raster(model: FaceModel, size_px: int) -> UVRaster:
    """Rasterize ``model``'s UV atlas at ``size_px`` (memoised per topology and size)."""
    from scipy.ndimage import distance_transform_edt

    tri = model.triangles
    dev = tri.device
    key = (model.name, model.geometry, model.n_vertices, model.n_triangles, size_px, str(dev))
    if key in _UV_CACHE:
        return _UV_CACHE[key]
    S = size_px
    F = tri.shape[0]
    uv = model.uv.to(dev).reshape(-1, 2)
    xy = torch.stack([uv[:, 0] * S, (1 - uv[:, 1]) * S], 1).unsqueeze(0)
    corner_tris = torch.arange(F * 3, device=dev).view(F, 3)
    # Any constant depth in front of the near plane: the UV layout has no overlaps to resolve.
    frag = rasterize(xy, torch.full((1, F * 3), 100.0, device=dev), corner_tris, (S, S))
    covered = np.zeros(S * S, dtype=bool)
    covered[frag.pix.cpu().numpy()] = True
    covered = covered.reshape(S, S)
    if covered.all() or not covered.any():
        rows, cols = np.indices((S, S))
    else:
        _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    source = (rows * S + cols).ravel()  # flat index of each texel's nearest covered texel
    gap = np.flatnonzero(source != np.arange(S * S))
    face_tri = model.region_mask("face")[tri].all(1)
    raster = UVRaster(S, frag, face_tri[frag.face], gap, source[gap])
    _UV_CACHE[key] = raster
    return raster


def unwrap_texture(model: FaceModel, vertices_mm: Tensor, albedo: Tensor, params: FaceParams,
                   cam_img: PerspectiveCamera, photo: np.ndarray, size_px: int = 1024,
                   delight: bool = False) -> tuple[np.ndarray, float]:
    """A full UV texture from the photo, with visibility-aware blending.

    Texels seen by the camera take the photo's colour (weighted by how frontally they are seen);
    unseen texels take the colour of their left-right mirror point where that is seen, and the
    fitted albedo (lit by the fitted light, or unlit with ``delight``) elsewhere. With
    ``delight`` the photo colours are divided by the fitted irradiance.

    Args:
        vertices_mm: (V, 3) canonical vertices; albedo: (V, 3) fitted albedo.
        cam_img: camera of the photo (from :func:`image_camera`).
        photo: (H, W, 3) uint8 original photo.

    Returns:
        (size_px, size_px, 3) uint8 texture (row 0 = v 1), and the fraction of face texels
        that came from the photo directly.
    """
    dev = vertices_mm.device
    S = size_px
    tri = model.triangles.to(dev)
    raster = uv_raster(model, S)
    uvf = raster.frag
    verts = vertices_mm.unsqueeze(0)
    normals = vertex_normals(verts, tri)[0]
    irr_v = sh_irradiance(cam_img.to_view(normals.unsqueeze(0)), params.sh.to(dev))[0].clamp_min(0.05)
    vattrs = torch.cat([vertices_mm, normals, albedo, irr_v], 1)  # (V, 12) per-vertex attributes

    win = face_window(cam_img, verts, cam_img.image_size)
    cam_win = window_camera(cam_img, win)
    dfrag, _, _ = rasterize_mesh(verts, tri, cam_win, cull_backfaces=True)
    depth_img = dfrag.depth_image[0]
    window = photo[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    tex = np.zeros((S * S, 3), np.uint8)
    if use_numba(vattrs, cam_win.R):
        w1 = _texels_numba(vattrs, tri, uvf, cam_win, win, depth_img, window, delight, tex)
    else:
        texels, w1 = _texels_torch(vattrs, tri, uvf, cam_win, win, depth_img, window, delight)
        tex[uvf.pix.cpu().numpy()] = texels
    tex[raster.gap] = tex[raster.gap_source]  # seam padding: uncovered texels copy the nearest covered one
    out = tex.reshape(S, S, 3)
    ft = raster.face_texel.to(dev)
    photo_fraction = float((w1 > 0.5)[ft].float().mean()) if ft.any() else 0.0
    return out, photo_fraction


def _pooled_depth(depth_img: Tensor) -> Tensor:
    """(h, w) farthest rendered depth of each pixel's 3x3 neighbourhood (-1e9 where all empty):
    the lenient z-test of :func:`_visibility`, so that texels on steep surfaces are not lost
    to resampling."""
    finite = torch.where(depth_img > 0, depth_img, torch.full_like(depth_img, -1e9))
    return torch.nn.functional.max_pool2d(finite[None, None], 3, 1, 1)[0, 0]


def _texels_torch(vattrs: Tensor, tri: Tensor, uvf, cam_win: PerspectiveCamera, win: Window, depth_img: Tensor,
                  window: np.ndarray, delight: bool) -> tuple[np.ndarray, Tensor]:
    """The UV raster's texel colours, PyTorch path.

    Args:
        vattrs: (V, 12) per-vertex position, normal, albedo, irradiance.
        uvf: the UV raster's fragments (P texels).
        window: (h, w, 3) uint8, the photo's window ``win``.
    Returns:
        (P, 3) uint8 colours and (P,) direct-view weights.
    """
    dev = vattrs.device
    # The UV raster's triangle ids are the model's (one corner triangle per model triangle);
    # a fresh Fragments keeps its caches from mixing the two index spaces.
    frag = Fragments(pix=uvf.pix, face=uvf.face, bary=uvf.bary, depth=uvf.depth, batch_size=1,
                     image_size=uvf.image_size)
    attrs = interpolate_vertex_attributes(vattrs, frag, tri)  # one interpolation of everything per texel
    pos, alb, irr = attrs[:, 0:3], attrs[:, 6:9], attrs[:, 9:12]
    nrm = torch.nn.functional.normalize(attrs[:, 3:6], dim=1)
    # Only the window of the photo is converted (a large photo would cost 12 bytes a pixel).
    photo_t = torch.tensor(window, device=dev, dtype=torch.float32) / 255.0
    offset = torch.tensor([float(win.x0), float(win.y0)], device=dev)
    # Start from the fallback, then blend in the mirror view and the direct view where seen
    # (sampling the photo only for those texels).
    color = alb if delight else alb * irr
    w1, xy1 = _visibility(cam_win, win, depth_img, pos, nrm)
    need = torch.nonzero(w1 < 1.0).flatten()
    mirror = torch.tensor([-1.0, 1.0, 1.0], device=dev)
    w2, xy2 = _visibility(cam_win, win, depth_img, pos[need] * mirror, nrm[need] * mirror)
    for ids, w, xy in ((need, w2, xy2), (None, w1, xy1)):
        seen = torch.nonzero(w > 0).flatten()
        rows = seen if ids is None else ids[seen]
        c = _bilinear(photo_t, xy[seen] - offset)
        if delight:
            c = c / irr[rows]
        ws = w[seen].unsqueeze(1)
        color = color.index_copy(0, rows, ws * c + (1 - ws) * color[rows])
    return (color.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8), w1


def _texels_numba(vattrs: Tensor, tri: Tensor, uvf, cam_win: PerspectiveCamera, win: Window, depth_img: Tensor,
                  window: np.ndarray, delight: bool, tex: np.ndarray) -> Tensor:
    """:func:`_texels_torch` in one compiled pass over the texels, writing their colours into
    ``tex`` ((S * S, 3) uint8) directly; returns the (P,) direct-view weights."""
    from faceclip.render.backend import kernels, launch

    P = uvf.face.shape[0]
    w1 = np.empty(P, np.float32)
    cam = np.array([float(cam_win.fx[0]), float(cam_win.fy[0]), float(cam_win.cx[0]), float(cam_win.cy[0])])
    launch(kernels().texture_texels, P, vattrs.detach().float().contiguous().numpy(), tri.long().contiguous().numpy(),
           uvf.face.long().contiguous().numpy(), uvf.bary.float().contiguous().numpy(),
           uvf.pix.long().contiguous().numpy(), cam_win.R[0].detach().double().numpy(),
           cam_win.t[0].detach().double().numpy(), cam, 1.0 / win.scale,
           _pooled_depth(depth_img).float().contiguous().numpy(), np.ascontiguousarray(window), bool(delight),
           DEPTH_TOLERANCE_MM,
           tex, w1)
    return torch.from_numpy(w1)


def overlay_triangle_mask(model: FaceModel) -> Tensor:
    """(F,) bool: the triangles shown in overlays, the narrow face area and the eyeballs (the
    classic view of face reconstruction papers; the neck and back of the head would hide the photo)."""
    keep = torch.zeros(model.n_vertices, dtype=torch.bool)
    for region in ("face_narrow", "sclera", "iris"):
        if region in model.regions:
            keep[model.regions[region].cpu()] = True
    if not keep.any():
        keep[:] = True
    return keep[model.triangles.cpu()].all(1)


def overlay_triangles(model: FaceModel) -> Tensor:
    """(F', 3) the triangles of :func:`overlay_triangle_mask`."""
    return model.triangles[overlay_triangle_mask(model).to(model.triangles.device)]


def render_overlay(model: FaceModel, vertices_mm: Tensor, albedo: Tensor, params: FaceParams,
                   cam_img: PerspectiveCamera, photo: np.ndarray, max_side_px: int = 1024) -> np.ndarray:
    """The shaded face (fitted albedo x fitted SH light) composited over the photo.

    Returns:
        (H, W, 3) uint8, same size as ``photo``.
    """
    dev = vertices_mm.device
    verts = vertices_mm.unsqueeze(0)
    tri = overlay_triangles(model).to(dev)
    win = face_window(cam_img, verts[:, torch.unique(tri)], cam_img.image_size, max_side_px=max_side_px)
    cam_win = window_camera(cam_img, win)
    colors = sh_shade_vertices(verts, model.triangles.to(dev), albedo.unsqueeze(0), params.sh.to(dev),
                               to_view=cam_win.to_view)
    frag, _, _ = rasterize_mesh(verts, tri, cam_win, cull_backfaces=True)
    col = interpolate_vertex_attributes(colors, frag, tri)
    rgb = frag.to_image(col.clamp(0, 1), 0.0)[0].cpu().numpy()  # black where uncovered
    return paste_window(photo, rgb, frag.mask[0].float().cpu().numpy(), win)


def paste_window(photo: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, win: Window) -> np.ndarray:
    """Composite a render of ``win`` over the photo.

    Args:
        photo: (H, W, 3) uint8.
        rgb: (h, w, 3) float in [0, 1] at ``win.out_size``, premultiplied by ``alpha`` (black
            where nothing is drawn).
        alpha: (h, w) coverage in [0, 1].
        win: the window of the photo the render shows.

    Returns:
        (H, W, 3) uint8, a new array.
    """
    import cv2

    if win.scale != 1.0:
        rgb = cv2.resize(rgb, (win.width, win.height), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha, (win.width, win.height), interpolation=cv2.INTER_LINEAR)
    out = photo.astype(np.float32) / 255.0
    region = out[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    h, w = region.shape[:2]
    region[:] = rgb[:h, :w] + (1 - alpha[:h, :w, None]) * region
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
