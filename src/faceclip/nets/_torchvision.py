"""Import torchvision (and packages that import it, like open_clip) on a CPU-only torch.

The torchvision 0.28.0 wheel on the package registry is a CUDA build. On the CPU torch
wheel its C++ extension does not load, and ``import torchvision`` then fails with
"operator torchvision::nms does not exist" while registering fake kernels. Declaring the
two operator schemas first lets the pure-Python parts (model definitions, transforms)
import; torchvision's C++ ops (nms, roi_align, image decoding) still do not work, and
nothing in faceclip uses them.

Call :func:`import_torchvision` instead of ``import torchvision`` anywhere in faceclip.
"""

from __future__ import annotations

import sys
import types

_SHIM_LIBRARY = None  # keeps the torch.library registration alive


def _declare_missing_schemas() -> None:
    global _SHIM_LIBRARY
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM_LIBRARY = lib


def _forget_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> types.ModuleType:
    """Return the torchvision module, declaring the missing op schemas when needed."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        _forget_partial_import()
        if _SHIM_LIBRARY is None:
            _declare_missing_schemas()
        import torchvision
    return torchvision
