"""The binary glTF 2.0 container (GLB), written here for both of FaceCLIP's GLB writers.

:func:`faceclip.io.mesh.write_glb` (static meshes) and :func:`faceclip.io.gltf.write_morph_glb`
(blendshapes and their animation) fill a :class:`GlbBuilder` with their arrays and images and
pass it, with the glTF JSON that refers to them, to :func:`glb_bytes`. The layout follows the
glTF 2.0 specification (Khronos): a 12-byte header, a JSON chunk padded with spaces and a binary
chunk padded with zeros, each to a multiple of 4 bytes; every buffer view starts 4-byte aligned.
"""

from __future__ import annotations

import json
import struct

import numpy as np

__all__ = ["ARRAY_BUFFER", "ELEMENT_ARRAY_BUFFER", "FLOAT", "GLB_MAGIC", "UINT32", "GlbBuilder", "glb_bytes"]

GLB_MAGIC = 0x46546C67
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


class GlbBuilder:
    """Accumulates buffer views and accessors of one binary buffer (each view 4-byte aligned)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        """A buffer view of ``data`` -> its index."""
        pad = (-self.length) % 4
        if pad:
            self.chunks.append(b"\0" * pad)
            self.length += pad
        v = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        self.chunks.append(data)
        self.length += len(data)
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        """``array`` (N,) or (N, C), stored as float32 (uint32 when it is uint32) -> accessor
        index. ``kind``: ``"SCALAR"``, ``"VEC2"``, ``"VEC3"`` or ``"VEC4"``; ``bounds`` adds the
        per-component ``min`` / ``max`` (required for ``POSITION``)."""
        comp = UINT32 if array.dtype == np.uint32 else FLOAT
        a = np.ascontiguousarray(array, dtype=np.uint32 if comp == UINT32 else np.float32)
        acc = {"bufferView": self.view(a.tobytes(), target), "componentType": comp, "count": int(a.shape[0]),
               "type": kind}
        if bounds:
            flat = a.reshape(a.shape[0], -1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def blob(self) -> bytes:
        """The binary buffer, zero-padded to a multiple of 4 bytes."""
        data = b"".join(self.chunks)
        return data + b"\0" * ((-len(data)) % 4)


def glb_bytes(gltf: dict, builder: GlbBuilder) -> bytes:
    """The GLB file of a glTF JSON document whose buffer 0 is ``builder``'s (the document's
    ``bufferViews``, ``accessors`` and ``buffers`` are set here)."""
    gltf["bufferViews"], gltf["accessors"] = builder.views, builder.accessors
    binary = builder.blob()
    gltf["buffers"] = [{"byteLength": len(binary)}]
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * ((-len(js)) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return (struct.pack("<III", GLB_MAGIC, 2, total) + struct.pack("<II", len(js), JSON_CHUNK) + js
            + struct.pack("<II", len(binary), BIN_CHUNK) + binary)
