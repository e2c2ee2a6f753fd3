"""Triangle meshes and keypoint files as the evaluation protocols see them.

A :class:`Mesh` is two numpy arrays (float64 vertices, int64 triangles) and nothing else: the
protocols treat prediction and ground truth as unrelated surfaces (different topology, density,
units), so no UVs, colours or face-model metadata travel with them.

Readers raise :class:`faceclip.errors.InputError` (one line naming the file, plus a hint) for
missing, unreadable or empty files and for keypoint files with the wrong layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceclip.errors import InputError

__all__ = ["Mesh", "load_mesh", "load_keypoints", "MESH_SUFFIXES", "KEYPOINT_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf", ".wrl")
KEYPOINT_SUFFIXES = (".txt", ".npy", ".pp", ".json", ".xyz", ".obj", ".csv")


@dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (V, 3) float64 positions (mm unless a protocol says otherwise).
        triangles: (F, 3) int64 vertex indices (0-based). May be empty for a point cloud,
            which the point-to-surface metrics then refuse.
    """

    vertices: np.ndarray
    triangles: np.ndarray

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3))
        tri = np.asarray(self.triangles, dtype=np.int64)
        self.triangles = np.ascontiguousarray(tri.reshape(-1, 3))
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= len(self.vertices)):
            raise ValueError("triangle indices out of range")

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def transformed(self, scale: float, rotation: np.ndarray, translation: np.ndarray) -> "Mesh":
        """``scale * R @ v + t`` for every vertex (a new mesh, same triangles)."""
        v = scale * self.vertices @ np.asarray(rotation, np.float64).T + np.asarray(translation, np.float64)
        return Mesh(v, self.triangles)

    def face_normals(self) -> np.ndarray:
        """(F, 3) unit normals (zero for degenerate triangles), counter-clockwise = outward."""
        a, b, c = (self.vertices[self.triangles[:, i]] for i in range(3))
        n = np.cross(b - a, c - a)
        length = np.linalg.norm(n, axis=1, keepdims=True)
        return np.divide(n, length, out=np.zeros_like(n), where=length > 0)

    def vertex_normals(self) -> np.ndarray:
        """(V, 3) area-weighted unit vertex normals (zero for isolated vertices)."""
        a, b, c = (self.vertices[self.triangles[:, i]] for i in range(3))
        n = np.cross(b - a, c - a)  # length = 2 * area
        out = np.zeros_like(self.vertices)
        for i in range(3):
            np.add.at(out, self.triangles[:, i], n)
        length = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, length, out=np.zeros_like(out), where=length > 0)

    def edges(self) -> np.ndarray:
        """(E, 2) unique undirected edges, smaller index first."""
        e = np.concatenate([self.triangles[:, [0, 1]], self.triangles[:, [1, 2]], self.triangles[:, [0, 2]]])
        e = np.sort(e, axis=1)
        return np.unique(e, axis=0)

    def submesh(self, vertex_indices: np.ndarray) -> tuple["Mesh", np.ndarray]:
        """Keep the given vertices and the triangles whose three corners are all kept.

        Returns:
            the sub-mesh and the (V_sub,) indices of its vertices in this mesh (sorted).
        """
        keep = np.unique(np.asarray(vertex_indices, dtype=np.int64))
        remap = np.full(self.n_vertices, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        tri = remap[self.triangles]
        tri = tri[(tri >= 0).all(axis=1)]
        return Mesh(self.vertices[keep], tri), keep

    def subdivided(self) -> "Mesh":
        """One step of midpoint subdivision (each triangle -> 4), for tests and benchmarks.

        The first ``V`` vertices are the original ones; vertex ``V + e`` is the midpoint of edge
        ``self.edges()[e]``.
        """
        edges = self.edges()
        n = self.n_vertices
        key = edges[:, 0] * n + edges[:, 1]
        order = np.argsort(key)
        key_sorted = key[order]
        mids = (self.vertices[edges[:, 0]] + self.vertices[edges[:, 1]]) / 2

        def mid(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            k = np.minimum(i, j) * n + np.maximum(i, j)
            return n + order[np.searchsorted(key_sorted, k)]

        a, b, c = self.triangles.T
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        tri = np.concatenate([
            np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1),
        ])
        return Mesh(np.concatenate([self.vertices, mids]), tri)


def load_mesh(path: str | Path, *, require_triangles: bool = True) -> Mesh:
    """Read a mesh file (OBJ, PLY, OFF, STL, GLB/glTF; VRML through trimesh where supported).

    Vertex order is kept exactly as in the file (no merging or reordering), so per-vertex
    keypoint indices stay valid (OBJ files are read directly, so vertices no face references
    are kept too); quads and polygons are triangulated as fans.

    Raises:
        InputError: missing or unreadable file, no vertices, or (``require_triangles``) no faces.
    """
    import trimesh

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mesh file not found: {p}", hint="check the path (--pred / --gt)")
    if p.suffix.lower() == ".obj":
        obj = _read_obj_exact(p)
        if obj is not None:
            vertices, faces = obj
            return _checked_mesh(p, vertices, faces, require_triangles)
    try:
        loaded = trimesh.load(str(p), process=False, maintain_order=True, skip_materials=True)
        if isinstance(loaded, trimesh.Scene):
            geoms = [g for g in loaded.dump() if hasattr(g, "vertices")]
            meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
            loaded = trimesh.util.concatenate(meshes) if meshes else (geoms[0] if geoms else loaded)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for broken files
        raise InputError(f"{p}: cannot read mesh ({type(exc).__name__}: {_short(exc)})",
                         hint="use a valid OBJ or PLY file") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64)
    return _checked_mesh(p, vertices, faces, require_triangles)


