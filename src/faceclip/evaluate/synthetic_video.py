"""Synthetic video clips with known geometry: one face turning, talking and changing light.

A clip takes the face of :class:`faceclip.evaluate.synthetic.SyntheticFaceGenerator` sample
``(seed, index)`` (identity, skin, hair, eyes, background) and animates it smoothly:

- **head turns**: yaw sweeps ``+-yaw_deg`` (one and a half periods per clip), pitch and roll
  drift slowly (``pitch_deg``, ``roll_deg``), and the head moves a little across the frame and
  toward the camera (a slow zoom of ``zoom`` of the distance);
- **expressions**: a few of the generator's expression groups rise and fall in turn (smooth
  bumps of weight 0.3-0.8), with neutral stretches between them;
- **light**: the SH lighting blends from one drawn light to another over the clip.

Frames are rendered with the generator's renderer (antialiased) at ``width x height`` with a
fixed pinhole of field of view ``fov_deg`` (horizontal). Everything is deterministic in
``(seed, index)``; the ground truth per frame is the canonical vertices (model frame, mm), the
expression, the head rotation and translation (OpenCV camera frame) and the 68 landmarks in the
2D-detector convention.

Example::

    clip = make_synthetic_clip(seed=0, index=0, config=ClipConfig(n_frames=30))
    write_clip_video(clip, "clip.mp4")            # H.264 at clip.fps
    clip.frames[0].shape, clip.vertices_mm.shape  # (480, 640, 3), (30, V, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from faceclip.facemodel.params import MODEL_TO_OPENCV, euler_matrix_np

__all__ = ["ClipConfig", "SyntheticClip", "make_synthetic_clip", "write_clip_video"]


@dataclass(frozen=True)
class ClipConfig:
    """Clip length, frame size and motion ranges."""

    n_frames: int = 90
    fps: float = 30.0
    width: int = 640
    height: int = 480
    fov_deg: float = 30.0
    #: Head width as a fraction of the frame height.
    face_fill: float = 0.45
    yaw_deg: float = 35.0
    pitch_deg: float = 10.0
    roll_deg: float = 6.0
    #: Relative change of the camera distance over the clip.
    zoom: float = 0.15
    #: Sideways drift of the head centre, fraction of the frame width.
    drift: float = 0.06
    n_expressions: int = 3
    noise_level: float = 1.5 / 255.0


@dataclass
class SyntheticClip:
    """A rendered clip and its ground truth (F frames, V vertices, E expression coefficients).

    Attributes:
        frames: F arrays (H, W, 3) uint8 RGB.
        vertices_mm: (F, V, 3) float32 canonical vertices (identity + expression).
        neutral_mm: (V, 3) float32 the identity's neutral face.
        identity: (I,) identity coefficients; expression: (F, E) blendshape weights.
        angles_deg: (F, 3) pitch, yaw, roll; rotation_cv: (F, 3, 3) model -> OpenCV camera;
        translation_mm: (F, 3) OpenCV camera frame.
        landmarks68_px: (F, 68, 2) 2D-detector convention (sliding contour).
        focal_px: the pinhole's focal length (principal point at the frame centre).
    """

    frames: list[np.ndarray]
    vertices_mm: np.ndarray
    neutral_mm: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    angles_deg: np.ndarray
    rotation_cv: np.ndarray
    translation_mm: np.ndarray
    landmarks68_px: np.ndarray
    focal_px: float
    fps: float

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Smooth bump in [0, 1]: 1 at ``centre``, 0 beyond ``+-width`` (raised cosine)."""
    x = np.clip(np.abs(t - centre) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def make_synthetic_clip(seed: int = 0, index: int = 0, config: ClipConfig = ClipConfig(), generator=None,
                        progress=None) -> SyntheticClip:
    """Render clip ``(seed, index)``.

    Args:
        generator: a :class:`SyntheticFaceGenerator` of this seed to reuse (made if None).
        progress: optional callable ``progress(done, total)`` after each frame.
    """
    from faceclip.evaluate.synthetic import EXPRESSION_GROUPS, SyntheticFaceGenerator, background_image
    from faceclip.fit.contour import landmark_vertex_ids
    from faceclip.render import PerspectiveCamera, render_mesh

    c = config
    if c.n_frames < 2 or c.width < 32 or c.height < 32:
        raise ValueError("a clip needs >= 2 frames of at least 32 x 32 pixels")
    gen = generator if generator is not None and generator.seed == seed else SyntheticFaceGenerator(seed=seed)
    m = gen.model
    base = gen.draw_params(index)
    rng = np.random.default_rng([seed, index, 7])  # the clip's own stream (motion, expressions, light)
    F = c.n_frames
    t = np.linspace(0.0, 1.0, F)
    phase = rng.uniform(0, 2 * np.pi, 4)
    yaw = c.yaw_deg * np.sin(3 * np.pi * t + phase[0])
    pitch = c.pitch_deg * np.sin(2 * np.pi * t + phase[1])
    roll = c.roll_deg * np.sin(np.pi * t + phase[2])
    angles = np.stack([pitch, yaw, roll], 1)
    # Expressions: n groups, each a bump centred in its own part of the clip.
    groups = [g for g in EXPRESSION_GROUPS if all(n in m.expression_names for n in g)]
    expr = np.zeros((F, m.n_expression))
    picks = rng.choice(len(groups), size=min(c.n_expressions, len(groups)), replace=False)
    for j, gi in enumerate(picks):
        centre = (j + 0.5) / len(picks)
        amp = rng.uniform(0.3, 0.8)
        for name in groups[gi]:
            expr[:, m.expression_index(name)] = amp * _bump(t, centre, 0.45 / len(picks))
    sh0 = np.asarray(base.sh, np.float64)
    sh1 = gen.draw_light(rng)  # the generator's light model
    # Camera and head placement.
    focal = c.width * 0.5 / math.tan(math.radians(c.fov_deg) / 2)
    distance0 = focal * 160.0 / (c.face_fill * c.height)
    distance = distance0 * (1.0 + c.zoom * (t - 0.5) * 2 * np.sign(rng.uniform(-1, 1)))
    drift_x = c.drift * c.width * np.sin(np.pi * t + phase[3])
    ident = torch.tensor(base.identity, dtype=torch.float32)[None]
    with torch.no_grad():
        neutral = m(identity=ident, expression=torch.zeros(1, m.n_expression)).vertices_mm[0].numpy()
        verts = m(identity=ident.expand(F, -1), expression=torch.as_tensor(expr, dtype=torch.float32)).vertices_mm.numpy()
    albedo = torch.from_numpy(gen.albedo(base, np.random.default_rng([seed, index, 1]))).float()[None]
    side = max(c.width, c.height)
    bg_full = background_image(base.background, side)
    y0, x0 = (side - c.height) // 2, (side - c.width) // 2
    bg = bg_full[y0:y0 + c.height, x0:x0 + c.width]
    centre_model = gen.head_centre_mm  # the head centre the generator's cameras aim at
    frames, R_all, t_all, lms = [], [], [], []
    noise = np.random.default_rng([seed, index, 8])
    for k in range(F):
        R = MODEL_TO_OPENCV @ euler_matrix_np(*np.radians(angles[k]))
        tr = np.array([drift_x[k] * distance[k] / focal, 0.0, distance[k]]) - R @ centre_model
        cam = PerspectiveCamera.create(torch.tensor(R, dtype=torch.float32), torch.tensor(tr, dtype=torch.float32),
                                       focal, (c.height, c.width))
        v = torch.from_numpy(verts[k])[None]
        s = t[k]
        sh = torch.tensor((1 - s) * sh0 + s * sh1, dtype=torch.float32)[None]
        r = render_mesh(v, m.triangles, cam, vertex_colors=albedo, sh_coeffs=sh, background=0.0,
                        cull_backfaces=True, antialiased=True)
        rgb = r.image[0].clamp(0, 1).numpy()
        alpha = r.alpha[0].clamp(0, 1).numpy()
        img = rgb + (1.0 - alpha[..., None]) * bg
        img += noise.normal(0.0, c.noise_level, img.shape)
        frames.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        ids = landmark_vertex_ids(m, gen.contour_bands, v, cam)[0]
        lms.append(cam.project(v[:, ids])[0].numpy().astype(np.float64))
        R_all.append(R)
        t_all.append(tr)
        if progress is not None:
            progress(k + 1, F)
    return SyntheticClip(frames=frames, vertices_mm=verts.astype(np.float32), neutral_mm=neutral.astype(np.float32),
                         identity=np.asarray(base.identity, np.float64), expression=expr, angles_deg=angles,
                         rotation_cv=np.stack(R_all), translation_mm=np.stack(t_all), landmarks68_px=np.stack(lms),
                         focal_px=float(focal), fps=float(c.fps))


def write_clip_video(clip: SyntheticClip, path: str | Path, codec: str = "libx264", crf: int = 18) -> Path:
    """Encode the clip's frames as a video file (H.264 in .mp4 by default) at ``clip.fps``."""
    from faceclip.io.video import write_frames

    return write_frames(path, clip.frames, clip.fps, codec=codec, crf=crf)
