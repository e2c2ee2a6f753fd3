"""Network files: one self-describing record (format, version, config, weights, meta) per file."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_record"]


def save_record(record: dict, path: str | Path, half: bool = False, meta: dict | None = None) -> Path:
    """Write a network record atomically (``half``: float weights as float16, half the size)."""
    from faceclip.io.files import atomic_path

    rec = dict(record)
    if half:
        rec["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in rec["state_dict"].items()}
    rec["meta"] = dict(meta or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(rec, tmp)
    return path
