"""Network files: one self-describing record (format, version, config, weights, meta) per file."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_weights", "read_record", "save_record"]


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


def read_record(path: str | Path, *, what: str, fmt: str, max_version: int, checkpoint_key: str,
                missing_hint: str, unreadable_hint: str | None = None, wrong_message: str = "{path} is not a FaceCLIP {what}",
                wrong_hint: str | None = None) -> dict:
    """The network record of ``path``: a file of :func:`save_record`, or the ``checkpoint_key``
    entry of a training checkpoint. Every failure is one clear error naming the file.

    Args:
        what: the network's name in messages ("regressor checkpoint", "landmark network", ...).
        fmt, max_version: the record's ``format`` tag and the newest version this code reads.
        wrong_message: for a readable file that holds no such record (``{path}``, ``{what}``).

    Raises:
        ModelNotInstalledError: the file does not exist.
        InputError: unreadable, not this network, or written by a newer faceclip.
    """
    from faceclip.errors import InputError, ModelNotInstalledError

    path = Path(path)
    if not path.is_file():
        raise ModelNotInstalledError(f"{what} not found: {path}", hint=missing_hint)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated / foreign pickles all mean a bad file
        raise InputError(f"cannot read {what} {path}: {exc.__class__.__name__}", hint=unreadable_hint) from exc
    rec = obj
    if isinstance(obj, dict) and obj.get("format") != fmt and isinstance(obj.get(checkpoint_key), dict):
        rec = obj[checkpoint_key]  # a training checkpoint
    if not isinstance(rec, dict) or rec.get("format") != fmt:
        raise InputError(wrong_message.format(path=path, what=what), hint=wrong_hint)
    if int(rec.get("version", -1)) > max_version:
        raise InputError(f"{path} was written by a newer faceclip (format version {rec['version']})")
    return rec


def load_weights(net: torch.nn.Module, record: dict, path: str | Path) -> torch.nn.Module:
    """Load a record's weights into ``net`` (half-precision files back to float32), strictly.

    Raises:
        InputError: the weights do not match the network built from the record's configuration.
    """
    from faceclip.errors import InputError

    weights = record.get("state_dict")
    if not isinstance(weights, dict):
        raise InputError(f"{path}: malformed network file (no weights)")
    state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in weights.items()}
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: weights do not match the stored architecture ({str(exc).splitlines()[0]})") from exc
    return net
