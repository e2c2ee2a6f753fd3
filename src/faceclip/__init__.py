"""FaceCLIP: single-image detailed 3D face reconstruction.

Data flows one way through the subpackages::

    io (images in) -> detect (faces, 68 landmarks, alignment) -> nets / fit (parameters)
    -> facemodel (mesh) -> render (images) -> io (meshes, textures out)

The public entry points are re-exported here lazily so that ``import faceclip`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "FaceClipError", "load_face_model"]


def __getattr__(name: str):  # lazy re-exports
    if name == "FaceClipError":
        from faceclip.errors import FaceClipError

        return FaceClipError
    if name == "load_face_model":
        from faceclip.facemodel import load_face_model

        return load_face_model
    raise AttributeError(name)
