"""Binary glTF 2.0 with morph targets and a morph-weight animation (written here, read back).

The container is :mod:`faceclip.io.glb`'s (shared with
:func:`faceclip.io.mesh.write_glb`), following the glTF 2.0 specification (Khronos): one mesh with ``POSITION``, ``NORMAL``, ``TEXCOORD_0``, indices, a base-colour
texture (JPEG or PNG), one morph target per blendshape (``POSITION`` offsets, names in
``mesh.extras.targetNames``, which Blender and three.js use as shape-key names), default
weights, and optionally one animation whose ``weights`` channel plays the blendshape weights
over time (linear interpolation). Blender imports it with shape keys and an action; three.js's
``GLTFLoader`` gives ``morphTargetDictionary`` and an ``AnimationClip``.

Positions are in mm in FaceCLIP's model frame, as in the other exports.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faceclip.io.files import atomic_path
from faceclip.io.glb import (ARRAY_BUFFER, BIN_CHUNK, ELEMENT_ARRAY_BUFFER, FLOAT, GLB_MAGIC, JSON_CHUNK, UINT32,
                             GlbBuilder, glb_bytes)
from faceclip.io.mesh import _check_mesh, _to_uint8_image, split_by_uv, vertex_normals


def write_morph_glb(path: str | Path, base_vertices_mm, triangles, uv_corners, texture, targets_mm,
                    target_names: list[str], weights=None, times_s=None, frame_weights=None,
                    texture_format: str = "jpeg", animation_name: str = "expression", frame_rotations_xyzw=None,
                    frame_translations=None, camera: dict | None = None) -> Path:
    """Write a textured mesh with morph targets (and optionally their animation) as GLB.

    Args:
        base_vertices_mm: (V, 3) the mesh at zero weights.
        triangles: (F, 3) vertex indices, counter-clockwise seen from outside.
        uv_corners: (F, 3, 2) per-corner UVs in [0, 1], v up (flipped to glTF's v down here).
        texture: (H, W, 3) uint8 or float texture, row 0 = v 1.
        targets_mm: (K, V, 3) vertex offsets per unit weight.
        target_names: K names.
        weights: (K,) the mesh's default weights (what a viewer shows without the animation).
        times_s: (N,) key times in seconds (increasing), with ``frame_weights`` (N, K).
        texture_format: ``"jpeg"`` (quality 95) or ``"png"``.
        frame_rotations_xyzw: (N, 4) unit quaternions (x, y, z, w) of the mesh node at the key
            times (a head turning), or None.
        frame_translations: (N, 3) the mesh node's translation at the key times, or None.
        camera: a perspective camera added at the origin looking down -Z (glTF's convention):
            ``{"yfov_rad", "aspect", "znear", "zfar"}``; None: no camera.
    """
    v = np.asarray(base_vertices_mm, dtype=np.float64)
    f = np.asarray(triangles, dtype=np.int64)
    t = np.asarray(targets_mm, dtype=np.float64)
    _check_mesh(v, f)
    k = t.shape[0]
    if k < 1 or t.shape[1:] != v.shape or len(target_names) != k:
        raise ValueError(f"targets must be (K >= 1, V, 3) with K names; got {t.shape}, {len(target_names)} names, "
                         f"V={len(v)}")
    w = np.zeros(k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise ValueError(f"weights must be ({k},), got {w.shape}")
    if not (np.isfinite(v).all() and np.isfinite(t).all() and np.isfinite(w).all()):
        raise ValueError("vertices, targets and weights must be finite")
    v2, f2, uv2, src = split_by_uv(v, f, np.asarray(uv_corners))
    normals = vertex_normals(v, f)[src]
    b = GlbBuilder()
    attrs = {"POSITION": b.accessor(v2, "VEC3", ARRAY_BUFFER, bounds=True),
             "NORMAL": b.accessor(normals, "VEC3", ARRAY_BUFFER),
             "TEXCOORD_0": b.accessor(np.stack([uv2[:, 0], 1.0 - uv2[:, 1]], 1), "VEC2", ARRAY_BUFFER)}
    indices = b.accessor(f2.reshape(-1).astype(np.uint32), "SCALAR", ELEMENT_ARRAY_BUFFER)
    target_acc = [{"POSITION": b.accessor(t[i][src], "VEC3", ARRAY_BUFFER, bounds=True)} for i in range(k)]
    image = _to_uint8_image(texture)
    buf = io.BytesIO()
    jpeg = texture_format.lower() in ("jpeg", "jpg")
    image.save(buf, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {"compress_level": 1}))
    image_view = b.view(buf.getvalue())
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "faceclip"},
        "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{"name": "face", "primitives": [{"attributes": attrs, "indices": indices, "material": 0,
                                                    "targets": target_acc}],
                    "weights": [float(x) for x in w], "extras": {"targetNames": list(target_names)}}],
        "materials": [{"name": "face", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                                "metallicFactor": 0.0, "roughnessFactor": 0.9}}],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": image_view, "mimeType": "image/jpeg" if jpeg else "image/png"}],
    }
    if times_s is not None:
        times = np.asarray(times_s, dtype=np.float64)
        fw = np.asarray(frame_weights, dtype=np.float64)
        if (times.ndim != 1 or fw.shape != (len(times), k) or np.any(np.diff(times) <= 0) or np.any(times < 0)
                or not np.isfinite(fw).all()):
            raise ValueError(f"times_s must be (N,) increasing from >= 0 and frame_weights (N, {k}) finite; "
                             f"got {times.shape}, {fw.shape}")
        inp = b.accessor(times, "SCALAR", bounds=True)
        out = b.accessor(fw.reshape(-1), "SCALAR")
        samplers = [{"input": inp, "output": out, "interpolation": "LINEAR"}]
        channels = [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]
        for channel, arr, kind, width in (("rotation", frame_rotations_xyzw, "VEC4", 4),
                                          ("translation", frame_translations, "VEC3", 3)):
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float64)
            if a.shape != (len(times), width) or not np.isfinite(a).all():
                raise ValueError(f"frame {channel}s must be finite ({len(times)}, {width}); got {a.shape}")
            if channel == "rotation":
                a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
                gltf["nodes"][0]["rotation"] = [float(x) for x in a[0]]
            else:
                gltf["nodes"][0]["translation"] = [float(x) for x in a[0]]
            samplers.append({"input": inp, "output": b.accessor(a, kind), "interpolation": "LINEAR"})
            channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": channel}})
        gltf["animations"] = [{"name": animation_name, "samplers": samplers, "channels": channels}]
    if camera is not None:
        gltf["cameras"] = [{"type": "perspective", "name": "camera", "perspective": {
            "yfov": float(camera["yfov_rad"]), "aspectRatio": float(camera["aspect"]),
            "znear": float(camera["znear"]), "zfar": float(camera["zfar"])}}]
        gltf["nodes"].append({"camera": 0, "name": "camera"})
        gltf["scenes"][0]["nodes"].append(len(gltf["nodes"]) - 1)
    data = glb_bytes(gltf, b)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


@dataclass
class GlbMorphMesh:
    """What :func:`read_morph_glb` returns (arrays as stored, UV seams split)."""

    vertices: np.ndarray  # (V, 3)
    triangles: np.ndarray  # (F, 3)
    uv: np.ndarray | None  # (V, 2) TEXCOORD_0 as stored (glTF: v down)
    targets: np.ndarray  # (K, V, 3)
    target_names: list[str]
    weights: np.ndarray  # (K,)
    times_s: np.ndarray | None  # (N,)
    frame_weights: np.ndarray | None  # (N, K)
    texture: Image.Image | None
    gltf: dict
    #: (N, 4) node rotations (x, y, z, w) and (N, 3) translations of the animation, if any.
    frame_rotations_xyzw: np.ndarray | None = None
    frame_translations: np.ndarray | None = None

    def at(self, weights) -> np.ndarray:
        """(V, 3) vertices at blendshape ``weights`` (K,)."""
        return self.vertices + np.tensordot(np.asarray(weights, dtype=np.float64), self.targets, axes=1)


def read_glb_json(path: str | Path) -> tuple[dict, bytes]:
    """(glTF JSON, binary chunk) of a GLB file.

    Raises:
        ValueError: not a GLB 2.0 file.
    """
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise ValueError(f"{path}: too short for GLB")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path}: not a GLB 2.0 file")
    n, kind = struct.unpack_from("<II", data, 12)
    if kind != JSON_CHUNK:
        raise ValueError(f"{path}: first chunk is not JSON")
    gltf = json.loads(data[20:20 + n])
    rest = 20 + n
    binary = b""
    if rest < len(data):
        m, kind = struct.unpack_from("<II", data, rest)
        binary = data[rest + 8:rest + 8 + m] if kind == BIN_CHUNK else b""
    return gltf, binary


def _accessor(gltf: dict, binary: bytes, i: int) -> np.ndarray:
    acc = gltf["accessors"][i]
    view = gltf["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = {FLOAT: np.float32, UINT32: np.uint32}[acc["componentType"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    a = np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start)
    return a.reshape(acc["count"], width) if width > 1 else a


def read_morph_glb(path: str | Path) -> GlbMorphMesh:
    """Read back a file of :func:`write_morph_glb` (the first primitive of the first mesh)."""
    gltf, binary = read_glb_json(path)
    mesh = gltf["meshes"][0]
    prim = mesh["primitives"][0]
    verts = _accessor(gltf, binary, prim["attributes"]["POSITION"]).astype(np.float64)
    tris = _accessor(gltf, binary, prim["indices"]).reshape(-1, 3).astype(np.int64)
    targets = np.stack([_accessor(gltf, binary, tg["POSITION"]) for tg in prim.get("targets", [])]
                       ).astype(np.float64) if prim.get("targets") else np.zeros((0,) + verts.shape)
    times = frames = None
    pose: dict[str, np.ndarray] = {}
    if gltf.get("animations"):
        s = gltf["animations"][0]["samplers"][0]
        times = _accessor(gltf, binary, s["input"]).astype(np.float64)
        frames = _accessor(gltf, binary, s["output"]).astype(np.float64).reshape(len(times), -1)
        anim = gltf["animations"][0]
        for ch in anim["channels"]:
            path = ch["target"]["path"]
            if path in ("rotation", "translation") and ch["target"].get("node") == 0:
                pose[path] = _accessor(gltf, binary, anim["samplers"][ch["sampler"]]["output"]).astype(np.float64)
    texture = None
    if gltf.get("images"):
        view = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
        start = view.get("byteOffset", 0)
        texture = Image.open(io.BytesIO(binary[start:start + view["byteLength"]]))
    uv = (_accessor(gltf, binary, prim["attributes"]["TEXCOORD_0"]).astype(np.float64)
          if "TEXCOORD_0" in prim["attributes"] else None)
    return GlbMorphMesh(verts, tris, uv, targets, list(mesh.get("extras", {}).get("targetNames", [])),
                        np.asarray(mesh.get("weights", []), dtype=np.float64), times, frames, texture, gltf,
                        pose.get("rotation"), pose.get("translation"))
