"""The compiled (Numba) CPU backend against the PyTorch reference path."""

from __future__ import annotations

import math

import pytest
import torch

from faceclip.render import (
    MeshRenderer,
    PerspectiveCamera,
    backend,
    interpolate_vertex_attributes,
    rasterize,
    render_mesh,
    sh_directional,
    vertex_normals,
)
from faceclip.render.shading import sh_irradiance_quadratic
from faceclip.render.synthetic import uv_sphere

if not backend.numba_available():
    pytest.skip("numba not installed", allow_module_level=True)

from faceclip.render import _numba_ops  # noqa: E402


@pytest.fixture()
def restore_backend():
    old = backend.get_backend()
    yield
    backend.set_backend(old)


def _both(fn):
    """fn() under the torch backend, then under the numba backend."""
    out = {}
    for name in ("torch", "numba"):
        backend.set_backend(name)
        out[name] = fn()
    return out["torch"], out["numba"]


def _random_scene(seed: int, B: int = 3, F: int = 60, H: int = 41, W: int = 57):
    """Overlapping random triangles of all sizes (some far beyond the image, some behind the
    near plane, some degenerate), distinct per image."""
    g = torch.Generator().manual_seed(seed)
    V = 3 * F
    xy = torch.rand(B, V, 2, generator=g) * torch.tensor([W * 1.4, H * 1.4]) - torch.tensor([W * 0.2, H * 0.2])
    big = torch.rand(B, V, generator=g) < 0.05  # huge triangles
    xy = torch.where(big.unsqueeze(-1), xy * 40 - 20 * torch.tensor([W, H]), xy)
    z = 2.0 + 20 * torch.rand(B, V, generator=g)
    z[:, 5] = 0.5  # behind the near plane
    tris = torch.arange(V).view(F, 3)
    xy[:, 9] = xy[:, 10]  # a degenerate triangle
    return xy, z, tris, (H, W)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cull", [False, True])
def test_fragments_identical_to_torch(seed: int, cull: bool, restore_backend) -> None:
    xy, z, tris, size = _random_scene(seed)
    ft, fn = _both(lambda: rasterize(xy, z, tris, size, cull_backfaces=cull))
    assert ft.pix.numel() > 100
    assert torch.equal(ft.pix, fn.pix) and torch.equal(ft.face, fn.face)
    assert torch.equal(ft.batch_index, fn.batch_index)
    assert all(torch.equal(a, b) for a, b in zip(ft.pixel_rows_cols(), fn.pixel_rows_cols()))
    assert torch.equal(ft._cache["orient"], fn._cache["orient"])
    torch.testing.assert_close(fn.bary, ft.bary, atol=2e-4, rtol=0)
    torch.testing.assert_close(fn.depth, ft.depth, rtol=1e-4, atol=1e-4)  # numba: float64 inside


def test_fragments_identical_on_a_dense_mesh(restore_backend) -> None:
    verts, tris, _ = uv_sphere(40, 80, radius_mm=60.0)
    cams = PerspectiveCamera.create(torch.eye(3).expand(2, 3, 3) * torch.tensor([1.0, -1.0, -1.0]),
                                    torch.tensor([[0.0, 0.0, 250.0], [5.0, -3.0, 300.0]]), 230.0, (70, 90))
    xy, z = cams.project_with_depth(verts)
    ft, fn = _both(lambda: rasterize(xy, z, tris, (70, 90), cull_backfaces=True))
    assert torch.equal(ft.pix, fn.pix) and torch.equal(ft.face, fn.face)


def test_gradcheck_numba_barycentrics() -> None:
    xy, z, tris, size = _random_scene(1, B=2, F=6, H=12, W=14)
    frags = rasterize(xy, z, tris, size)
    b = frags.batch_index
    vid = frags.corner_vertices(tris, z.shape[1])
    seg = _numba_ops.segments(b, 2)
    xy64 = xy.double().requires_grad_()
    z64 = z.double().requires_grad_()

    def fn(xy_, z_):
        bary, depth = _numba_ops.PerspectiveBarycentrics.apply(xy_, z_, vid, frags.pix, seg, size)
        return bary, depth

    assert torch.autograd.gradcheck(fn, (xy64, z64), eps=1e-6, atol=1e-5)


