"""Expression-dependent ("dynamic") detail: wrinkles that deepen and fade with the expression.

Some of a face's detail belongs to the face (pores, scars, the lines of age): it is *static*.
Some appears with an expression, as FaceScape models it: forehead lines with raised brows,
nasolabial folds with a smile, crow's feet with a squint. A displacement map fitted to one photo
(:mod:`faceclip.fit.detail`) holds both, at the expression of the photo. This module keeps them
apart, so that an edited expression shows the right wrinkles.

The model is procedural. Each group ``k`` of :data:`DYNAMIC_GROUPS` has a soft region ``M_k`` of
the UV atlas (placed by the model's landmark vertices) and an activation ``a_k(e)`` in [0, 1] (the
largest weight of its driving blendshapes). Inside its region, a wrinkle's depth is taken to grow
linearly with the activation, ``depth(e) = depth_rest (1 + r_k a_k(e))`` (``r_k``: how much deeper
at full activation than at rest, :data:`DEFAULT_GAIN`). So from the map ``D0`` fitted at
expression ``e0``:

- **static** (the map at rest): ``S = D0 / (1 + sum_k r_k a_k(e0) M_k)``;
- **dynamic** per group (extra depth per unit of activation): ``W_k = r_k M_k S``;
- at any expression: ``D(e) = S + sum_k a_k(e) W_k``, so ``D(e0) = D0`` (to float rounding).

Each group is split into the face's two sides, each driven by its own side's blendshapes
(``mouthSmile_L`` deepens the subject's left fold only).

What it cannot do: a wrinkle the photo does not show at all (a neutral photo of a smooth
forehead) has no depth to scale; it stays absent when the brows are raised in an edit.
Measured on synthetic faces (``benchmarks/detail.py --dynamic``, see ``docs/detail.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_GAIN", "DYNAMIC_GROUPS", "DynamicDetail", "activations", "dynamic_regions", "split_detail"]

#: Group -> the blendshape name prefixes that drive it (ICT / ARKit names; ``_L``/``_R`` alike).
DYNAMIC_GROUPS: dict[str, tuple[str, ...]] = {
    "forehead": ("browInnerUp", "browOuterUp"),
    "nasolabial": ("mouthSmile", "cheekSquint"),
    "crows_feet": ("eyeSquint", "cheekSquint", "mouthSmile"),
}
#: ``r_k``: a wrinkle at full activation is ``1 + r_k`` times as deep as at rest.
DEFAULT_GAIN: dict[str, float] = {"forehead": 1.0, "nasolabial": 1.0, "crows_feet": 0.5}


SIDES = ("L", "R")


def activations(expression: dict[str, float]) -> dict[str, float]:
    """``{"<group>_L": a, "<group>_R": a}`` in [0, 1]: per side of the face (the subject's left
    and right, as ICT's and ARKit's ``_L`` / ``_R`` names), the largest weight among the group's
    driving blendshapes on that side; a name without a side (``browInnerUp``) drives both."""
    out = {}
    for group, prefixes in DYNAMIC_GROUPS.items():
        for side in SIDES:
            other = "_R" if side == "L" else "_L"
            vals = [float(w) for name, w in expression.items() if name.startswith(prefixes) and not name.endswith(other)]
            out[f"{group}_{side}"] = float(np.clip(max(vals, default=0.0), 0.0, 1.0))
    return out


def dynamic_regions(model, size_px: int) -> dict[str, np.ndarray]:
    """``{"<group>_L" / "<group>_R": (S, S) float in [0, 1]}`` soft UV regions of the groups on
    each side of the face (row 0 at v = 1; the two sides of a group add up to the whole).

    Placed by the 68 landmark vertices' UVs: the forehead above the brows; a band from each
    nose wing past the mouth corner; a disc beyond each outer eye corner. Widths scale with
    the eye-to-brow distance in UV, so they follow the model's layout. Memoised per model
    layout and size (the arrays are shared and read-only).
    """
    from faceclip.io.mesh import memo_by_content

    return memo_by_content(f"dynamic_regions_{int(size_px)}", model.uv, model.triangles, model.landmarks68,
                           compute=lambda: _dynamic_regions(model, size_px))


def _dynamic_regions(model, size_px: int) -> dict[str, np.ndarray]:
    from faceclip.fit.detail import vertex_uv

    lm = vertex_uv(model)[model.landmarks68.cpu().numpy()]
    S = size_px
    u = (np.arange(S) + 0.5) / S
    uu, vv = np.meshgrid(u, 1.0 - u)
    brow, eye = lm[17:27].mean(0), lm[[37, 38, 43, 44]].mean(0)
    unit = float(np.linalg.norm(brow - eye))  # eye-to-brow distance in UV

    def smoothstep(x):
        x = np.clip(x, 0.0, 1.0)
        return x * x * (3 - 2 * x)

    regions = {}
    # Forehead: from just above the brows upward, between the outer brow ends.
    lo, hi = lm[[17, 26], 0].min(), lm[[17, 26], 0].max()
    above = smoothstep((vv - (lm[17:27, 1].max() + 0.15 * unit)) / (0.5 * unit))
    across = smoothstep((uu - lo + 1.2 * unit) / (0.8 * unit)) * smoothstep((hi + 1.2 * unit - uu) / (0.8 * unit))
    top = smoothstep((lm[17:27, 1].max() + 4.0 * unit - vv) / (1.0 * unit))
    regions["forehead"] = above * across * top
    # Nasolabial: a band from each nose wing (31 / 35) to beyond the mouth corner (48 / 54).
    band = np.zeros((S, S))
    for wing, mouth in ((lm[31], lm[48]), (lm[35], lm[54])):
        p0, p1 = wing + (wing - lm[33]) * 0.4, mouth + (mouth - lm[51]) * 0.3
        d = p1 - p0
        t = np.clip(((uu - p0[0]) * d[0] + (vv - p0[1]) * d[1]) / (d @ d), 0.0, 1.0)
        dist = np.hypot(uu - (p0[0] + t * d[0]), vv - (p0[1] + t * d[1]))
        band = np.maximum(band, 1.0 - smoothstep((dist - 0.35 * unit) / (0.35 * unit)))
    regions["nasolabial"] = band
    # Crow's feet: beyond each outer eye corner (36 / 45), away from the nose.
    disc = np.zeros((S, S))
    for corner, inner in ((lm[36], lm[39]), (lm[45], lm[42])):
        c = corner + (corner - inner) * 0.35
        disc = np.maximum(disc, 1.0 - smoothstep((np.hypot(uu - c[0], vv - c[1]) - 0.5 * unit) / (0.5 * unit)))
    regions["crows_feet"] = disc
    # Split each region by side: the subject's left eye corner (68-point index 45) tells which
    # way along u is the subject's left; a soft step across the nose ridge.
    mirror_u = float(np.median(lm[27:31, 0]))  # the nose ridge, as face_uv_window's axis
    direction = 1.0 if lm[45, 0] > lm[36, 0] else -1.0
    left = smoothstep(0.5 + direction * (uu - mirror_u) / (0.4 * unit))
    out = {}
    for group, m in regions.items():
        out[f"{group}_L"], out[f"{group}_R"] = m * left, m * (1.0 - left)
    for region in out.values():
        region.setflags(write=False)  # shared by every face of the model (memoised)
    return out


@dataclass
class DynamicDetail:
    """A fitted map split into its static part and one dynamic map per group and side (all (S, S) mm)."""

    static_mm: np.ndarray
    dynamic_mm: dict[str, np.ndarray]

    def at(self, expression: dict[str, float]) -> np.ndarray:
        """(S, S) float32 the map at ``expression`` (blendshape weights by name)."""
        a = activations(expression)
        out = self.static_mm.astype(np.float64).copy()
        for group, w in self.dynamic_mm.items():
            out += a[group] * w
        return out.astype(np.float32)


def split_detail(model, atlas_mm: np.ndarray, expression: dict[str, float],
                 gain: dict[str, float] | None = None) -> DynamicDetail:
    """Split a map fitted at ``expression`` into static and dynamic parts (module docstring).

    Args:
        atlas_mm: (S, S) the fitted map over the whole UV atlas (row 0 at v = 1).
        expression: the fitted expression (blendshape weights by name).
        gain: ``r_k`` per group (default :data:`DEFAULT_GAIN`).
    """
    gain = {**DEFAULT_GAIN, **(gain or {})}
    S = atlas_mm.shape[0]
    regions = dynamic_regions(model, S)
    a0 = activations(expression)
    factor = np.ones((S, S))  # D0 = S (1 + sum_k r_k a_k(e0) M_k)
    for key, m in regions.items():
        factor += gain[key[:-2]] * a0[key] * m
    static = atlas_mm.astype(np.float64) / factor
    dynamic = {key: (gain[key[:-2]] * m * static).astype(np.float32) for key, m in regions.items()}
    return DynamicDetail(static.astype(np.float32), dynamic)
