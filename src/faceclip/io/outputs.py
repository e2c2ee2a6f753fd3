"""Where results go: safe names, folders the tool owns, atomic replacement, stale temporaries.

The policy every command that writes result folders follows (``faceclip reconstruct``,
``faceclip demo``, ``faceclip export-mean``; ``faceclip landmarks`` names its files the same way):

- **Safe names.** A folder name comes from the input's file name through :func:`safe_name`:
  path separators, control characters and characters that other systems forbid are replaced,
  leading dots are dropped (no hidden folders, never ``.`` or ``..``), the length is bounded.
- **Unique names.** :class:`NameAllocator` hands out each name once per run, in input order;
  a second ``photo`` becomes ``photo-2`` (case-insensitively, so the layout also works on
  macOS and Windows file systems). The same inputs in the same order give the same names.
- **Ownership.** Each result folder holds a marker file, :data:`MARKER_NAME`, listing the
  files the tool wrote. An existing folder is replaced only when it carries the marker and
  holds nothing but the files it lists; anything else (a folder of the user's, files the
  user added to a result) is refused with :class:`OutputError`, unless ``overwrite=True``.
- **Atomic replacement.** A result is written into a temporary sibling folder
  (``.faceclip-tmp-<pid>-...``) and renamed into place only when complete; the previous result
  is moved aside first and deleted only after the new one is in place.
- **Stale temporaries.** :func:`clean_stale_temporaries` removes the temporary folders of
  killed runs (their process no longer exists and they hold the tool's in-progress marker).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

from faceclip.errors import FaceClipError

__all__ = [
    "MARKER_NAME",
    "NameAllocator",
    "OutputError",
    "check_output_root",
    "check_replaceable",
    "clean_stale_temporaries",
    "remove_stale_results",
    "safe_name",
    "write_result_folder",
]

#: Marker file inside every result folder the tool creates (JSON: tool, version, files).
MARKER_NAME = ".faceclip-result.json"
#: Prefix of the temporary folders results are assembled in.
TMP_PREFIX = ".faceclip-tmp-"
#: Marker inside a temporary folder while it is being written.
_TMP_MARKER = ".faceclip-in-progress"
#: Longest folder name produced (bytes of UTF-8), leaving room for suffixes on 255-byte limits.
MAX_NAME_BYTES = 120

_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in "123456789¹²³"),
                     *(f"lpt{i}" for i in "123456789¹²³")}


class OutputError(FaceClipError):
    """An output location cannot be used without risking data that is not the tool's."""


def safe_name(raw: str, default: str = "image") -> str:
    """A folder or file name made from ``raw`` that is safe on every common file system.

    Replaces separators, control and forbidden characters by ``_``, strips leading dots and
    surrounding spaces, avoids Windows device names and bounds the length. Never returns
    ``""``, ``"."`` or ``".."``: those become ``default``.

    >>> safe_name("../etc"), safe_name(".."), safe_name("a/b:c"), safe_name(".hidden")
    ('_etc', 'image', 'a_b_c', 'hidden')
    """
    name = unicodedata.normalize("NFC", str(raw))
    name = _FORBIDDEN.sub("_", name)
    # Other control, format (bidi overrides) and line/paragraph separator characters too.
    name = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in name)
    name = name.strip().lstrip(".").strip()
    encoded = name.encode("utf-8")[:MAX_NAME_BYTES]
    name = encoded.decode("utf-8", errors="ignore").rstrip(" .")
    if not name.strip("_") or name in (".", ".."):
        return default
    first, dot, rest = name.partition(".")
    if first.rstrip(" ").lower() in _WINDOWS_RESERVED:  # CON, CON.txt, "CON .png" are all devices
        name = f"{first}_{dot}{rest}"
    return name