def _vertex_ids(g: torch.Generator, M: int, seg: torch.Tensor, shared: bool) -> torch.Tensor:
    """(3, N) random rows of an (M, C) attribute for the fragments of segments ``seg`` (S+1,).

    A batch-shared attribute may be read by every segment. A per-image one obeys the kernels'
    contract, as the rasterizer's fragments do: each segment (image) reads its own rows only, here
    the S consecutive blocks of ``M // S`` rows. (Random rows shared by the segments of a
    non-shared attribute race in the parallel backward and make gradcheck flaky.)
    """
    N, S = int(seg[-1]), seg.shape[0] - 1
    if shared:
        return torch.randint(0, M, (3, N), generator=g)
    per = M // S
    image = torch.repeat_interleave(torch.arange(S), seg.diff())
    return image * per + torch.randint(0, per, (3, N), generator=g)


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_numba_interpolation(shared: bool) -> None:
    g = torch.Generator().manual_seed(0)
    M, N, C = 7, 15, 3
    attr = torch.rand(M, C, generator=g, dtype=torch.float64, requires_grad=True)
    bary = torch.rand(N, 3, generator=g, dtype=torch.float64, requires_grad=True)
    seg = torch.tensor([0, 6, 15])
    vid = _vertex_ids(g, M, seg, shared)
    assert torch.autograd.gradcheck(lambda a, b: _numba_ops.interpolate(a, b, vid, seg, shared), (attr, bary))


def test_gradcheck_numba_normals_and_sh() -> None:
    verts, tris, _ = uv_sphere(4, 6, radius_mm=1.0)
    g = torch.Generator().manual_seed(0)
    v = (verts.double().unsqueeze(0).repeat(2, 1, 1) + 0.05 * torch.randn(2, *verts.shape, generator=g,
                                                                           dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _numba_ops.VertexNormals.apply(x, tris), (v,))
    n = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_numba_ops.QuadraticSH.apply, (n, w))


def test_normals_sh_and_interpolation_match_torch(restore_backend) -> None:
    verts, tris, _ = uv_sphere(20, 40, radius_mm=50.0)
    g = torch.Generator().manual_seed(3)
    v0 = verts.unsqueeze(0).repeat(2, 1, 1) + torch.randn(2, *verts.shape, generator=g)
    w0 = torch.randn(2, 10, 3, generator=g)
    cam = PerspectiveCamera.frontal(300.0, 250.0, (48, 64), batch_size=2)

    def run():
        v = v0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        n = vertex_normals(v, tris)
        irr = sh_irradiance_quadratic(n, w)
        xy, z = cam.project_with_depth(v)
        frags = rasterize(xy, z, tris, (48, 64), cull_backfaces=True)
        shared = interpolate_vertex_attributes(verts[:, :2] / 50, frags, tris)
        out = interpolate_vertex_attributes(irr, frags, tris)
        loss = (out ** 2).sum() + (shared * out[:, :2]).sum() + frags.depth.sum() * 1e-3
        loss.backward()
        return n.detach(), irr.detach(), out.detach(), v.grad, w.grad

    ref, got = _both(run)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("antialiased", [True, False])
def test_render_mesh_matches_torch(antialiased: bool, restore_backend) -> None:
    verts, tris, _ = uv_sphere(24, 48, radius_mm=60.0)
    d = verts / verts.norm(dim=1, keepdim=True)
    verts = verts * (1.0 + 0.25 * d[:, 2].clamp(min=0) ** 4).unsqueeze(1)  # self-occluding bump
    colors = 0.5 + 0.4 * torch.sin(verts / 11.0)
    a = math.radians(30.0)
    yaw = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    R = torch.stack([torch.diag(torch.tensor([1.0, -1.0, -1.0])),
                     torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ yaw])
    cam = PerspectiveCamera.create(R, torch.tensor([[0.0, 0.0, 320.0], [8.0, -4.0, 350.0]]), 260.0, (64, 80))
    sh = sh_directional((0.3, 0.5, 1.0), batch_size=2)
    renderer = MeshRenderer(tris, antialiased=antialiased)
    target = torch.rand(2, 64, 80, 3, generator=torch.Generator().manual_seed(0))

    def run():
        v = verts.unsqueeze(0).repeat(2, 1, 1).requires_grad_()
        c = colors.clone().requires_grad_()
        out = renderer(v, cam, vertex_colors=c, sh_coeffs=sh)
        (((out.image - target) ** 2).sum() + out.alpha.sum()).backward()
        return out.image.detach(), out.alpha.detach(), out.mask, v.grad, c.grad

    ref, got = _both(run)
    assert torch.equal(ref[2], got[2])
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-4)
    scale_v, scale_c = ref[3].abs().max(), ref[4].abs().max()
    torch.testing.assert_close(got[3] / scale_v, ref[3] / scale_v, rtol=0, atol=1e-4)
    torch.testing.assert_close(got[4] / scale_c, ref[4] / scale_c, rtol=0, atol=1e-4)


def test_backend_switch(restore_backend) -> None:
    with pytest.raises(ValueError):
        backend.set_backend("cuda")
    backend.set_backend("torch")
    assert not backend.use_numba(torch.zeros(1))
    backend.set_backend("auto")
    assert backend.use_numba(torch.zeros(1))
    assert not backend.use_numba(torch.zeros(1, dtype=torch.float16))
    assert render_mesh is not None


