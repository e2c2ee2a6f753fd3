"""Photos and results at URLs: any filesystem `fsspec <https://filesystem-spec.readthedocs.io>`_ knows.

``faceclip reconstruct`` takes URLs as well as paths for its inputs and ``--out``
(``s3://bucket/photos/``, ``gs://...`` with the protocol's package installed: ``s3fs``,
``gcsfs``...; ``memory://`` in one process). This module is the only place that talks to
fsspec:

- **Inputs**: :func:`list_images` expands a folder URL (its image files, sorted) or a glob
  pattern; :func:`fetch` reads one file's bytes (size checked first) into a local file that
  the project's own loader (:mod:`faceclip.io.images`) then decodes.
- **Results**: a result folder is made locally and :func:`publish_folder` uploads it. Object
  stores have no atomic folder rename, so a folder is *claimed* first (its marker file,
  ``.faceclip-result.json``, rewritten as ``"in_progress": true``), then its files are put one
  by one (each put is atomic), and the final marker is put last: a folder whose marker is
  missing or in progress is incomplete (a run killed while uploading), and ``--resume`` redoes
  it. Ownership follows the local policy (:mod:`faceclip.io.outputs`): a folder faceclip did not
  write, or one holding files it did not write, is refused unless ``overwrite``.
- ``file://`` URLs are plain local paths (:func:`local_path`), with the local guarantees (run
  lock, atomic rename).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING

from faceclip.errors import InputError
from faceclip.io.images import DEFAULT_MAX_BYTES, IMAGE_SUFFIXES
from faceclip.io.outputs import MARKER_NAME, OutputError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["PROCESS_LOCAL_PROTOCOLS", "check_output_url", "fetch", "is_url", "join", "list_images", "local_path",
           "name_of", "publish_folder", "read_text", "remove_stale_folders", "resolve", "write_text"]

#: Protocols whose files live in the memory of one process: unusable by worker processes.
PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(text: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (or a chained fsspec URL, ``a::b://...``); False for a path."""
    text = str(text)
    return bool(_URL.match(text)) or ("::" in text and "://" in text)


def _filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; clear errors for unusable protocols."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ValueError as exc:
        if "not known" not in str(exc).lower():
            raise InputError(f"{url}: {exc}") from None
        known = ", ".join(f"{p}://" for p in sorted(_common_protocols()))
        raise InputError(f"{url}: unknown URL protocol {scheme!r}",
                         hint=f"give a local path or a URL fsspec knows ({known}, ...)") from None
    except ImportError as exc:
        raise InputError(f"{url}: the {scheme}:// protocol needs a package that is not installed ({exc})",
                         hint="install it into the same environment (s3:// needs s3fs, gs:// needs gcsfs)") from None


def _common_protocols() -> set[str]:
    import fsspec

    return set(fsspec.available_protocols()) & {"s3", "gs", "az", "abfs", "http", "https", "file", "memory",
                                                 "sftp", "hdfs"}


def resolve(url: str) -> str:
    """The canonical form of ``url`` (the same file always gets the same string), checked.

    Raises:
        InputError: an unknown protocol, or one whose package is not installed.
    """
    fs, path = _filesystem(url)
    return fs.unstrip_protocol(path)


def local_path(target: str | os.PathLike[str]) -> Path | None:
    """``target`` as a local path: a path as it is, a ``file://`` URL as its path; None for
    any other URL."""
    if not is_url(target):
        return Path(target)
    from fsspec.implementations.local import LocalFileSystem

    fs, path = _filesystem(str(target))
    return Path(path) if isinstance(fs, LocalFileSystem) else None


def join(url: str, *names: str) -> str:
    """``url`` with ``names`` appended, ``/``-separated."""
    return "/".join([url.rstrip("/"), *names])


def name_of(location: str | os.PathLike[str]) -> str:
    """The last component of a path or URL (a result folder's name)."""
    return posixpath.basename(str(location).rstrip("/")) if is_url(location) else Path(location).name


