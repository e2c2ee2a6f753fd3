"""Synthetic test faces with known 3D shape: the ground truth we can make ourselves.

Each sample draws, from one seed and index (fully deterministic):

- **identity** ~ N(0, 1) per component times a factor in [0.8, 1.0] (the ICT prior), and a
  sparse **expression** (0-3 ARKit blendshapes, weights in [0.1, 0.8], left/right pairs moved
  together, 30% neutral);
- **head pose**: yaw in [-60, 60] deg, pitch in [-30, 30] deg, roll in [-10, 10] deg, applied
  about the head centre; a pinhole camera (field of view 18-36 deg) framing the face to fill
  about 60% of the image with a small random offset;
- **lighting**: 2nd-order SH (ambient + a directional term from the front hemisphere + small
  random band-2 terms, slightly tinted);
- **albedo** (ICT has no albedo basis): a skin tone drawn uniformly along a palette from very
  light to very dark skin, with low-frequency variation (random smooth Fourier features),
  redder cheeks, darker lips and brows, hair with a random hairline (or none), eyeballs with
  sclera and iris;
- **background**: uniform, gradient or smooth colour noise.

Rendered with :func:`faceclip.render.render_mesh` (antialiased silhouette) at 224 and 512 px
(the same view: focal length and principal point scale with the image). Landmarks are given in
two conventions, both in pixels (x right, y down, origin at the image's top-left corner, pixel
centres at +0.5): ``landmarks68_px`` follows 2D detectors (the jaw contour slides to the visible
silhouette, :mod:`faceclip.fit.contour`), ``landmarks68_3d_px`` projects the model's fixed 68
landmark vertices (the AFLW2000-3D convention).

Use :class:`SyntheticFaceGenerator` as a data source (``gen.sample(i)`` returns arrays and
tensors) or :func:`write_sample` to save image PNGs, the ground-truth mesh (PLY + OBJ), the
parameters (JSON) and the landmarks (JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceclip.facemodel import FaceModel
from faceclip.facemodel.params import MODEL_TO_OPENCV, euler_matrix_np

__all__ = ["SyntheticConfig", "SyntheticParams", "SyntheticSample", "SyntheticFaceGenerator", "write_sample",
           "SKIN_PALETTE", "pose_bin"]

#: Skin tones (sRGB in [0, 1]) from very light to very dark; a sample interpolates along it.
SKIN_PALETTE = np.array([
    [0.96, 0.80, 0.70],
    [0.90, 0.70, 0.58],
    [0.80, 0.58, 0.45],
    [0.66, 0.45, 0.32],
    [0.50, 0.33, 0.22],
    [0.36, 0.23, 0.15],
    [0.24, 0.15, 0.10],
])
HAIR_COLOURS = np.array([[0.06, 0.05, 0.04], [0.20, 0.13, 0.08], [0.40, 0.28, 0.16], [0.70, 0.58, 0.38],
                         [0.50, 0.50, 0.50]])
HAIR_WEIGHTS = np.array([0.35, 0.3, 0.15, 0.1, 0.1])
IRIS_COLOURS = np.array([[0.22, 0.13, 0.07], [0.35, 0.25, 0.12], [0.25, 0.38, 0.50], [0.30, 0.40, 0.28]])
EXPRESSION_GROUPS = [
    ("jawOpen",), ("mouthSmile_L", "mouthSmile_R"), ("mouthFrown_L", "mouthFrown_R"), ("mouthPucker",),
    ("mouthFunnel",), ("eyeBlink_L", "eyeBlink_R"), ("eyeWide_L", "eyeWide_R"), ("browInnerUp_L", "browInnerUp_R"),
    ("browDown_L", "browDown_R"), ("cheekPuff_L", "cheekPuff_R"), ("mouthStretch_L", "mouthStretch_R"),
    ("noseSneer_L", "noseSneer_R"), ("mouthLeft",), ("mouthRight",), ("mouthRollLower",), ("jawLeft",),
    ("jawRight",), ("mouthPress_L", "mouthPress_R"), ("eyeSquint_L", "eyeSquint_R"), ("mouthDimple_L", "mouthDimple_R"),
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Sampling ranges (degrees, mm, fractions)."""

    sizes_px: tuple[int, ...] = (224, 512)
    identity_scale: tuple[float, float] = (0.8, 1.0)
    neutral_fraction: float = 0.3
    max_expressions: int = 3
    yaw_deg: float = 60.0
    pitch_deg: float = 30.0
    roll_deg: float = 10.0
    fov_deg: tuple[float, float] = (18.0, 36.0)
    face_fill: tuple[float, float] = (0.5, 0.7)
    offset_fraction: float = 0.06
    noise_level: float = 1.5 / 255.0


