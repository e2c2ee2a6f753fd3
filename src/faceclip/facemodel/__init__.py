"""Linear morphable face models behind one interface (:class:`FaceModel`).

ICT-FaceKit (MIT) is the default; the Basel Face Model is loaded from a file the user holds.
"""

from faceclip.facemodel.base import FaceModel, FaceModelOutput
from faceclip.facemodel.registry import install_model, list_models, load_face_model

__all__ = ["FaceModel", "FaceModelOutput", "install_model", "list_models", "load_face_model"]
