"""Conversion of the ICT-FaceKit "Face Model Light" (MIT licence) into a FaceCLIP cache.

Source layout (a clone of https://github.com/ICT-VGL/ICT-FaceKit, its archive, or a folder
holding ``FaceXModel/``)::

    README.md                         sub-geometry vertex/polygon ranges, 68 landmark indices,
                                      jawline substitutes
    FaceXModel/generic_neutral_mesh.obj   topology (26,719 vertices, 26,384 quads/triangles, UVs)
    FaceXModel/identity000..099.obj       identity modes stored as deformed meshes (N(0, 1) weights)
    FaceXModel/<expression>.obj           53 ARKit-style expression shapes (weights in [0, 1])
    FaceXModel/vertex_indices.json        expression list, landmark vertices

Coordinates in the OBJs are centimetres; the cache keeps them as they are (``scale_to_mm = 10``)
so that the conversion can be checked exactly against the OBJ files.

Sub-geometries (``geometry=`` when loading):

- ``face``: the full face area (9,409 vertices): the surface the photo constrains;
- ``head``: face + head and neck (11,248 vertices): a closed-looking head for export;
- ``head_eyes`` (used by reconstruction): head + both eyeballs (14,388 vertices). The eyeballs
  fill the eye openings, so a rendering overlaid on a photo shows eyes, not holes;
- ``full``: everything (26,719 vertices), including mouth socket, gums, tongue, teeth, lacrimal
  fluid, eye blend/occlusion meshes and eyelash strips. Those interior or shader-specific parts
  are hidden in a photo or need special shaders, so reconstruction leaves them out.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from faceclip.errors import ModelNotInstalledError
from faceclip.facemodel.cache import ModelArrays
from faceclip.facemodel.regions import derive_regions

log = logging.getLogger(__name__)

ICT_LICENCE = "MIT (ICT-FaceKit, USC Institute for Creative Technologies)"
ICT_ARCHIVE_URL = "https://github.com/ICT-VGL/ICT-FaceKit/archive/refs/heads/master.zip"
N_VERTICES = 26719
N_IDENTITY = 100
INSTALL_HINT = "run `faceclip models install ict` (or `faceclip models install ict --from PATH` " \
    "with a clone or archive of ICT-FaceKit)"

# Geometry table of the ICT README (inclusive vertex / polygon ranges). Used only when the
# README is absent from the source; when present, its table is parsed and must agree.
_README_GEOMETRY = {
    "Face": ([0, 9408], [0, 9229]),
    "Head and Neck": ([9409, 11247], [9230, 11143]),
    "Mouth socket": ([11248, 13293], [11144, 13225]),
    "Eye socket left": ([13294, 13677], [13226, 13629]),
    "Eye socket right": ([13678, 14061], [13630, 14033]),
    "Gums and tongue": ([14062, 17038], [14034, 17005]),
    "Teeth": ([17039, 21450], [17006, 21495]),
    "Eyeball left": ([21451, 23020], [21496, 23093]),
    "Eyeball right": ([23021, 24590], [23094, 24691]),
    "Lacrimal fluid left": ([24591, 24794], [24692, 24854]),
    "Lacrimal fluid right": ([24795, 24998], [24855, 25017]),
    "Eye blend left": ([24999, 25022], [25018, 25032]),
    "Eye blend right": ([25023, 25046], [25033, 25047]),
    "Eye occlusion left": ([25047, 25198], [25048, 25175]),
    "Eye occlusion right": ([25199, 25350], [25176, 25303]),
    "Eyelashes left": ([25351, 26034], [25304, 25843]),
    "Eyelashes right": ([26035, 26718], [25844, 26383]),
}


# --------------------------------------------------------------------------- source access


class _Source:
    """Uniform read access to an ICT-FaceKit folder, .tar(.gz/.xz/.bz2) or .zip archive."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def iter_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        """Yield (relative posix path, bytes) of files whose path passes ``wanted``."""
        p = self.path
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).as_posix()
                if f.is_file() and wanted(rel):
                    yield rel, f.read_bytes()
        elif zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for info in z.infolist():
                    if not info.is_dir() and wanted(info.filename):
                        yield info.filename, z.read(info)
        elif p.is_file() and _is_tar(p):
            with tarfile.open(p, mode="r|*") as t:  # streaming: one pass over the archive
                for member in t:
                    if member.isfile() and wanted(member.name):
                        fobj = t.extractfile(member)
                        if fobj is not None:
                            yield member.name, fobj.read()
        else:
            raise ModelNotInstalledError(
                f"not an ICT-FaceKit folder or archive (.zip, .tar, .tar.gz, .tar.xz): {p}",
                hint=INSTALL_HINT,
            )


def _is_tar(p: Path) -> bool:
    try:
        return tarfile.is_tarfile(p)
    except OSError:
        return False


def _wanted(name: str) -> bool:
    pp = PurePosixPath(name)
    if pp.name == "README.md" and "FaceXModel" not in pp.parts:
        return len(pp.parts) <= 2  # the kit's own README (root or one folder down)
    return "FaceXModel" in pp.parts and (pp.suffix == ".obj" or pp.name == "vertex_indices.json")


# --------------------------------------------------------------------------- parsing

_V_RE = re.compile(rb"^v\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
_VT_RE = re.compile(rb"^vt\s+(\S+)\s+(\S+)", re.M)
_F_RE = re.compile(rb"^f\s+(.+)$", re.M)


def parse_obj_vertices(data: bytes) -> np.ndarray:
    """OBJ text -> (V, 3) float64 vertex positions (``v`` lines, in file order)."""
    found = _V_RE.findall(data)
    return np.array(found, dtype=np.float64).reshape(-1, 3)


def parse_obj_topology(data: bytes) -> tuple[np.ndarray, list[list[int]], list[list[int]]]:
    """OBJ text -> UVs (T, 2), per-polygon vertex indices, per-polygon UV indices (0-based)."""
    uv = np.array(_VT_RE.findall(data), dtype=np.float64).reshape(-1, 2)
    polys_v: list[list[int]] = []
    polys_t: list[list[int]] = []
    for line in _F_RE.findall(data):
        vs, ts = [], []
        for corner in line.split():
            parts = corner.split(b"/")
            vs.append(int(parts[0]) - 1)
            ts.append(int(parts[1]) - 1 if len(parts) > 1 and parts[1] else -1)
        polys_v.append(vs)
        polys_t.append(ts)
    return uv, polys_v, polys_t


def triangulate(polys_v: list[list[int]], polys_t: list[list[int]], uv: np.ndarray):
    """Fan-triangulate polygons.

    Returns:
        triangles (F, 3) int64, per-corner uv (F, 3, 2) float64, tri_polygon (F,) int64.
    """
    tris, corners, owner = [], [], []
    for pi, (vs, ts) in enumerate(zip(polys_v, polys_t)):
        for k in range(1, len(vs) - 1):
            tris.append((vs[0], vs[k], vs[k + 1]))
            corners.append((ts[0], ts[k], ts[k + 1]))
            owner.append(pi)
    tri = np.asarray(tris, dtype=np.int64)
    cidx = np.asarray(corners, dtype=np.int64)
    uv_c = np.where((cidx >= 0)[..., None], uv[np.maximum(cidx, 0)], 0.0)
    return tri, uv_c, np.asarray(owner, dtype=np.int64)


def parse_readme(text: str) -> dict:
    """Extract the geometry table, 68 landmark indices and jawline lists from the ICT README.

    Returns:
        {"geometry": {name: ([v0, v1], [p0, p1])}, "landmarks68": [...],
         "jaw_right": [...], "jaw_left": [...], "jaw_right_ext": [...], "jaw_left_ext": [...]}
        with whatever could be found.
    """
    out: dict = {"geometry": {}}
    row = re.compile(r"^\|\s*#\d+\s*\|\s*([^|]+?)\s*\|\s*\[(\d+):(\d+)\]\s*\|\s*\[(\d+):(\d+)\]\s*\|", re.M)
    # Only the first table (sub-geometries) names these; later tables reuse "#0".
    first_table = text.split("### UV Layout")[0]
    for m in row.finditer(first_table):
        name = m.group(1).strip()
        out["geometry"][name] = ([int(m.group(2)), int(m.group(3))], [int(m.group(4)), int(m.group(5))])

    def numbers_after(heading: str) -> list[int] | None:
        i = text.find(heading)
        if i < 0:
            return None
        m = re.search(r"\n[ \t]*\n((?:[ \t]*\d+[ \t]*,?)+)", text[i:])
        return [int(x) for x in re.findall(r"\d+", m.group(1))] if m else None

    out["landmarks68"] = numbers_after("Multi-PIE 68 point facial landmarks indices")
    out["jaw_right"] = numbers_after("Right jawline (substitutes")
    out["jaw_left"] = numbers_after("Left jawline (substitutes")
    out["jaw_right_ext"] = numbers_after("Right extended jawline")
    out["jaw_left_ext"] = numbers_after("Left extended jawline")
    return out


# --------------------------------------------------------------------------- conversion


# UV tiles: ICT lays its UVs out UDIM-style (face in tile u 0-1, head and neck and the sockets in
# tile 1, gums 2, teeth 3, lacrimal 4-5, eyelashes 6) and the eyeballs / eye blend / occlusion
# meshes reuse tile 0 with their own textures. Each such group becomes one cell of a square
# atlas at load time (see faceclip.facemodel.cache.pack_uv_atlas).
def _uv_groups(owner: np.ndarray, uv_c: np.ndarray, geom_table: dict) -> tuple[np.ndarray, list[str]]:
    """(F,) group index per triangle and the group names (face first)."""
    names: list[str] = []
    group = np.zeros(len(owner), dtype=np.int64)
    for part, (_, (p0, p1)) in geom_table.items():
        sel = (owner >= p0) & (owner <= p1)
        if not sel.any():
            continue
        tile = int(np.floor(uv_c[sel][..., 0].mean()))
        key = f"tile{tile}" if part.startswith(("Face", "Head", "Mouth", "Eye socket", "Gums", "Teeth",
                                                     "Lacrimal", "Eyelashes")) else part.lower().replace(" ", "_")
        if key not in names:
            names.append(key)
        group[sel] = names.index(key)
    return group, names


def convert_ict(source: Path, progress: Callable[[int, int], None] | None = None) -> ModelArrays:
    """Convert an ICT-FaceKit folder or archive into :class:`ModelArrays` (source units: cm).

    Args:
        source: clone / folder containing ``FaceXModel/`` (or the ``FaceXModel`` folder itself),
            or a .zip / .tar.* archive of one.
        progress: optional callback ``(files_done, files_expected)``.

    Raises:
        ModelNotInstalledError: files missing or inconsistent; the message names them.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ModelNotInstalledError(f"ICT-FaceKit source not found: {source}", hint=INSTALL_HINT)
    meshes: dict[str, bytes | np.ndarray] = {}
    readme_text: str | None = None
    indices_json: dict | None = None
    neutral_bytes: bytes | None = None
    expected = 1 + N_IDENTITY + 57 + 2
    done = 0
    for rel, data in _Source(source).iter_files(_wanted):
        name = PurePosixPath(rel).name
        if name == "README.md":
            readme_text = data.decode("utf-8", errors="replace")
        elif name == "vertex_indices.json":
            indices_json = json.loads(data)
        elif name == "generic_neutral_mesh.obj":
            neutral_bytes = data
        else:
            meshes[name[:-4]] = parse_obj_vertices(data)  # parse now, keep memory small
        done += 1
        if progress:
            progress(done, expected)
    if neutral_bytes is None:
        raise ModelNotInstalledError(
            f"{source} holds no FaceXModel/generic_neutral_mesh.obj: not an ICT-FaceKit clone or archive",
            hint=INSTALL_HINT,
        )
    return _assemble(source, neutral_bytes, meshes, readme_text, indices_json)


