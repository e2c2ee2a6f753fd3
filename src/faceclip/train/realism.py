"""Making synthetic training faces look like photos (for the dense landmark network).

:class:`SyntheticFaceDataset` renders clean faces: procedural skin, soft light, plain
backgrounds. A network trained only on those learns shortcuts (a face is whatever is not a flat
background) that fail on photos. With ``SyntheticFaceDataset(..., realism=Realism(config))`` each
sample also draws, from its own ``(seed, index)`` stream:

- **expression**: with probability ``full_expression``, weights for the whole blendshape space
  (each shape active with probability 0.3, weight ``U(0, 1) ** 1.5``, left and right partly tied)
  instead of the benchmark's few paired groups;
- **skin**: with probability ``texture`` (when a texture folder is given), the colours of a real
  face: a UV texture unwrapped from a photo by ``faceclip reconstruct PHOTOS --out DIR --delight``
  (every ``mesh_texture.png`` under the folder), sampled at the model's vertices, with a random
  per-channel gain, scaled so that its mean skin colour is the drawn skin tone (the palette's
  range is kept; the texture adds real detail); the synthetic hair, eyes and mouth interior stay
  procedural. Hair and brows
  get strand-like streaks;
- **light**: with probability ``hard_light``, a strong directional light from anywhere in front
  (also from the side and below) with little ambient; with probability ``specular`` a Blinn-Phong
  highlight (shading is done per vertex, so the highlight moves with the geometry);
- **background**: a random crop of a face-free photo (``backgrounds`` folder or file, e.g.
  ``dogs.jpg``) with probability ``photo_background``, else procedural clutter (rectangles,
  ellipses, lines, blurred) with probability ``clutter``, else the generator's plain background;
- **occluders**: with probability ``occluder``, one or two shapes over the face (a bar, an
  ellipse or polygon in a flat colour, a background patch or a skin-coloured "hand");
- **camera**: white balance, exposure, Gaussian or motion blur, sensor noise and JPEG
  compression (each with its probability).

The geometry, and so every landmark target, stays exact: occluded points keep their true
positions (the network learns to predict them through the occluder, with a larger uncertainty).

Never put photos used for evaluation in these folders (``bald_guys.jpg``, the astronaut, any
benchmark image).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceclip.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["RealismConfig", "Realism", "camera_effects", "clutter_background", "vertex_colours_from_texture"]

#: Bumped when the drawn samples change for the same settings (cached samples of another version
#: are refused): 2 = real textures scaled to the drawn skin tone.
REALISM_VERSION = 2


_PROBABILITIES = ("full_expression", "texture", "hard_light", "specular", "photo_background", "clutter", "occluder",
                  "blur", "noise", "jpeg")


@dataclass(frozen=True)
class RealismConfig:
    """Probabilities and sources (see the module docstring).

    Attributes:
        backgrounds: a face-free photo, or a folder of them (searched recursively); None: none.
        textures: a folder holding UV textures (``mesh_texture.png`` files written by
            ``faceclip reconstruct``, searched recursively); None: procedural skin only.
    """

    backgrounds: str | None = None
    textures: str | None = None
    full_expression: float = 0.5
    texture: float = 0.7
    hard_light: float = 0.5
    specular: float = 0.5
    photo_background: float = 0.6
    clutter: float = 0.7
    occluder: float = 0.3
    blur: float = 0.4
    noise: float = 0.6
    jpeg: float = 0.5
    white_balance: float = 0.12  # maximum relative per-channel gain change

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise InputError(f"realism.{name} must be a probability in [0, 1], got {v!r}")
        if not 0.0 <= float(self.white_balance) < 1.0:
            raise InputError(f"realism.white_balance must be in [0, 1), got {self.white_balance!r}")


def _list_images(root: Path, pattern: str = "*") -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder")
    from faceclip.io.images import IMAGE_SUFFIXES

    return sorted(p for p in root.rglob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_rgb(path: Path, max_side: int = 768) -> np.ndarray:
    """(H, W, 3) uint8 RGB, downscaled to at most ``max_side``."""
    from faceclip.io.images import load_image

    rgb = load_image(path)
    s = max(rgb.shape[:2])
    if s > max_side:
        import cv2

        f = max_side / s
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


#: Background photos kept in memory per process (uint8, at most 768 px: <= 1.8 MB each).
MAX_CACHED_BACKGROUNDS = 64


def vertex_colours_from_texture(uv_corners: np.ndarray, triangles: np.ndarray, texture: np.ndarray,
                                n_vertices: int) -> np.ndarray:
    """Per-vertex colours sampled from a UV texture.

    Args:
        uv_corners: (F, 3, 2) per-corner UVs in [0, 1], v up.
        triangles: (F, 3) vertex ids of the corners.
        texture: (Ht, Wt, 3) float texture, row 0 = v 1.
        n_vertices: V.
    Returns:
        (V, 3) float32: the mean of the texture at each vertex's corners (bilinear); vertices
        on no triangle get the texture's median colour.
    """
    h, w = texture.shape[:2]
    uv = uv_corners.reshape(-1, 2).astype(np.float64)
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.minimum(x.astype(np.int64), w - 2).clip(0), np.minimum(y.astype(np.int64), h - 2).clip(0)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    c = ((t[y0, x0] * (1 - fx) + t[y0, x1] * fx) * (1 - fy) + (t[y1, x0] * (1 - fx) + t[y1, x1] * fx) * fy)
    ids = triangles.reshape(-1)
    acc = np.zeros((n_vertices, 3), np.float64)
    cnt = np.zeros(n_vertices)
    np.add.at(acc, ids, c)
    np.add.at(cnt, ids, 1.0)
    out = np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], np.median(texture.reshape(-1, 3), 0))
    return out.astype(np.float32)


def clutter_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float procedural clutter: a gradient with random shapes and lines, blurred."""
    import cv2

    img = np.empty((size, size, 3), np.float32)
    c0, c1 = rng.uniform(0, 1, (2, 3))
    t = np.linspace(0, 1, size, dtype=np.float32)
    img[:] = c0 + (c1 - c0) * (t[:, None, None] if rng.random() < 0.5 else t[None, :, None])
    for _ in range(int(rng.integers(3, 12))):
        col = tuple(float(x) for x in rng.uniform(0, 1, 3))
        kind = rng.integers(3)
        p = rng.uniform(-0.2, 1.2, 2) * size
        if kind == 0:
            q = p + rng.uniform(0.05, 0.6, 2) * size
            cv2.rectangle(img, tuple(int(x) for x in p), tuple(int(x) for x in q), col, -1)
        elif kind == 1:
            ax = tuple(int(x) for x in rng.uniform(0.03, 0.3, 2) * size)
            cv2.ellipse(img, tuple(int(x) for x in p), ax, float(rng.uniform(0, 180)), 0, 360, col, -1)
        else:
            q = rng.uniform(-0.2, 1.2, 2) * size
            cv2.line(img, tuple(int(x) for x in p), tuple(int(x) for x in q), col,
                     max(1, int(rng.uniform(0.005, 0.04) * size)))
    sigma = float(rng.uniform(0.0, 3.0)) * size / 128
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0, 1)