@dataclass
class SyntheticParams:
    """Everything that defines one sample (JSON-serialisable through :meth:`to_json`)."""

    seed: int
    index: int
    identity: list[float]
    expression: dict[str, float]
    angles_deg: list[float]  # pitch (about X), yaw (about Y), roll (about Z)
    fov_deg: float
    distance_mm: float
    offset_fraction: list[float]  # principal-point-relative shift of the head centre, (x, y)
    sh: list[list[float]]  # (9, 3), Deep3DFaceRecon basis, view frame
    skin_tone: float  # 0 = lightest ... 1 = darkest palette entry
    skin_rgb: list[float]
    hair_rgb: list[float]
    iris_rgb: list[float]
    hairline_mm: float = 35.0  # hairline height above the brows (>= 50: receding, bare back of the head)
    background: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticSample:
    """One rendered sample.

    Attributes:
        params: the drawn parameters.
        vertices_mm: (V, 3) float32 ground-truth vertices, model frame (mm).
        images: size -> (S, S, 3) uint8 RGB.
        masks: size -> (S, S) float32 face coverage in [0, 1].
        landmarks68_px: size -> (68, 2) 2D-detector convention (sliding jaw contour).
        landmarks68_3d_px: size -> (68, 2) projections of the fixed landmark vertices.
        cameras: size -> dict with R (3, 3), t_mm (3,), focal_px, principal_point_px (OpenCV).
        head_rotation: (3, 3) model-frame head rotation (applied about the head centre).
    """

    params: SyntheticParams
    vertices_mm: np.ndarray
    images: dict[int, np.ndarray]
    masks: dict[int, np.ndarray]
    landmarks68_px: dict[int, np.ndarray]
    landmarks68_3d_px: dict[int, np.ndarray]
    cameras: dict[int, dict]
    head_rotation: np.ndarray

    @property
    def yaw_deg(self) -> float:
        return float(self.params.angles_deg[1])

    def image_tensor(self, size: int) -> torch.Tensor:
        """(3, S, S) float32 in [0, 1]."""
        return torch.from_numpy(self.images[size]).permute(2, 0, 1).float() / 255.0


def pose_bin(yaw_deg: float) -> str:
    """Pose bin of a sample by absolute yaw: ``"0-20"``, ``"20-40"`` or ``"40-60"`` (degrees)."""
    a = abs(yaw_deg)
    return "0-20" if a < 20 else ("20-40" if a < 40 else "40-60")


