"""The aligned crop's conventions, shared by every layer (NumPy only, so that the front-end
can use them without loading torch): the crop camera's focal length and the five-point
alignment template. :mod:`faceclip.facemodel.params` re-exports them beside the other camera
conventions.
"""

from __future__ import annotations

import numpy as np

#: Focal length of the crop camera shared by the fitter and the regressor, in pixels of a
#: 224-pixel crop (``focal * crop / 224`` for other crop sizes; Deep3DFaceRecon's choice).
DEFAULT_FOCAL_224 = 1015.0

#: Canonical positions of the five points in a unit square crop (multiply by the crop size):
#: image-left eye centre, image-right eye centre, nose tip, image-left and image-right mouth
#: corners. It is the ArcFace 112-pixel template, symmetrised and scaled by 0.66 about the
#: face so that the eyes sit at y = 0.40 and the mouth corners at y = 0.64: the whole face,
#: forehead and chin included, stays inside the crop with a margin for the renderer.
FIVE_POINT_TEMPLATE = np.array(
    [
        [0.3961, 0.4000],
        [0.6039, 0.4000],
        [0.5000, 0.5188],
        [0.4139, 0.6400],
        [0.5861, 0.6400],
    ],
    dtype=np.float64,
)
FIVE_POINT_TEMPLATE.setflags(write=False)