class NameAllocator:
    """Hands out unique, predictable names within one run: ``photo``, ``photo-2``, ``photo-3``.

    Comparison is case-insensitive. Names are claimed in call order, so the same inputs in the
    same order always get the same names.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def claim(self, base: str) -> str:
        """Reserve and return ``safe_name(base)``, suffixed ``-2``, ``-3``... if already taken."""
        base = safe_name(base)
        name, n = base, 1
        while name.lower() in self._used:
            n += 1
            name = f"{base}-{n}"
        self._used.add(name.lower())
        return name


def check_output_root(out_dir: Path) -> Path:
    """Make sure ``out_dir`` is (or can become) a writable folder; create it.

    Raises:
        OutputError: ``out_dir`` is an existing file, or cannot be created or written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: exists and is not a folder",
                          hint="give a folder (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out_dir}: the folder is not writable")
    return out_dir


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "faceclip" else None


#: What a result folder of faceclip 0.1.0 before the marker file held (mesh + params + overlay).
_LEGACY_RESULT_FILES = frozenset({"mesh.obj", "mesh.mtl", "mesh_texture.png", "mesh.ply", "mesh.glb",
                                  "params.json", "overlay.png"})


def _legacy_marker(folder: Path) -> dict | None:
    """A marker for a result folder written before markers existed: exactly the files that
    version wrote, and a params.json carrying ``faceclip_version``."""
    try:
        names = {p.name for p in folder.iterdir()}
        params = json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        return None
    if names <= _LEGACY_RESULT_FILES and isinstance(params, dict) and "faceclip_version" in params:
        return {"tool": "faceclip", "files": sorted(names)}
    return None