class SyntheticFaceGenerator:
    """Deterministic synthetic faces: ``sample(i)`` depends only on ``(seed, i)``.

    Args:
        model: the face model (default ICT ``head_eyes``, the reconstruction geometry).
        seed: base seed.
        config: sampling ranges.

    Attributes (read by the video clips and the training data, which build on the generator):
        head_centre_mm: (3,) the point of the mean face the cameras aim at (model frame).
        contour_bands: the model's sliding jaw-contour bands (2D landmark convention).
        albedo_parts: ``{name: (V,) or (V, 3)}`` the per-vertex masks the albedo is painted from.
    """

    def __init__(self, model: FaceModel | None = None, seed: int = 0, config: SyntheticConfig = SyntheticConfig()) -> None:
        from faceclip.fit.contour import build_contour_bands

        if model is None:
            from faceclip.facemodel import load_face_model

            model = load_face_model("ict", geometry="head_eyes")
        self.model = model.to("cpu", torch.float32)
        self.seed = int(seed)
        self.config = config
        self._mean = self.model.mean_mm.numpy().astype(np.float64)
        lm = self.model.landmarks68.numpy()
        self.head_centre_mm = self._mean[lm].mean(0)
        self.contour_bands = build_contour_bands(self.model)
        self.albedo_parts = self._albedo_parts_of_model()

    def __len__(self) -> int:  # an endless source; len() for samplers that need one
        return 2 ** 31 - 1

    def __getitem__(self, index: int) -> SyntheticSample:
        return self.sample(index)

    # ------------------------------------------------------------------ sampling

    def draw_params(self, index: int) -> SyntheticParams:
        """The parameters of sample ``index`` (no rendering)."""
        c = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        m = self.model
        identity = rng.standard_normal(m.n_identity) * rng.uniform(*c.identity_scale)
        expression: dict[str, float] = {}
        if rng.random() >= c.neutral_fraction:
            groups = [g for g in EXPRESSION_GROUPS if all(n in m.expression_names for n in g)]
            k = int(rng.integers(1, c.max_expressions + 1))
            for gi in rng.choice(len(groups), size=min(k, len(groups)), replace=False):
                w = float(rng.uniform(0.1, 0.8))
                for name in groups[gi]:
                    expression[name] = round(float(np.clip(w + rng.normal(0, 0.05), 0.0, 1.0)), 4)
        angles = [float(rng.uniform(-c.pitch_deg, c.pitch_deg)), float(rng.uniform(-c.yaw_deg, c.yaw_deg)),
                  float(rng.uniform(-c.roll_deg, c.roll_deg))]
        fov = float(rng.uniform(*c.fov_deg))
        fill = float(rng.uniform(*c.face_fill))
        focal_rel = 0.5 / math.tan(math.radians(fov) / 2)  # focal length / image size
        distance = focal_rel * 160.0 / fill  # a ~160 mm wide head spans `fill` of the image
        offset = [float(x) for x in rng.uniform(-c.offset_fraction, c.offset_fraction, 2)]
        sh = self.draw_light(rng)
        tone = float(rng.uniform(0.0, 1.0))
        pos = tone * (len(SKIN_PALETTE) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(SKIN_PALETTE) - 1)
        skin = SKIN_PALETTE[lo] * (1 - (pos - lo)) + SKIN_PALETTE[hi] * (pos - lo)
        skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0.02, 1.0)
        hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
        iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
        hairline = float(rng.uniform(15.0, 60.0))
        background = self._draw_background(rng)
        return SyntheticParams(
            seed=self.seed, index=int(index), identity=[round(float(x), 6) for x in identity],
            expression=expression, angles_deg=angles, fov_deg=fov, distance_mm=float(distance),
            offset_fraction=offset, sh=np.round(sh, 6).tolist(), skin_tone=tone,
            skin_rgb=[float(x) for x in skin], hair_rgb=[float(x) for x in np.clip(hair, 0, 1)],
            iris_rgb=[float(x) for x in iris], hairline_mm=hairline, background=background,
        )

    def sample(self, index: int) -> SyntheticSample:
        """Draw and render sample ``index``."""
        return self.render(self.draw_params(index))

    def vertices(self, params: SyntheticParams) -> np.ndarray:
        """(V, 3) ground-truth vertices (model frame, mm) of a parameter set."""
        m = self.model
        ident = torch.tensor(params.identity, dtype=torch.float32)[None]
        expr = torch.zeros(1, m.n_expression)
        for name, w in params.expression.items():
            expr[0, m.expression_index(name)] = w
        return m(identity=ident, expression=expr).vertices_mm[0].numpy()

    def camera(self, params: SyntheticParams, size: int):
        """The :class:`~faceclip.render.PerspectiveCamera` of a ``size`` x ``size`` image of ``params``."""
        from faceclip.render import PerspectiveCamera

        R = MODEL_TO_OPENCV @ euler_matrix_np(*np.radians(params.angles_deg))
        focal = size * 0.5 / math.tan(math.radians(params.fov_deg) / 2)
        cxy = np.array([size / 2.0, size / 2.0]) + np.array(params.offset_fraction) * size
        # The head centre lands on pixel cxy at the given distance: t = (0, 0, d) - R c.
        t = np.array([0.0, 0.0, params.distance_mm]) - R @ self.head_centre_mm
        return PerspectiveCamera.create(torch.tensor(R, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                                        focal, (size, size), principal_point_px=tuple(cxy))

    def render(self, params: SyntheticParams) -> SyntheticSample:
        """Render a parameter set at every configured size."""
        from faceclip.fit.contour import landmark_vertex_ids
        from faceclip.render import render_mesh

        m = self.model
        rng = np.random.default_rng([self.seed, params.index, 1])  # albedo / noise stream
        verts = self.vertices(params)
        head_r = euler_matrix_np(*np.radians(params.angles_deg))
        R = MODEL_TO_OPENCV @ head_r
        albedo = self.albedo(params, rng)
        sh = torch.tensor(params.sh, dtype=torch.float32)[None]
        v_t = torch.from_numpy(verts)[None]
        out = SyntheticSample(params, verts.astype(np.float32), {}, {}, {}, {}, {}, head_r)
        noise_seed = int(rng.integers(2 ** 31))
        for size in self.config.sizes_px:
            cam = self.camera(params, size)
            focal = size * 0.5 / math.tan(math.radians(params.fov_deg) / 2)
            cxy = np.array([size / 2.0, size / 2.0]) + np.array(params.offset_fraction) * size
            t = np.array([0.0, 0.0, params.distance_mm]) - R @ self.head_centre_mm
            r = render_mesh(v_t, m.triangles, cam, vertex_colors=torch.from_numpy(albedo)[None].float(),
                            sh_coeffs=sh, background=0.0, cull_backfaces=True, antialiased=True)
            rgb = r.image[0].clamp(0, 1).numpy()
            alpha = r.alpha[0].clamp(0, 1).numpy()
            bg = background_image(params.background, size)
            img = rgb + (1.0 - alpha[..., None]) * bg
            img += np.random.default_rng([noise_seed, size]).normal(0.0, self.config.noise_level, img.shape)
            out.images[size] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
            out.masks[size] = alpha.astype(np.float32)
            ids = landmark_vertex_ids(m, self.contour_bands, v_t, cam)[0]
            out.landmarks68_px[size] = cam.project(v_t[:, ids])[0].numpy().astype(np.float64)
            out.landmarks68_3d_px[size] = cam.project(v_t[:, m.landmarks68])[0].numpy().astype(np.float64)
            out.cameras[size] = {"R": R.tolist(), "t_mm": t.tolist(), "focal_px": float(focal),
                                 "principal_point_px": [float(x) for x in cxy], "image_size_hw": [size, size]}
        return out

    def batch(self, indices: list[int], size: int = 224) -> dict[str, torch.Tensor]:
        """Stack samples for training: image (B, 3, S, S), vertices_mm (B, V, 3), landmarks (B, 68, 2),
        identity (B, K_id), expression (B, K_exp), angles_deg (B, 3), sh (B, 9, 3)."""
        samples = [self.sample(i) for i in indices]
        m = self.model
        expr = torch.zeros(len(samples), m.n_expression)
        for b, s in enumerate(samples):
            for name, w in s.params.expression.items():
                expr[b, m.expression_index(name)] = w
        return {
            "image": torch.stack([s.image_tensor(size) for s in samples]),
            "vertices_mm": torch.stack([torch.from_numpy(s.vertices_mm) for s in samples]),
            "landmarks68_px": torch.stack([torch.from_numpy(s.landmarks68_px[size]).float() for s in samples]),
            "identity": torch.tensor([s.params.identity for s in samples], dtype=torch.float32),
            "expression": expr,
            "angles_deg": torch.tensor([s.params.angles_deg for s in samples], dtype=torch.float32),
            "sh": torch.tensor([s.params.sh for s in samples], dtype=torch.float32),
        }

    # ------------------------------------------------------------------ lighting, albedo, background

    @staticmethod
    def draw_light(rng: np.random.Generator) -> np.ndarray:
        """(9, 3) SH light of one sample: ambient plus a directional part from the viewer's side."""
        from faceclip.render.shading import sh_directional

        theta = rng.uniform(0, 2 * math.pi)
        elev = rng.uniform(0.2, 1.0)  # toward the viewer: z component
        r = math.sqrt(max(1 - elev ** 2, 0.0))
        direction = (r * math.cos(theta), r * math.sin(theta) * 0.8 + 0.2, elev)
        sh = sh_directional(direction, ambient=float(rng.uniform(0.55, 0.85)),
                            diffuse=float(rng.uniform(0.25, 0.55)), dtype=torch.float64)[0].numpy()
        sh[4:] += rng.normal(0, 0.03, (5, 1))
        tint = rng.uniform(0.93, 1.07, 3)
        return sh * tint[None, :]

    def _albedo_parts_of_model(self) -> dict[str, np.ndarray]:
        """Per-vertex soft masks (lips, brows, cheeks, hair, sclera, iris, mouth interior)."""
        m = self.model
        v = self._mean
        n = len(v)
        lm = v[m.landmarks68.numpy()]
        regions = {k: t.numpy() for k, t in m.regions.items()}
        parts = {}

        def soft(mask_idx: np.ndarray, width_mm: float) -> np.ndarray:
            out = np.zeros(n)
            if len(mask_idx):
                from scipy.spatial import cKDTree

                d, _ = cKDTree(v[mask_idx]).query(v, k=1)
                out = np.clip(1.0 - d / width_mm, 0.0, 1.0)
            return out

        face = regions["face"]
        # lips: inside the outer lip contour (2D, frontal), minus the inner mouth
        from faceclip.facemodel.regions import inside_polygon

        lips = face[inside_polygon(v[face, :2], lm[48:60, :2]) & (v[face, 2] > lm[48:60, 2].min() - 8)]
        parts["lips"] = soft(lips, 1.5)
        brow_pts = np.concatenate([np.linspace(lm[i], lm[i + 1], 8) for i in list(range(17, 21)) + list(range(22, 26))])
        d_brow = np.min(np.linalg.norm(v[:, None, :2] - brow_pts[None, :, :2], axis=-1), axis=1)
        front = v[:, 2] > lm[:, 2].min() - 15
        parts["brows"] = np.clip(1.0 - (d_brow - 2.0) / 2.5, 0, 1) * front
        parts["cheeks"] = soft(regions["cheeks"], 12.0) * 0.8
        brow_top = lm[17:27, 1].max()
        ear_z = min(lm[0, 2], lm[16, 2])
        # height above the brows, and a "behind the ears" factor, for the per-sample hairline
        parts["above_brows_mm"] = v[:, 1] - brow_top
        parts["behind_ears"] = np.clip((ear_z - 15.0 - v[:, 2]) / 10.0, 0, 1) * np.clip((v[:, 1] - (brow_top + 5.0)) / 10.0, 0, 1)
        eyeballs = np.setdiff1d(regions["eyes"], face)
        sclera = np.zeros(n)
        iris = np.zeros(n)
        pupil = np.zeros(n)
        if len(eyeballs):
            sclera[eyeballs] = 1.0
            # each eyeball: split by side, iris = within ~6 mm of its front-most point
            for side in (eyeballs[v[eyeballs, 0] > 0], eyeballs[v[eyeballs, 0] <= 0]):
                if len(side) == 0:
                    continue
                tip = v[side][np.argmax(v[side, 2])]
                dd = np.linalg.norm(v[side] - tip, axis=1)
                iris[side] = np.clip((6.0 - dd) / 1.0, 0, 1)
                pupil[side] = np.clip((2.5 - dd) / 0.8, 0, 1)
        parts["sclera"] = sclera
        parts["iris"] = iris
        parts["pupil"] = pupil
        parts["mouth_interior"] = np.zeros(n)
        mi = np.setdiff1d(regions["mouth_interior"], face)
        parts["mouth_interior"][mi] = 1.0
        # smooth low-frequency variation basis (random features are drawn per sample)
        parts["xyz"] = v
        return parts

    def albedo(self, params: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
        """(V, 3) the face's per-vertex albedo in [0, 1] (skin tone, blotches, lips, brows; draws from ``rng``)."""
        p = self.albedo_parts
        v = p["xyz"]
        skin = np.array(params.skin_rgb)
        k = rng.normal(0, 1.0 / 45.0, (6, 3))  # wavelengths of ~ 2 pi * 45 mm
        phase = rng.uniform(0, 2 * math.pi, 6)
        field = np.sin(v @ k.T + phase).mean(1)  # (V,) in [-1, 1]
        base = skin[None] * (1.0 + 0.10 * field[:, None])
        base = base * (1 - 0.25 * p["cheeks"][:, None]) + p["cheeks"][:, None] * 0.25 * (skin * [1.08, 0.85, 0.85])
        lips = skin * np.array([0.85, 0.62, 0.62])
        base = base * (1 - p["lips"][:, None]) + p["lips"][:, None] * lips
        hair = np.array(params.hair_rgb)
        hair_mask = np.clip((p["above_brows_mm"] - params.hairline_mm) / 8.0, 0, 1)
        if params.hairline_mm < 50.0:  # hair on the back of the head too (else: receding / bald)
            hair_mask = np.maximum(hair_mask, p["behind_ears"])
        brows = np.minimum(hair * 1.2, skin * 0.5)
        base = base * (1 - 0.8 * p["brows"][:, None]) + 0.8 * p["brows"][:, None] * brows
        base = base * (1 - hair_mask[:, None]) + hair_mask[:, None] * hair
        sclera = np.array([0.86, 0.84, 0.80])
        base = np.where(p["sclera"][:, None] > 0, sclera, base)
        iris = np.array(params.iris_rgb)
        base = base * (1 - p["iris"][:, None]) + p["iris"][:, None] * iris
        base = base * (1 - p["pupil"][:, None]) + p["pupil"][:, None] * 0.03
        base = np.where(p["mouth_interior"][:, None] > 0, skin * [0.45, 0.2, 0.2], base)
        return np.clip(base, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _draw_background(rng: np.random.Generator) -> dict:
        kind = ["uniform", "gradient", "noise"][int(rng.integers(3))]
        colours = rng.uniform(0.0, 1.0, (2, 3))
        bg = {"kind": kind, "colours": np.round(colours, 4).tolist()}
        if kind == "gradient":
            bg["angle_deg"] = float(rng.uniform(0, 360))
        if kind == "noise":
            bg["grid"] = np.round(rng.uniform(0, 1, (5, 5, 3)), 4).tolist()
        return bg


def background_image(bg: dict, size: int) -> np.ndarray:
    """(S, S, 3) float background from its description (same picture at every size)."""
    c = np.array(bg["colours"], dtype=np.float64)
    if bg["kind"] == "uniform":
        return np.broadcast_to(c[0], (size, size, 3)).copy()
    u = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(u, u)
    if bg["kind"] == "gradient":
        a = math.radians(bg["angle_deg"])
        s = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)
        return c[0] * (1 - s[..., None]) + c[1] * s[..., None]
    import cv2

    grid = np.array(bg["grid"], dtype=np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1).astype(np.float64)


def write_sample(sample: SyntheticSample, folder: str | Path, stem: str | None = None,
                 triangles: np.ndarray | None = None) -> list[Path]:
    """Save a sample: ``<stem>_<S>.png`` per size, ``<stem>.ply`` and ``<stem>.obj`` (ground-truth
    mesh, model frame, mm), ``<stem>.json`` (parameters, cameras, landmarks). Atomic writes.

    Args:
        triangles: (F, 3) mesh triangles (the generator's ``model.triangles``).
    """
    from PIL import Image

    from faceclip.io.files import atomic_path
    from faceclip.io.mesh import write_obj, write_ply

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"synth_{sample.params.seed}_{sample.params.index:06d}"
    files = []
    for size, img in sample.images.items():
        path = folder / f"{stem}_{size}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        files.append(path)
    if triangles is not None:
        files.append(write_ply(folder / f"{stem}.ply", sample.vertices_mm, triangles))
        files += write_obj(folder / f"{stem}.obj", sample.vertices_mm, triangles)[:1]
    meta = {
        "params": sample.params.to_json(),
        "head_rotation": np.round(sample.head_rotation, 8).tolist(),
        "cameras": {str(k): v for k, v in sample.cameras.items()},
        "landmarks68_px": {str(k): np.round(v, 4).tolist() for k, v in sample.landmarks68_px.items()},
        "landmarks68_3d_px": {str(k): np.round(v, 4).tolist() for k, v in sample.landmarks68_3d_px.items()},
        "conventions": {
            "mesh": "mm, model frame: right-handed, +X subject's left, +Y up, +Z out of the face",
            "camera": "OpenCV: X_cam = R @ X_model + t_mm; x right, y down, z forward",
            "pixels": "x right, y down, origin at the image's top-left corner, pixel centres at +0.5",
            "landmarks68_px": "2D-detector convention: jaw contour on the visible silhouette",
            "landmarks68_3d_px": "projections of the model's fixed 68 landmark vertices",
        },
    }
    path = folder / f"{stem}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    files.append(path)
    return files