def camera_effects(img: np.ndarray, rng: np.random.Generator, cfg: RealismConfig) -> np.ndarray:
    """White balance, exposure, blur, noise and JPEG on a (S, S, 3) float image; returns uint8."""
    import cv2

    S = img.shape[0]
    img = img * (1.0 + rng.uniform(-cfg.white_balance, cfg.white_balance, 3))[None, None]
    img = np.clip(img, 0, 1) ** float(rng.uniform(0.8, 1.25))
    img = img * float(rng.uniform(0.75, 1.2))
    if rng.random() < cfg.blur:
        if rng.random() < 0.7:
            img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), float(rng.uniform(0.3, 1.6)) * S / 128)
        else:  # motion blur along a random direction
            k = max(3, int(rng.uniform(2, 7) * S / 128) | 1)
            ker = np.zeros((k, k), np.float32)
            a = rng.uniform(0, math.pi)
            c = (k - 1) / 2
            for s in np.linspace(-c, c, 4 * k):
                ker[int(round(c + s * math.sin(a))), int(round(c + s * math.cos(a)))] = 1.0
            img = cv2.filter2D(img.astype(np.float32), -1, ker / ker.sum())
    if rng.random() < cfg.noise:
        sd = float(rng.uniform(1.0, 10.0)) / 255.0
        img = img + rng.normal(0, 1, img.shape) * sd * np.sqrt(np.clip(img, 0.02, 1) / 0.5)
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.random() < cfg.jpeg:
        ok, enc = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 90))])
        if ok:
            u8 = cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return u8


