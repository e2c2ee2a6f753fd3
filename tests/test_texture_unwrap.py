"""The UV texture unwrap: the compiled texel pass against the PyTorch path, on synthetic photos."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from faceclip.render import PerspectiveCamera, backend

if not backend.numba_available():
    pytest.skip("numba not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def generator(ict_head):
    from faceclip.evaluate.synthetic import SyntheticFaceGenerator

    return SyntheticFaceGenerator(ict_head, seed=11)


def _inputs(gen, index: int, size: int = 512):
    """A synthetic photo with its true camera, geometry and light, and a flat grey albedo."""
    s = gen.sample(index)
    cam = s.cameras[size]
    f = float(cam["focal_px"])
    camera = PerspectiveCamera.create(torch.tensor(cam["R"], dtype=torch.float32)[None],
                                      torch.tensor(cam["t_mm"], dtype=torch.float32)[None],
                                      torch.tensor([[f, f]]), (size, size),
                                      principal_point_px=torch.tensor(cam["principal_point_px"],
                                                                      dtype=torch.float32)[None])
    verts = torch.from_numpy(s.vertices_mm).float()
    albedo = torch.full_like(verts, 0.5)
    params = SimpleNamespace(sh=torch.tensor(s.params.sh, dtype=torch.float32)[None])
    return s, camera, verts, albedo, params


@pytest.mark.parametrize("index,delight", [(0, False), (3, True), (5, False)])
def test_compiled_unwrap_matches_the_torch_path(generator, ict_head, index, delight):
    from faceclip.fit.texture import unwrap_texture

    s, camera, verts, albedo, params = _inputs(generator, index)
    old = backend.get_backend()
    try:
        out = {}
        for name in ("torch", "numba"):
            backend.set_backend(name)
            out[name] = unwrap_texture(ict_head, verts, albedo, params, camera, s.images[512], size_px=256,
                                       delight=delight)
    finally:
        backend.set_backend(old)
    (tex_t, frac_t), (tex_n, frac_n) = out["torch"], out["numba"]
    assert tex_t.shape == tex_n.shape == (256, 256, 3) and tex_n.dtype == np.uint8
    diff = np.abs(tex_t.astype(int) - tex_n.astype(int))
    # float32 against float64 arithmetic: a rounding step here and there.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert abs(frac_t - frac_n) < 1e-3
    assert 0.2 < frac_n <= 1.0  # the photo covers much of the face
    assert tex_n.std() > 5  # not one flat colour


@pytest.mark.parametrize("backend_name", ["torch", "numba"])
def test_unwrap_takes_the_photo_where_seen_and_the_albedo_elsewhere(generator, ict_head, backend_name):
    """A photo of one flat colour: fully seen texels take it exactly, unseen ones the lit albedo."""
    from faceclip.fit.texture import uv_raster, unwrap_texture

    s, camera, verts, albedo, params = _inputs(generator, 0)
    photo = np.full_like(s.images[512], 200)
    old = backend.get_backend()
    backend.set_backend(backend_name)
    try:
        tex, frac = unwrap_texture(ict_head, verts, torch.full_like(verts, 0.1), params, camera, photo,
                                   size_px=128)
    finally:
        backend.set_backend(old)
    raster = uv_raster(ict_head, 128)
    face = np.zeros(128 * 128, bool)
    face[raster.frag.pix.numpy()[raster.face_texel.numpy()]] = True
    flat = tex.reshape(-1, 3)
    assert frac > 0.3
    photo_texels = (flat == 200).all(1)
    assert photo_texels[face].mean() > 0.25  # seen straight on: the photo's colour exactly
    dark = (flat < 60).all(1)  # albedo 0.1 under the scene's light: far darker than the photo
    assert dark[~face].mean() > 0.3  # the back of the head is never seen
    assert not (photo_texels & dark).any()
