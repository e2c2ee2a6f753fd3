"""One interface for linear morphable face models.

Units and orientation (every model is brought to these on load):

- vertices are in **millimetres**, right-handed, **+X toward the subject's left, +Y up, +Z out
  of the face toward the viewer** (the glTF / OpenGL convention, so a mesh opens upright and
  facing the camera in Blender's glTF importer, MeshLab and three.js);
- triangles are wound counter-clockwise seen from outside (outward normals);
- UV coordinates are per triangle corner, in [0, 1], with v pointing up (OBJ convention: texture
  row 0 is v = 1).

A model evaluates, for a batch of B coefficient vectors::

    vertices = mean + sum_k identity[:, k] * identity_basis[k] + sum_j expression[:, j] * expression_basis[j]

Identity coefficients are scaled so that the prior is N(0, 1) per component; expression
coefficients follow the model's own convention (ICT blendshape weights in [0, 1], BFM
coefficients with an N(0, 1) prior), stated by :attr:`FaceModel.expression_range`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FaceModelOutput:
    """Result of evaluating a face model.

    Attributes:
        vertices_mm: (B, V, 3) vertex positions in millimetres.
        albedo: (B, V, 3) per-vertex albedo in [0, 1] (linear RGB), or None when the model has
            no albedo basis (ICT-FaceKit).
    """

    vertices_mm: Tensor
    albedo: Tensor | None = None


@dataclass
class FaceModel:
    """A linear morphable face model held as torch tensors (CPU or CUDA).

    Attributes:
        name: short name (``"ict"``, ``"bfm"``).
        mean_mm: (V, 3) mean shape in mm.
        identity_basis_mm: (K_id, V, 3) identity modes in mm per unit coefficient.
        expression_basis_mm: (K_exp, V, 3) expression modes in mm per unit coefficient.
        expression_names: K_exp names (ICT: ARKit-style blendshape names).
        triangles: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        uv: (F, 3, 2) per-corner UV coordinates in [0, 1], v up.
        landmarks68: (68,) int64 vertex indices of the iBUG / Multi-PIE 68 landmarks.
        regions: name -> (N,) int64 vertex indices. Always present: ``face``, ``skin``,
            ``eyes``, ``mouth_interior``, ``nose``, ``mouth``, ``forehead``, ``cheeks``,
            ``cheek_left``, ``cheek_right`` (some may be empty for a model lacking the geometry,
            e.g. ``mouth_interior`` for BFM).
        albedo_mean: (V, 3) mean albedo in [0, 1], or None.
        albedo_basis: (K_alb, V, 3) albedo modes per unit coefficient, or None.
        expression_range: ``"blendshape"`` (weights in [0, 1]) or ``"pca"`` (N(0, 1) prior).
        geometry: which sub-geometry of the source model this is (e.g. ``"head_eyes"``).
        licence: licence of the model data.
        source: where the data came from (file path).
        contour_candidates: (2, M) int64 vertex indices of the right / left extended jawline,
            candidates for the sliding 2D contour landmarks 0-7 and 9-16 (-1 pads), or None.
    """

    name: str
    mean_mm: Tensor
    identity_basis_mm: Tensor
    expression_basis_mm: Tensor
    expression_names: list[str]
    triangles: Tensor
    uv: Tensor
    landmarks68: Tensor
    regions: dict[str, Tensor]
    albedo_mean: Tensor | None = None
    albedo_basis: Tensor | None = None
    expression_range: str = "pca"
    geometry: str = "full"
    licence: str = ""
    source: str = ""
    contour_candidates: Tensor | None = None
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes

    @property
    def n_vertices(self) -> int:
        return int(self.mean_mm.shape[0])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis_mm.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis_mm.shape[0])

    @property
    def n_albedo(self) -> int:
        return 0 if self.albedo_basis is None else int(self.albedo_basis.shape[0])

    @property
    def has_albedo(self) -> bool:
        return self.albedo_mean is not None

    @property
    def device(self) -> torch.device:
        return self.mean_mm.device

    # ------------------------------------------------------------------ evaluation

    def vertices(self, identity: Tensor | None = None, expression: Tensor | None = None) -> Tensor:
        """Evaluate the shape.

        Args:
            identity: (B, K_id) coefficients, or None for zeros.
            expression: (B, K_exp) coefficients, or None for zeros.

        Returns:
            (B, V, 3) vertices in mm (B = 1 when both are None). Differentiable in both inputs.
        """
        batch = _batch_size(identity, expression)
        out = self.mean_mm.unsqueeze(0).expand(batch, -1, -1)
        if identity is not None:
            _check_coeffs(identity, self.n_identity, "identity")
            out = out + torch.einsum("bk,kvc->bvc", identity.to(self.mean_mm.dtype), self.identity_basis_mm)
        if expression is not None:
            _check_coeffs(expression, self.n_expression, "expression")
            out = out + torch.einsum(
                "bk,kvc->bvc", expression.to(self.mean_mm.dtype), self.expression_basis_mm
            )
        return out

    def albedo(self, coeffs: Tensor | None = None, batch: int = 1) -> Tensor | None:
        """Per-vertex albedo (B, V, 3) in [0, 1] from (B, K_alb) coefficients, or None.

        Values are not clamped, so gradients flow; clamp for display.
        """
        if self.albedo_mean is None:
            return None
        if coeffs is None:
            return self.albedo_mean.unsqueeze(0).expand(batch, -1, -1)
        _check_coeffs(coeffs, self.n_albedo, "albedo")
        assert self.albedo_basis is not None
        return self.albedo_mean.unsqueeze(0) + torch.einsum(
            "bk,kvc->bvc", coeffs.to(self.albedo_mean.dtype), self.albedo_basis
        )

    def __call__(
        self,
        identity: Tensor | None = None,
        expression: Tensor | None = None,
        albedo: Tensor | None = None,
    ) -> FaceModelOutput:
        """Evaluate shape (and albedo where the model has a basis); see :meth:`vertices`."""
        verts = self.vertices(identity, expression)
        alb = self.albedo(albedo, batch=verts.shape[0]) if self.has_albedo else None
        return FaceModelOutput(vertices_mm=verts, albedo=alb)

    def landmarks_3d(self, vertices_mm: Tensor) -> Tensor:
        """(B, V, 3) vertices -> (B, 68, 3) landmark positions."""
        return vertices_mm[:, self.landmarks68]

    def expression_index(self, name: str) -> int:
        """Index of a named expression component (raises KeyError listing the names)."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"unknown expression {name!r}; known: {', '.join(self.expression_names)}") from None

    # ------------------------------------------------------------------ conversion

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FaceModel":
        """Return a copy with float tensors moved/cast (index tensors keep int64)."""

        def conv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype or t.dtype)
            return t.to(device=device)

        return FaceModel(
            name=self.name,
            mean_mm=conv(self.mean_mm),
            identity_basis_mm=conv(self.identity_basis_mm),
            expression_basis_mm=conv(self.expression_basis_mm),
            expression_names=list(self.expression_names),
            triangles=conv(self.triangles),
            uv=conv(self.uv),
            landmarks68=conv(self.landmarks68),
            regions={k: conv(v) for k, v in self.regions.items()},
            albedo_mean=conv(self.albedo_mean),
            albedo_basis=conv(self.albedo_basis),
            expression_range=self.expression_range,
            geometry=self.geometry,
            licence=self.licence,
            source=self.source,
            contour_candidates=conv(self.contour_candidates),
            meta=dict(self.meta),
        )

    def region_mask(self, name: str) -> Tensor:
        """(V,) bool mask of a named vertex region."""
        if name not in self.regions:
            raise KeyError(f"unknown region {name!r}; known: {', '.join(sorted(self.regions))}")
        mask = torch.zeros(self.n_vertices, dtype=torch.bool, device=self.device)
        mask[self.regions[name]] = True
        return mask


def _batch_size(*coeffs: Tensor | None) -> int:
    sizes = {c.shape[0] for c in coeffs if c is not None}
    if len(sizes) > 1:
        raise ValueError(f"coefficient batches differ in size: {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _check_coeffs(c: Tensor, k: int, what: str) -> None:
    if c.ndim != 2 or c.shape[1] != k:
        raise ValueError(f"{what} coefficients must have shape (B, {k}), got {tuple(c.shape)}")
