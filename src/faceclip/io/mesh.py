"""Mesh export: OBJ + MTL + texture PNG, PLY with vertex colours, and binary glTF (GLB).

Every format carries smooth per-vertex normals (:func:`vertex_normals`: area-weighted, unit
length, pointing to the side from which the triangles are counter-clockwise, i.e. outward for
FaceCLIP's meshes). They are computed once on the mesh as given and then indexed, so the copies
of a vertex that the writers make along UV seams share one normal and the seams stay invisible.

All writers take millimetre vertices in FaceCLIP's model frame (right-handed, +X toward the
subject's left, +Y up, +Z out of the face; see :mod:`faceclip.facemodel.base`) and write them
unchanged, so files open upright and facing +Z in MeshLab; glTF is +Y up by definition, so
Blender's importer shows the face upright facing -Y (its front view). Every file is written
atomically: to a temporary file in the target folder, then renamed, so a crash never leaves a
half-written mesh.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from faceclip.io.files import atomic_path
from faceclip.io.glb import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, GlbBuilder, glb_bytes
from faceclip.io.images import encode_jpeg, encode_png

if TYPE_CHECKING:  # io sits below facemodel: the model is only a type here
    from faceclip.facemodel import FaceModel

ArrayLike = np.ndarray


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_mesh(vertices: np.ndarray, triangles: np.ndarray) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be (F, 3), got {triangles.shape}")
    if not np.isfinite(vertices).all():
        raise ValueError("vertices contain NaN or infinite values; refusing to write a broken mesh")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError("triangle indices out of range")


def vertex_normals(vertices, triangles) -> np.ndarray:
    """Area-weighted unit vertex normals, (V, 3) float64.

    Each vertex gets the sum of its triangles' unnormalised normals (cross products, so larger
    triangles weigh more), normalised; the normal points to the side from which the triangle's
    corners run counter-clockwise (the right-hand rule). Vertices where that sum vanishes
    (unreferenced, or only degenerate / cancelling triangles) get the normalised sum of their
    unit triangle normals, and failing that +Z, so that every normal is unit length as glTF
    requires.
    """
    v = _np(vertices).astype(np.float64)
    f = _np(triangles).astype(np.int64)
    n_v = len(v)
    normals = np.zeros((n_v, 3))
    if len(f) == 0:
        normals[:, 2] = 1.0
        return normals
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # (F, 3), |.| = 2 * area
    corners = f.reshape(-1)

    def accumulate(face_vectors: np.ndarray) -> np.ndarray:
        rep = np.repeat(face_vectors, 3, axis=0)  # one row per corner, in ``corners`` order
        return np.stack([np.bincount(corners, weights=rep[:, c], minlength=n_v) for c in range(3)], 1)

    normals = accumulate(cross)
    length = np.linalg.norm(normals, axis=1)
    scale = float(np.linalg.norm(cross, axis=1).max())
    bad = length <= 1e-12 * max(scale, 1e-300)
    if bad.any():
        flen = np.linalg.norm(cross, axis=1, keepdims=True)
        unit = np.divide(cross, flen, out=np.zeros_like(cross), where=flen > 1e-12 * max(scale, 1e-300))
        fallback = accumulate(unit)
        normals[bad] = fallback[bad]
        length[bad] = np.linalg.norm(fallback[bad], axis=1)
        still = bad & (length <= 1e-9)
        normals[still] = (0.0, 0.0, 1.0)
        length[still] = 1.0
    return normals / length[:, None]


def _normals_arg(normals, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray | None:
    """A writer's ``normals`` argument -> (V, 3) unit normals or None (True: compute them)."""
    if normals is None or normals is False:
        return None
    if normals is True:
        return vertex_normals(vertices, triangles)
    n = _np(normals).astype(np.float64)
    if n.shape != vertices.shape:
        raise ValueError(f"normals must be (V, 3) like the vertices, got {n.shape}")
    length = np.linalg.norm(n, axis=1, keepdims=True)
    if not np.isfinite(n).all() or (length < 1e-12).any():
        raise ValueError("normals must be finite and non-zero")
    return n / length


