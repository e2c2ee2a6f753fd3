#!/usr/bin/env python
"""Compare the running environment with a lock file; exit 1 on any difference.

Usage::

    .venv/bin/python tools/check_env.py requirements-test.lock   # the test environment
    .venv/bin/python tools/check_env.py requirements.lock        # the runtime environment

Every installed distribution must be pinned in the lock at exactly its installed version, and
every pin must be installed. Two exceptions: ``pip`` (seeded by ``python -m venv``, left out of
``pip freeze`` as well) and ``faceclip`` itself (installed editable from the working tree).
The test suite runs this check (``tests/test_environment.py``), so CI fails on a drifted
environment.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

#: Installed but deliberately not in the lock.
UNLOCKED = frozenset({"pip", "faceclip"})

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def normalise(name: str) -> str:
    """PEP 503 name normalisation: ``Open_CLIP.torch`` -> ``open-clip-torch``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a pip requirements lock.

    Raises ValueError for a requirement line that is not an exact pin (an unpinned package).
    """
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or line.startswith("\\"):
            continue  # comments, options (--find-links, --hash continuation lines)
        m = _PIN.match(line)
        if m is None:
            raise ValueError(f"not an exact pin in the lock: {raw.strip()!r}")
        pins[normalise(m.group(1))] = m.group(3)
    return pins


def installed() -> dict[str, str]:
    """``{normalised name: version}`` of the distributions installed in this interpreter's
    site-packages (not folders a package puts on ``sys.path`` at run time, such as Ray's
    ``ray/thirdparty_files`` with its vendored psutil)."""
    import sysconfig

    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalise(name), dist.version)
    return found


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """Human-readable differences between a lock and an environment (empty when they agree)."""
    problems = []
    for name in sorted(set(env) - set(lock) - UNLOCKED):
        problems.append(f"{name}=={env[name]} is installed but not pinned in the lock")
    for name in sorted(set(lock) - set(env)):
        problems.append(f"{name}=={lock[name]} is pinned in the lock but not installed")
    for name in sorted(set(lock) & set(env)):
        if lock[name] != env[name]:
            problems.append(f"{name}: installed {env[name]}, the lock pins {lock[name]}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        lock = parse_lock(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"check_env: {path}: {exc}", file=sys.stderr)
        return 2
    problems = differences(lock, installed())
    for p in problems:
        print(f"check_env: {p}", file=sys.stderr)
    if problems:
        print(f"check_env: the environment differs from {path}; reinstall with the README's "
              "set-up command (or regenerate the lock with tools/lock.sh)", file=sys.stderr)
        return 1
    print(f"check_env: the environment matches {path} ({len(lock)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
