"""Run a protocol on one mesh pair or on a benchmark's own folder layout (``faceclip evaluate``).

:func:`evaluate_paths` takes ``--pred`` / ``--gt`` paths: two mesh files evaluate one pair; a
folder for ``--gt`` is read in the benchmark's published layout (see each ``_iter_*`` function
and the README's "Evaluation" section). Keypoints (``--pred-keypoints`` / ``--gt-keypoints``):

- a file of K rows ``x y z`` (``.txt``/``.npy``/``.pp``/``.json``/``.obj``), in the mesh's frame;
- a file of K integers, one per row: vertex indices into the mesh (a template topology);
- ``model:ict`` (or ``model:bfm``): the face model's 68 landmark vertices, for meshes on that
  model's topology (any ICT sub-geometry is recognised by its vertex count);
- for folders: a folder holding ``<stem>.txt`` / ``<stem>.npy`` per prediction, or one of the
  above applied to every prediction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from faceclip.errors import InputError
from faceclip.evaluate.mesh import MESH_SUFFIXES, Mesh, load_keypoints, load_mesh

__all__ = ["PROTOCOLS", "EvaluationReport", "evaluate_paths", "resolve_keypoints"]

PROTOCOLS = ("realy", "facescape", "now", "micc")


@dataclass
class EvaluationReport:
    """Per-item rows (``name`` + figures) and the dataset summary of one protocol run."""

    protocol: str
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"protocol": self.protocol, "summary": self.summary, "items": self.rows, "errors": self.errors}


# ----------------------------------------------------------------------------- keypoints


def resolve_keypoints(spec: str | Path | None, mesh: Mesh, *, stem: str | None = None, n: int | None = None) -> np.ndarray | None:
    """Keypoints (K, 3) for ``mesh`` from a spec (see module docstring); None when ``spec`` is None."""
    if spec is None:
        return None
    text = str(spec)
    if text.startswith("model:"):
        return mesh.vertices[_model_landmark_indices(text[6:], mesh)]
    p = Path(text)
    if p.is_dir():
        if stem is None:
            raise InputError(f"{p}: a keypoint folder needs per-item names", hint="give a keypoint file")
        for suffix in (".txt", ".npy", ".json", ".pp", ".xyz", ".obj"):
            cand = p / f"{stem}{suffix}"
            if cand.is_file():
                return resolve_keypoints(cand, mesh, n=n)
        raise InputError(f"no keypoints for {stem} in {p}", hint=f"expected {stem}.txt or {stem}.npy")
    idx = _maybe_indices(p)
    if idx is not None:
        if idx.max(initial=-1) >= mesh.n_vertices or idx.min(initial=0) < 0:
            raise InputError(f"{p}: vertex index out of range for a mesh of {mesh.n_vertices} vertices",
                             hint="the index file must match the prediction's topology")
        pts = mesh.vertices[idx]
    else:
        pts = load_keypoints(p)
    if n is not None and pts.shape[0] != n:
        raise InputError(f"{p}: expected {n} keypoints, found {pts.shape[0]}")
    return pts


def _maybe_indices(p: Path) -> np.ndarray | None:
    """Integer vertex indices if the file holds one integer per row (else None)."""
    if not p.is_file() or p.suffix.lower() not in (".txt", ".json", ".csv", ".npy"):
        return None
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".json":
            a = np.asarray(json.loads(p.read_text()))
        else:
            a = np.loadtxt(p, delimiter=None if p.suffix.lower() == ".txt" else ",", ndmin=1)
    except Exception:  # noqa: BLE001 - not an index file; load_keypoints reports real errors
        return None
    a = np.asarray(a)
    if a.ndim == 1 and a.size > 0 and np.issubdtype(a.dtype, np.number) and np.all(np.mod(a, 1) == 0):
        return a.astype(np.int64)
    return None


def _model_landmark_indices(name: str, mesh: Mesh) -> np.ndarray:
    from faceclip.facemodel import load_face_model

    geometries = ("full", "head_eyes", "head", "face") if name == "ict" else (None,)
    for g in geometries:
        model = load_face_model(name, geometry=g) if g else load_face_model(name)
        if model.n_vertices == mesh.n_vertices:
            return model.landmarks68.cpu().numpy()
    raise InputError(f"model:{name}: no {name} geometry has {mesh.n_vertices} vertices",
                     hint="give a keypoint file instead")


# ----------------------------------------------------------------------------- entry point


def evaluate_paths(
    protocol: str,
    pred: str | Path,
    gt: str | Path,
    *,
    pred_keypoints: str | None = None,
    gt_keypoints: str | None = None,
    gt_unit_mm: float = 1.0,
    facescape_projection: str = "orthographic",
    now_image_list: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Evaluate ``pred`` against ``gt`` (files or the benchmark's folders) with ``protocol``."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}", hint=f"one of {', '.join(PROTOCOLS)}")
    pred, gt = Path(pred), Path(gt)
    if not pred.exists():
        raise InputError(f"--pred not found: {pred}")
    if not gt.exists():
        raise InputError(f"--gt not found: {gt}")
    items = _ITERATORS[protocol](pred, gt, pred_keypoints, gt_keypoints,
                                 {"gt_unit_mm": gt_unit_mm, "projection": facescape_projection,
                                  "image_list": now_image_list})
    report = EvaluationReport(protocol)
    results = []
    items = list(items)
    for k, (name, job) in enumerate(items):
        try:
            res = job()
        except InputError as exc:
            report.errors.append(f"{name}: {exc.message}")
        else:
            results.append(res)
            report.rows.append({"name": name, **res.as_dict()})
        if progress:
            progress(k + 1, len(items))
    if not items:
        raise InputError(f"nothing to evaluate: no predictions matched the {protocol} layout under {pred}",
                         hint="see the README's Evaluation section for the expected folder layout")
    report.summary = _summarise(protocol, results)
    return report


def _summarise(protocol: str, results: list) -> dict:
    if protocol == "realy":
        from faceclip.evaluate.realy import REALY_REGIONS

        out = {"n": len(results)}
        for r in REALY_REGIONS:
            vals = [x.nmse_mm[r] for x in results]
            out[f"nmse_{r}_mm"] = float(np.mean(vals)) if vals else float("nan")
            out[f"nmse_{r}_std_mm"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out["nmse_all_mm"] = float(np.mean([out[f"nmse_{r}_mm"] for r in REALY_REGIONS])) if results else float("nan")
        return out
    if protocol == "now":
        from faceclip.evaluate.now import now_summary

        return now_summary(results)
    if protocol == "micc":
        from faceclip.evaluate.micc import micc_summary

        return micc_summary(results)
    from faceclip.evaluate.facescape import facescape_summary

    return facescape_summary(results)


# ----------------------------------------------------------------------------- REALY


def _iter_realy(pred: Path, gt: Path, pk, gk, opts) -> Iterator[tuple[str, Callable]]:
    """REALY layout: ``--gt`` = REALY's ``data/`` folder with ``REALY_HIFI3D_keypoints/<id>.obj``
    (85 keypoints), ``REALY_scan_region/<id>/{nose,mouth,forehead,cheek}.obj`` and
    ``metrical_scale.txt``; ``--pred`` = a folder of ``<id>_<anything>.obj`` (REALY's image
    names). Single pair: ``--gt`` = one subject's region folder (the four OBJ files) with
    ``--gt-keypoints``; ``--gt-unit-mm`` gives the scan unit (REALY: the subject's metrical scale).
    """
    from faceclip.evaluate.realy import REALY_REGIONS, RealyGroundTruth, realy_evaluate

    def regions_of(folder: Path) -> dict[str, Mesh]:
        out = {}
        for r in REALY_REGIONS:
            f = folder / f"{r}.obj"
            if not f.is_file():
                raise InputError(f"REALY region mesh missing: {f}", hint="a subject folder holds nose.obj, mouth.obj, forehead.obj, cheek.obj")
            out[r] = load_mesh(f)
        return out

    if pred.is_file():
        if gk is None:
            raise InputError("REALY needs the ground truth's keypoints", hint="--gt-keypoints FILE (68 or 85 rows)")

        def job():
            mesh = load_mesh(pred)
            kp = resolve_keypoints(pk or "model:ict", mesh)
            gt_kp = load_keypoints(gk)
            return realy_evaluate(mesh, kp, RealyGroundTruth(regions_of(gt), gt_kp, unit_mm=opts["gt_unit_mm"]))

        yield pred.stem, job
        return
    kp_root, region_root = gt / "REALY_HIFI3D_keypoints", gt / "REALY_scan_region"
    if not kp_root.is_dir() or not region_root.is_dir():
        raise InputError(f"{gt}: not a REALY data folder (REALY_HIFI3D_keypoints/ and REALY_scan_region/ expected)")
    scales = np.loadtxt(gt / "metrical_scale.txt", ndmin=1) if (gt / "metrical_scale.txt").is_file() else None
    for f in sorted(pred.glob("*.obj"), key=lambda p: _natural_key(p.stem)):
        m = re.match(r"(\d+)", f.stem)
        if not m:
            continue
        sid = int(m.group(1))

        def job(f=f, sid=sid):
            mesh = load_mesh(f)
            kp = resolve_keypoints(pk or "model:ict", mesh, stem=f.stem)
            gt_kp = load_keypoints(kp_root / f"{sid}.obj")
            unit = float(scales[sid - 1]) if scales is not None else opts["gt_unit_mm"]
            return realy_evaluate(mesh, kp, RealyGroundTruth(regions_of(region_root / str(sid)), gt_kp,
                                                             unit_mm=unit, realy_unit=1.0))

        yield f.stem, job


# ----------------------------------------------------------------------------- NoW


def _iter_now(pred: Path, gt: Path, pk, gk, opts) -> Iterator[tuple[str, Callable]]:
    """NoW layout: ``--gt`` = the NoW dataset root with ``imagepathsvalidation.txt`` (or
    ``--image-list``), ``scans/<subject>/*.obj`` and ``scans_lmks_onlypp/<subject>/*.pp``;
    ``--pred`` = ``<subject>/<challenge>/<image>.obj`` (or ``.ply``) with ``<image>.npy`` / ``.txt``
    (7 landmarks) beside it, as NoW expects. Single pair: two mesh files and both keypoint files.
    """
    from faceclip.evaluate.now import now_evaluate

    if pred.is_file():
        if gk is None or pk is None:
            raise InputError("NoW needs 7 landmarks for both meshes", hint="--pred-keypoints FILE --gt-keypoints FILE")

        def job():
            p_mesh, g_mesh = load_mesh(pred), load_mesh(gt)
            return now_evaluate(p_mesh, resolve_keypoints(pk, p_mesh), g_mesh, resolve_keypoints(gk, g_mesh))

        yield pred.stem, job
        return
    listing = Path(opts["image_list"]) if opts.get("image_list") else gt / "imagepathsvalidation.txt"
    if not listing.is_file():
        raise InputError(f"NoW image list not found: {listing}", hint="--image-list FILE (imagepathsvalidation.txt or imagepathstest.txt)")
    for line in listing.read_text().splitlines():
        parts = line.strip().split("/")
        if len(parts) < 3:
            continue
        subject, challenge, image = parts[-3], parts[-2], Path(parts[-1]).stem
        base = pred / subject / challenge / image
        name = f"{subject}/{challenge}/{image}"

        def job(base=base, subject=subject):
            mesh_path = next((base.with_suffix(s) for s in (".obj", ".ply") if base.with_suffix(s).is_file()), None)
            if mesh_path is None:
                raise InputError(f"prediction missing: {base}.obj")
            scans = sorted((gt / "scans" / subject).glob("*.obj"))
            lmks = sorted((gt / "scans_lmks_onlypp" / subject).glob("*.pp"))
            if not scans or not lmks:
                raise InputError(f"scan or scan landmarks missing for {subject} under {gt}")
            p_mesh, scan = load_mesh(mesh_path), load_mesh(scans[0])
            p_kp = resolve_keypoints(pk, p_mesh, stem=base.name) if pk else _sibling_keypoints(base, p_mesh)
            return now_evaluate(p_mesh, p_kp, scan, load_keypoints(lmks[0], n=7))

        yield name, job


def _sibling_keypoints(base: Path, mesh: Mesh) -> np.ndarray:
    for suffix in (".npy", ".txt"):
        if base.with_suffix(suffix).is_file():
            return resolve_keypoints(base.with_suffix(suffix), mesh)
    raise InputError(f"landmarks missing: {base}.npy or {base}.txt (7 x 3)")


# ----------------------------------------------------------------------------- MICC


def _iter_micc(pred: Path, gt: Path, pk, gk, opts) -> Iterator[tuple[str, Callable]]:
    """MICC layout (MICC ships VRML scans without landmarks; convert them to OBJ/PLY first):
    ``--gt`` = a folder of ``<subject>.obj`` scans (mm) with optional ``<subject>.txt`` holding the
    nose tip (1 row) or 7/68 keypoints; ``--pred`` = a folder of ``<subject>.obj`` (or
    ``<subject>_*.obj``, several per subject allowed). Without a nose-tip file the scan's vertex
    with the largest z (frontal scans) is used. Predictions are initialised from keypoints
    (``--pred-keypoints``, default ``model:ict``) when the scan has 7/68, else by the nose tips.
    """
    from faceclip.evaluate.micc import micc_evaluate, nose_tip_from_keypoints

    def one(p_path: Path, g_path: Path, gk_path) -> Callable:
        def job():
            p_mesh, g_mesh = load_mesh(p_path), load_mesh(g_path)
            g_kp = resolve_keypoints(gk_path, g_mesh) if gk_path is not None else None
            try:
                p_kp = resolve_keypoints(pk or "model:ict", p_mesh, stem=p_path.stem)
            except InputError:
                p_kp = None
            if g_kp is None:
                tip = g_mesh.vertices[np.argmax(g_mesh.vertices[:, 2])]
            else:
                tip = nose_tip_from_keypoints(g_kp) if g_kp.shape[0] in (1, 68, 85) else g_mesh.vertices[np.argmax(g_mesh.vertices[:, 2])]
            use_kp = p_kp is not None and g_kp is not None and g_kp.shape[0] in (7, 68, 85) and p_kp.shape[0] in (7, 68, 85)
            p_tip = nose_tip_from_keypoints(p_kp) if p_kp is not None and p_kp.shape[0] in (68, 85) else p_mesh.vertices[np.argmax(p_mesh.vertices[:, 2])]
            return micc_evaluate(p_mesh, g_mesh, tip, pred_nose_tip=p_tip,
                                 pred_keypoints=p_kp if use_kp else None, gt_keypoints=g_kp if use_kp else None)
        return job

    if pred.is_file():
        yield pred.stem, one(pred, gt, gk)
        return
    for g_path in sorted(gt.iterdir(), key=lambda p: _natural_key(p.stem)):
        if g_path.suffix.lower() not in MESH_SUFFIXES:
            continue
        g_kp = next((g_path.with_suffix(s) for s in (".txt", ".npy", ".pp", ".json") if g_path.with_suffix(s).is_file()), None)
        for p_path in sorted(pred.glob(f"{g_path.stem}*")):
            if p_path.suffix.lower() in MESH_SUFFIXES and (p_path.stem == g_path.stem or p_path.stem.startswith(g_path.stem + "_")):
                yield p_path.stem, one(p_path, g_path, g_kp)


# ----------------------------------------------------------------------------- FaceScape


def _iter_facescape(pred: Path, gt: Path, pk, gk, opts) -> Iterator[tuple[str, Callable]]:
    """FaceScape layout: ``--gt`` = FaceScape's ``benchmark/`` folder (``data/wild_gt_mesh/NNN.obj``
    or ``data/lab_gt_mesh/NN.obj`` + ``data/lab_cam/*.json``, and ``code/predef/*.npy``);
    ``--pred`` = a folder of predictions already brought into FaceScape's camera space by its
    loaders (``pred_loader.py``): ``NNN.obj`` (in-the-wild: normalised orthographic cube) or
    ``II_F_VV.obj`` (in-the-lab: perspective camera frame, unit = pupil distance).
    Single pair: two meshes in the same camera frame in mm (``--facescape-projection``).
    """
    from faceclip.evaluate.facescape import facescape_evaluate

    if pred.is_file():
        def job():
            return facescape_evaluate(load_mesh(pred), load_mesh(gt), projection=opts["projection"])

        yield pred.stem, job
        return
    predef = gt / "code" / "predef"
    std_pupil = (64.0 + 61.7) / 2
    if (gt / "data" / "wild_gt_mesh").is_dir():
        scales = np.load(predef / "wild_pupil_scales.npy")
        centres = np.load(predef / "wild_head_centers.npy")
        rots = np.load(predef / "wild_rotations.npy")
        for f in sorted(pred.glob("*.obj")):
            if not f.stem.isdigit():
                continue
            idx = int(f.stem)

            def job(f=f, idx=idx):
                s = float(scales[idx])
                g = load_mesh(gt / "data" / "wild_gt_mesh" / f"{idx:03d}.obj")
                p = load_mesh(f)
                return facescape_evaluate(Mesh(p.vertices * s, p.triangles), Mesh(g.vertices * s, g.triangles),
                                          projection="orthographic", head_center=centres[idx] * s, rotation=rots[idx])

            yield f.stem, job
        return
    if (gt / "data" / "lab_gt_mesh").is_dir():
        centres = np.load(predef / "lab_head_centers.npy")
        rots = np.load(predef / "lab_rotations.npy")
        from faceclip.facemodel.params import MODEL_TO_OPENCV

        flip = MODEL_TO_OPENCV  # OpenCV camera -> our y-up, z-toward-camera frame
        for f in sorted(pred.glob("*.obj")):
            m = re.fullmatch(r"(\d+)_(\d)_(\d+)", f.stem)
            if not m:
                continue
            subj, fl, view = (int(x) for x in m.groups())

            def job(f=f, subj=subj, fl=fl, view=view):
                cam = json.loads((gt / "data" / "lab_cam" / f"{f.stem}.json").read_text())
                Rt = np.array(cam[1], dtype=np.float64)
                g = load_mesh(gt / "data" / "lab_gt_mesh" / f"{subj:02d}.obj")
                gv = (g.vertices * std_pupil) @ Rt[:3, :3].T + Rt[:, 3] * std_pupil
                p = load_mesh(f)
                return facescape_evaluate(Mesh((p.vertices * std_pupil) @ flip, p.triangles), Mesh(gv @ flip, g.triangles),
                                          projection="perspective", head_center=flip @ centres[fl],
                                          rotation=flip @ rots[view])

            yield f.stem, job
        return
    raise InputError(f"{gt}: not a FaceScape benchmark folder (data/wild_gt_mesh/ or data/lab_gt_mesh/ expected)")


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


_ITERATORS = {"realy": _iter_realy, "now": _iter_now, "micc": _iter_micc, "facescape": _iter_facescape}
