"""Errors that the CLI reports as one clear message (no traceback) with a non-zero exit."""

from __future__ import annotations


class FaceClipError(Exception):
    """An error a user can act on.

    Args:
        message: what went wrong, naming the file or value involved.
        hint: how to fix it, typically the command to run.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ModelNotInstalledError(FaceClipError):
    """A face model (or network weights) is not installed or its files are unusable."""


class InputError(FaceClipError):
    """An input file (image, mesh, keypoints...) cannot be used."""
