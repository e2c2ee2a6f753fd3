"""CLIP's weights: where they are looked for, installing them, and the loaders that search.

Nothing is ever downloaded. Weight files, per tower, in this order (:func:`find_clip_weights`):

1. a path given explicitly (``ClipWeights`` / ``find_clip_weights(rn50x4=..., vitb32=...)``);
2. the environment variables ``FACECLIP_CLIP_RN50X4`` / ``FACECLIP_CLIP_VITB32``;
3. ``$FACECLIP_HOME/models/``: ``clip-rn50x4.{safetensors,pt,bin}`` (what
   ``faceclip models install clip-rn50x4 --from FILE`` writes) or OpenAI's file name
   ``RN50x4.pt`` / ``ViT-B-32.pt``;
4. caches that ``open_clip`` (or OpenAI's ``clip`` package) filled on a machine with network:
   the Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``; repos ``timm/resnet50x4_clip.openai`` and
   ``timm/vit_base_patch32_clip_224.openai``) and ``~/.cache/clip/RN50x4.pt`` /
   ``ViT-B-32.pt``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from faceclip.errors import FaceClipError, ModelNotInstalledError
from faceclip.io.files import atomic_open
from faceclip.nets.clip import (
    CLIP_ARCHS,
    CLIP_MODEL_NAMES,
    RN50X4,
    VITB32,
    ClipArch,
    ClipEncoders,
    ClipImageText,
    _install_hint,
    _split_text,
    load_clip_tower,
)
from faceclip.paths import models_dir

log = logging.getLogger(__name__)

__all__ = [
    "ClipWeights",
    "clip_model_status",
    "find_clip_weights",
    "hf_hub_cache_dir",
    "install_clip_weights",
    "installed_path",
    "load_clip_encoders",
    "load_clip_image_text",
    "remove_clip_weights",
    "searched_locations",
]


#: File names open_clip stores in a Hugging Face repo, preferred first.
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


_INSTALL_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")


_LICENCE = "MIT (OpenAI CLIP weights; bring your own)"


@dataclass
class ClipWeights:
    """Weight files of the two towers (None: not found).

    Attributes:
        rn50x4: RN50x4 checkpoint (geometric term).
        vitb32: ViT-B/32 checkpoint (semantic term, text encoder).
        vitb32_quick_gelu: ViT-B/32 activation. True for OpenAI's weights (and open_clip's
            ``*-quickgelu`` checkpoints); False for open_clip checkpoints trained with GELU
            (e.g. ``laion2b_s34b_b79k``). RN50x4's image tower has no GELU.
    """

    rn50x4: Path | None = None
    vitb32: Path | None = None
    vitb32_quick_gelu: bool = True

    def missing(self) -> list[ClipArch]:
        """Towers without a weight file."""
        return [a for a in CLIP_ARCHS.values() if getattr(self, a.key) is None]


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _hf_cached_file(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """A file of ``repo_id`` in the hub cache (the ``main`` snapshot first), or None. No network."""
    repo_dir = hf_hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    revisions = sorted(p for p in snapshots.iterdir() if p.is_dir())
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        revisions = [main] + [r for r in revisions if r != main]
    for rev in revisions:
        for name in filenames:
            f = rev / name
            if f.is_file():  # follows the blob symlink
                return f
    return None


def installed_path(arch: ClipArch) -> Path | None:
    """The weight file of ``arch`` under ``$FACECLIP_HOME/models``, or None."""
    folder = models_dir()
    names = [arch.model_name + s for s in _INSTALL_SUFFIXES] + [arch.openai_filename]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _find_one(arch: ClipArch, explicit: str | Path | None) -> Path | None:
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ModelNotInstalledError(f"CLIP {arch.open_clip_name} weight file not found: {p}",
                                         hint=_install_hint(arch))
        return p
    env = os.environ.get(arch.env_var)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelNotInstalledError(f"{arch.env_var} names a missing file: {p}", hint=_install_hint(arch))
        return p
    found = installed_path(arch) or _hf_cached_file(arch.hf_repo, HF_FILENAMES)
    if found is None:
        legacy = Path.home() / ".cache" / "clip" / arch.openai_filename
        found = legacy if legacy.is_file() else None
    return found


def find_clip_weights(rn50x4: str | Path | None = None, vitb32: str | Path | None = None,
                      vitb32_quick_gelu: bool = True) -> ClipWeights:
    """Locate the weight files in the documented order (module docstring). Never downloads.

    Args:
        rn50x4, vitb32: explicit files; when given they must exist.

    Raises:
        ModelNotInstalledError: an explicit path or an environment variable names a missing file.
    """
    return ClipWeights(_find_one(RN50X4, rn50x4), _find_one(VITB32, vitb32), vitb32_quick_gelu)


def searched_locations(arch: ClipArch) -> list[str]:
    """Where :func:`find_clip_weights` looks for ``arch`` (for messages)."""
    return [
        f"${arch.env_var}",
        str(models_dir() / f"{arch.model_name}.{{safetensors,pt,bin}}"),
        str(hf_hub_cache_dir() / ("models--" + arch.hf_repo.replace("/", "--"))),
        str(Path.home() / ".cache" / "clip" / arch.openai_filename),
    ]


def load_clip_encoders(weights: ClipWeights | None = None, device: str | torch.device | None = None,
                       with_text: bool = False) -> ClipEncoders:
    """Load both towers from their weight files (found with :func:`find_clip_weights` if None).

    Args:
        weights: files to load; None searches the documented locations.
        device: target device (default CPU).
        with_text: also keep ViT-B/32's text tower (for :meth:`ClipEncoders.encode_text`).

    Raises:
        ModelNotInstalledError: a tower's weights are missing (naming what is missing, where it
            was looked for and how to install it) or a file is unusable (naming the file).
    """
    if weights is None:
        weights = find_clip_weights()
    missing = weights.missing()
    if missing:
        lines = [f"{a.open_clip_name} (OpenAI {a.openai_filename} or an open_clip checkpoint); looked in: "
                 + ", ".join(searched_locations(a)) for a in missing]
        hint = "; ".join(f"`faceclip models install {a.model_name} --from {a.openai_filename}`" for a in missing)
        raise ModelNotInstalledError("CLIP weights not found: " + "; ".join(lines),
                                     hint=hint + " (the files cannot be downloaded here: copy them from a "
                                     "machine with network, where open_clip or OpenAI's clip package caches them)")
    rn = load_clip_tower(RN50X4, weights.rn50x4)
    clip = load_clip_tower(VITB32, weights.vitb32, with_text=with_text, quick_gelu=weights.vitb32_quick_gelu)
    vit, text = _split_text(clip) if with_text else (clip, None)
    log.info("loaded CLIP RN50x4 from %s and ViT-B/32 from %s", weights.rn50x4, weights.vitb32)
    enc = ClipEncoders(rn, vit, text, source=f"{weights.rn50x4}, {weights.vitb32}")
    return enc.to(device) if device is not None else enc


def load_clip_image_text(path: str | Path | None = None, quick_gelu: bool = True,
                         device: str | torch.device | None = None) -> ClipImageText:
    """ViT-B/32 with its text tower from its weight file (found as in :func:`find_clip_weights`).

    Raises:
        ModelNotInstalledError: no ViT-B/32 weights (naming where they were looked for and how to
            install them), or an unusable file (naming it).
    """
    found = _find_one(VITB32, path)
    if found is None:
        raise ModelNotInstalledError(
            f"CLIP {VITB32.open_clip_name} weights not found; looked in: " + ", ".join(searched_locations(VITB32)),
            hint=_install_hint(VITB32))
    clip = load_clip_tower(VITB32, found, with_text=True, quick_gelu=quick_gelu)
    model = ClipImageText(clip, VITB32.image_size_px, source=str(found))
    return model.to(device) if device is not None else model


def install_clip_weights(name: str, source: str | Path | None = None, force: bool = False) -> Path:
    """Validate a CLIP weight file and copy it to ``$FACECLIP_HOME/models/<name><suffix>``.

    Args:
        name: ``"clip-rn50x4"`` or ``"clip-vitb32"``.
        source: the file (OpenAI ``.pt`` or an open_clip checkpoint); it replaces any installed
            file. None: keep an installed file (unless ``force``), else copy the one found in the
            caches (:func:`find_clip_weights`), if any; nothing is downloaded.
        force: without ``source``, copy again from the caches even if a file is installed.

    Raises:
        ModelNotInstalledError: no source, or the file is not a checkpoint of that architecture.
    """
    if name not in CLIP_MODEL_NAMES:
        raise FaceClipError(f"unknown CLIP model {name!r}; known: {', '.join(CLIP_MODEL_NAMES)}")
    arch = CLIP_MODEL_NAMES[name]
    existing = installed_path(arch)
    if source is None:
        if existing is not None and not force:
            return existing
        source = _find_one(arch, None)
        if source is None:
            raise ModelNotInstalledError(f"installing {name} needs --from FILE (no {arch.open_clip_name} weights "
                                         "found in the caches)", hint=_install_hint(arch))
    src = Path(source).expanduser()
    if not src.is_file():
        raise ModelNotInstalledError(f"CLIP weight file not found: {src}", hint=_install_hint(arch))
    load_clip_tower(arch, src)  # validates format and architecture (image tower)
    suffix = src.suffix.lower() if src.suffix.lower() in _INSTALL_SUFFIXES else ".pt"
    target = models_dir() / f"{arch.model_name}{suffix}"
    if target.is_file() and target.resolve() == src.resolve():
        return target
    with atomic_open(target, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)
    for other in [arch.model_name + s for s in _INSTALL_SUFFIXES]:
        if other != target.name and (target.parent / other).is_file():
            (target.parent / other).unlink()  # one installed file per tower (ours, not hand-placed ones)
    log.info("installed %s from %s into %s", name, src, target)
    return target


def clip_model_status() -> list[tuple[str, bool, str, str]]:
    """Rows ``(name, found, location, licence)`` for ``faceclip models list`` (no heavy imports)."""
    rows = []
    for arch in CLIP_ARCHS.values():
        try:
            found = _find_one(arch, None)
        except ModelNotInstalledError as exc:
            rows.append((arch.model_name, False, exc.message, _LICENCE))
            continue
        where = str(found) if found else f"`faceclip models install {arch.model_name} --from {arch.openai_filename}`"
        rows.append((arch.model_name, found is not None, where, _LICENCE))
    return rows


def remove_clip_weights(name: str) -> bool:
    """Delete an installed CLIP weight file; True if one existed."""
    p = installed_path(CLIP_MODEL_NAMES[name])
    if p is not None:
        p.unlink()
        return True
    return False

