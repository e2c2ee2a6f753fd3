"""Known face models: where their caches live, how to install them, and loading.

Sources for ICT-FaceKit, in order (:func:`find_ict_source`):

1. the path the user gives (``--from PATH``: a clone, a folder holding ``FaceXModel/``, or an
   archive .zip / .tar.gz / .tar.xz);
2. ``$FACECLIP_HOME``: an ``ICT-FaceKit*`` / ``ict*`` folder or archive placed there;
3. a local mirror of the environment: ``../shared/data/ict-facekit.tar.xz`` next to the source
   checkout or the current directory (how CI and the tests obtain it, never downloading);
4. when online, a download of the repository archive from GitHub (``ICT_ARCHIVE_URL``).

The converted cache is ``$FACECLIP_HOME/models/<name>.npz``.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from faceclip.errors import FaceClipError, ModelNotInstalledError
from faceclip.facemodel.base import FaceModel
from faceclip.facemodel.cache import build_face_model, load_cache, save_cache
from faceclip.io.files import atomic_open
from faceclip.paths import faceclip_home, models_dir, repo_root

log = logging.getLogger(__name__)

KNOWN_MODELS = {
    "ict": "MIT (ICT-FaceKit)",
    "bfm": "Basel Face Model licence (bring your own)",
}


@dataclass
class ModelStatus:
    """One row of ``faceclip models list``."""

    name: str
    installed: bool
    location: str
    licence: str


def cache_path(name: str) -> Path:
    """Path of the converted cache of model ``name``."""
    return models_dir() / f"{name}.npz"


def list_models() -> list[ModelStatus]:
    """Known models with install state and where they are / would come from."""
    rows = []
    for name, licence in KNOWN_MODELS.items():
        path = cache_path(name)
        if path.is_file():
            rows.append(ModelStatus(name, True, str(path), licence))
        elif name == "ict":
            src = find_ict_source(None, allow_download=False)
            where = f"not converted; source found: {src}" if src else \
                "not converted; `faceclip models install ict` downloads it"
            rows.append(ModelStatus(name, False, where, licence))
        else:
            rows.append(ModelStatus(name, False, "`faceclip models install bfm --from BFM_model_front.mat`",
                                    licence))
    return rows


def _shared_mirrors() -> list[Path]:
    bases = [Path.cwd()]
    root = repo_root()
    if root is not None:
        bases.insert(0, root)
    return [b.parent / "shared" / "data" / "ict-facekit.tar.xz" for b in bases]


def find_ict_source(user_path: str | Path | None, allow_download: bool = True) -> Path | None:
    """Return a local ICT-FaceKit source following the documented order, or None."""
    if user_path is not None:
        p = Path(user_path).expanduser()
        if not p.exists():
            raise ModelNotInstalledError(f"ICT-FaceKit source not found: {p}",
                                         hint="give a clone, a folder with FaceXModel/, or an archive")
        return p
    home = faceclip_home()
    if home.is_dir():
        for cand in sorted(home.iterdir()):
            low = cand.name.lower()
            if low.startswith(("ict-facekit", "ict_facekit", "ict")) and not low.endswith(".npz"):
                if cand.is_dir() or cand.suffix in (".zip", ".xz", ".gz", ".tar", ".bz2"):
                    return cand
    for mirror in _shared_mirrors():
        if mirror.is_file():
            return mirror
    return None


def download_ict(dest_dir: Path, url: str | None = None, progress: bool = True) -> Path:
    """Download the ICT-FaceKit repository archive to ``dest_dir`` (atomic); return its path."""
    from faceclip.facemodel.ict import ICT_ARCHIVE_URL

    url = url or ICT_ARCHIVE_URL
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / "ICT-FaceKit-master.zip"
    try:
        with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = _bar(total, "download ICT-FaceKit", progress, unit="B")
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelNotInstalledError(
            f"could not download ICT-FaceKit from {url}: {exc}",
            hint="download it by hand (or clone https://github.com/ICT-VGL/ICT-FaceKit) and run "
            "`faceclip models install ict --from PATH`",
        ) from None
    return dest


def _bar(total: int | None, desc: str, enabled: bool, unit: str = "it"):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, disable=None if enabled else True, unit=unit, unit_scale=unit == "B",
                leave=False)


def install_model(name: str, source: str | Path | None = None, force: bool = False,
                  progress: bool = False) -> Path:
    """Convert face model ``name`` into its cache (once); return the cache path.

    Network weights (CLIP, FaceNet) are installed by :func:`faceclip.models.install_model`,
    which also handles face models through this function.

    Args:
        name: ``"ict"`` or ``"bfm"``.
        source: ICT: clone / folder / archive (None: search, then download). BFM: the
            ``BFM_model_front.mat`` file (required).
        force: convert again even if a valid cache exists.
        progress: show a progress bar on stderr.
    """
    target = cache_path(name)
    if target.is_file() and not force:
        try:
            load_cache(target, fix_hint="")
            return target
        except ModelNotInstalledError:
            log.warning("existing cache %s is unusable; converting again", target)
    if name == "ict":
        from faceclip.facemodel.ict import convert_ict

        src = find_ict_source(source)
        if src is None:
            src = download_ict(faceclip_home() / "downloads", progress=progress)
        log.info("converting ICT-FaceKit from %s", src)
        bar = _bar(160, "convert ICT-FaceKit", progress, unit="file")

        def tick(done: int, total: int) -> None:
            bar.update(done - bar.n)

        arrays = convert_ict(src, progress=tick)
        bar.close()
    elif name == "bfm":
        from faceclip.facemodel.bfm import BFM_HINT, convert_bfm

        if source is None:
            raise ModelNotInstalledError("installing bfm needs --from BFM_model_front.mat", hint=BFM_HINT)
        arrays = convert_bfm(Path(source))
    elif name.startswith("clip-") or name == "facenet":
        raise FaceClipError(f"{name!r} is network weights, not a face model",
                            hint="use faceclip.models.install_model (or `faceclip models install`)")
    else:
        raise FaceClipError(f"unknown face model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    return save_cache(arrays, target)


def load_face_model(
    name: str = "ict",
    path: str | Path | None = None,
    geometry: str | None = None,
    device: str | None = None,
) -> FaceModel:
    """Load a face model as a :class:`FaceModel` in mm.

    Args:
        name: ``"ict"`` (default, MIT) or ``"bfm"`` (bring your own).
        path: model file for user-provided models (BFM: ``BFM_model_front.mat`` or a FaceCLIP
            cache ``.npz``); None uses the installed cache.
        geometry: sub-geometry (ICT: ``face``, ``head``, ``head_eyes``, ``full``); None: the
            model's default (ICT: ``full``, 26,719 vertices).
        device: torch device for the tensors (default CPU).

    Raises:
        ModelNotInstalledError: naming the missing / corrupt file and the command that fixes it.
    """
    if name not in KNOWN_MODELS:
        raise FaceClipError(f"unknown face model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    hint = f"run `faceclip models install {name}`" + ("" if name == "ict" else " --from FILE")
    if path is not None:
        p = Path(path).expanduser()
        if p.suffix == ".mat":
            from faceclip.facemodel.bfm import convert_bfm

            arrays = convert_bfm(p)
        else:
            arrays = load_cache(p, fix_hint=hint)
    else:
        arrays = load_cache(cache_path(name), fix_hint=hint)
    if arrays.name != name:
        raise ModelNotInstalledError(f"{path or cache_path(name)} holds model {arrays.name!r}, not {name!r}",
                                     hint=hint)
    try:
        model = build_face_model(arrays, geometry)
    except ValueError as exc:
        raise FaceClipError(str(exc)) from None
    return model.to(device) if device else model


def remove_model(name: str) -> bool:
    """Delete a model's cache; True if one existed."""
    p = cache_path(name)
    if p.is_file():
        p.unlink()
        return True
    return False


__all__ = [
    "ModelStatus",
    "cache_path",
    "download_ict",
    "find_ict_source",
    "install_model",
    "list_models",
    "load_face_model",
    "remove_model",
]
