"""Where FaceCLIP keeps converted models and caches.

``$FACECLIP_HOME`` (default: ``~/.cache/faceclip``) holds converted face models under
``models/``. Nothing is ever written into the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path


def faceclip_home() -> Path:
    """Return the FaceCLIP data folder (``$FACECLIP_HOME`` or ``~/.cache/faceclip``)."""
    env = os.environ.get("FACECLIP_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "faceclip"


def models_dir() -> Path:
    """Folder of converted face-model caches (``<home>/models``)."""
    return faceclip_home() / "models"


def repo_root() -> Path | None:
    """The source checkout's root when running from one (editable install), else None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "faceclip").is_dir():
            return parent
    return None
