"""Atomic file writing: the one helper every writer of the package uses.

A file is written to a temporary file in its target folder (``.<name>.<random><suffix>``, so
tools that look at the suffix still recognise it), then renamed onto the target: a crash or a
kill never leaves a half-written file under the target name, and readers see either the old
file or the new one. Folders of results are written the same way at the folder level
(:func:`faceclip.io.outputs.write_result_folder`).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` (permissions ``mode``)
    when the block ends without an exception, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", perms: int = 0o644, **kwargs) -> Iterator[IO]:
    """Like :func:`atomic_path`, but yield the temporary file open (``mode``: ``"w"`` / ``"wb"``).

    The file object wraps the descriptor ``mkstemp`` created, so nothing is reopened by name
    (a link planted at the temporary name meanwhile is never followed); permissions are set on
    the descriptor.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), perms)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