def _to_uint8_rgb(texture: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of a uint8 or float [0, 1] texture."""
    t = _np(texture)
    if t.dtype != np.uint8:
        t = (np.clip(t, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"texture must be (H, W, 3), got {t.shape}")
    return t


def _to_uint8_image(texture: np.ndarray) -> Image.Image:
    return Image.fromarray(_to_uint8_rgb(texture), "RGB")


def _rows(fmt: str, values: np.ndarray) -> str:
    """Format each row of a 2-D array with ``fmt`` (one printf call for the whole array)."""
    if len(values) == 0:
        return ""
    return ((fmt + "\n") * len(values) % tuple(values.ravel().tolist())).rstrip("\n")


_TOPOLOGY_CACHE: dict[tuple, object] = {}


def memo_by_content(kind: str, *arrays, compute):
    """``compute()``, memoised by ``kind`` and the content of ``arrays`` (NumPy arrays or
    tensors): for work that depends on a model's layout only (topology, UVs, regions), done once
    per layout however many faces use it. At most 16 entries are kept; the value is shared, so
    callers must not change it."""
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(_np(a))
        h.update(a.tobytes())
        h.update(str(a.shape).encode())
    key = (kind, h.hexdigest())
    if key not in _TOPOLOGY_CACHE:
        if len(_TOPOLOGY_CACHE) > 16:
            _TOPOLOGY_CACHE.clear()
        _TOPOLOGY_CACHE[key] = compute()
    return _TOPOLOGY_CACHE[key]


def _unique_uv(uv_corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, 3, 2) per-corner UVs -> unique UVs (T, 2) and (F, 3) indices into them."""

    def compute():
        flat = uv_corners.reshape(-1, 2).astype(np.float64)
        q = np.rint(flat * 1e7)  # np.round(flat, 7) * 1e7
        if len(q) and np.isfinite(q).all() and np.abs(q).max() < 2.0 ** 31:
            # One int64 key per UV, ordered as the rows (u major): a 1-D unique is ~10x faster.
            keys, inverse = np.unique(q[:, 0].astype(np.int64) * 2 ** 32 + q[:, 1].astype(np.int64),
                                      return_inverse=True)
            u_key = (keys + 2 ** 31) // 2 ** 32
            uniq = np.stack([u_key, keys - u_key * 2 ** 32], axis=1) / 1e7
        else:
            uniq, inverse = np.unique(np.round(flat, 7), axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1, 3)

    return memo_by_content("uv", uv_corners, compute=compute)


def write_obj(
    path: str | Path,
    vertices_mm,
    triangles,
    uv=None,
    texture=None,
    material_name: str = "face",
    normals=True,
    texture_file: str | None = None,
    texture_png: Callable[[], bytes] | None = None,
) -> list[Path]:
    """Write a Wavefront OBJ (+ MTL and texture PNG when ``uv`` and ``texture`` are given).

    Args:
        path: the .obj path; the MTL is ``<stem>.mtl`` and the texture ``<stem>_texture.png``
            beside it.
        vertices_mm: (V, 3) vertices in mm.
        triangles: (F, 3) vertex indices (0-based), counter-clockwise seen from outside.
        uv: (F, 3, 2) per-corner UVs in [0, 1] (v up), or None.
        texture: (H, W, 3) uint8 or float [0, 1] RGB, row 0 = top (v = 1), or None.
        normals: True (default): write :func:`vertex_normals` as ``vn`` lines (one per vertex,
            faces ``f v/vt/vn``); a (V, 3) array: write those (normalised); False: none.
        texture_file: the texture's file name beside the OBJ, for the MTL (default
            ``<stem>_texture.png``). With ``texture`` None and ``uv`` given, the MTL refers to
            this file, which is not written (an image another export already wrote).
        texture_png: instead of ``texture``, a function returning the texture's PNG bytes, called
            once the OBJ text is formatted (e.g. the ``result`` of a future encoding it in
            another thread).

    Returns:
        The written files, OBJ first.
    """
    path = Path(path)
    v = _np(vertices_mm).astype(np.float64)
    f = _np(triangles).astype(np.int64)
    _check_mesh(v, f)
    n = _normals_arg(normals, v, f)
    written: list[Path] = []
    lines = ["# FaceCLIP mesh: millimetres, right-handed, +X subject's left, +Y up, +Z toward viewer"]
    mtl_name = tex_name = None
    if uv is not None and (texture is not None or texture_file is not None or texture_png is not None):
        mtl_name, tex_name = f"{path.stem}.mtl", texture_file or f"{path.stem}_texture.png"
        lines.append(f"mtllib {mtl_name}")
    lines.append(_rows("v %.6f %.6f %.6f", v))
    if n is not None:
        lines.append(_rows("vn %.7f %.7f %.7f", n))  # vn k belongs to v k
    if uv is not None:
        uv_np = _np(uv)
        uniq, tidx = _unique_uv(uv_np)
        if tidx.shape[0] != f.shape[0]:
            raise ValueError(f"uv has {tidx.shape[0]} triangles, mesh has {f.shape[0]}")
        # The vt and f lines depend on the topology only: formatted once per mesh layout.
        lines.append(memo_by_content("obj_vt", uv_np, compute=lambda: _rows("vt %.7f %.7f", uniq)))
        if mtl_name:
            lines.append(f"usemtl {material_name}")
        if n is not None:
            lines.append(memo_by_content("obj_f_vt_vn", f, uv_np, compute=lambda: _rows(
                "f %d/%d/%d %d/%d/%d %d/%d/%d", np.stack([f + 1, tidx + 1, f + 1], axis=-1).reshape(len(f), 9))))
        else:
            lines.append(memo_by_content("obj_f_vt", f, uv_np, compute=lambda: _rows(
                "f %d/%d %d/%d %d/%d", np.stack([f + 1, tidx + 1], axis=-1).reshape(len(f), 6))))
    elif n is not None:
        lines.append(memo_by_content("obj_f_vn", f, compute=lambda: _rows(
            "f %d//%d %d//%d %d//%d", np.stack([f + 1, f + 1], axis=-1).reshape(len(f), 6))))
    else:
        lines.append(memo_by_content("obj_f", f, compute=lambda: _rows("f %d %d %d", f + 1)))
    text = "\n".join(line for line in lines if line) + "\n"
    # The texture and the MTL are written before the OBJ that names them.
    if mtl_name is not None:
        png = (texture_png() if texture_png is not None else
               encode_png(_to_uint8_rgb(texture)) if texture is not None else None)
        if png is not None:
            with atomic_path(path.parent / tex_name) as tmp:
                tmp.write_bytes(png)
            written.append(path.parent / tex_name)
        with atomic_path(path.parent / mtl_name) as tmp:
            tmp.write_text(
                f"newmtl {material_name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {tex_name}\n"
            )
        written.append(path.parent / mtl_name)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return [path] + written


def write_ply(path: str | Path, vertices_mm, triangles, vertex_colors=None, normals=True) -> Path:
    """Write a binary (little-endian) PLY with optional per-vertex colours ((V, 3) uint8 or float
    in [0, 1], written as ``red green blue alpha`` bytes).

    ``normals`` as in :func:`write_obj` (written as the vertex properties ``nx ny nz``).
    Positions and normals are float32, faces ``list uchar int vertex_indices``.
    """
    v = _np(vertices_mm).astype(np.float64)
    f = _np(triangles).astype(np.int64)
    _check_mesh(v, f)
    n = _normals_arg(normals, v, f)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if n is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if vertex_colors is not None:
        c = _np(vertex_colors)
        if c.dtype != np.uint8:
            c = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
        if c.shape != (len(v), 3):
            raise ValueError(f"vertex_colors must be (V, 3) like the vertices, got {c.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    rows = np.empty(len(v), dtype=fields)
    rows["x"], rows["y"], rows["z"] = v.T
    if n is not None:
        rows["nx"], rows["ny"], rows["nz"] = n.T
    if vertex_colors is not None:
        rows["red"], rows["green"], rows["blue"], rows["alpha"] = c[:, 0], c[:, 1], c[:, 2], 255
    faces = np.empty(len(f), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"], faces["v"] = 3, f
    names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by faceclip", f"element vertex {len(v)}"]
    header += [f"property {names[t]} {name}" for name, t in fields]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes("\n".join(header).encode("ascii") + b"\n" + rows.tobytes() + faces.tobytes())
    return path


def split_by_uv(vertices: np.ndarray, triangles: np.ndarray, uv_corners: np.ndarray):
    """Duplicate vertices along UV seams so that each vertex has one UV (for glTF).

    Returns:
        vertices (V', 3), triangles (F, 3), per-vertex uv (V', 2), source vertex index (V',).
    """
    uniq_uv, tidx = _unique_uv(uv_corners)

    def compute():
        pairs = np.stack([triangles.reshape(-1), tidx.reshape(-1)], axis=1)
        return np.unique(pairs, axis=0, return_inverse=True)

    uniq_pairs, inverse = memo_by_content("split", triangles, uv_corners, compute=compute)
    return (
        vertices[uniq_pairs[:, 0]],
        inverse.reshape(-1, 3),
        uniq_uv[uniq_pairs[:, 1]],
        uniq_pairs[:, 0],
    )


def _is_jpeg(texture_format: str) -> bool:
    """True for ``"jpeg"`` / ``"jpg"``, False for ``"png"`` (any case); ValueError otherwise."""
    fmt = texture_format.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise ValueError(f"texture_format must be 'png' or 'jpeg', got {texture_format!r}")
    return fmt != "png"


def write_glb(path: str | Path, vertices_mm, triangles, uv=None, texture=None, vertex_colors=None,
              texture_format: str = "png", normals=True, normal_texture=None,
              encoded_texture: bytes | Callable[[], bytes] | None = None) -> Path:
    """Write binary glTF 2.0: textured when ``uv`` and ``texture`` are given, else vertex colours.

    Positions are written in mm as they are (glTF nominally uses metres; importers that honour
    this show a 1000x larger object: scale by 0.001 on import if needed). ``texture_format``
    ``"jpeg"`` embeds the texture as a quality-95 JPEG (several times faster to encode and
    smaller than PNG, at a small loss); ``"png"`` is lossless. ``encoded_texture``: the texture
    already encoded in that format (bytes, or a callable that returns them, such as a future's
    ``result``), embedded as it is instead of encoding ``texture`` here. ``normals`` as in
    :func:`write_obj` (a ``NORMAL`` attribute, float32 unit vectors; computed on the mesh as
    given, so the copies of a vertex split along UV seams share one normal).
    ``normal_texture``: an (H, W, 3) uint8 tangent-space normal map (OpenGL convention, +Y =
    +v; see :func:`faceclip.io.detail.tangent_normal_map`) for the material's ``normalTexture``,
    always embedded as PNG; it needs ``uv`` (with it, ``texture`` may be None: no base colour
    texture). No ``TANGENT`` attribute is written: viewers derive MikkTSpace tangents.
    Vertex colours (without a texture) are a float ``COLOR_0`` attribute with glTF's default
    material, which multiplies them into its white base colour. The file is assembled by
    :mod:`faceclip.io.glb`.
    """
    v = _np(vertices_mm).astype(np.float64)
    f = _np(triangles).astype(np.int64)
    _check_mesh(v, f)
    if len(f) == 0:
        raise ValueError("a GLB needs at least one triangle")
    n = _normals_arg(normals, v, f)
    if normal_texture is not None and uv is None:
        raise ValueError("normal_texture needs uv")
    jpeg = _is_jpeg(texture_format)
    images: list[tuple[bytes, str]] = []  # (encoded image, MIME type)
    material: dict = {"name": "face", "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.9}}
    b = GlbBuilder()
    has_colour = texture is not None or encoded_texture is not None
    if uv is not None and (has_colour or normal_texture is not None):
        nt = None
        if normal_texture is not None:
            nt = _np(normal_texture)
            if nt.dtype != np.uint8 or nt.ndim != 3 or nt.shape[2] != 3:
                raise ValueError(f"normal_texture must be (H, W, 3) uint8, got {nt.shape} {nt.dtype}")
        v, f, uv2, src = split_by_uv(v, f, _np(uv))
        n = None if n is None else n[src]
        texcoord = np.stack([uv2[:, 0], 1.0 - uv2[:, 1]], 1)  # glTF's v runs down the image
        if has_colour:
            data = encoded_texture() if callable(encoded_texture) else encoded_texture
            if data is None:
                data = encode_jpeg(_to_uint8_rgb(texture)) if jpeg else encode_png(_to_uint8_rgb(texture))
            images.append((data, "image/jpeg" if jpeg else "image/png"))
            material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": len(images) - 1}
        if nt is not None:
            images.append((encode_png(nt), "image/png"))
            material["normalTexture"] = {"index": len(images) - 1}
    else:
        texcoord = None
    attrs = {"POSITION": b.accessor(v, "VEC3", ARRAY_BUFFER, bounds=True)}
    if n is not None:
        attrs["NORMAL"] = b.accessor(n, "VEC3", ARRAY_BUFFER)
    if texcoord is not None:
        attrs["TEXCOORD_0"] = b.accessor(texcoord, "VEC2", ARRAY_BUFFER)
    elif vertex_colors is not None:
        c = _np(vertex_colors)
        c = c / 255.0 if c.dtype == np.uint8 else np.clip(c, 0.0, 1.0)
        if c.shape != (len(v), 3):
            raise ValueError(f"vertex_colors must be (V, 3) like the vertices, got {c.shape}")
        attrs["COLOR_0"] = b.accessor(c, "VEC3", ARRAY_BUFFER)
    indices = b.accessor(f.reshape(-1).astype(np.uint32), "SCALAR", ELEMENT_ARRAY_BUFFER)
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "faceclip"},
        "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{"name": "face", "primitives": [{"attributes": attrs, "indices": indices, "mode": 4}]}],
    }
    if texcoord is not None or vertex_colors is None:
        # A mesh with vertex colours keeps glTF's default material, which multiplies them in (and
        # which importers such as trimesh read as vertex colours).
        gltf["meshes"][0]["primitives"][0]["material"] = 0
        gltf["materials"] = [material]
    if images:
        gltf["images"] = [{"bufferView": b.view(data), "mimeType": mime} for data, mime in images]
        gltf["textures"] = [{"source": i, "sampler": 0} for i in range(len(images))]
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
    path = Path(path)
    data = glb_bytes(gltf, b)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def bake_vertex_colors(uv_corners, triangles, vertex_colors, size_px: int = 512) -> np.ndarray:
    """Paint per-vertex colours into a UV texture (flat colour per triangle, seams dilated).

    Args:
        uv_corners: (F, 3, 2) UVs in [0, 1], v up.
        triangles: (F, 3) vertex indices.
        vertex_colors: (V, 3) float in [0, 1].
        size_px: texture side.

    Returns:
        (size_px, size_px, 3) uint8 texture, row 0 = v 1.
    """
    from PIL import ImageDraw, ImageFilter

    uvc = _np(uv_corners)
    col = _np(vertex_colors)[_np(triangles)].mean(axis=1)  # (F, 3)
    scale = 2  # supersample, then downsample: smoother edges
    s = size_px * scale
    img = Image.new("RGB", (s, s), (0, 0, 0))
    mask = Image.new("L", (s, s), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    xy = np.stack([uvc[..., 0] * s, (1.0 - uvc[..., 1]) * s], axis=-1)
    rgb = (np.clip(col, 0, 1) * 255 + 0.5).astype(np.uint8)
    for poly, c in zip(xy, rgb):
        pts = [tuple(p) for p in poly]
        draw.polygon(pts, fill=tuple(int(x) for x in c))
        mdraw.polygon(pts, fill=255)
    # Dilate colours over the seams so bilinear lookups near UV island borders stay on colour.
    for _ in range(4):
        grown = img.filter(ImageFilter.MaxFilter(5))
        img = Image.composite(img, grown, mask)
        mask = mask.filter(ImageFilter.MaxFilter(5))
    return np.asarray(img.resize((size_px, size_px), Image.BILINEAR))


# A neutral mid skin tone (linear-ish sRGB in [0, 1]) for models without an albedo basis.
DEFAULT_SKIN_RGB = (0.80, 0.64, 0.54)


MESH_FORMATS = ("obj", "ply", "glb")


def check_formats(formats: tuple[str, ...]) -> None:
    """Refuse an empty or unknown ``--formats`` list with a clear message.

    Raises:
        FaceClipError: naming the allowed formats.
    """
    from faceclip.errors import FaceClipError

    if not formats or any(f not in MESH_FORMATS for f in formats):
        raise FaceClipError(f"--formats {','.join(formats)}: choose from obj, ply, glb (comma-separated)")


def export_mesh(model: "FaceModel", vertices_mm, out_dir: Path, stem: str = "mesh",
                vertex_colors=None, texture=None, glb_texture_format: str = "png",
                formats: tuple[str, ...] = MESH_FORMATS) -> list[Path]:
    """Write ``<stem>.obj/.mtl/_texture.png``, ``<stem>.ply`` and ``<stem>.glb`` into ``out_dir``.

    Args:
        model: supplies triangles and per-corner UVs.
        vertices_mm: (V, 3) vertices in mm.
        vertex_colors: (V, 3) in [0, 1], used for the PLY (and baked into the texture when no
            ``texture`` is given); default: the model's mean albedo, else a uniform skin tone.
        texture: (H, W, 3) UV texture (uint8 or float); default: baked from the vertex colours.
        glb_texture_format: ``"png"`` or ``"jpeg"`` (faster, smaller) for the GLB's texture.
        formats: which of ``"obj"``, ``"ply"``, ``"glb"`` to write.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = model.n_vertices
    if vertex_colors is None:
        if model.albedo_mean is not None:
            vertex_colors = model.albedo_mean.detach().cpu().numpy()
        else:
            vertex_colors = np.tile(np.asarray(DEFAULT_SKIN_RGB), (n, 1))
    vertex_colors = np.clip(np.asarray(vertex_colors, dtype=np.float64), 0, 1)
    if texture is None:
        texture = bake_vertex_colors(model.uv, model.triangles, vertex_colors, size_px=512)
    unknown = set(formats) - set(MESH_FORMATS)
    if unknown or not formats:
        raise ValueError(f"mesh formats must be among {', '.join(MESH_FORMATS)}, got {', '.join(formats) or 'none'}")
    glb_jpeg = _is_jpeg(glb_texture_format)
    normals = vertex_normals(vertices_mm, model.triangles)  # once for all files
    files: dict[str, list[Path]] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="faceclip-png") as pool:
        # The textures (the GLB's first, it is the quicker) are encoded in a worker thread (the
        # encoders release the GIL) while the PLY, the GLB's arrays and the OBJ's text are made
        # here; the OBJ comes last, as it waits for its PNG.
        glb_image = png = None
        if model.uv is not None:
            rgb = _to_uint8_rgb(texture)
            if "glb" in formats:
                glb_image = pool.submit(encode_jpeg if glb_jpeg else encode_png, rgb)
            if "obj" in formats:
                png = glb_image if glb_image is not None and not glb_jpeg else pool.submit(encode_png, rgb)
        if "ply" in formats:
            files["ply"] = [write_ply(out_dir / f"{stem}.ply", vertices_mm, model.triangles, vertex_colors,
                                      normals=normals)]
        if "glb" in formats:
            files["glb"] = [write_glb(out_dir / f"{stem}.glb", vertices_mm, model.triangles, model.uv, texture,
                                      texture_format=glb_texture_format, normals=normals,
                                      encoded_texture=glb_image.result if glb_image is not None else None)]
        if "obj" in formats:
            files["obj"] = write_obj(out_dir / f"{stem}.obj", vertices_mm, model.triangles, model.uv, None,
                                     normals=normals, texture_png=png.result if png is not None else None)
    return [p for fmt in ("obj", "ply", "glb") for p in files.get(fmt, [])]