def list_images(url: str) -> list[str]:
    """Image URLs for ``url``: a glob pattern's matches, a folder's image files (by suffix,
    sorted, not recursive), or ``url`` itself (a missing file is reported per image later).

    Raises:
        InputError: a pattern matching nothing, a folder without images, an unusable protocol.
    """
    fs, path = _filesystem(url)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path, detail=True)
        files = sorted(p for p, info in found.items() if info.get("type") == "file")
        if not files:
            raise InputError(f"no files match {url!r}")
        return [fs.unstrip_protocol(p) for p in files]
    if fs.isdir(path):
        files = sorted(info["name"] for info in fs.ls(path, detail=True) if info.get("type") == "file"
                       and posixpath.splitext(info["name"])[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{url}: a folder with no image files in it",
                             hint="give image files, or a folder holding them (not searched recursively)")
        return [fs.unstrip_protocol(p) for p in files]
    return [fs.unstrip_protocol(path)]


def fetch(url: str, folder: Path, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Path:
    """Read the file at ``url`` into ``folder`` (size checked before reading); returns the local
    file (``input`` + the URL's suffix), for :func:`faceclip.io.images.load_image`.

    Raises:
        InputError: missing, not a file, or larger than ``max_bytes``.
    """
    fs, path = _filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputError(f"{url}: no such file") from None
    if info.get("type") != "file":
        raise InputError(f"{url}: not a file ({info.get('type')})")
    size = info.get("size")
    if max_bytes is not None and size is not None and size > max_bytes:
        raise InputError(f"{url}: {size / 2**20:.0f} MiB, larger than the {max_bytes / 2**20:.0f} MiB limit")
    suffix = posixpath.splitext(path)[1]
    target = Path(folder) / ("input" + (suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""))
    target.write_bytes(fs.cat_file(path))
    return target


def read_text(url: str) -> str | None:
    """The text of the file at ``url``, or None when there is none."""
    fs, path = _filesystem(url)
    try:
        return fs.cat_file(path).decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None


def write_text(url: str, text: str) -> None:
    """Write ``text`` to ``url`` in one put (atomic on object stores)."""
    fs, path = _filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text.encode("utf-8"))


def _marker(fs: AbstractFileSystem, folder: str) -> dict | None:
    try:
        data = json.loads(fs.cat_file(posixpath.join(folder, MARKER_NAME)))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "faceclip" else None


def _contents(fs: AbstractFileSystem, folder: str) -> tuple[set[str], set[str]]:
    """``(file names, subfolder names)`` directly in ``folder`` (empty when it does not exist)."""
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return set(), set()
    files = {posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file"}
    dirs = {posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"}
    return files, dirs


def _check_replaceable(fs: AbstractFileSystem, folder: str, url: str, overwrite: bool) -> tuple[set[str], dict | None]:
    """The files now in ``folder`` and its marker, after checking that it may be replaced (the
    rules of :func:`faceclip.io.outputs.check_replaceable`)."""
    files, dirs = _contents(fs, folder)
    if dirs:
        raise OutputError(f"{url}: holds folders ({', '.join(sorted(dirs)[:3])}); not replacing it",
                          hint="choose a new folder for --out")
    marker = _marker(fs, folder) if files else None
    if not files or overwrite:
        return files, marker
    if marker is None:
        raise OutputError(f"{url}: exists and was not created by faceclip; refusing to replace it",
                          hint="choose another --out, move the folder away, or pass --overwrite")
    foreign = sorted(files - set(marker.get("files", [])) - {MARKER_NAME})
    if foreign:
        raise OutputError(f"{url}: holds files faceclip did not write ({', '.join(foreign[:3])}); refusing to "
                          "replace it", hint="move those files out, or pass --overwrite to replace the folder anyway")
    return files, marker


def publish_folder(local: Path, url: str, *, overwrite: bool = False) -> list[str]:
    """Upload the complete result folder ``local`` (with its marker file) to the folder ``url``.

    Order: check the target may be replaced; put an in-progress marker listing old and new
    files; put every file; remove the old files that the new result does not have; put the
    final marker. Returns the URLs of the files (the marker excluded).

    Raises:
        OutputError: ``url`` holds something faceclip did not write (see the module docstring).
    """
    fs, folder = _filesystem(url)
    old, _ = _check_replaceable(fs, folder, url, overwrite)
    names = sorted(p.name for p in Path(local).iterdir() if p.is_file() and p.name != MARKER_NAME)
    fs.makedirs(folder, exist_ok=True)
    claim = {"tool": "faceclip", "in_progress": True, "files": sorted((old | set(names)) - {MARKER_NAME})}
    fs.pipe_file(posixpath.join(folder, MARKER_NAME), (json.dumps(claim, indent=1) + "\n").encode())
    for name in names:
        fs.put_file(str(Path(local) / name), posixpath.join(folder, name))
    for name in sorted(old - set(names) - {MARKER_NAME}):
        fs.rm_file(posixpath.join(folder, name))
    fs.put_file(str(Path(local) / MARKER_NAME), posixpath.join(folder, MARKER_NAME))
    return [join(url, name) for name in names]


def remove_stale_folders(root: str, base: str, keep: list[str], image: str) -> list[str]:
    """Remove result folders ``<base>`` / ``<base>_face<k>`` under ``root`` that are not in
    ``keep`` (names) and that faceclip wrote for ``image``, holding only its files (an earlier
    run that found another number of faces; see :func:`faceclip.io.outputs.remove_stale_results`).
    Returns the URLs removed."""
    fs, top = _filesystem(root)
    _, dirs = _contents(fs, top)
    removed = []
    for name in sorted(dirs):
        if name in keep or not (name == base or (name.startswith(base + "_face") and name[len(base) + 5:].isdigit())):
            continue
        folder = posixpath.join(top, name)
        marker = _marker(fs, folder)
        if marker is None or marker.get("image") != image:
            continue
        try:
            _check_replaceable(fs, folder, join(root, name), overwrite=False)
        except OutputError:
            continue
        fs.rm(folder, recursive=True)
        removed.append(join(root, name))
    return removed


def check_output_url(url: str) -> str:
    """Check that ``url`` can be an output folder (not a file); returns its canonical form.

    Raises:
        OutputError: ``url`` is an existing file.
        InputError: an unusable protocol.
    """
    fs, path = _filesystem(url)
    if fs.isfile(path):
        raise OutputError(f"--out {url}: exists and is not a folder", hint="give a folder URL")
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {url}: cannot create the folder ({exc})") from None
    return fs.unstrip_protocol(path)