class Realism:
    """Draws the realism of one sample (see the module docstring); holds the loaded sources.

    Args:
        config: what to draw.
        model: the face model the samples use (its UVs map the textures onto vertices).
    """

    def __init__(self, config: RealismConfig, model) -> None:
        self.config = config
        self.model = model
        self.background_files = _list_images(Path(config.backgrounds)) if config.backgrounds else []
        self.texture_files = _list_images(Path(config.textures), "*texture*") if config.textures else []
        if config.backgrounds and not self.background_files:
            raise InputError(f"no images in {config.backgrounds}", hint="give a face-free photo or a folder of them")
        if config.textures and not self.texture_files:
            raise InputError(f"no UV textures (*texture*.png) in {config.textures}",
                             hint="make them with: faceclip reconstruct PHOTOS --out DIR --delight")
        self._bg_cache: dict[int, np.ndarray] = {}
        self._tex_cache: dict[int, np.ndarray] = {}

    def describe(self) -> dict:
        """JSON-able description (cache keys, provenance): the settings and the source files."""
        from dataclasses import asdict

        return {"version": REALISM_VERSION, "config": asdict(self.config),
                "backgrounds": [p.name for p in self.background_files],
                "textures": [str(p.relative_to(self.config.textures)) if self.config.textures else p.name
                             for p in self.texture_files]}

    # ------------------------------------------------------------------ expression

    def expression(self, rng: np.random.Generator, base: dict[str, float]) -> dict[str, float]:
        """Blendshape weights: ``base`` or, with probability ``full_expression``, a dense draw."""
        if rng.random() >= self.config.full_expression:
            return base
        names = list(self.model.expression_names)
        out: dict[str, float] = {}
        for name in names:
            if name.endswith("_R") and name[:-2] + "_L" in out:
                left = out[name[:-2] + "_L"]
                w = left if rng.random() < 0.6 else float(rng.uniform(0, 1) ** 1.5) * (rng.random() < 0.3)
            else:
                w = float(rng.uniform(0, 1) ** 1.5) if rng.random() < 0.3 else 0.0
            if w > 0:
                out[name] = round(w, 4)
        return out

    # ------------------------------------------------------------------ albedo

    def texture_colours(self, rng: np.random.Generator) -> np.ndarray | None:
        """(V, 3) per-vertex colours of a random real texture, or None (procedural skin)."""
        if not self.texture_files or rng.random() >= self.config.texture:
            return None
        i = int(rng.integers(len(self.texture_files)))
        if i not in self._tex_cache:
            m = self.model
            tex = _read_rgb(self.texture_files[i], max_side=1024).astype(np.float32) / 255.0
            self._tex_cache[i] = vertex_colours_from_texture(m.uv.cpu().numpy(), m.triangles.cpu().numpy(), tex,
                                                             m.n_vertices)
        gain = rng.uniform(0.8, 1.2) * rng.uniform(0.93, 1.07, 3)
        return np.clip(self._tex_cache[i] * gain, 0, 1).astype(np.float32)

    @staticmethod
    def hair_streaks(rng: np.random.Generator, xyz: np.ndarray) -> np.ndarray:
        """(V,) multiplicative streak pattern (strands running front to back / downwards)."""
        k = rng.uniform(0.4, 1.2)
        phase = rng.uniform(0, 2 * math.pi, 3)
        s = (np.sin(xyz[:, 0] * k + phase[0]) + 0.6 * np.sin(xyz[:, 0] * 2.3 * k + xyz[:, 1] * 0.15 + phase[1])
             + 0.4 * np.sin(xyz[:, 0] * 5.1 * k + phase[2]))
        return (1.0 + 0.18 * s / 2.0).astype(np.float32)

    # ------------------------------------------------------------------ light

    def light(self, rng: np.random.Generator, sh: np.ndarray) -> tuple[np.ndarray, dict | None]:
        """(9, 3) SH (maybe a hard light instead of ``sh``) and a specular description or None."""
        from faceclip.render.shading import sh_directional
        import torch

        direction = None
        if rng.random() < self.config.hard_light:
            theta = rng.uniform(0, 2 * math.pi)
            elev = rng.uniform(-0.1, 0.9)
            r = math.sqrt(max(1 - elev ** 2, 0.0))
            direction = np.array([r * math.cos(theta), r * math.sin(theta), elev])
            sh = sh_directional(tuple(direction), ambient=float(rng.uniform(0.15, 0.5)),
                                diffuse=float(rng.uniform(0.6, 1.1)), dtype=torch.float64)[0].numpy()
            sh = sh * rng.uniform(0.9, 1.1, 3)[None, :]
        spec = None
        if rng.random() < self.config.specular:
            if direction is None:
                direction = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.7), 1.0])
            spec = {"direction": (direction / np.linalg.norm(direction)).tolist(),
                    "strength": float(rng.uniform(0.05, 0.35)), "shininess": float(rng.uniform(8, 60))}
        return sh, spec

    # ------------------------------------------------------------------ background, occluders

    def background(self, rng: np.random.Generator, size: int, plain: np.ndarray) -> np.ndarray:
        """(S, S, 3) float background: a photo crop, clutter, or ``plain``."""
        u = rng.random()
        if self.background_files and u < self.config.photo_background:
            return self._photo_crop(rng, size)
        if rng.random() < self.config.clutter:
            return clutter_background(rng, size)
        return plain

    def _photo_crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        import cv2

        i = int(rng.integers(len(self.background_files)))
        if i not in self._bg_cache:
            if len(self._bg_cache) >= MAX_CACHED_BACKGROUNDS:
                self._bg_cache.pop(next(iter(self._bg_cache)))  # oldest first
            self._bg_cache[i] = _read_rgb(self.background_files[i])
        img = self._bg_cache[i]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
        crop = crop.astype(np.float32) / 255.0
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.clip(crop * rng.uniform(0.7, 1.2, 3)[None, None], 0, 1)

    def occlude(self, rng: np.random.Generator, img: np.ndarray, skin_rgb: np.ndarray) -> np.ndarray:
        """Draw 0-2 occluders over the central face area of a (S, S, 3) float image."""
        import cv2

        if rng.random() >= self.config.occluder:
            return img
        S = img.shape[0]
        for _ in range(int(rng.integers(1, 3))):
            # drawn at 4x on uint8 and area-downsampled: antialiased edges (OpenCV's LINE_AA
            # does not antialias float images)
            up = 4
            mask = np.zeros((S * up, S * up), np.uint8)
            c = (0.5 + rng.uniform(-0.28, 0.28, 2)) * S
            kind = int(rng.integers(3))
            if kind == 0:  # a bar (a microphone, a strap, a finger)
                a = rng.uniform(0, math.pi)
                L, wdt = rng.uniform(0.3, 0.9) * S, rng.uniform(0.04, 0.14) * S
                d = np.array([math.cos(a), math.sin(a)])
                n = np.array([-d[1], d[0]])
                pts = np.array([c - d * L / 2 - n * wdt / 2, c + d * L / 2 - n * wdt / 2,
                                c + d * L / 2 + n * wdt / 2, c - d * L / 2 + n * wdt / 2])
                cv2.fillPoly(mask, [np.round(pts * up * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
            elif kind == 1:  # an ellipse (a hand, a cup)
                ax = (int(rng.uniform(0.08, 0.22) * S * up), int(rng.uniform(0.06, 0.18) * S * up))
                cv2.ellipse(mask, (int(c[0] * up), int(c[1] * up)), ax, float(rng.uniform(0, 180)), 0, 360, 255, -1)
            else:  # a random polygon
                k = int(rng.integers(3, 7))
                ang = np.sort(rng.uniform(0, 2 * math.pi, k))
                rad = rng.uniform(0.05, 0.2, k) * S
                pts = c + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
                cv2.fillPoly(mask, [np.round(pts * up * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
            mask = cv2.resize(mask, (S, S), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            style = rng.random()
            if style < 0.35:
                fill = np.broadcast_to(skin_rgb * rng.uniform(0.85, 1.1, 3), (S, S, 3))
            elif style < 0.7 and self.background_files:
                fill = self._photo_crop(rng, S)
            else:
                fill = np.broadcast_to(rng.uniform(0, 1, 3), (S, S, 3))
            m = mask[..., None]
            img = img * (1 - m) + fill * m
        return img
