"""Small synthetic meshes for tests, examples and benchmarks (counter-clockwise, outward normals)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["grid_mesh", "uv_sphere", "sphere_with_triangles"]


def grid_mesh(n: int, size_mm: float = 100.0, z_mm: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """A square in the z = ``z_mm`` plane, facing +Z, split into ``2 n^2`` triangles.

    Returns:
        vertices (V, 3) float, triangles (F, 3) long, uv (V, 2) in [0, 1] (v up).
    """
    s = torch.linspace(0.0, 1.0, n + 1)
    v, u = torch.meshgrid(s, s, indexing="ij")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], 1)
    verts = torch.cat([(uv - 0.5) * size_mm, torch.full((uv.shape[0], 1), float(z_mm))], 1)
    idx = torch.arange((n + 1) * (n + 1)).view(n + 1, n + 1)
    a, b = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    c, d = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    tris = torch.cat([torch.stack([a, b, d], 1), torch.stack([a, d, c], 1)], 0)
    return verts, tris, uv


def uv_sphere(n_lat: int, n_lon: int, radius_mm: float = 80.0) -> tuple[Tensor, Tensor, Tensor]:
    """A latitude/longitude sphere centred at the origin with ``2 n_lon (n_lat - 1)`` triangles.

    Returns:
        vertices (V, 3) float, triangles (F, 3) long (outward, counter-clockwise), uv (V, 2).
    """
    theta = torch.linspace(0.0, math.pi, n_lat + 1)[1:-1]  # polar angle, poles excluded
    phi = torch.arange(n_lon) * (2 * math.pi / n_lon)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([th.sin() * ph.sin(), th.cos(), th.sin() * ph.cos()], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1.0, 0.0]]), ring, torch.tensor([[0.0, -1.0, 0.0]])]) * radius_mm
    n_ring = n_lat - 1
    south = 1 + n_ring * n_lon
    k = torch.arange(n_lon)
    k1 = (k + 1) % n_lon
    tris = [torch.stack([torch.zeros_like(k), 1 + k, 1 + k1], 1)]
    for r in range(n_ring - 1):
        a, b = 1 + r * n_lon + k, 1 + r * n_lon + k1
        c, d = a + n_lon, b + n_lon
        tris += [torch.stack([a, c, d], 1), torch.stack([a, d, b], 1)]
    last = 1 + (n_ring - 1) * n_lon
    tris.append(torch.stack([last + k, torch.full_like(k, south), last + k1], 1))
    uv = torch.stack([(torch.atan2(verts[:, 0], verts[:, 2]) / (2 * math.pi)) % 1.0,
                      0.5 + torch.asin((verts[:, 1] / radius_mm).clamp(-1, 1)) / math.pi], 1)
    return verts, torch.cat(tris, 0), uv


def sphere_with_triangles(num_triangles: int, radius_mm: float = 80.0) -> tuple[Tensor, Tensor, Tensor]:
    """A :func:`uv_sphere` with about ``num_triangles`` triangles (n_lon = 2 n_lat)."""
    n_lat = max(3, round(math.sqrt(num_triangles / 4.0)))
    return uv_sphere(n_lat, 2 * n_lat, radius_mm)
