"""Analytic tests of the rasterizer, camera, interpolation, texture and shading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faceclip.render import (
    PerspectiveCamera,
    interpolate_vertex_attributes,
    project_landmarks,
    rasterize,
    rasterize_mesh,
    render_mesh,
    sample_texture,
    sh_ambient,
    sh_basis,
    sh_directional,
    sh_from_deep3d,
    vertex_normals,
)
from faceclip.render.rasterize import fragment_barycentrics
from faceclip.render.synthetic import grid_mesh, uv_sphere


def _point_in_triangle(px: np.ndarray, py: np.ndarray, tri: np.ndarray) -> np.ndarray:
    (x0, y0), (x1, y1), (x2, y2) = tri
    d0 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    d1 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    d2 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    return ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))


@pytest.mark.parametrize("seed", range(5))
def test_single_triangle_coverage_matches_point_in_triangle(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    H, W = 37, 53
    xy = torch.rand(1, 3, 2, generator=g) * torch.tensor([W + 10.0, H + 10.0]) - 5.0
    z = torch.full((1, 3), 10.0)
    frags = rasterize(xy, z, torch.tensor([[0, 1, 2]]), (H, W))
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    expected = _point_in_triangle(jj, ii, xy[0].numpy().astype(np.float64))
    got = frags.mask[0].numpy()
    # pixel centres within float rounding of an edge may go either way
    assert (got != expected).sum() <= 1
    assert got.sum() > 0 or expected.sum() == 0


def test_backface_culling_and_winding() -> None:
    xy = torch.tensor([[[2.0, 2.0], [30.0, 4.0], [6.0, 28.0]]])  # clockwise in y-up = back face
    z = torch.full((1, 3), 5.0)
    tri = torch.tensor([[0, 1, 2]])
    assert rasterize(xy, z, tri, (32, 32), cull_backfaces=False).mask.sum() > 100
    assert rasterize(xy, z, tri, (32, 32), cull_backfaces=True).mask.sum() == 0
    assert rasterize(xy, z, tri.flip(1), (32, 32), cull_backfaces=True).mask.sum() > 100


def test_frontal_square_is_front_facing_and_upright() -> None:
    verts, tris, _ = grid_mesh(2, size_mm=40.0)
    cam = PerspectiveCamera.frontal(200.0, 200.0, (48, 48))
    frags, _, _ = rasterize_mesh(verts, tris, cam, cull_backfaces=True)
    assert frags.mask.sum() == 40 * 40
    # +Y (up) in model space appears at the top of the image, +X on the image's right
    xy = cam.project(torch.tensor([[0.0, 10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))[0]
    assert torch.allclose(xy[2], torch.tensor([24.0, 24.0]))
    assert xy[0, 1] < 24.0 and xy[1, 0] > 24.0


def test_depth_ordering_of_overlapping_triangles() -> None:
    xy = torch.tensor([[[4.0, 4.0], [4.0, 28.0], [28.0, 16.0], [28.0, 4.0], [28.0, 28.0], [4.0, 16.0]]])
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for near_first in (True, False):
        z = torch.tensor([[5.0, 5.0, 5.0, 9.0, 9.0, 9.0]]) if near_first else \
            torch.tensor([[9.0, 9.0, 9.0, 5.0, 5.0, 5.0]])
        frags = rasterize(xy, z, tris, (32, 32))
        overlap = frags.pix_to_face[0, 16, 14:18]
        assert (overlap == (0 if near_first else 1)).all()
        assert torch.allclose(frags.depth_image[0, 16, 16], torch.tensor(5.0))


def test_depth_ordering_with_tilted_triangles_crossing() -> None:
    """Two triangles intersecting along x = 16: each is in front on one side."""
    xy = torch.tensor([[[0.0, 0.0], [32.0, 0.0], [16.0, 32.0]] * 2])
    z = torch.tensor([[4.0, 8.0, 6.0, 8.0, 4.0, 6.0]])
    frags = rasterize(xy, z, torch.tensor([[0, 1, 2], [3, 4, 5]]), (32, 32))
    row = frags.pix_to_face[0, 8]
    assert (row[9:15] == 0).all() and (row[17:23] == 1).all()


def test_barycentrics_sum_to_one_and_hit_the_pixel_ray() -> None:
    verts, tris, _ = uv_sphere(12, 24, radius_mm=50.0)
    R = torch.tensor([[0.9, 0.0, 0.43589], [0.0, -1.0, 0.0], [0.43589, 0.0, -0.9]])
    cam = PerspectiveCamera.create(R, torch.tensor([3.0, -2.0, 220.0]), (150.0, 160.0), (40, 48),
                                   principal_point_px=(23.0, 21.0))
    frags, xy, z = rasterize_mesh(verts, tris, cam, cull_backfaces=True)
    assert torch.allclose(frags.bary.sum(1), torch.ones(len(frags.pix)), atol=1e-5)
    assert (frags.bary > -1e-4).all()
    # interpolating camera-space points with perspective-correct barycentrics lands on the
    # ray through the pixel centre, at the returned depth
    p_cam = interpolate_vertex_attributes(cam.to_camera(verts)[0], frags, tris)
    pix = cam.camera_to_pixels(p_cam.unsqueeze(0))[0]
    i = torch.div(frags.pix, 48, rounding_mode="floor")
    j = frags.pix % 48
    assert torch.allclose(pix, torch.stack([j + 0.5, i + 0.5], 1).float(), atol=2e-3)
    assert torch.allclose(p_cam[:, 2], frags.depth, rtol=1e-5)


def test_chunking_and_batching_do_not_change_the_result() -> None:
    verts, tris, _ = uv_sphere(20, 40, radius_mm=60.0)
    cams = PerspectiveCamera.create(
        torch.stack([torch.diag(torch.tensor([1.0, -1.0, -1.0])),
                     torch.tensor([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])]),
        torch.tensor([[0.0, 0.0, 300.0], [5.0, 0.0, 280.0]]), 300.0, (64, 80))
    whole, _, _ = rasterize_mesh(verts, tris, cams)
    xy, z = cams.project_with_depth(verts)
    chunked = rasterize(xy, z, tris, (64, 80), chunk_size=7)
    assert torch.equal(whole.pix, chunked.pix) and torch.equal(whole.face, chunked.face)
    for b in range(2):
        single = rasterize(xy[b:b + 1], z[b:b + 1], tris, (64, 80))
        assert torch.equal(single.pix_to_face[0], whole.pix_to_face[b])


def test_large_triangles_beyond_the_image() -> None:
    xy = torch.tensor([[[-500.0, -400.0], [900.0, -300.0], [50.0, 900.0]]])
    frags = rasterize(xy, torch.full((1, 3), 3.0), torch.tensor([[0, 1, 2]]), (20, 30))
    assert frags.mask.all()


def test_triangles_behind_the_near_plane_are_dropped() -> None:
    xy = torch.tensor([[[2.0, 2.0], [2.0, 20.0], [20.0, 10.0]]])
    frags = rasterize(xy, torch.tensor([[5.0, -1.0, 5.0]]), torch.tensor([[0, 1, 2]]), (24, 24))
    assert frags.mask.sum() == 0


def test_gradcheck_barycentrics() -> None:
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 12).requires_grad_()
    z = (torch.rand(2, 5, generator=g, dtype=torch.float64) * 3 + 2).requires_grad_()
    tris = torch.tensor([[0, 1, 2], [1, 3, 4], [0, 2, 4]])
    frags = rasterize(xy, z, tris, (12, 12))
    pix, face = frags.pix[::7], frags.face[::7]
    assert pix.numel() > 3

    def f(xy_: torch.Tensor, z_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fragment_barycentrics(xy_, z_, tris, pix, face, (12, 12))

    assert torch.autograd.gradcheck(f, (xy, z), eps=1e-6, atol=1e-5)


def test_gradcheck_texture_sampling_and_interpolation() -> None:
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(2, 5, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(11, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    bidx = torch.randint(0, 2, (11,), generator=g)
    assert torch.autograd.gradcheck(lambda t, u: sample_texture(t, u, bidx), (tex, uv), eps=1e-6, atol=1e-5)
    n = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(sh_basis, (n.requires_grad_(),))


def test_texture_orientation_v_up() -> None:
    """Texture row 0 (v = 1) is the top of the square seen by a frontal camera."""
    verts, tris, uv = grid_mesh(1, size_mm=40.0)
    tex = torch.zeros(2, 2, 3)
    tex[0, :, 0] = 1.0  # top row red
    tex[1, :, 2] = 1.0  # bottom row blue
    tex[:, 1, 1] = 1.0  # right column has green
    cam = PerspectiveCamera.frontal(200.0, 200.0, (48, 48))
    out = render_mesh(verts, tris, cam, texture=tex, uv=uv, antialiased=False)
    img = out.image[0]
    assert img[6, 24, 0] > 0.9 and img[6, 24, 2] < 0.1
    assert img[41, 24, 2] > 0.9 and img[41, 24, 0] < 0.1
    assert img[24, 41, 1] > 0.9 and img[24, 6, 1] < 0.1
    # per-corner uvs give the same image
    out2 = render_mesh(verts, tris, cam, texture=tex, uv=uv[tris], antialiased=False)
    assert torch.allclose(out.image, out2.image, atol=1e-6)
    # bilinear: texel centres are exact
    centre = sample_texture(tex, torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5]]))
    assert torch.allclose(centre[0], tex[0, 0]) and torch.allclose(centre[1], tex[1, 1])
    assert torch.allclose(centre[2], tex.mean((0, 1)))


def test_sh_conventions() -> None:
    n = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    # Deep3DFaceRecon's explicit formula
    a0, a1, a2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
    c0, c1, c2 = 1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)
    x, y, z = n.unbind(1)
    ref = torch.stack([a0 * c0 * torch.ones_like(x), -a1 * c1 * y, a1 * c1 * z, -a1 * c1 * x,
                       a2 * c2 * x * y, -a2 * c2 * y * z, a2 * c2 * 0.5 / math.sqrt(3.0) * (3 * z * z - 1),
                       -a2 * c2 * x * z, a2 * c2 * 0.5 * (x * x - y * y)], 1)
    assert torch.allclose(sh_basis(n), ref, atol=1e-6)
    assert torch.allclose(sh_basis(n) @ sh_ambient(0.7)[0], torch.full((50, 3), 0.7), atol=1e-6)
    d = torch.tensor([0.0, 0.6, 0.8])
    lit = sh_basis(n) @ sh_directional((0.0, 0.6, 0.8), ambient=0.3, diffuse=0.5)[0]
    assert torch.allclose(lit[:, 0], 0.3 + 0.5 * (n @ d), atol=1e-5)
    gamma = torch.arange(27.0).view(1, 27)
    coeffs = sh_from_deep3d(gamma)
    assert coeffs.shape == (1, 9, 3) and coeffs[0, 1, 2] == 19.0 and coeffs[0, 0, 0] == pytest.approx(0.8)


def test_vertex_normals_point_outward() -> None:
    verts, tris, _ = uv_sphere(10, 20, radius_mm=30.0)
    n = vertex_normals(verts, tris)
    cos = (n * torch.nn.functional.normalize(verts, dim=1)).sum(1)
    assert cos.min() > 0.98 and torch.allclose(n.norm(dim=1), torch.ones(len(n)))


def test_shaded_sphere_is_lit_from_the_light_direction() -> None:
    verts, tris, _ = uv_sphere(24, 48, radius_mm=50.0)
    cam = PerspectiveCamera.frontal(600.0, 300.0, (64, 64))  # sphere radius ~25 px
    out = render_mesh(verts, tris, cam, sh_coeffs=sh_directional((0.0, 1.0, 1.0)))
    img = out.image[0, ..., 0]
    assert img[12, 32] > img[52, 32] + 0.3  # top brighter than bottom
    assert torch.allclose(img[:, :32].sum(), img[:, 32:].flip(1).sum(), rtol=0.02)


def test_camera_batching_and_landmarks() -> None:
    cam = PerspectiveCamera.frontal(500.0, 1000.0, (224, 224), batch_size=3)
    verts = torch.randn(3, 10, 3) * 20
    lm = project_landmarks(verts, torch.tensor([1, 4, 7]), cam)
    assert lm.shape == (3, 3, 2)
    assert torch.allclose(lm, cam.project(verts)[:, [1, 4, 7]])
    assert torch.allclose(cam.K[0], torch.tensor([[1000.0, 0, 112], [0, 1000, 112], [0, 0, 1]]))
    assert cam.to("cpu", torch.float64).R.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    verts, tris, _ = uv_sphere(30, 60, radius_mm=60.0)
    cam = PerspectiveCamera.frontal(300.0, 300.0, (64, 64))
    cpu = render_mesh(verts, tris, cam, sh_coeffs=sh_directional((0, 1, 1)))
    gpu = render_mesh(verts.cuda(), tris.cuda(), cam.to("cuda"), sh_coeffs=sh_directional((0, 1, 1)).cuda())
    assert torch.equal(cpu.fragments.face, gpu.fragments.face.cpu())
    assert torch.allclose(cpu.image, gpu.image.cpu(), atol=1e-4)


def test_gradcheck_vertex_normals_and_quadratic_sh() -> None:
    """Sparse incidence-matrix normals and the rotated-light SH form (custom/ sparse backward)."""
    from faceclip.render.shading import sh_irradiance, sh_irradiance_quadratic, sh_quadratic_coeffs

    g = torch.Generator().manual_seed(3)
    verts, tris, _ = uv_sphere(5, 8, radius_mm=10.0)
    v = (verts.double().unsqueeze(0).repeat(2, 1, 1) + torch.randn(2, *verts.shape, generator=g,
                                                                   dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, tris), (v,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, tris), (v[0].detach().requires_grad_(),))
    n = torch.nn.functional.normalize(torch.randn(2, 7, 3, generator=g, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(2, 3, 3, generator=g, dtype=torch.float64))[0]
    expected = sh_irradiance(n @ Q.transpose(1, 2), coeffs)
    assert torch.allclose(sh_irradiance_quadratic(n, sh_quadratic_coeffs(coeffs, Q)), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda nn, c: sh_irradiance_quadratic(nn, sh_quadratic_coeffs(c, Q)),
                                    (n.requires_grad_(), coeffs.requires_grad_()))


def test_gradcheck_scatter_image_and_sparse_antialias_match_dense() -> None:
    from faceclip.render import antialias
    from faceclip.render.antialiasing import antialias_deltas
    from faceclip.render.rasterize import scatter_image

    g = torch.Generator().manual_seed(4)
    vals = torch.rand(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.rand(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    pix, dpix = torch.tensor([0, 2, 3, 5, 8, 9]), torch.tensor([1, 2, 2])
    assert torch.autograd.gradcheck(lambda a, b, d: scatter_image(a, b, pix, 11, d, dpix), (vals, bg, delta))
    # the renderer's sparse antialiasing equals the dense op, values and gradients
    verts, tris, _ = uv_sphere(10, 20, radius_mm=50.0)
    cam = PerspectiveCamera.frontal(300.0, 120.0, (40, 40), dtype=torch.float64)
    xy, z = cam.project_with_depth(verts.double())
    xy = xy.detach().requires_grad_()
    frags = rasterize(xy, z.detach(), tris, (40, 40), cull_backfaces=True)
    colors = torch.rand(len(frags.pix), 3, generator=g, dtype=torch.float64, requires_grad=True)
    bg3 = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    weights = torch.rand(1, 40, 40, 3, generator=g, dtype=torch.float64)
    dense = antialias(frags.to_image(colors, bg3), frags, xy, tris)
    gd = torch.autograd.grad((dense * weights).sum(), (xy, colors))
    target, d = antialias_deltas(colors, bg3, frags, xy, tris)
    sparse = scatter_image(colors, bg3, frags.pix, frags.num_pixels, d, target).view(1, 40, 40, 3)
    gs = torch.autograd.grad((sparse * weights).sum(), (xy, colors))
    assert len(target) > 20 and torch.allclose(dense, sparse, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(gd, gs))


def test_face_normals_match_the_cross_product_on_random_triangles():
    """Counter-clockwise = front: each normal is the normalised (v1 - v0) x (v2 - v0), for
    unbatched and batched vertices, and twice the area when not normalised."""
    from faceclip.render.shading import face_normals

    g = torch.Generator().manual_seed(3)
    verts = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    tris = torch.randint(0, 30, (40, 3), generator=g)
    tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]
    e1 = verts[:, tris[:, 1]] - verts[:, tris[:, 0]]
    e2 = verts[:, tris[:, 2]] - verts[:, tris[:, 0]]
    cross = torch.linalg.cross(e1, e2, dim=-1)
    torch.testing.assert_close(face_normals(verts, tris, normalize=False), cross)
    torch.testing.assert_close(face_normals(verts[0], tris), cross[0] / cross[0].norm(dim=-1, keepdim=True))
    ccw = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(face_normals(ccw, torch.tensor([[0, 1, 2]])), torch.tensor([[0.0, 0.0, 1.0]]))
