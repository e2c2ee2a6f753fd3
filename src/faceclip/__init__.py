"""FaceCLIP: single-image detailed 3D face reconstruction.

A photo goes through a few stages (:mod:`faceclip.reconstruction`): choose the faces
(:mod:`faceclip.detect`) -> fit each one (:mod:`faceclip.fit`, optionally from a network of
:mod:`faceclip.nets`) -> texture and detail -> write the files (:mod:`faceclip.io`); every stage
reads and extends one frozen record, :class:`faceclip.reconstruction.FaceReconstruction`.

Layers, lowest first. A module imports only from its own subpackage, from lower layers, or, in
the top layer, from other applications (``tests/test_architecture.py`` checks it, with no import
cycle between files):

    errors, paths, conventions, quick_exit  (leaves: errors, file places, crop constants, exiting)
    render, io  (cameras, rasterizer, shading; images, meshes, atomic files, URLs)
    facemodel  (FaceModel, FaceParams, the crop camera's conventions, albedo models, caches)
    nets  (architectures, and finding / installing their weights)
    detect, losses  (the front-end: faces, landmarks, alignment; the loss functions)
    fit  (fitting stages, contour, texture, detail, video fitting)
    reconstruction  (the stages and the typed record)
    api, batch, distributed, models, edit, evaluate, train, video, web, cli  (applications)

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