def test_gradcheck_numba_projection_and_match_torch(restore_backend) -> None:
    g = torch.Generator().manual_seed(0)
    B, V = 2, 5
    R = torch.linalg.qr(torch.randn(B, 3, 3, generator=g, dtype=torch.float64))[0].requires_grad_()
    t = (torch.randn(B, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.0, 20.0])).requires_grad_()
    f = (200 + torch.rand(B, 2, generator=g, dtype=torch.float64)).requires_grad_()
    c = (50 * torch.rand(B, 2, generator=g, dtype=torch.float64)).requires_grad_()
    for Bp in (1, B):
        p = torch.randn(Bp, V, 3, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(_numba_ops.Project.apply, (p, R, t, f, c))
    cam = PerspectiveCamera(R=R.detach().float(), t=t.detach().float(), fx=f[:, 0].detach().float(),
                            fy=f[:, 1].detach().float(), cx=c[:, 0].detach().float(), cy=c[:, 1].detach().float(),
                            image_size=(64, 64))
    pts = torch.randn(V, 3, generator=g)
    ref, got = _both(lambda: cam.project_with_depth(pts))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shared_a, shared_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gradcheck_numba_interpolation_product(shared_a: bool, shared_b: bool) -> None:
    g = torch.Generator().manual_seed(1)
    M, N, C = 7, 15, 3
    a = torch.rand(M, C, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(M, C, generator=g, dtype=torch.float64, requires_grad=True)
    bary = torch.rand(N, 3, generator=g, dtype=torch.float64, requires_grad=True)
    seg = torch.tensor([0, 6, 15])
    va, vb = _vertex_ids(g, M, seg, shared_a), _vertex_ids(g, M, seg, shared_b)

    def fn(a_, b_, bary_):
        return _numba_ops.InterpolateProduct.apply(a_, b_, bary_, va, vb, seg, shared_a, shared_b)

    assert torch.autograd.gradcheck(fn, (a, b, bary))


def test_gradcheck_numba_composite_and_match_torch(restore_backend) -> None:
    """The fused antialiased composite: gradients wrt values, background and vertices, and the
    same image / gradients as the PyTorch scatter + blend deltas."""
    from faceclip.render.antialiasing import composite, edge_pairs, edge_topology

    verts, tris, _ = uv_sphere(5, 8, radius_mm=10.0)
    cam = PerspectiveCamera.frontal(60.0, 40.0, (13, 15), batch_size=2)
    xy, z = cam.project_with_depth(verts.unsqueeze(0).repeat(2, 1, 1))
    xy = xy + 0.3 * torch.randn(xy.shape, generator=torch.Generator().manual_seed(0))
    frags = rasterize(xy, z, tris, (13, 15), cull_backfaces=True)
    pairs = edge_pairs(frags, xy, tris, edge_topology(tris).neighbor)
    assert pairs is not None and pairs.p_in.numel() > 10
    g = torch.Generator().manual_seed(1)
    vals = torch.rand(frags.pix.shape[0], 3, generator=g, dtype=torch.float64, requires_grad=True)
    bg = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64, requires_grad=True)
    xy64 = xy.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, b, p: composite(v, b, frags, p, pairs), (vals, bg, xy64))

    target = torch.rand(2, 13, 15, 3, generator=g, dtype=torch.float64)

    def run():
        v, b, p = (x.detach().clone().requires_grad_() for x in (vals, bg, xy64))
        img = composite(v, b, frags, p, pairs)
        ((img - target) ** 2).sum().backward()
        return img.detach(), v.grad, b.grad, p.grad

    for a, b in zip(*_both(run)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_numba_vertex_irradiance_and_match_torch(shared: bool, restore_backend) -> None:
    """Fused normals + SH irradiance: gradients wrt vertices and weights, same as the two ops."""
    from faceclip.render.shading import vertex_irradiance

    verts, tris, _ = uv_sphere(4, 6, radius_mm=1.0)
    g = torch.Generator().manual_seed(2)
    v = (verts.double().unsqueeze(0).repeat(1 if shared else 2, 1, 1)
         + 0.05 * torch.randn(1 if shared else 2, *verts.shape, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: _numba_ops.VertexIrradiance.apply(x, tris, y, None), (v, w))
    used = (torch.rand(2 * verts.shape[0], generator=g) < 0.5).to(torch.uint8)
    assert torch.autograd.gradcheck(lambda x, y: _numba_ops.VertexIrradiance.apply(x, tris, y, used), (v, w))
    full = _numba_ops.VertexIrradiance.apply(v, tris, w, None).detach().reshape(-1, 3)
    part = _numba_ops.VertexIrradiance.apply(v, tris, w, used).detach().reshape(-1, 3)
    assert torch.equal(part[used.bool()], full[used.bool()]) and not part[~used.bool()].any()
    target = torch.randn(2, verts.shape[0], 3, generator=g, dtype=torch.float64)

    def run():
        vv, ww = v.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        out = vertex_irradiance(vv, tris, ww)
        ((out - target) ** 2).sum().backward()
        return out.detach(), vv.grad, ww.grad

    for a, b in zip(*_both(run)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
