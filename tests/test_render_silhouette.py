"""Silhouette gradients: antialiasing coverage, finite differences, mask fitting."""

from __future__ import annotations

import torch

from faceclip.render import PerspectiveCamera, antialias, edge_topology, rasterize, render_mesh
from faceclip.render.synthetic import grid_mesh, uv_sphere


def _square_alpha(xy: torch.Tensor, size: tuple[int, int] = (24, 24)) -> torch.Tensor:
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    z = torch.full(xy.shape[:2], 10.0, dtype=xy.dtype)
    frags = rasterize(xy, z, tris, size)
    ones = frags.to_image(torch.ones(len(frags.pix), 1, dtype=xy.dtype))
    return antialias(ones, frags, xy, tris)[..., 0]


def test_edge_topology_of_a_grid() -> None:
    _, tris, _ = grid_mesh(3)
    nb = edge_topology(tris).neighbor
    assert (nb < 0).sum() == 12  # boundary edges of a 3x3 grid
    for f, k in (nb >= 0).nonzero().tolist():
        other = int(nb[f, k])
        edge = {int(tris[f, k]), int(tris[f, (k + 1) % 3])}
        assert other != f and edge <= set(tris[other].tolist())
        assert f in nb[other].tolist()


def test_antialiased_coverage_equals_area_of_a_subpixel_shifted_square() -> None:
    for shift in (0.0, 0.3, 0.77):
        corners = torch.tensor([[5.0, 6.0], [5.0, 17.0], [16.0, 17.0], [16.0, 6.0]]) + shift
        alpha = _square_alpha(corners.unsqueeze(0))
        assert abs(float(alpha.sum()) - 121.0) < 0.6  # corners are approximate
        if shift:  # edges off the pixel boundaries: partial pixels along the 4 edges
            assert ((alpha > 0) & (alpha < 1)).sum() >= 40


def test_silhouette_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(1, 24, 24, generator=g, dtype=torch.float64)
    base = torch.tensor([[[4.3, 5.2], [6.1, 18.6], [19.4, 17.7], [17.8, 4.9]]], dtype=torch.float64)

    def loss(xy: torch.Tensor) -> torch.Tensor:
        return (_square_alpha(xy) * weights).sum()

    xy = base.clone().requires_grad_()
    loss(xy).backward()
    h = 0.02
    for v in range(4):
        for c in range(2):
            d = torch.zeros_like(base)
            d[0, v, c] = h
            fd = (loss(base + d) - loss(base - d)) / (2 * h)
            assert abs(float(fd) - float(xy.grad[0, v, c])) < 0.05 * max(1.0, abs(float(fd))), (v, c)
    assert xy.grad.abs().sum() > 1.0


def test_silhouette_of_a_tessellated_sphere_is_antialiased() -> None:
    verts, tris, _ = uv_sphere(40, 80, radius_mm=60.0)
    cam = PerspectiveCamera.frontal(400.0, 150.0, (64, 64))
    out = render_mesh(verts, tris, cam)
    r_px = 150.0 * 60.0 / (400.0**2 - 60.0**2) ** 0.5  # silhouette radius, ~22.8 px
    partial = ((out.alpha > 0.02) & (out.alpha < 0.98)).sum()
    assert partial > 0.6 * 2 * 3.1416 * r_px  # most rim pixels are blended
    assert abs(float(out.alpha.sum()) - 3.1416 * r_px**2) < 0.01 * 3.1416 * r_px**2


def test_square_mesh_fits_a_target_mask() -> None:
    cam = PerspectiveCamera.frontal(200.0, 200.0, (32, 32))
    target_verts, tris, _ = grid_mesh(1, size_mm=14.0)
    target = render_mesh(target_verts * torch.tensor([1.0, 1.2, 1.0]) + torch.tensor([2.5, -1.5, 0.0]),
                         tris, cam, antialiased=False).alpha.detach()
    verts = target_verts.clone().requires_grad_()
    opt = torch.optim.Adam([verts], lr=0.3)
    for _ in range(80):
        opt.zero_grad()
        alpha = render_mesh(verts, tris, cam).alpha
        loss = ((alpha - target) ** 2).mean()
        loss.backward()
        opt.step()
    final = render_mesh(verts.detach(), tris, cam, antialiased=False).mask.float()
    iou = (final * target).sum() / ((final + target) > 0).float().sum()
    assert iou > 0.95
    start = render_mesh(target_verts, tris, cam, antialiased=False).mask.float()
    assert (start * target).sum() / ((start + target) > 0).float().sum() < 0.8


def test_colour_loss_gradient_reaches_vertices_and_colors() -> None:
    verts, tris, _ = uv_sphere(16, 32, radius_mm=40.0)
    verts = verts.clone().requires_grad_()
    colors = torch.rand_like(verts).requires_grad_()
    cam = PerspectiveCamera.frontal(300.0, 300.0, (48, 48))
    out = render_mesh(verts, tris, cam, vertex_colors=colors, background=0.5)
    out.image.square().mean().backward()
    assert verts.grad.abs().sum() > 0 and colors.grad.abs().sum() > 0
    assert torch.isfinite(verts.grad).all()
