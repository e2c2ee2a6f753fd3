"""Groundwork of the detail issue: bump-mapped normals and synthetic faces with known detail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _plane(n: int = 8, size_mm: float = 40.0):
    """A flat square in z = 0 facing +z, UVs = x, y / size (v up = +y), as torch tensors."""
    from conftest import plane_mesh

    v, tri, uv = plane_mesh(n, size_mm, size_mm)
    return torch.tensor(v, dtype=torch.float32), torch.tensor(tri), torch.tensor(uv, dtype=torch.float32)


def test_triangle_tangents_of_a_plane():
    from faceclip.render.bump import triangle_tangents

    verts, tri, uv = _plane()
    pu, pv = triangle_tangents(verts, tri, uv)
    assert torch.allclose(pu, torch.tensor([40.0, 0, 0]).expand_as(pu), atol=1e-3)
    assert torch.allclose(pv, torch.tensor([0, 40.0, 0]).expand_as(pv), atol=1e-3)


def test_tangents_of_sheared_and_degenerate_uvs():
    from faceclip.render.bump import triangle_tangents

    verts = torch.tensor([[0.0, 0, 0], [2.0, 1.0, 0], [0.5, 3.0, 0.0], [1.0, 1.0, 1.0]])
    A = torch.tensor([[2.0, 0.5], [1.0, 3.0], [0.0, 0.0]])  # P = A @ (u, v): sheared UVs
    uv = torch.linalg.lstsq(A[:2], verts[:3, :2].T).solution.T  # (3, 2) UVs with P = A uv
    tri = torch.tensor([[0, 1, 2], [0, 3, 3]])
    uvc = torch.stack([uv, torch.zeros(3, 2)])  # the second triangle: degenerate UVs
    pu, pv = triangle_tangents(verts, tri, uvc)
    assert torch.allclose(pu[0], A[:, 0], atol=1e-4) and torch.allclose(pv[0], A[:, 1], atol=1e-4)
    assert float(pu[1].abs().sum() + pv[1].abs().sum()) == 0.0


def test_map_gradients_and_sampling():
    from faceclip.render.bump import map_gradients, sample_map

    S = 64
    u = (torch.arange(S) + 0.5) / S
    ramp = (3.0 * u).view(1, 1, 1, S).expand(1, 1, S, S).contiguous()  # D = 3 u mm
    g = map_gradients(ramp)
    assert torch.allclose(g[0, 0], torch.full((S, S), 3.0), atol=1e-4)  # dD/du, borders included
    assert torch.allclose(g[0, 1], torch.zeros(S, S), atol=1e-6)  # dD/dv
    centres = torch.stack([u, torch.full((S,), 0.5 + 0.5 / S)], 1)
    assert torch.allclose(sample_map(ramp, centres)[:, 0], 3.0 * u, atol=1e-5)
    # Rows run from v = 1 (row 0) down: a map rising with v has dD/dv > 0, row 0 at the top.
    v_of_row = 1.0 - (torch.arange(S) + 0.5) / S
    vramp = (2.0 * v_of_row).view(1, 1, S, 1).expand(1, 1, S, S).contiguous()  # D = 2 v mm
    gv = map_gradients(vramp)
    assert torch.allclose(gv[0, 1], torch.full((S, S), 2.0), atol=1e-4) and torch.allclose(gv[0, 0], torch.zeros(S, S))
    top = torch.stack([torch.full((S,), 0.5), v_of_row], 1)
    assert torch.allclose(sample_map(vramp, top)[:, 0], 2.0 * v_of_row, atol=1e-5)


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
    tilt = torch.atan2(-n1[:, 0], n1[:, 2])
    assert float(((tilt - math.atan(0.1)).abs() < 2e-3).float().mean()) > 0.99  # every pixel tilted alike
    # Mirrored UVs (u -> 1 - u): the same map tilts the other way, normals still facing out.
    mirrored = uv.clone()
    mirrored[..., 0] = 1.0 - mirrored[..., 0]
    n2 = bumped_normals(frag, verts, tri, mirrored, ramp)
    assert float((n2[:, 2] > 0.99).float().mean()) > 0.99
    tilt2 = torch.atan2(-n2[:, 0], n2[:, 2])
    assert float(((tilt2 + math.atan(0.1)).abs() < 2e-3).float().mean()) > 0.99


def test_procedural_detail_amplitude_and_dynamics(ict_head):
    from faceclip.evaluate.synthetic_detail import DetailSpec, procedural_detail, uv_mm_per_unit

    rng = lambda: np.random.default_rng(3)  # noqa: E731 - the same draw each time
    spec = DetailSpec()
    D = procedural_detail(ict_head, rng(), size_px=256, spec=spec)
    assert D.shape == (1, 1, 256, 256)
    peak = max(spec.forehead_mm, spec.crows_feet_mm, spec.nasolabial_mm) * 1.4 * 2  # overlaps at most double
    assert 0.1 < float(D.abs().max()) < peak
    # Only on the face's UV island: every texel with detail lies on (or next to) a face triangle.
    from faceclip.fit.texture import uv_raster

    raster = uv_raster(ict_head, 256)
    face = np.zeros(256 * 256, bool)
    face[raster.frag.pix.numpy()[np.asarray(raster.face_texel)]] = True
    from scipy.ndimage import binary_dilation

    near_face = binary_dilation(face.reshape(256, 256), iterations=4)
    assert not (D[0, 0].abs().numpy() > 1e-3)[~near_face].any()
    assert float(procedural_detail(ict_head, rng(), 256, spec, scale=0.0).abs().max()) == 0.0
    assert float(procedural_detail(ict_head, rng(), 256, spec, scale=0.0,
                                   expression={"browInnerUp_L": 1.0, "mouthSmile_L": 1.0}).abs().max()) == 0.0
    with pytest.raises(ValueError, match="unknown blendshapes"):
        procedural_detail(ict_head, rng(), 256, spec, expression={"browUp": 1.0})
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