def _assemble(source: Path, neutral_bytes: bytes, meshes: dict, readme_text: str | None,
              indices_json: dict | None) -> ModelArrays:
    neutral = parse_obj_vertices(neutral_bytes)
    if neutral.shape[0] != N_VERTICES:
        raise ModelNotInstalledError(
            f"generic_neutral_mesh.obj in {source} has {neutral.shape[0]} vertices, expected {N_VERTICES}",
            hint=INSTALL_HINT,
        )
    uv, polys_v, polys_t = parse_obj_topology(neutral_bytes)
    tri, uv_c, owner = triangulate(polys_v, polys_t, uv)

    readme = parse_readme(readme_text) if readme_text else {"geometry": {}}
    geom_table = readme["geometry"] or _README_GEOMETRY
    if readme_text is None:
        log.warning("ICT README.md not found in %s; using the built-in geometry table", source)
    landmarks = readme.get("landmarks68")
    if indices_json is not None:
        json_lmk = indices_json.get("idx_to_landmark_verts")
        if landmarks is None:
            landmarks = json_lmk
        elif json_lmk is not None and list(json_lmk) != list(landmarks):
            log.warning("README and vertex_indices.json disagree on the 68 landmarks; using the README's")
    if landmarks is None or len(landmarks) != 68:
        raise ModelNotInstalledError(
            f"could not find the 68 landmark indices in {source} (README.md or FaceXModel/vertex_indices.json)",
            hint=INSTALL_HINT,
        )

    id_names = [f"identity{i:03d}" for i in range(N_IDENTITY)]
    exp_names = list(indices_json["expressions"]) if indices_json else sorted(
        k for k in meshes if not k.startswith("identity")
    )
    missing = [n + ".obj" for n in id_names + exp_names if n not in meshes]
    if missing:
        raise ModelNotInstalledError(
            f"{len(missing)} ICT mesh files missing in {source}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else ""),
            hint=INSTALL_HINT,
        )
    bad = [n for n in id_names + exp_names if meshes[n].shape != neutral.shape]
    if bad:
        raise ModelNotInstalledError(
            f"ICT mesh files with a vertex count other than {N_VERTICES}: {', '.join(b + '.obj' for b in bad[:5])}",
            hint=INSTALL_HINT,
        )
    id_basis = np.stack([meshes[n] - neutral for n in id_names])
    exp_basis = np.stack([meshes[n] - neutral for n in exp_names])

    def rng(name: str, k: int) -> list[int]:
        return list(geom_table[name][k])

    face, head = "Face", "Head and Neck"
    eyes_ball = ["Eyeball left", "Eyeball right"]
    geometries = {
        "face": {"vertex_ranges": [rng(face, 0)], "polygon_ranges": [rng(face, 1)],
                 "doc": "full face area"},
        "head": {"vertex_ranges": [rng(face, 0), rng(head, 0)],
                 "polygon_ranges": [rng(face, 1), rng(head, 1)], "doc": "face + head and neck"},
        "head_eyes": {"vertex_ranges": [rng(face, 0), rng(head, 0)] + [rng(n, 0) for n in eyes_ball],
                      "polygon_ranges": [rng(face, 1), rng(head, 1)] + [rng(n, 1) for n in eyes_ball],
                      "doc": "face + head and neck + eyeballs (reconstruction default)"},
        "full": {"vertex_ranges": [[0, N_VERTICES - 1]], "polygon_ranges": [[0, len(polys_v) - 1]],
                 "doc": "all sub-geometries"},
    }
    eye_parts = [k for k in geom_table if k.startswith(("Eye", "Lacrimal"))]
    mouth_parts = ["Mouth socket", "Gums and tongue", "Teeth"]

    def verts_of(names: list[str]) -> np.ndarray:
        return np.concatenate([np.arange(geom_table[n][0][0], geom_table[n][0][1] + 1) for n in names])

    mean_mm = neutral * 10.0
    regions = derive_regions(
        mean_mm,
        np.asarray(landmarks),
        face_vertices=np.arange(geom_table[face][0][0], geom_table[face][0][1] + 1),
        eye_geometry=verts_of(eye_parts),
        mouth_interior=verts_of(mouth_parts),
    )
    uv_group, group_names = _uv_groups(owner, uv_c, geom_table)
    narrow = np.arange(0, 6706)  # README "Narrow face area" [0:6705]
    regions["face_narrow"] = narrow
    # README "Eyeball Details": sclera and iris vertex ranges of both eyeballs.
    regions["sclera"] = np.concatenate([np.arange(21451, 22221), np.arange(23021, 23791)])
    regions["iris"] = np.concatenate([np.arange(22221, 23021), np.arange(23791, 24591)])
    regions["skin"] = np.intersect1d(regions["skin"], narrow)

    contour = None
    if readme.get("jaw_right_ext") and readme.get("jaw_left_ext"):
        r, l = readme["jaw_right_ext"], readme["jaw_left_ext"]
        m = max(len(r), len(l))
        contour = np.full((2, m), -1, dtype=np.int64)
        contour[0, : len(r)] = r
        contour[1, : len(l)] = l

    return ModelArrays(
        name="ict",
        mean=neutral.astype(np.float32),
        identity_basis=id_basis.astype(np.float32),
        expression_basis=exp_basis.astype(np.float32),
        expression_names=exp_names,
        triangles=tri,
        uv=uv_c.astype(np.float32),
        tri_polygon=owner,
        landmarks68=np.asarray(landmarks, dtype=np.int64),
        regions=regions,
        geometries=geometries,
        default_geometry="full",
        scale_to_mm=10.0,
        licence=ICT_LICENCE,
        source=str(source),
        expression_range="blendshape",
        contour_candidates=contour,
        meta={"jaw_right": readme.get("jaw_right"), "jaw_left": readme.get("jaw_left"),
              "source_units": "cm", "uv_group_names": group_names},
        uv_group=uv_group,
    )
