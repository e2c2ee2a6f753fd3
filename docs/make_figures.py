"""Make every picture of the README and the docs from the bundled inputs.

Reconstructs ``examples/astronaut.png`` in-process (``faceclip.batch.reconstruct_batch``
with the default options, i.e. the README's ``faceclip demo`` path; ``--fast`` for a quick
check) into a temporary folder, loads the result's ``mesh.obj`` (vertices, per-corner UVs) and
``mesh_texture.png``, renders the mesh with the project's own rasterizer
(:mod:`faceclip.render`), and writes:

- ``astronaut.png``: the README's figure, one row of labelled panels of the same height: the
  input photo | ``overlay.png`` (cropped to the face) | the mesh shaded (grey, smooth vertex
  normals, lit) seen from the front, 40 degrees from the left and 40 degrees from the right |
  the mesh with its UV texture from the same three angles | the UV texture map.
- ``astronaut_shaded.png``: the three shaded views alone (larger).
- ``astronaut_texture.png``: a thumbnail of the UV texture map.

Usage::

    .venv/bin/python docs/make_figures.py [--out docs/images] [--fast]

It prints each file it writes. The face model must be installed (``faceclip models install
ict``); otherwise it says so and exits with status 2.

Rendering: the head turns about its vertical (+Y) axis in front of a fixed camera 2 m away
(model frame: +X the subject's left, +Y up, +Z out of the face, so the camera's view frame
equals the model frame); all views share one scale, each is as wide as the head in it, and the
views show a bust whose bottom edge cuts the neck ``NECK_MM`` below the chin. Shading is per
vertex from the smooth (area-weighted) vertex normals, a key light from the upper left and a
fill from the right fixed to the camera plus a faint specular, interpolated per pixel
(Gouraud); the textured views sample the UV texture bilinearly at the per-pixel interpolated
UVs, times a mild shading term. Nothing is culled: the mesh has no mouth cavity, and the inside
of the head seen through parted lips is drawn in a dark ``CAVITY`` colour (not the background).
Views are rendered at ``SUPERSAMPLE`` times the output size and downsampled (antialiasing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "astronaut.png"
DEFAULT_OUT = REPO / "docs" / "images"

#: Views of the turning head: (label, yaw in degrees). Negative yaw turns the nose toward the
#: image's left, i.e. the camera sees the face from the viewer's left.
VIEWS = (("front", 0.0), ("40\N{DEGREE SIGN} from left", -40.0), ("40\N{DEGREE SIGN} from right", 40.0))
SUPERSAMPLE = 3
BACKGROUND = 1.0  # white
GREY = 0.78  # albedo of the shaded (untextured) mesh
CAVITY = (0.16, 0.11, 0.11)  # colour of inside surfaces seen through openings (the mouth)
#: Lights fixed to the camera, directions toward the light in the view frame (x right, y up,
#: z toward the viewer): a key light from the upper left, a weaker fill from the right.
KEY_LIGHT, KEY_STRENGTH = (-0.45, 0.55, 1.0), 0.72
FILL_LIGHT, FILL_STRENGTH = (0.8, 0.1, 0.5), 0.22
AMBIENT = 0.16
SPECULAR, SHININESS = 0.10, 24.0
FIGURE_WIDTH_PX = 1920  # target width of the main figure
PAD = 0.03  # empty border around the framed mesh, as a fraction of the view's height
NECK_MM = 40.0  # the views show a bust, cut this far below the chin
GAP_PX, MARGIN_PX, FONT_PX = 6, 6, 13  # layout of the figures (pixels)
SHADED_HEIGHT_PX, TEXTURE_THUMB_PX = 400, 384  # the docs' single-panel images


class FiguresError(Exception):
    """A problem that ends the script with a message (exit status 2)."""


@dataclass
class Reconstruction:
    """What the figures need from a reconstruction's result folder."""

    folder: Path
    vertices: np.ndarray  # (V, 3) mm, model frame
    triangles: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    uv: np.ndarray  # (F, 3, 2) per-corner UVs, v up
    texture: np.ndarray  # (Ht, Wt, 3) uint8, row 0 = v 1
    overlay: Image.Image
    photo: Image.Image
    params: dict


