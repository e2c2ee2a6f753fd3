"""The compact cache file of a converted face model, and building a :class:`FaceModel` from it.

A cache is one uncompressed ``.npz`` (memory-friendly, loads in tens of milliseconds) holding the
model at its source resolution and units; the sub-geometry selection and the unit change to mm
happen at load time. Keys:

    format_version  ()          int
    name, licence, source, expression_range   ()  str
    scale_to_mm     ()          float, multiply source units by this to get mm
    mean            (V, 3)      float32, source units
    identity_basis  (K_id, V, 3)   float32 (already scaled to an N(0, 1) prior)
    expression_basis (K_exp, V, 3) float32
    expression_names (K_exp,)   str
    triangles       (F, 3)      int32, CCW seen from outside
    uv              (F, 3, 2)   float32 per-corner UVs, v up (may span several unit tiles)
    uv_group        (F,)        int32 UV group of each triangle (optional; groups are packed
                                into one square atlas at load time, see pack_uv_atlas)
    tri_polygon     (F,)        int32 index of the source polygon each triangle came from
    landmarks68     (68,)       int32
    contour_candidates (2, M)   int32, -1 padded (optional)
    region__<name>  (N,)        int32 vertex indices (full mesh)
    geometries      ()          str, JSON {name: {"vertex_ranges": [[a, b], ...],
                                "polygon_ranges": [[a, b], ...], "doc": str}} (inclusive ranges)
    default_geometry ()         str
    albedo_mean     (V, 3), albedo_basis (K_alb, V, 3)  float32 (optional)
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceclip.errors import ModelNotInstalledError
from faceclip.facemodel.base import FaceModel
from faceclip.io.files import atomic_open

FORMAT_VERSION = 1


@dataclass
class ModelArrays:
    """A face model as numpy arrays in source units (see the module docstring for shapes)."""

    name: str
    mean: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    expression_names: list[str]
    triangles: np.ndarray
    uv: np.ndarray
    tri_polygon: np.ndarray
    landmarks68: np.ndarray
    regions: dict[str, np.ndarray]
    geometries: dict[str, dict]
    default_geometry: str
    scale_to_mm: float
    licence: str
    source: str
    expression_range: str = "pca"
    contour_candidates: np.ndarray | None = None
    albedo_mean: np.ndarray | None = None
    albedo_basis: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    uv_group: np.ndarray | None = None


def save_cache(arrays: ModelArrays, path: Path) -> Path:
    """Write ``arrays`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION),
        "name": np.array(arrays.name),
        "licence": np.array(arrays.licence),
        "source": np.array(arrays.source),
        "expression_range": np.array(arrays.expression_range),
        "scale_to_mm": np.array(float(arrays.scale_to_mm)),
        "mean": arrays.mean.astype(np.float32),
        "identity_basis": arrays.identity_basis.astype(np.float32),
        "expression_basis": arrays.expression_basis.astype(np.float32),
        "expression_names": np.array(arrays.expression_names, dtype=str),
        "triangles": arrays.triangles.astype(np.int32),
        "uv": arrays.uv.astype(np.float32),
        "tri_polygon": arrays.tri_polygon.astype(np.int32),
        "landmarks68": arrays.landmarks68.astype(np.int32),
        "geometries": np.array(json.dumps(arrays.geometries)),
        "default_geometry": np.array(arrays.default_geometry),
        "meta": np.array(json.dumps(arrays.meta)),
    }
    for key, idx in arrays.regions.items():
        payload[f"region__{key}"] = np.asarray(idx, dtype=np.int32)
    if arrays.uv_group is not None:
        payload["uv_group"] = arrays.uv_group.astype(np.int32)
    if arrays.contour_candidates is not None:
        payload["contour_candidates"] = arrays.contour_candidates.astype(np.int32)
    if arrays.albedo_mean is not None:
        payload["albedo_mean"] = arrays.albedo_mean.astype(np.float32)
    if arrays.albedo_basis is not None:
        payload["albedo_basis"] = arrays.albedo_basis.astype(np.float32)
    with atomic_open(path, "wb") as fh:  # a file object: np.savez adds no suffix
        np.savez(fh, **payload)
    return path


def load_cache(path: Path, fix_hint: str) -> ModelArrays:
    """Read a cache written by :func:`save_cache`.

    Raises:
        ModelNotInstalledError: the file is missing, truncated, not a cache, or of another
            format version; the message names the file and ``fix_hint`` says how to fix it.
    """
    if not path.is_file():
        raise ModelNotInstalledError(f"face model cache not found: {path}", hint=fix_hint)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelNotInstalledError(
            f"face model cache is corrupt or unreadable: {path} ({exc})", hint=fix_hint
        ) from None
    required = {"format_version", "mean", "identity_basis", "expression_basis", "triangles", "uv",
                "landmarks68", "geometries", "scale_to_mm", "name"}
    missing = required - set(data)
    if missing:
        raise ModelNotInstalledError(
            f"face model cache {path} lacks {sorted(missing)}: not a FaceCLIP cache", hint=fix_hint
        )
    if int(data["format_version"]) != FORMAT_VERSION:
        raise ModelNotInstalledError(
            f"face model cache {path} has format {int(data['format_version'])}, "
            f"this FaceCLIP reads format {FORMAT_VERSION}",
            hint=fix_hint,
        )
    regions = {k[len("region__"):]: v for k, v in data.items() if k.startswith("region__")}
    arrays = ModelArrays(
        name=str(data["name"]),
        mean=data["mean"],
        identity_basis=data["identity_basis"],
        expression_basis=data["expression_basis"],
        expression_names=[str(s) for s in data["expression_names"]],
        triangles=data["triangles"],
        uv=data["uv"],
        tri_polygon=data["tri_polygon"],
        landmarks68=data["landmarks68"],
        regions=regions,
        geometries=json.loads(str(data["geometries"])),
        default_geometry=str(data["default_geometry"]),
        scale_to_mm=float(data["scale_to_mm"]),
        licence=str(data["licence"]),
        source=str(data["source"]),
        expression_range=str(data["expression_range"]),
        contour_candidates=data.get("contour_candidates"),
        albedo_mean=data.get("albedo_mean"),
        albedo_basis=data.get("albedo_basis"),
        meta=json.loads(str(data["meta"])) if "meta" in data else {},
        uv_group=data.get("uv_group"),
    )
    _validate(arrays, path, fix_hint)
    return arrays


def _validate(a: ModelArrays, path: Path, fix_hint: str) -> None:
    v = a.mean.shape[0]
    problems = []
    if a.mean.ndim != 2 or a.mean.shape[1] != 3:
        problems.append(f"mean has shape {a.mean.shape}")
    for key, basis in (("identity_basis", a.identity_basis), ("expression_basis", a.expression_basis)):
        if basis.ndim != 3 or basis.shape[1:] != (v, 3):
            problems.append(f"{key} has shape {basis.shape}, expected (K, {v}, 3)")
    if a.triangles.size and (a.triangles.min() < 0 or a.triangles.max() >= v):
        problems.append("triangle indices out of range")
    if a.uv.shape != (a.triangles.shape[0], 3, 2):
        problems.append(f"uv has shape {a.uv.shape}")
    if a.landmarks68.shape != (68,) or a.landmarks68.max() >= v:
        problems.append("landmarks68 is not 68 valid vertex indices")
    if not np.isfinite(a.mean).all() or not np.isfinite(a.identity_basis).all():
        problems.append("non-finite values")
    if problems:
        raise ModelNotInstalledError(f"face model cache {path} is inconsistent: {'; '.join(problems)}",
                                     hint=fix_hint)


def _expand_ranges(ranges: list[list[int]]) -> np.ndarray:
    """Inclusive [a, b] ranges -> sorted unique int64 indices."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in ranges]))


def select_geometry(arrays: ModelArrays, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertex ids (N,) and triangle ids (T,) of a named sub-geometry (full-mesh indices)."""
    if geometry not in arrays.geometries:
        raise ValueError(
            f"unknown geometry {geometry!r} for model {arrays.name}; "
            f"known: {', '.join(arrays.geometries)}"
        )
    spec = arrays.geometries[geometry]
    vids = _expand_ranges(spec["vertex_ranges"])
    polys = _expand_ranges(spec["polygon_ranges"])
    tri_ok = np.isin(arrays.tri_polygon, polys)
    keep = np.zeros(arrays.mean.shape[0], dtype=bool)
    keep[vids] = True
    tri_ok &= keep[arrays.triangles].all(axis=1)
    return vids, np.nonzero(tri_ok)[0]


def pack_uv_atlas(uv: np.ndarray, group: np.ndarray | None) -> np.ndarray:
    """Pack per-corner UVs of several UV groups into one square atlas in [0, 1].

    Args:
        uv: (F, 3, 2) per-corner UVs; each group lies in one unit tile (any integer offset).
        group: (F,) group index per triangle, or None (single group).

    Returns:
        (F, 3, 2) UVs in [0, 1]: the groups present, in increasing index order (the face first),
        fill the cells of a g x g grid (g = ceil(sqrt(groups))) row by row from the top-left.
    """
    if group is None or len(np.unique(group)) == 1:
        return uv - np.floor(uv.reshape(-1, 2).min(axis=0))  # shift the single tile to [0, 1]
    present = np.unique(group)
    g = int(np.ceil(np.sqrt(len(present))))
    out = np.empty_like(uv)
    for cell, gid in enumerate(present):
        sel = group == gid
        local = uv[sel] - np.floor(uv[sel].reshape(-1, 2).mean(axis=0))
        local = np.clip(local, 0.0, 1.0)
        col, row = cell % g, cell // g
        out[sel, :, 0] = (col + local[..., 0]) / g
        out[sel, :, 1] = 1.0 - (row + 1.0 - local[..., 1]) / g
    return out


def build_face_model(arrays: ModelArrays, geometry: str | None = None) -> FaceModel:
    """Build a :class:`FaceModel` (mm, float32, CPU) for one sub-geometry of ``arrays``."""
    geometry = geometry or arrays.default_geometry
    vids, tids = select_geometry(arrays, geometry)
    n_full = arrays.mean.shape[0]
    full = len(vids) == n_full
    remap = np.full(n_full, -1, dtype=np.int64)
    remap[vids] = np.arange(len(vids))
    s = np.float32(arrays.scale_to_mm)

    def take(x: np.ndarray) -> np.ndarray:
        return x if full else x[..., vids, :]

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    lmk = remap[arrays.landmarks68]
    if (lmk < 0).any():
        raise ValueError(f"geometry {geometry!r} does not contain all 68 landmark vertices")
    regions = {}
    for key, idx in arrays.regions.items():
        r = remap[idx.astype(np.int64)]
        regions[key] = t(r[r >= 0])
    contour = None
    if arrays.contour_candidates is not None:
        c = arrays.contour_candidates.astype(np.int64)
        contour = t(np.where(c >= 0, remap[np.maximum(c, 0)], -1))
    return FaceModel(
        name=arrays.name,
        mean_mm=t(take(arrays.mean) * s),
        identity_basis_mm=t(take(arrays.identity_basis) * s),
        expression_basis_mm=t(take(arrays.expression_basis) * s),
        expression_names=list(arrays.expression_names),
        triangles=t(remap[arrays.triangles[tids].astype(np.int64)]),
        uv=t(pack_uv_atlas(arrays.uv[tids], None if arrays.uv_group is None else arrays.uv_group[tids])
             .astype(np.float32)),
        landmarks68=t(lmk),
        regions=regions,
        albedo_mean=None if arrays.albedo_mean is None else t(take(arrays.albedo_mean)),
        albedo_basis=None if arrays.albedo_basis is None else t(take(arrays.albedo_basis)),
        expression_range=arrays.expression_range,
        geometry=geometry,
        licence=arrays.licence,
        source=arrays.source,
        contour_candidates=contour,
        meta=dict(arrays.meta, geometry_doc=arrays.geometries[geometry].get("doc", "")),
    )
