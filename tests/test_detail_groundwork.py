"""Groundwork of the detail issue: bump-mapped normals and synthetic faces with known detail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _plane(n: int = 8, size_mm: float = 40.0):
    """A flat square in z = 0 facing +z, UVs = x, y / size (v up = +y)."""
    xs = np.linspace(0, size_mm, n)
    xx, yy = np.meshgrid(xs, xs)
    v = np.stack([xx.ravel(), yy.ravel(), np.zeros(n * n)], 1)
    tri = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tri += [[a, b, d], [a, d, c]]
    tri = torch.tensor(tri)
    verts = torch.tensor(v, dtype=torch.float32)
    uv = (verts[:, :2] / size_mm)[tri]
    return verts, tri, uv


def test_triangle_tangents_of_a_plane():
    from faceclip.render.bump import triangle_tangents

    verts, tri, uv = _plane()
    pu, pv = triangle_tangents(verts, tri, uv)
    assert torch.allclose(pu, torch.tensor([40.0, 0, 0]).expand_as(pu), atol=1e-3)
    assert torch.allclose(pv, torch.tensor([0, 40.0, 0]).expand_as(pv), atol=1e-3)


def test_map_gradients_and_sampling():
    from faceclip.render.bump import map_gradients, sample_map

    S = 64
    u = (torch.arange(S) + 0.5) / S
    ramp = (3.0 * u).view(1, 1, 1, S).expand(1, 1, S, S).contiguous()  # D = 3 u mm
    g = map_gradients(ramp)
    assert torch.allclose(g[0, 0, :, 1:-1], torch.full((S, S - 2), 3.0), atol=1e-4)  # dD/du
    assert torch.allclose(g[0, 1], torch.zeros(S, S), atol=1e-6)  # dD/dv
    centres = torch.stack([u, torch.full((S,), 0.5 + 0.5 / S)], 1)
    assert torch.allclose(sample_map(ramp, centres)[:, 0], 3.0 * u, atol=1e-5)


def test_bumped_normals_flat_map_is_smooth_and_a_ramp_tilts_them():
    from faceclip.render import PerspectiveCamera
    from faceclip.render.bump import bumped_normals
    from faceclip.render.rasterize import rasterize_mesh

    verts, tri, uv = _plane()
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # the camera looks at the +z face
    cam = PerspectiveCamera.create(R[None], torch.tensor([[-20.0, 20.0, 200.0]]), 400.0, (64, 64))
    frag, _, _ = rasterize_mesh(verts[None], tri, cam, cull_backfaces=False)
    assert len(frag.pix) > 500
    n0 = bumped_normals(frag, verts, tri, uv, torch.zeros(1, 1, 32, 32))
    assert torch.allclose(n0, torch.tensor([0, 0, 1.0]).expand_as(n0), atol=1e-5)
    S = 32
    u = (torch.arange(S) + 0.5) / S
    ramp = (4.0 * u).view(1, 1, 1, S).expand(1, 1, S, S).contiguous()  # rises 4 mm over 40 mm: slope 0.1
    n1 = bumped_normals(frag, verts, tri, uv, ramp)
    inner = (frag.bary.min(1).values > -1) & (n1[:, 0].abs() > 0)
    tilt = torch.atan2(-n1[inner, 0], n1[inner, 2])
    assert torch.allclose(tilt.median(), torch.tensor(math.atan(0.1)), atol=2e-3)


def test_procedural_detail_amplitude_and_dynamics(ict_head):
    from faceclip.evaluate.synthetic_detail import DetailSpec, procedural_detail, uv_mm_per_unit

    rng = lambda: np.random.default_rng(3)  # noqa: E731 - the same draw each time
    spec = DetailSpec()
    D = procedural_detail(ict_head, rng(), size_px=256, spec=spec)
    assert D.shape == (1, 1, 256, 256)
    peak = max(spec.forehead_mm, spec.crows_feet_mm, spec.nasolabial_mm) * 1.4 * 2  # overlaps at most double
    assert 0.1 < float(D.abs().max()) < peak
    assert float(D[0, 0, 128:, :].abs().max()) == 0.0  # only in the face chart (top-left quadrant)
    assert float(D[0, 0, :, 128:].abs().max()) == 0.0
    assert float(procedural_detail(ict_head, rng(), 256, spec, scale=0.0).abs().max()) == 0.0
    raised = procedural_detail(ict_head, rng(), 256, spec, expression={"browInnerUp_L": 1.0})
    smile = procedural_detail(ict_head, rng(), 256, spec, expression={"mouthSmile_L": 1.0})
    diff_brow, diff_smile = (raised - D)[0, 0], (smile - D)[0, 0]
    assert float(diff_brow.abs().max()) > 0.3 and float(diff_smile.abs().max()) > 0.3
    # Raised brows change the forehead (above the smile's change), a smile the nasolabial folds.
    rows_brow = diff_brow.abs().sum(1).argmax()
    rows_smile = diff_smile.abs().sum(1).argmax()
    assert rows_brow < rows_smile  # row 0 is the top (v = 1): the forehead lies above the mouth
    assert 200.0 < uv_mm_per_unit(ict_head) < 1200.0


def test_render_with_detail_shows_wrinkles_only_where_the_map_has_them(ict_head):
    from faceclip.evaluate.synthetic_detail import detail_normals_image, procedural_detail, render_with_detail
    from faceclip.render import PerspectiveCamera

    m = ict_head
    v = m.mean_mm
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    centre = v[m.landmarks68].mean(0)
    cam = PerspectiveCamera.create(R[None], (torch.tensor([0, 0, 600.0]) - R @ centre)[None], 900.0, (192, 192))
    albedo = torch.full((m.n_vertices, 3), 0.7)
    sh = torch.zeros(9, 3)
    sh[0] = 0.9
    sh[1] = 0.5  # light from above (SH band 1: y); nothing saturates
    D = procedural_detail(m, np.random.default_rng(0), 512)
    a, cov = render_with_detail(m, v, albedo, sh, cam, None)
    b, _ = render_with_detail(m, v, albedo, sh, cam, D)
    diff = np.abs(a - b).sum(-1)
    assert cov.sum() > 5000 and diff.max() > 0.05
    n0, c0 = detail_normals_image(m, v, cam, None)
    n1, c1 = detail_normals_image(m, v, cam, D)
    ang = np.degrees(np.arccos(np.clip((n0 * n1).sum(-1), -1, 1)))[c0 & c1]
    assert np.median(ang) < 0.5 and ang.max() > 10.0  # most skin smooth, the wrinkles tilted