# --------------------------------------------------------------------------------------------
# reconstruction and loading


def check_face_model():
    """The reconstruction's face model (ICT ``head_eyes``); fails with the install command when
    it is not installed."""
    from faceclip.errors import FaceClipError
    from faceclip.facemodel import load_face_model

    try:
        return load_face_model("ict", geometry="head_eyes")
    except FaceClipError as exc:
        raise FiguresError(f"the ICT face model is not usable ({exc.message}); "
                           "install it with `faceclip models install ict` and run this again") from None


def reconstruct(photo: Path, work_dir: Path, fast: bool) -> Path:
    """Run the library's reconstruction of ``photo`` into ``work_dir``; returns the result folder."""
    from faceclip.batch import reconstruct_batch
    from faceclip.reconstruction import ReconstructOptions

    reports = reconstruct_batch([photo], work_dir, ReconstructOptions(fast=fast), show_progress=False)
    report = reports[0]
    if report.error:
        raise FiguresError(f"reconstruction of {photo} failed: {report.error}")
    if not report.faces:
        raise FiguresError(f"reconstruction of {photo} found no face")
    return Path(report.faces[0].folder)


def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (V, 3), triangles (F, 3) and per-corner UVs (F, 3, 2) of a faceclip OBJ
    (triangles only, ``f v/vt[/vn]`` corners, as written by :func:`faceclip.io.mesh.write_obj`)."""
    v_rows, vt_rows, f_rows = [], [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("v "):
                v_rows.append(line[2:])
            elif line.startswith("vt "):
                vt_rows.append(line[3:])
            elif line.startswith("f "):
                f_rows.append(line[2:].replace("/", " "))
    if not v_rows or not f_rows or not vt_rows:
        raise FiguresError(f"{path}: expected vertices, UVs and faces")
    verts = np.array(" ".join(v_rows).split(), dtype=np.float64).reshape(-1, 3)
    uvs = np.array(" ".join(vt_rows).split(), dtype=np.float64).reshape(-1, 2)
    per_face = len(f_rows[0].split())
    if per_face not in (6, 9):
        raise FiguresError(f"{path}: faces must be triangles with v/vt or v/vt/vn corners")
    corners = np.array(" ".join(f_rows).split(), dtype=np.int64).reshape(-1, 3, per_face // 3) - 1
    return verts, corners[:, :, 0], uvs[corners[:, :, 1]]


def load_result(folder: Path, photo: Path) -> Reconstruction:
    verts, tris, uv = load_obj(folder / "mesh.obj")
    texture = np.array(Image.open(folder / "mesh_texture.png").convert("RGB"))
    return Reconstruction(
        folder=folder, vertices=verts, triangles=tris, uv=uv, texture=texture,
        overlay=Image.open(folder / "overlay.png").convert("RGB"),
        photo=Image.open(photo).convert("RGB"),
        params=json.loads((folder / "params.json").read_text()),
    )


# --------------------------------------------------------------------------------------------
# rendering


def rotation_y(deg: float) -> np.ndarray:
    """Rotation about +Y; positive turns the nose (+Z) toward +X (the image's right)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _unit(d) -> torch.Tensor:
    t = torch.tensor(d, dtype=torch.float32)
    return t / t.norm()


def shade_vertices(verts: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """(B, V, 1) grey-level irradiance from the smooth vertex normals (view frame = model frame)."""
    from faceclip.render import vertex_normals

    n = vertex_normals(verts, tris)  # (B, V, 3), area-weighted, unit
    key, fill = _unit(KEY_LIGHT), _unit(FILL_LIGHT)
    lambert = KEY_STRENGTH * (n @ key).clamp_min(0) + FILL_STRENGTH * (n @ fill).clamp_min(0)
    half = _unit(np.array(KEY_LIGHT) / np.linalg.norm(KEY_LIGHT) + np.array([0.0, 0.0, 1.0]))
    spec = SPECULAR * (n @ half).clamp_min(0) ** SHININESS
    return (AMBIENT + lambert + spec).unsqueeze(-1)


@dataclass
class Framing:
    """Cameras for the views of a turning head: one scale for all views, each view as wide as
    its projection (plus a pad).

    The head turns by ``yaws[b]`` about the vertical line through ``pivot``, in front of a camera
    on the +Z axis at ``distance`` from the pivot. Normalised image coordinates of a turned
    vertex ``p`` (relative to the pivot) are ``x = p_x / (distance - p_z)`` (right) and
    ``y = -p_y / (distance - p_z)`` (down).
    """

    pivot: np.ndarray  # (3,) mm
    distance: float  # mm
    bottom_mm: float | None  # the views' bottom edge cuts the mesh at this height (None: no cut)
    yaws: list[float]
    y_range: tuple[float, float]  # normalised, over all views
    x_ranges: list[tuple[float, float]]  # normalised, per view
    pad: float = PAD

    @property
    def pad_bottom(self) -> float:
        """No pad under a cut mesh: the image's bottom edge is the cut."""
        return self.pad if self.bottom_mm is None else 0.0

    def focal(self, height_px: float) -> float:
        """Focal length (pixels) that fits the framed part into ``height_px`` less the pads."""
        return height_px * (1 - self.pad - self.pad_bottom) / (self.y_range[1] - self.y_range[0])

    def widths(self, height_px: float) -> list[float]:
        """Width of each view (pixels) for images ``height_px`` tall."""
        f, p = self.focal(height_px), self.pad * height_px
        return [f * (x1 - x0) + 2 * p for x0, x1 in self.x_ranges]

    def width_factor(self) -> float:
        """Total width of all views per pixel of height."""
        return sum(self.widths(1.0))


def framing(verts: np.ndarray, yaws: list[float], bottom_mm: float | None = None,
            distance: float = 2000.0) -> Framing:
    """Frame the mesh above ``bottom_mm`` (all of it if None) in every view; the pivot is the
    middle of that part's bounding box. 2 m away: a long lens, little perspective."""
    keep = verts if bottom_mm is None else verts[verts[:, 1] >= bottom_mm]
    lo, hi = keep.min(0), keep.max(0)
    pivot = 0.5 * (lo + hi)
    x_ranges, y_lo, y_hi = [], np.inf, -np.inf
    for yaw in yaws:
        p = (keep - pivot) @ rotation_y(yaw).T
        depth = distance - p[:, 2]
        x, y = p[:, 0] / depth, -p[:, 1] / depth
        x_ranges.append((float(x.min()), float(x.max())))
        y_lo, y_hi = min(y_lo, float(y.min())), max(y_hi, float(y.max()))
    return Framing(pivot, distance, bottom_mm, list(yaws), (y_lo, y_hi), x_ranges)


def neck_cut_mm(model, verts: np.ndarray) -> float | None:
    """Height below which the views are cut: ``NECK_MM`` under the chin (the lowest vertex of the
    model's ``face_narrow`` region), or None (whole mesh) when the mesh is not the model's."""
    if model is None or model.n_vertices != len(verts) or "face_narrow" not in model.regions:
        return None
    return float(verts[model.regions["face_narrow"].cpu().numpy(), 1].min()) - NECK_MM


def back_facing(verts: torch.Tensor, tris: torch.Tensor, frame: Framing, frags) -> torch.Tensor:
    """(N,) bool: the fragment's triangle faces away from the camera (an inside surface)."""
    from faceclip.render import face_normals

    eye = torch.from_numpy(frame.pivot).float() + torch.tensor([0.0, 0.0, frame.distance])
    n = face_normals(verts, tris)  # (B, F, 3)
    centroid = verts[:, tris].mean(2)  # (B, F, 3)
    facing = ((eye - centroid) * n).sum(-1)  # (B, F)
    return facing[frags.batch_index, frags.face] < 0


def render_views(rec: Reconstruction, frame: Framing, height_px: int, textured: bool) -> list[Image.Image]:
    """Render the mesh from each of ``frame.yaws``; returns one RGB image per view,
    ``height_px`` tall and ``frame.widths(height_px)`` wide (rounded)."""
    from faceclip.render import (PerspectiveCamera, interpolate_uv, interpolate_vertex_attributes,
                                 rasterize_mesh, sample_texture)

    s = SUPERSAMPLE
    widths = [max(1, int(round(w))) for w in frame.widths(height_px)]
    H, W = height_px * s, max(widths) * s
    f, pad = frame.focal(H), frame.pad * H
    # principal point per view: the view's normalised x range starts at the pad
    principal = [(pad - f * x0, pad - f * frame.y_range[0]) for x0, _ in frame.x_ranges]
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # frontal camera
    t = -(R @ torch.from_numpy(frame.pivot)) + torch.tensor([0.0, 0.0, frame.distance], dtype=torch.float64)
    B = len(frame.yaws)
    cam = PerspectiveCamera.create(R.float().expand(B, 3, 3), t.float().expand(B, 3), f, (H, W),
                                   principal_point_px=torch.tensor(principal, dtype=torch.float32))

    v = torch.from_numpy(np.stack([(rec.vertices - frame.pivot) @ rotation_y(y).T + frame.pivot
                                   for y in frame.yaws])).float()  # (B, V, 3)
    tris = torch.from_numpy(rec.triangles).long()
    # No culling: through the parted lips the camera sees the inside of the head (the mesh has no
    # mouth cavity), drawn dark like a cavity instead of letting the background show through.
    frags, _, _ = rasterize_mesh(v, tris, cam, cull_backfaces=False)
    shade = interpolate_vertex_attributes(shade_vertices(v, tris), frags, tris)  # (N, 1)
    if textured:
        tex = torch.from_numpy(rec.texture).float() / 255.0
        uv = interpolate_uv(torch.from_numpy(rec.uv).float(), frags, tris)
        color = sample_texture(tex, uv) * (0.55 + 0.55 * shade).clamp(max=1.15)
    else:
        color = GREY * shade.expand(-1, 3)
    inside = back_facing(v, tris, frame, frags)
    color[inside] = torch.tensor(CAVITY)
    img = frags.to_image(color.clamp(0, 1), BACKGROUND).numpy()  # (B, H, W, 3)
    out = []
    for b, w in enumerate(widths):
        big = Image.fromarray((img[b, :, :w * s] * 255 + 0.5).astype(np.uint8))
        out.append(big.resize((w, height_px), Image.Resampling.LANCZOS))
    return out


# --------------------------------------------------------------------------------------------
# layout


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def face_crop_box(rec: Reconstruction, scale: float = 2.3) -> tuple[int, int, int, int]:
    """A square around the detected face (box enlarged ``scale`` times, raised for the hair)."""
    x0, y0, x1, y1 = rec.params["detection"]["box"]
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1) - 0.08 * side
    w, h = rec.overlay.size
    side = min(side, w, h)
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return left, top, left + int(round(side)), top + int(round(side))


def resize_to_height(img: Image.Image, height: int) -> Image.Image:
    w = max(1, int(round(img.width * height / img.height)))
    return img.resize((w, height), Image.Resampling.LANCZOS)


def panel_top(font_px: int, grouped: bool) -> int:
    """Row of the first image pixel in :func:`compose_row`'s sheet (below the labels)."""
    row = font_px + 7
    return MARGIN_PX + (row + 4 if grouped else 0) + row


def compose_row(panels: list[tuple[str, str, Image.Image]], font_px: int = FONT_PX) -> Image.Image:
    """Panels side by side (all the same height). Each is ``(group, label, image)``: the label
    goes right above the image; a group shared by consecutive panels is written once above
    their labels, over a thin rule spanning them. A panel with an empty label shows its group
    name as its label."""
    height = panels[0][2].height
    grouped = any(label and group for group, label, _ in panels)
    font, gfont = _font(font_px), _font(font_px + 1)
    row = font_px + 7
    top = panel_top(font_px, grouped) - row
    width = 2 * MARGIN_PX + sum(p.width for _, _, p in panels) + GAP_PX * (len(panels) - 1)
    sheet = Image.new("RGB", (width, top + row + height + MARGIN_PX), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)

    def centred(text: str, x0: float, x1: float, y: float, f, fill=(20, 20, 20)) -> None:
        draw.text((0.5 * (x0 + x1 - draw.textlength(text, font=f)), y), text, fill=fill, font=f)

    x = MARGIN_PX
    spans: list[list] = []  # [group, x0, x1] of consecutive panels with a label
    for group, label, img in panels:
        if img.height != height:
            raise ValueError(f"panel {group} {label}: height {img.height}, expected {height}")
        sheet.paste(img, (x, top + row))
        centred(label or group, x, x + img.width, top + 2, font)
        if label and group:
            if spans and spans[-1][0] == group and spans[-1][2] == x - GAP_PX:
                spans[-1][2] = x + img.width
            else:
                spans.append([group, x, x + img.width])
        x += img.width + GAP_PX
    for group, x0, x1 in spans:
        centred(group, x0, x1, MARGIN_PX, gfont, fill=(0, 0, 0))
        draw.line([(x0 + 4, top - 1), (x1 - 4, top - 1)], fill=(150, 150, 150), width=1)
    return sheet


def save(img: Image.Image, path: Path, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    written.append(path)
    print(f"wrote {path} ({img.width}x{img.height}, {path.stat().st_size / 1024:.0f} KiB)", flush=True)


def make_figures(rec: Reconstruction, out_dir: Path, bottom_mm: float | None = None) -> list[Path]:
    """Render and write every figure; returns the written paths.

    Args:
        bottom_mm: cut the views this high (model frame); None shows the whole mesh.
    """
    written: list[Path] = []
    frame = framing(rec.vertices, [y for _, y in VIEWS], bottom_mm)
    # main figure, FIGURE_WIDTH_PX wide: 3 square photo panels + the views twice
    n_panels = 3 + 2 * len(VIEWS)
    free = FIGURE_WIDTH_PX - 2 * MARGIN_PX - GAP_PX * (n_panels - 1)
    height = int(free / (3 + 2 * frame.width_factor()))

    shaded = render_views(rec, frame, height, textured=False)
    textured = render_views(rec, frame, height, textured=True)
    crop = rec.overlay.crop(face_crop_box(rec))
    panels = [("input photo", "", resize_to_height(rec.photo, height)),
              ("overlay.png (face crop)", "", resize_to_height(crop, height))]
    panels += [("reconstructed mesh, shaded", label, img) for (label, _), img in zip(VIEWS, shaded)]
    panels += [("mesh with its UV texture", label, img) for (label, _), img in zip(VIEWS, textured)]
    panels.append(("UV texture map", "", resize_to_height(Image.fromarray(rec.texture), height)))
    save(compose_row(panels), out_dir / "astronaut.png", written)

    big = render_views(rec, frame, SHADED_HEIGHT_PX, textured=False)
    save(compose_row([("", label, img) for (label, _), img in zip(VIEWS, big)], font_px=FONT_PX + 2),
         out_dir / "astronaut_shaded.png", written)
    save(Image.fromarray(rec.texture).resize((TEXTURE_THUMB_PX,) * 2, Image.Resampling.LANCZOS),
         out_dir / "astronaut_texture.png", written)
    return written


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: docs/images)")
    parser.add_argument("--fast", action="store_true", help="fast reconstruction (for tests and quick looks)")
    parser.add_argument("--photo", type=Path, default=EXAMPLE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        model = check_face_model()
        with tempfile.TemporaryDirectory(prefix="faceclip-figures-") as tmp:
            folder = reconstruct(args.photo, Path(tmp), args.fast)
            rec = load_result(folder, args.photo)
            t_rec = time.perf_counter() - t0
            make_figures(rec, args.out, neck_cut_mm(model, rec.vertices))
    except FiguresError as exc:
        print(f"make_figures: error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f} s (reconstruction {t_rec:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
