"""Differentiable rendering (pure PyTorch): rasterizer, interpolation, soft silhouettes and SH shading."""
from deblur_rotate.render.rasterizer import (
    Fragments,
    RenderOutput,
    interpolate,
    rasterize,
    render,
    supersample_camera,
)
from deblur_rotate.render.shading import face_normals, sh_basis, sh_shade, vertex_normals

__all__ = [
    "Fragments",
    "RenderOutput",
    "interpolate",
    "rasterize",
    "render",
    "supersample_camera",
    "face_normals",
    "sh_basis",
    "sh_shade",
    "vertex_normals",
]