def check_replaceable(folder: Path, overwrite: bool = False) -> None:
    """Raise :class:`OutputError` unless writing a result to ``folder`` endangers nothing.

    Fine: ``folder`` does not exist or is an empty folder; it is a result folder of this tool
    (marker present) holding only the files its marker lists; or ``overwrite`` is set and it is
    a folder.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a result folder (a file or a link); not replacing it",
                          hint="move it away or choose another --out")
    _refuse_protected(folder)
    if not any(folder.iterdir()):  # an empty folder holds nothing to lose
        return
    if overwrite:
        # A result folder holds files only; --overwrite never takes folders of folders with it.
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        if subfolders:
            listed = ", ".join(subfolders[:3]) + (f" and {len(subfolders) - 3} more" if len(subfolders) > 3 else "")
            raise OutputError(f"{folder}: holds folders ({listed}); --overwrite replaces only a folder of files",
                              hint="choose a new folder for --out")
        return
    marker = _read_marker(folder) or _legacy_marker(folder)
    if marker is None:
        raise OutputError(f"{folder}: exists and was not created by faceclip; refusing to replace it",
                          hint="choose another --out, move the folder away, or pass --overwrite")
    known = set(marker.get("files", [])) | {MARKER_NAME}
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in known)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{folder}: holds files faceclip did not write ({listed}); refusing to replace it",
                          hint="move those files out, or pass --overwrite to replace the folder anyway")


def _refuse_protected(folder: Path) -> None:
    """Never replace the working folder, a folder above it, the home folder or a root."""
    resolved = folder.resolve()
    cwd = Path.cwd().resolve()
    protected = {cwd, *cwd.parents, Path.home().resolve()}
    if resolved in protected or resolved.parent == resolved:
        raise OutputError(f"{folder}: is the current folder, a folder above it, the home folder or a root; "
                          "faceclip never replaces it", hint="choose a new folder for --out, e.g. --out results/")


def remove_stale_results(out_dir: Path, base: str, keep: list[Path], image: str) -> list[Path]:
    """Delete result folders of ``image`` left by an earlier run that found other faces.

    A photo's faces go to ``<base>/`` (one face) or ``<base>_face<k>/`` (several); when a later
    run finds a different number of faces, the earlier folders no longer belong to any face of
    this run. Removed: folders named ``<base>`` or ``<base>_face<k>`` not in ``keep`` whose
    marker says faceclip wrote them for the same ``image`` and that hold only the files it
    wrote. Anything else is left alone. Returns the folders removed.
    """
    out_dir = Path(out_dir)
    keep_set = {Path(k).resolve() for k in keep}
    removed = []
    candidates = [out_dir / base, *out_dir.glob(f"{glob.escape(base)}_face*")]
    for folder in candidates:
        name = folder.name
        if name != base and not (name.startswith(base + "_face") and name[len(base) + 5:].isdigit()):
            continue
        if folder.resolve() in keep_set or folder.is_symlink() or not folder.is_dir():
            continue
        marker = _read_marker(folder)
        if marker is None or marker.get("image") != image:
            continue
        try:
            check_replaceable(folder)  # only the files faceclip wrote
        except OutputError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def write_result_folder(folder: Path, write: Callable[[Path], None], *, meta: dict | None = None,
                        overwrite: bool = False) -> list[Path]:
    """Write a result folder atomically: ``write(tmp)`` fills a temporary folder, then it moves in.

    Args:
        folder: final location, ``out/<name>``.
        write: fills the folder it is given (any files).
        meta: extra fields for the marker file (e.g. the input image).
        overwrite: replace a folder that is not the tool's own (see :func:`check_replaceable`).

    Returns:
        The files of the new folder (sorted, the marker excluded).

    Raises:
        OutputError: ``folder`` exists and may not be replaced.
    """
    from faceclip import __version__

    folder = Path(folder)
    check_replaceable(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder.parent))
    old: Path | None = None
    try:
        (tmp / _TMP_MARKER).touch()
        write(tmp)
        (tmp / _TMP_MARKER).unlink()
        files = sorted(p.name for p in tmp.iterdir())
        marker = {"tool": "faceclip", "version": __version__, "files": files, **(meta or {})}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        check_replaceable(folder, overwrite)  # again: the user may have added files meanwhile
        if os.path.lexists(folder):
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-old-", dir=folder.parent))
            (old / _TMP_MARKER).write_text(folder.name)  # lets a later run restore it after a kill
            os.replace(folder, old / "previous")
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not os.path.lexists(folder) and (old / "previous").exists():
                os.replace(old / "previous", folder)  # the new result failed to move in: restore
            shutil.rmtree(old, ignore_errors=True)
    return [folder / name for name in files]


def _plain_name(name: str) -> bool:
    """A single, visible path component without control characters (a folder name we made)."""
    return bool(name) and name not in (".", "..") and not name.startswith(".") and "/" not in name \
        and "\\" not in name and not any(unicodedata.category(ch) == "Cc" for ch in name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(out_dir: Path, any_pid: bool = False) -> list[Path]:
    """Remove temporary folders left in ``out_dir`` by killed runs; returns what was removed.

    Only folders named ``.faceclip-tmp-<pid>-...`` that still hold the in-progress marker and
    whose process no longer exists are touched (``any_pid``: whatever their process, for a
    caller that holds the folder's run lock, so that no other run can be writing there; a pid
    is meaningless across the hosts of a network filesystem). A previous result that a killed
    run had moved aside (and not yet replaced) is put back first.
    """
    removed = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    for p in out_dir.iterdir():
        m = re.match(re.escape(TMP_PREFIX) + r"(\d+)-", p.name)
        # Ours: the in-progress marker, or a complete result (its marker) that was not yet
        # renamed into place when the run was killed.
        if m is None or p.is_symlink() or not p.is_dir() or not (
                (p / _TMP_MARKER).exists() or (p / MARKER_NAME).exists()):
            continue
        if int(m.group(1)) != os.getpid() and (any_pid or not _pid_alive(int(m.group(1)))):
            target = (p / _TMP_MARKER).read_text().strip() if (p / _TMP_MARKER).is_file() else ""
            previous = p / "previous"
            if _plain_name(target) and previous.is_dir() and not os.path.lexists(out_dir / target):
                os.replace(previous, out_dir / target)  # killed between moving aside and replacing
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
