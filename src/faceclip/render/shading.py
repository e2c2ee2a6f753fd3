"""Normals and Lambertian shading under 2nd-order spherical-harmonics (SH) lighting.

SH convention (identical to Deep3DFaceRecon's ``add_illumination``, so its 27 ``gamma``
coefficients transfer unchanged): irradiance at a surface with unit normal
``n = (x, y, z)`` is ``E(n) = sum_k Y_k(n) * L_k`` for k = 0..8 per colour channel, where the
basis already includes the Lambertian convolution constants (Ramamoorthi & Hanrahan 2001)
``a0 = pi, a1 = 2 pi / sqrt(3), a2 = 2 pi / sqrt(8)`` and the SH normalisation constants
``c0 = 1 / sqrt(4 pi), c1 = sqrt(3) / sqrt(4 pi), c2 = 3 sqrt(5) / sqrt(12 pi)``:

====  ==========================================
k     Y_k(n)
====  ==========================================
0     a0 c0
1     -a1 c1 y
2     a1 c1 z
3     -a1 c1 x
4     a2 c2 x y
5     -a2 c2 y z
6     a2 c2 (0.5 / sqrt(3)) (3 z^2 - 1)
7     -a2 c2 x z
8     a2 c2 0.5 (x^2 - y^2)
====  ==========================================

Normals are expressed in the *view frame* (x right, y up, z toward the camera; see
:meth:`PerspectiveCamera.to_view`), so the light is fixed relative to the camera. Colour =
albedo * E(n). With ``L_0 = 0.8 / (a0 c0)`` (Deep3DFaceRecon adds 0.8 to ``gamma[0]``), a
white albedo renders at 0.8 everywhere. A light from the front and above has ``L_2 > 0``
(z toward the viewer) and ``L_1 < 0`` (note the minus sign of ``Y_1``).
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import Tensor

from faceclip.render import _numba_ops
from faceclip.render.backend import use_numba

__all__ = ["face_normals", "vertex_normals", "sh_basis", "sh_irradiance", "sh_shade_vertices",
           "SH_CONSTANTS", "sh_from_deep3d", "sh_ambient", "sh_directional",
           "sh_quadratic_coeffs", "sh_irradiance_quadratic", "vertex_irradiance"]

_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi),
      3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
#: Per-basis constant factors of :func:`sh_basis` (including signs), shape (9,).
SH_CONSTANTS = (
    _A[0] * _C[0], -_A[1] * _C[1], _A[1] * _C[1], -_A[1] * _C[1],
    _A[2] * _C[2], -_A[2] * _C[2], _A[2] * _C[2] * 0.5 / math.sqrt(3.0), -_A[2] * _C[2],
    _A[2] * _C[2] * 0.5,
)


def face_normals(vertices: Tensor, triangles: Tensor, normalize: bool = True) -> Tensor:
    """Triangle normals (counter-clockwise = front).

    Args:
        vertices: (V, 3) or (B, V, 3); triangles: (F, 3) long.
    Returns:
        (..., F, 3) unit normals (or area-weighted, twice the area, if not ``normalize``).
    """
    v0 = vertices.index_select(-2, triangles[:, 0])
    e1 = vertices.index_select(-2, triangles[:, 1]) - v0
    e2 = vertices.index_select(-2, triangles[:, 2]) - v0
    ax, ay, az = e1.unbind(-1)
    bx, by, bz = e2.unbind(-1)
    n = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12) if normalize else n


class _IncidenceMatMul(torch.autograd.Function):
    """``A @ X`` with a fixed sparse CSR matrix (and its cached transpose for the backward)."""

    @staticmethod
    def forward(ctx, X: Tensor, A: Tensor, AT: Tensor) -> Tensor:
        ctx.AT = AT
        return A @ X

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.AT @ grad.contiguous(), None, None


_INCIDENCE: dict[int, tuple] = {}


def _incidence(triangles: Tensor, num_vertices: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cached sparse CSR vertex-face incidence ``A`` (V, F) (ones) and its transpose (F, V)."""
    key = id(triangles)
    hit = _INCIDENCE.get(key)
    if hit is not None:
        ref, version, V, dt, A, AT = hit
        if ref() is triangles and version == triangles._version and V == num_vertices and dt == dtype:
            return A, AT
    F = triangles.shape[0]
    rows = triangles.reshape(-1)
    cols = torch.arange(F, device=triangles.device).repeat_interleave(3)
    ones = torch.ones(3 * F, dtype=dtype, device=triangles.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        A = torch.sparse_coo_tensor(torch.stack([rows, cols]), ones, (num_vertices, F),
                                    check_invariants=False).coalesce().to_sparse_csr()
        AT = torch.sparse_coo_tensor(torch.stack([cols, rows]), ones, (F, num_vertices),
                                     check_invariants=False).coalesce().to_sparse_csr()
    if len(_INCIDENCE) > 8:
        _INCIDENCE.clear()
    _INCIDENCE[key] = (weakref.ref(triangles), triangles._version, num_vertices, dtype, A, AT)
    return A, AT


def vertex_normals(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Area-weighted vertex normals.

    Computed vertex-major (rows ``(B*3)`` wide) so that the corner gathers are row copies and the
    face -> vertex accumulation is one sparse incidence-matrix product (cached per triangles
    tensor) instead of a scatter.

    Args:
        vertices: (V, 3) or (B, V, 3); triangles: (F, 3) long.
    Returns:
        (..., V, 3) unit normals (zero for unreferenced vertices); differentiable.
    """
    lead = vertices.shape[:-2]
    V, F = vertices.shape[-2], triangles.shape[0]
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    if vertices.ndim in (2, 3) and use_numba(vertices):
        out = _numba_ops.VertexNormals.apply(vertices if vertices.ndim == 3 else vertices.unsqueeze(0), triangles)
        return out if vertices.ndim == 3 else out[0]
    if vertices.is_cuda or vertices.ndim > 3:  # CUDA / unusual shapes: plain scatter
        fn = face_normals(vertices, triangles, normalize=False)  # (..., F, 3)
        nb = int(torch.tensor(lead).prod()) if lead else 1
        offset = (torch.arange(nb, device=vertices.device) * V).view(nb, 1, 1)
        idx = triangles.unsqueeze(0) + offset  # (nb, F, 3) corner -> flat vertex
        flat_fn = fn.reshape(nb * F, 3)
        out = vertices.new_zeros(nb * V, 3)
        for k in range(3):
            out = out.index_add(0, idx[:, :, k].reshape(-1), flat_fn)
        out = out.view(*lead, V, 3)
        return torch.nn.functional.normalize(out, dim=-1, eps=1e-12)
    B = vertices.shape[0] if vertices.ndim == 3 else 1
    vm = vertices.transpose(0, 1).reshape(V, B * 3) if vertices.ndim == 3 else vertices
    p0, p1, p2 = (vm.index_select(0, triangles[:, k]).view(F, B, 3) for k in range(3))
    n = torch.linalg.cross(p1 - p0, p2 - p0, dim=-1).reshape(F, B * 3)
    A, AT = _incidence(triangles, V, vertices.dtype)
    vn = _IncidenceMatMul.apply(n, A, AT).view(V, B, 3)
    vn = torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)
    return vn.transpose(0, 1) if vertices.ndim == 3 else vn.view(V, 3)


def sh_basis(normals: Tensor) -> Tensor:
    """The 9 SH irradiance basis values (with Lambertian constants) of unit normals.

    Args:
        normals: (..., 3) unit normals in the view frame.
    Returns:
        (..., 9).
    """
    x, y, z = normals.unbind(-1)
    one = torch.ones_like(x)
    basis = torch.stack([one, y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y], dim=-1)
    return basis * torch.tensor(SH_CONSTANTS, dtype=normals.dtype, device=normals.device)


def sh_irradiance(normals: Tensor, coeffs: Tensor) -> Tensor:
    """Irradiance per colour channel.

    Args:
        normals: (B, N, 3) unit normals in the view frame.
        coeffs: (B, 9, C) (or (9, C)) SH coefficients per channel.
    Returns:
        (B, N, C).
    """
    return torch.matmul(sh_basis(normals), coeffs)


def sh_quadratic_coeffs(coeffs: Tensor, to_view: Tensor | None = None) -> Tensor:
    """SH irradiance as a quadratic polynomial of (unrotated) normals.

    The 2nd-order SH irradiance is ``E(m) = k + l . m + m^T S m`` in the view-frame normal
    ``m``; with ``m = Q n`` this is ``k + (Q^T l) . n + n^T (Q^T S Q) n``, so lighting can be
    evaluated on model-space normals without rotating them (exact for any matrix ``Q``, also
    without unit normals, since the ``-1`` of ``Y_6`` sits in ``k``).

    Args:
        coeffs: (B, 9, C) SH coefficients (view frame).
        to_view: (B, 3, 3) matrix ``Q`` mapping normals into the view frame, or None.
    Returns:
        (B, 10, C) weights of the features ``[1, x, y, z, x^2, y^2, z^2, xy, yz, xz]``.
    """
    c = coeffs * torch.tensor(SH_CONSTANTS, dtype=coeffs.dtype, device=coeffs.device).view(1, 9, 1)
    k = c[:, 0] - c[:, 6]
    lin = torch.stack([c[:, 3], c[:, 1], c[:, 2]], 1)  # (B, 3, C) x, y, z
    S = torch.stack([
        torch.stack([c[:, 8], 0.5 * c[:, 4], 0.5 * c[:, 7]], 1),
        torch.stack([0.5 * c[:, 4], -c[:, 8], 0.5 * c[:, 5]], 1),
        torch.stack([0.5 * c[:, 7], 0.5 * c[:, 5], 3.0 * c[:, 6]], 1),
    ], 1)  # (B, 3, 3, C)
    if to_view is not None:
        Q = to_view.to(coeffs.dtype)
        lin = torch.einsum("bij,bic->bjc", Q, lin)
        S = _congruence(Q, S)
    return torch.cat([k.unsqueeze(1), lin, torch.stack([S[:, 0, 0], S[:, 1, 1], S[:, 2, 2],
                                                         2 * S[:, 0, 1], 2 * S[:, 1, 2], 2 * S[:, 0, 2]], 1)], 1)


def _congruence(Q: Tensor, S: Tensor) -> Tensor:
    """``Q^T S_c Q`` for every channel c: Q (B, 3, 3), S (B, 3, 3, C) -> (B, 3, 3, C)."""
    Sc = S.permute(0, 3, 1, 2)  # (B, C, 3, 3)
    out = Q.transpose(1, 2).unsqueeze(1) @ Sc @ Q.unsqueeze(1)
    return out.permute(0, 2, 3, 1)


def sh_irradiance_quadratic(normals: Tensor, weights: Tensor) -> Tensor:
    """Irradiance from :func:`sh_quadratic_coeffs` weights.

    Args:
        normals: (B, V, 3) (model-space) normals; weights: (B, 10, C).
    Returns:
        (B, V, C).
    """
    if normals.ndim == 3 and weights.ndim == 3 and use_numba(normals, weights):
        return _numba_ops.QuadraticSH.apply(normals, weights)
    x, y, z = normals.unbind(-1)
    feats = torch.stack([x, y, z, x * x, y * y, z * z, x * y, y * z, x * z], -1)
    return torch.baddbmm(weights[:, :1], feats, weights[:, 1:])


def vertex_irradiance(vertices: Tensor, triangles: Tensor, weights: Tensor, used: Tensor | None = None) -> Tensor:
    """SH irradiance at the vertex normals: ``sh_irradiance_quadratic(vertex_normals(v), w)``.

    One fused pass (and one backward) on the compiled CPU backend.

    Args:
        vertices: (B, V, 3) or (1, V, 3) (shared by the B lights) model-space vertices.
        triangles: (F, 3) long.
        weights: (B, 10, C) from :func:`sh_quadratic_coeffs`.
        used: optional (B*V,) flags of the vertices whose irradiance is needed (e.g. the
            corners of visible triangles); the compiled backend then skips the others (and
            returns 0 there), the PyTorch path ignores it.
    Returns:
        (B, V, C).
    """
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    if vertices.ndim == 3 and weights.ndim == 3 and use_numba(vertices, weights):
        return _numba_ops.VertexIrradiance.apply(vertices, triangles, weights, used)
    normals = vertex_normals(vertices, triangles)
    if normals.shape[0] != weights.shape[0]:
        normals = normals.expand(weights.shape[0], -1, -1)
    return sh_irradiance_quadratic(normals, weights.to(normals.dtype))


def sh_shade_vertices(
    vertices: Tensor, triangles: Tensor, albedo: Tensor, coeffs: Tensor, to_view=None,
) -> Tensor:
    """Lambertian SH shading at the vertices (Gouraud): ``albedo * E(n)``.

    Args:
        vertices: (B, V, 3) model-space vertices.
        triangles: (F, 3) long.
        albedo: (B, V, C) or (V, C) vertex albedo, or None for white (C = 3).
        coeffs: (B, 9, C) SH coefficients.
        to_view: optional callable rotating (B, V, 3) normals into the view frame, e.g.
            ``camera.to_view``; identity (frontal camera) if None.
    Returns:
        (B, V, C) shaded vertex colours.
    """
    n = vertex_normals(vertices, triangles)
    if to_view is not None:
        n = to_view(n)
    irr = sh_irradiance(n, coeffs)
    return irr if albedo is None else albedo * irr


def sh_from_deep3d(gamma: Tensor, init_ambient: float = 0.8) -> Tensor:
    """Convert Deep3DFaceRecon's (B, 27) ``gamma`` (RGB-major) to (B, 9, 3) coefficients.

    Deep3DFaceRecon adds ``init_ambient`` to each channel's first coefficient.
    """
    g = gamma.reshape(-1, 3, 9).transpose(1, 2).clone()
    g[:, 0, :] = g[:, 0, :] + init_ambient
    return g


def sh_ambient(level: float = 0.8, batch_size: int = 1, channels: int = 3,
               device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform light: irradiance ``level`` for every normal. Returns (B, 9, C)."""
    c = torch.zeros(batch_size, 9, channels, device=device, dtype=dtype)
    c[:, 0, :] = level / SH_CONSTANTS[0]
    return c


def sh_directional(direction_view: tuple[float, float, float], ambient: float = 0.4,
                   diffuse: float = 0.6, batch_size: int = 1, channels: int = 3,
                   device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Ambient plus the first-order part of a directional light toward ``direction_view``.

    Irradiance is ``ambient + diffuse * max-free linear term (n . d)`` (bands 0 and 1 only),
    with ``d`` the unit direction *toward* the light in the view frame (x right, y up, z to
    the viewer). E.g. ``(0, 0.5, 1)`` lights from the front and above. Returns (B, 9, C).
    """
    d = torch.tensor(direction_view, dtype=dtype)
    d = d / d.norm()
    c = sh_ambient(ambient, batch_size, channels, device, dtype)
    lin = torch.stack([d[1] / SH_CONSTANTS[1], d[2] / SH_CONSTANTS[2], d[0] / SH_CONSTANTS[3]])
    c[:, 1:4, :] = (diffuse * lin).to(device).view(1, 3, 1)
    return c
