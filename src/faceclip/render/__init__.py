"""Differentiable mesh rendering in pure PyTorch (CPU and CUDA).

- :mod:`~faceclip.render.camera`: :class:`PerspectiveCamera` (OpenCV convention), landmark projection.
- :mod:`~faceclip.render.rasterize`: z-buffer rasterization -> sparse :class:`Fragments`.
- :mod:`~faceclip.render.interpolate`: attribute interpolation, bilinear texture sampling.
- :mod:`~faceclip.render.antialiasing`: analytic silhouette antialiasing (edge gradients).
- :mod:`~faceclip.render.shading`: normals and 2nd-order SH Lambertian shading.
- :mod:`~faceclip.render.renderer`: :func:`render_mesh` / :class:`MeshRenderer`.
- :mod:`~faceclip.render.backend`: eager PyTorch or compiled Numba kernels on CPU
  (:func:`set_backend`, env ``FACECLIP_RENDER_BACKEND``; default ``auto``).
"""

from faceclip.render import backend
from faceclip.render.antialiasing import EdgeTopology, antialias, edge_topology
from faceclip.render.backend import get_backend, set_backend
from faceclip.render.camera import PerspectiveCamera, project_landmarks
from faceclip.render.interpolate import (
    interpolate_face_attributes,
    interpolate_uv,
    interpolate_vertex_attributes,
    sample_texture,
)
from faceclip.render.rasterize import Fragments, rasterize, rasterize_mesh, visible_triangles
from faceclip.render.renderer import MeshRenderer, RenderOutput, render_mesh
from faceclip.render.shading import (
    face_normals,
    sh_ambient,
    sh_basis,
    sh_directional,
    sh_from_deep3d,
    sh_irradiance,
    sh_shade_vertices,
    vertex_normals,
)

__all__ = [
    "EdgeTopology", "Fragments", "MeshRenderer", "PerspectiveCamera", "RenderOutput",
    "antialias", "backend", "edge_topology", "get_backend", "set_backend", "face_normals", "interpolate_face_attributes",
    "interpolate_uv", "interpolate_vertex_attributes", "project_landmarks", "rasterize",
    "rasterize_mesh", "render_mesh", "sample_texture", "sh_ambient", "sh_basis",
    "sh_directional", "sh_from_deep3d", "sh_irradiance", "sh_shade_vertices",
    "vertex_normals", "visible_triangles",
]