def _read_obj_exact(p: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """An OBJ's ``v`` lines and triangulated ``f`` lines, exactly as in the file.

    trimesh drops vertices that no face references when faces carry normals (``f v//vn``),
    which would shift per-vertex keypoint indices; this reader keeps every vertex. Returns
    None for files it does not understand (then trimesh reads them).
    """
    verts: list[list[float]] = []
    faces: list[tuple[int, int, int]] = []
    try:
        with open(p, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                tokens = line.split()  # OBJ allows leading blanks and tabs between fields
                if not tokens:
                    continue
                if tokens[0] == "v":
                    verts.append([float(x) for x in tokens[1:4]])
                elif tokens[0] == "f":
                    idx = []
                    for corner in tokens[1:]:
                        i = int(corner.split("/")[0])
                        idx.append(i - 1 if i > 0 else len(verts) + i)
                    faces.extend((idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1))
    except (OSError, ValueError, IndexError):
        return None
    if not verts or any(len(v) != 3 for v in verts):
        return None
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def _checked_mesh(p: Path, vertices: np.ndarray, faces: np.ndarray, require_triangles: bool) -> Mesh:
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise InputError(f"{p}: face indices out of range", hint="use a valid OBJ or PLY file")
    if vertices.ndim != 2 or vertices.shape[0] == 0:
        raise InputError(f"{p}: no vertices found", hint="use a valid OBJ or PLY file")
    if not np.isfinite(vertices).all():
        raise InputError(f"{p}: vertices contain NaN or infinite values")
    if require_triangles and (faces.ndim != 2 or faces.shape[0] == 0):
        raise InputError(f"{p}: no triangles found (a point cloud?)",
                         hint="the protocols measure point-to-surface distances and need a triangle mesh")
    return Mesh(vertices, faces.reshape(-1, 3) if faces.size else np.zeros((0, 3), np.int64))


def load_keypoints(path: str | Path, n: int | None = None) -> np.ndarray:
    """Read 3D keypoints: (K, 3) float64.

    Accepted layouts: whitespace/comma separated text (``.txt``, ``.xyz``, ``.csv``: one point
    per row, 3 columns), ``.npy`` (K, 3), MeshLab picked points ``.pp`` (NoW ground truth),
    ``.json`` (a list of [x, y, z] or ``{"keypoints": [...]}``) and ``.obj`` (its ``v`` lines, as
    REALY's ``REALY_HIFI3D_keypoints/*.obj``).

    Args:
        n: expected number of points (checked when given).

    Raises:
        InputError: missing file, unparsable content, wrong shape or count.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"keypoint file not found: {p}", hint="check --pred-keypoints / --gt-keypoints")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            pts = np.load(p, allow_pickle=False)
        elif suffix == ".pp":
            pts = _read_picked_points(p.read_text(errors="replace"))
        elif suffix == ".json":
            obj = json.loads(p.read_text())
            if isinstance(obj, dict):
                obj = obj.get("keypoints", obj.get("landmarks", obj.get("points")))
            pts = np.asarray(obj, dtype=np.float64)
        elif suffix == ".obj":
            rows = [t[1:4] for t in (line.split() for line in p.read_text(errors="replace").splitlines())
                    if t and t[0] == "v"]
            pts = np.asarray(rows, dtype=np.float64)
        else:
            text = p.read_text(errors="replace").replace(",", " ")
            rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            pts = np.asarray(rows, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{p}: cannot read keypoints ({type(exc).__name__}: {_short(exc)})",
                         hint="one 'x y z' row per keypoint (.txt), a (K, 3) .npy, or a MeshLab .pp file") from None
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise InputError(f"{p}: keypoints must be K rows of 3 coordinates, got shape {tuple(pts.shape)}",
                         hint="one 'x y z' row per keypoint")
    if n is not None and pts.shape[0] != n:
        raise InputError(f"{p}: expected {n} keypoints, found {pts.shape[0]}",
                         hint=f"this protocol needs {n} keypoints in its documented order")
    if not np.isfinite(pts).all():
        raise InputError(f"{p}: keypoints contain NaN or infinite values")
    return pts


def _read_picked_points(text: str) -> np.ndarray:
    """MeshLab ``<point x=".." y=".." z=".." .../>`` entries, in file order."""
    pts = []
    for m in re.finditer(r"<point\b([^>]*)/?>", text):
        attrs = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(1)))
        if attrs.get("active", "1") == "0":
            continue
        pts.append([float(attrs["x"]), float(attrs["y"]), float(attrs["z"])])
    return np.asarray(pts, dtype=np.float64)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + ("..." if len(text) > 160 else "")
