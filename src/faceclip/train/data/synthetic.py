"""Synthetic faces: :class:`SyntheticFaceDataset` renders faces with ground-truth parameters as
aligned crops in the crop camera (optionally cached on disk), re-framed in 3D by
:class:`FramingJitter`."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from faceclip.errors import InputError
from faceclip.facemodel.params import MODEL_TO_OPENCV, FaceParams
from faceclip.train.data.augment import Augment, _AugmentedDataset, geometry_matrix
from faceclip.train.data.preprocess import CACHE_VERSION
from faceclip.train.data.samples import FaceSample

if TYPE_CHECKING:
    from faceclip.facemodel import FaceModel

log = logging.getLogger(__name__)

SYNTH_FORMAT = "faceclip-synthetic-cache"
SYNTH_META_NAME = "synthetic.json"


# =========================================================================== synthetic faces

_F = MODEL_TO_OPENCV  # model frame -> OpenCV camera axes


@dataclass(frozen=True)
class FramingJitter:
    """Random re-framing of synthetic faces, done in 3D so that their parameters stay exact.

    The five alignment points are placed on the alignment template moved by a random
    similarity about the crop centre (the 3D equivalent of :class:`Augment`'s warp: the head
    moves and rolls in front of the crop camera). ``FramingJitter()`` uses Augment's ranges.

    Attributes:
        shift_px: maximum shift of the template in x and y (crop pixels, uniform).
        scale_range: template scale about the crop centre (uniform).
        rotation_deg: maximum template rotation (uniform).
    """

    shift_px: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 10.0


class SyntheticFaceDataset(_AugmentedDataset):
    """Synthetic faces with ground-truth parameters, rendered as aligned crops in the crop camera.

    Sample ``i`` depends only on ``(seed, i)`` (and the settings): the generator's draws for
    ``(seed, i)`` (identity, expression, pitch/yaw/roll, SH light, skin, hair, background,
    sensor noise), rendered with focal ``focal_px`` and the principal point at the crop centre;
    the head's distance, lateral offset and roll about the optical axis are solved so that the
    five alignment points (eye centres, nose tip, mouth corners of the landmarks) fit the
    alignment template exactly (to < 0.01 px), as :func:`~faceclip.detect.align_face` frames a
    photo. The ground truth is:

    - ``landmarks_px``: the 68 landmarks in 2D-detector convention (the jaw follows the visible
      contour, :func:`faceclip.fit.contour.landmark_vertex_ids`), like the photos' dlib points;
    - ``skin_mask``: the rendered pixels of the model's ``skin`` region not covered by the
      synthetic hair or eyebrows;
    - ``params``: :class:`FaceParams` in the crop camera (``params.camera()`` reproduces the
      rendering; angles include the solved roll; ``albedo`` is empty, ``(1, 0, 3)``: the
      synthetic skin is a procedural per-vertex colour, not coefficients of an albedo basis).

    Note: the synthetic benchmark (``faceclip benchmark synthetic``) uses seed 0; train with
    other seeds, and validate with yet another.

    Args:
        face_model: the model to draw and render (``None``: ICT ``head_eyes``, the
            reconstruction geometry). The generator needs the ICT regions.
        n: number of samples.
        seed: the generator's seed.
        image_px: crop side ``S``.
        augment: optional :class:`Augment` (colour jitter only: samples carry parameters).
        framing: optional :class:`FramingJitter` (exact geometric variation; ``None``: every face
            framed exactly on the template).
        focal_px: crop-camera focal length (default ``DEFAULT_FOCAL_224 * S / 224``).
        cache_dir: optional folder of pre-rendered samples (``s_<index>.npz``); samples missing
            there are rendered and written (atomically) on first use; see :meth:`prerender`.
        augment_seed: augmentation seed (default: ``seed``).
        realism: optional :class:`faceclip.train.realism.RealismConfig` (or a dict of its fields): photo textures and
            backgrounds, hard light, occluders, camera effects, the whole expression space
            (drawn from another stream of ``(seed, index)``; the geometry stays exact).
    """

    def __init__(
        self,
        face_model: FaceModel | None,
        n: int,
        seed: int,
        image_px: int = 224,
        augment: Augment | None = None,
        *,
        framing: FramingJitter | None = None,
        focal_px: float | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        augment_seed: int | None = None,
        realism: Any = None,
    ) -> None:
        from faceclip.evaluate.synthetic import SyntheticConfig, SyntheticFaceGenerator
        from faceclip.fit.contour import build_contour_bands
        from faceclip.facemodel.params import DEFAULT_FOCAL_224
        from faceclip.render import edge_topology

        if n < 0:
            raise InputError(f"the number of synthetic samples must be >= 0, got {n}")
        if image_px < 32:
            raise InputError(f"image_px must be at least 32, got {image_px}")
        self.n = int(n)
        self.seed = int(seed)
        self.image_px = int(image_px)
        self.focal_px = float(focal_px) if focal_px is not None else DEFAULT_FOCAL_224 * self.image_px / 224.0
        self.framing = framing
        self.augment = augment
        self.augment_seed = self.seed if augment_seed is None else int(augment_seed)
        self.epoch = 0
        self.generator = SyntheticFaceGenerator(face_model, seed=self.seed, config=SyntheticConfig(sizes_px=(self.image_px,)))
        m = self.generator.model
        self._bands = build_contour_bands(m)
        self._topology = edge_topology(m.triangles)  # cached: ~15 ms per render otherwise
        mean = m.mean_mm.double().numpy()
        lm_mean = mean[m.landmarks68.numpy()]
        self._centre = lm_mean.mean(0)
        self._eye_distance_mm = float(np.linalg.norm(lm_mean[36:42].mean(0) - lm_mean[42:48].mean(0)))
        self._skin_vertex = np.zeros(m.n_vertices, dtype=bool)
        self._skin_vertex[m.regions["skin"].numpy()] = True
        self.realism = None
        if realism is not None:
            from faceclip.train.realism import Realism, RealismConfig

            self.realism = Realism(RealismConfig(**realism) if isinstance(realism, dict) else realism, m)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self._check_cache_meta()

    @property
    def face_model(self) -> FaceModel:
        """The model the samples' parameters refer to (CPU, float32)."""
        return self.generator.model

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> FaceSample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self._augment(self.load(index), index)

    def load(self, index: int) -> FaceSample:
        """Sample ``index`` without augmentation (from the cache when there is one)."""
        if self.cache_dir is None:
            return self.render(index)
        path = self.cache_dir / f"s_{index:07d}.npz"
        if path.is_file():
            try:
                return self._read_cached(path, index)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("%s: unreadable cached sample (%s); rendering it again", path, exc)
        sample = self.render(index)
        self._write_cached(path, sample)
        return sample

    def prerender(self, progress: bool = True) -> int:
        """Render every sample missing from ``cache_dir``; returns how many were rendered."""
        from tqdm import tqdm

        if self.cache_dir is None:
            raise InputError("prerender needs a cache_dir", hint="SyntheticFaceDataset(..., cache_dir='cache/synth')")
        done = 0
        for i in tqdm(range(self.n), desc="synthetic", unit="face", disable=not progress):
            path = self.cache_dir / f"s_{i:07d}.npz"
            if not path.is_file():
                self._write_cached(path, self.render(i))
                done += 1
        return done

    # ------------------------------------------------------------------ rendering

    def render(self, index: int) -> FaceSample:
        """Draw and render sample ``index`` (no augmentation, no cache)."""
        from faceclip.evaluate.synthetic import background_image
        from faceclip.fit.contour import landmark_vertex_ids
        from faceclip.facemodel.params import euler_to_matrix, matrix_to_euler
        from faceclip.render import render_mesh

        gen, m, S = self.generator, self.generator.model, self.image_px
        sp = gen.draw_params(index)
        rr = None
        if self.realism is not None:
            rr = np.random.default_rng([self.seed, int(index), 11])  # the realism stream
            sp = replace(sp, expression=self.realism.expression(rr, sp.expression))
        verts = gen.vertices(sp)
        head_r = euler_to_matrix(torch.tensor(np.radians(sp.angles_deg), dtype=torch.float64)[None])[0].numpy()
        r_cam, t = self._frame(verts, _F @ head_r, self._template(index))
        angles = matrix_to_euler(torch.from_numpy(_F @ r_cam)[None])
        expr = torch.zeros(1, m.n_expression)
        for name, w in sp.expression.items():
            expr[0, m.expression_index(name)] = w
        params = FaceParams(
            identity=torch.tensor(sp.identity, dtype=torch.float32)[None],
            expression=expr,
            angles_rad=angles.float(),
            translation_mm=torch.from_numpy(t).float()[None],
            focal_px=torch.tensor([self.focal_px], dtype=torch.float32),
            sh=torch.tensor(sp.sh, dtype=torch.float32)[None],
            albedo=torch.zeros(1, 0, 3),
            image_size=(S, S),
        )
        cam = params.camera()
        rng = np.random.default_rng([self.seed, int(index), 1])  # the generator's albedo / noise stream
        albedo = gen.albedo(sp, rng)
        noise_seed = int(rng.integers(2 ** 31))
        v_t = torch.from_numpy(verts)[None]
        if rr is None:
            out = render_mesh(v_t, m.triangles, cam, vertex_colors=torch.from_numpy(albedo)[None], sh_coeffs=params.sh,
                              background=0.0, cull_backfaces=True, antialiased=True, topology=self._topology)
        else:
            colours, sh = self._realistic_colours(rr, sp, albedo, v_t, cam)
            params = replace(params, sh=torch.from_numpy(sh).float()[None])
            out = render_mesh(v_t, m.triangles, cam, vertex_colors=colours, sh_coeffs=None,
                              background=0.0, cull_backfaces=True, antialiased=True, topology=self._topology)
        rgb = out.image[0].clamp(0, 1).numpy().astype(np.float64)
        alpha = out.alpha[0].clamp(0, 1).numpy()[..., None].astype(np.float64)
        if rr is None:
            img = rgb + (1.0 - alpha) * background_image(sp.background, S)
            img += np.random.default_rng([noise_seed, S]).normal(0.0, gen.config.noise_level, img.shape)
            img_u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            from faceclip.train.realism import camera_effects

            assert self.realism is not None
            img = rgb + (1.0 - alpha) * self.realism.background(rr, S, background_image(sp.background, S))
            img = self.realism.occlude(rr, img, np.array(sp.skin_rgb))
            img_u8 = camera_effects(img, rr, self.realism.config)
        ids = landmark_vertex_ids(m, self._bands, v_t, cam)[0]
        lm = cam.project(v_t[:, ids])[0]
        tri_skin = torch.from_numpy(self._skin_vertices(sp)[m.triangles.numpy()].all(1))
        p2f = out.fragments.pix_to_face[0]
        skin = (p2f >= 0) & tri_skin[p2f.clamp(min=0)]
        return FaceSample(
            image=torch.from_numpy(img_u8).permute(2, 0, 1).float().div_(255.0),
            landmarks_px=lm.float(),
            skin_mask=skin.float(),
            params=params,
            source=f"synthetic:{self.seed}:{index}",
        )

    def _template(self, index: int) -> np.ndarray:
        """``(5, 2)`` target five points in crop pixels (jittered when ``framing`` is set)."""
        from faceclip.detect.align import FIVE_POINT_TEMPLATE

        S = self.image_px
        pts = FIVE_POINT_TEMPLATE * S
        if self.framing is None:
            return pts
        f = self.framing
        rng = np.random.default_rng([self.seed, int(index), 7])  # a stream the generator does not use
        u = rng.uniform(size=4)
        lo, hi = f.scale_range
        m = geometry_matrix(S, scale=lo + u[2] * (hi - lo), rotation_rad=math.radians((2 * u[3] - 1) * f.rotation_deg),
                            shift_px=((2 * u[0] - 1) * f.shift_px, (2 * u[1] - 1) * f.shift_px))
        return pts @ m[:2, :2].T + m[:2, 2]

    def _frame(self, verts: np.ndarray, r_cam: np.ndarray, target5: np.ndarray,
               iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """Camera rotation and translation that put the five alignment points on ``target5``.

        Fixed-point iteration on the residual 2-D similarity of the projected five points: its
        rotation is realised exactly by rolling the scene about the optical axis, its scale by
        moving the head along its viewing ray, its shift by moving it sideways.
        """
        from faceclip.detect.align import (
            FIVE_POINT_TEMPLATE,
            estimate_similarity,
            five_points_from_68,
        )

        m = self.generator.model
        pts = verts[m.landmarks68.numpy()].astype(np.float64)  # the five points use no contour landmark
        f, c = self.focal_px, self.image_px / 2.0
        eyes_px = (FIVE_POINT_TEMPLATE[1, 0] - FIVE_POINT_TEMPLATE[0, 0]) * self.image_px
        distance = f * self._eye_distance_mm / eyes_px  # start: the mean face's eyes at the template's distance
        t = np.array([0.0, 0.0, distance]) - r_cam @ self._centre
        for _ in range(iterations):
            cam_pts = pts @ r_cam.T + t
            proj = f * cam_pts[:, :2] / cam_pts[:, 2:] + c
            sim = estimate_similarity(five_points_from_68(proj), target5)
            s, phi = sim.scale, sim.rotation_rad
            shift = sim.image_to_crop(np.array([c, c])) - c
            if abs(s - 1) < 1e-7 and abs(phi) < 1e-8 and np.abs(shift).max() < 1e-5:
                break
            rz = np.array([[math.cos(phi), -math.sin(phi), 0.0], [math.sin(phi), math.cos(phi), 0.0], [0.0, 0.0, 1.0]])
            r_cam, t = rz @ r_cam, rz @ t
            centre = r_cam @ self._centre + t
            centre_new = centre / s
            centre_new[:2] += shift * centre_new[2] / f
            t = t + centre_new - centre
        return r_cam, t

    def _hair(self, sp: Any) -> np.ndarray:
        """(V,) the generator's hair coverage of a sample, in [0, 1]."""
        parts = self.generator.albedo_parts
        hair = np.clip((parts["above_brows_mm"] - sp.hairline_mm) / 8.0, 0, 1)
        if sp.hairline_mm < 50.0:  # the generator's rule: hair on the back of the head too
            hair = np.maximum(hair, parts["behind_ears"])
        return hair

    def _skin_vertices(self, sp: Any) -> np.ndarray:
        """(V,) bool: skin-region vertices without the sample's hair and eyebrows."""
        parts = self.generator.albedo_parts
        return self._skin_vertex & (self._hair(sp) < 0.5) & (parts["brows"] < 0.3)

    def _realistic_colours(self, rr: np.random.Generator, sp: Any, albedo: np.ndarray, v_t: Tensor,
                           cam: Any) -> tuple[Tensor, np.ndarray]:
        """Lit per-vertex colours (1, V, 3) and the SH used (9, 3), with the realism draws:
        a real skin texture, hair streaks, hard light and a specular highlight."""
        from faceclip.render.shading import sh_irradiance, vertex_normals

        assert self.realism is not None
        parts = self.generator.albedo_parts
        hair = self._hair(sp)
        eyes_mouth = np.maximum(np.maximum(parts["sclera"], parts["mouth_interior"]), parts["iris"])
        tex = self.realism.texture_colours(rr)
        if tex is not None:
            w = ((1.0 - hair) * (1.0 - np.clip(eyes_mouth, 0, 1)))[:, None]
            # The texture brings real detail (pores, stubble, make-up, brows); the drawn skin tone
            # keeps the palette's range: the texture's mean skin colour is scaled to it per channel
            # (photos' textures are mostly dim and would make every face dark).
            skin = self._skin_vertex & (w[:, 0] > 0.5)
            if skin.any():
                gain = np.asarray(sp.skin_rgb) / np.maximum(tex[skin].mean(0), 1e-3)
                tex = np.clip(tex * gain[None], 0, 1).astype(np.float32)
            albedo = albedo * (1 - w) + tex * w
        hair_w = np.maximum(hair, 0.8 * parts["brows"])[:, None]
        streaks = self.realism.hair_streaks(rr, parts["xyz"])[:, None]
        albedo = np.clip(albedo * (1 - hair_w) + albedo * streaks * hair_w, 0, 1).astype(np.float32)
        sh, spec = self.realism.light(rr, np.asarray(sp.sh, np.float64))
        normals = cam.to_view(vertex_normals(v_t, self.generator.model.triangles))  # (1, V, 3)
        irr = sh_irradiance(normals, torch.from_numpy(sh).float()[None]).clamp_min(0.0)
        colours = torch.from_numpy(albedo)[None] * irr
        if spec is not None:
            light = torch.tensor(spec["direction"], dtype=torch.float32)
            half = torch.nn.functional.normalize(light + torch.tensor([0.0, 0.0, 1.0]), dim=0)
            n_dot_h = (normals @ half).clamp_min(0.0)
            lit = ((normals @ light) > 0).float()
            shine = (1.0 - torch.from_numpy(hair_w[:, 0]).float() * 0.7)[None]  # hair is less shiny
            colours = colours + (spec["strength"] * n_dot_h ** spec["shininess"] * lit * shine).unsqueeze(-1)
        return colours.float(), sh

    # ------------------------------------------------------------------ cache

    def _cache_meta(self) -> dict[str, Any]:
        m = self.generator.model
        return {"format": SYNTH_FORMAT, "version": CACHE_VERSION, "seed": self.seed, "image_px": self.image_px,
                "focal_px": self.focal_px, "framing": None if self.framing is None else asdict(self.framing),
                "model": {"name": m.name, "geometry": m.geometry, "n_vertices": m.n_vertices},
                "generator": asdict(self.generator.config),
                **({"realism": self.realism.describe()} if self.realism is not None else {})}

    def _check_cache_meta(self) -> None:
        from faceclip.io.files import atomic_path

        assert self.cache_dir is not None
        path = self.cache_dir / SYNTH_META_NAME
        meta = json.loads(json.dumps(self._cache_meta()))  # tuples -> lists, as stored
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: unreadable ({exc})", hint="delete the folder to render again") from exc
            if stored != meta:
                raise InputError(f"{self.cache_dir}: holds synthetic samples made with other settings",
                                 hint="use another cache folder for these settings (or delete this one)")
            return
        if self.cache_dir.exists() and any(self.cache_dir.glob("s_*.npz")):
            raise InputError(f"{self.cache_dir}: holds samples but no {SYNTH_META_NAME}", hint="use an empty folder")
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    def _write_cached(self, path: Path, s: FaceSample) -> None:
        from faceclip.io.files import atomic_path

        p = s.params
        assert p is not None
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, image=(s.image.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy(),
                landmarks=s.landmarks_px.numpy(), skin_mask=s.skin_mask.numpy() > 0.5,
                **{k: v.numpy() for k, v in p.tensors().items()})

    def _read_cached(self, path: Path, index: int) -> FaceSample:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        S = self.image_px
        params = FaceParams(**{k: torch.from_numpy(data[k]) for k in (
            "identity", "expression", "angles_rad", "translation_mm", "focal_px", "sh", "albedo")}, image_size=(S, S))
        return FaceSample(
            image=torch.from_numpy(data["image"]).permute(2, 0, 1).float().div_(255.0),
            landmarks_px=torch.from_numpy(data["landmarks"]),
            skin_mask=torch.from_numpy(data["skin_mask"].astype(np.float32)),
            params=params,
            source=f"synthetic:{self.seed}:{index}",
        )
