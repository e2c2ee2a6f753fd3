"""Temporal smoothing of landmark tracks: the One Euro filter, run forward and backward.

The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cut-off
rises with speed: slow motion is smoothed hard (no jitter), fast motion is followed closely
(little lag). Run causally it still lags a little when the motion starts; a whole clip is known
here, so :func:`smooth_track` runs it forward and backward in time and averages the two: their
lags are equal and opposite, so the average does not lag (zero phase) and keeps the smoothing.

Units: positions are divided by the face size (hundredths of it, as in
:mod:`faceclip.fit.sequence`) before filtering, so the parameters do not depend on resolution.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OneEuroFilter", "smooth_track"]


class OneEuroFilter:
    """The One Euro filter for arrays of any shape (each element filtered on its own, the speed
    taken per point over the last axis).

    Args:
        min_cutoff: cut-off frequency (Hz) at rest; lower smooths more.
        beta: how fast the cut-off rises with speed (per unit of speed); higher lags less.
        d_cutoff: cut-off (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and d_cutoff must be positive and beta non-negative")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """Filter the next sample ``x`` taken ``dt`` seconds after the previous one."""
        x = np.asarray(x, np.float64)
        if self._x is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        if dt <= 0:  # a repeated time stamp: nothing new to filter
            return self._x.copy()
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        speed = np.linalg.norm(self._dx, axis=-1, keepdims=True)
        a = self._alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()


def smooth_track(points: np.ndarray, times_s: np.ndarray, scale: np.ndarray, min_cutoff: float = 1.0,
                 beta: float = 0.05, d_cutoff: float = 1.0) -> np.ndarray:
    """Zero-phase One Euro smoothing of a point track.

    Args:
        points: (T, N, 2) positions (pixels) at increasing ``times_s`` (T,).
        scale: (T,) a length per frame (e.g. the face size / 100) that positions are measured in
            while filtering.
        min_cutoff, beta, d_cutoff: the filter's parameters (see :class:`OneEuroFilter`).

    Returns:
        (T, N, 2) smoothed positions (pixels).
    """
    pts = np.asarray(points, np.float64)
    t = np.asarray(times_s, np.float64)
    s = np.asarray(scale, np.float64).reshape(-1, 1, 1)
    if pts.ndim != 3 or len(t) != len(pts) or len(s) != len(pts):
        raise ValueError(f"points must be (T, N, D) with T times and scales; got {pts.shape}, {t.shape}, {s.shape}")
    if len(pts) < 3:
        return pts.copy()
    centre = pts.mean(axis=(0, 1), keepdims=True)
    x = (pts - centre) / s

    def run(order: np.ndarray) -> np.ndarray:
        f = OneEuroFilter(min_cutoff, beta, d_cutoff)
        out = np.empty_like(x)
        prev = None
        for i in order:
            out[i] = f(x[i], abs(t[i] - t[prev]) if prev is not None else 0.0)
            prev = i
        return out

    idx = np.arange(len(x))
    fwd, bwd = run(idx), run(idx[::-1])
    return 0.5 * (fwd + bwd) * s + centre
