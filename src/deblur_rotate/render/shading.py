"""Normals and 9-band spherical-harmonics (SH) lighting, per RGB channel.

Lighting coefficients ``gamma`` are ``[N, 27]``: 9 SH coefficients for red, then green, then blue.
The SH basis is evaluated on unit normals in the camera frame, with the Lambertian convolution factors
folded in (Ramamoorthi & Hanrahan 2001), so ``irradiance = sum_k gamma_k * Y_k(n)``:

    Y_0 = pi * c0                       c0 = 1 / sqrt(4 pi)
    Y_1..3 = (2 pi / 3) * c1 * (x, y, z)  c1 = sqrt(3 / (4 pi))
    Y_4..8 = (pi / 4) * (c2 xy, c2 yz, c3 (3 z^2 - 1), c2 xz, c4 (x^2 - y^2))
             c2 = sqrt(15 / (4 pi)), c3 = sqrt(5 / (16 pi)), c4 = sqrt(15 / (16 pi))

Camera frame is OpenCV (x right, y down, z forward): a surface facing the camera has normal ~(0, 0, -1),
so a negative gamma_3 lights the face from the camera's side.
"""
from __future__ import annotations

import math

import torch

__all__ = ["vertex_normals", "face_normals", "sh_basis", "sh_shade"]

_C0 = 1.0 / math.sqrt(4 * math.pi)
_C1 = math.sqrt(3.0 / (4 * math.pi))
_C2 = math.sqrt(15.0 / (4 * math.pi))
_C3 = math.sqrt(5.0 / (16 * math.pi))
_C4 = math.sqrt(15.0 / (16 * math.pi))
_A0, _A1, _A2 = math.pi, 2 * math.pi / 3, math.pi / 4


def face_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unnormalised (area-weighted) triangle normals ``[N, F, 3]``: cross(v1 - v0, v2 - v0).

    vertices ``[N, V, 3]``, triangles ``[F, 3]``.
    """
    v0, v1, v2 = (vertices[:, triangles[:, k]] for k in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals ``[N, V, 3]``: area-weighted mean of the adjacent triangle normals."""
    normals_f = face_normals(vertices, triangles)  # [N, F, 3]
    normals_v = torch.zeros_like(vertices)
    for k in range(3):
        normals_v = normals_v.index_add(1, triangles[:, k], normals_f)
    return torch.nn.functional.normalize(normals_v, dim=-1, eps=1e-8)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Lambertian-convolved SH basis ``[..., 9]`` of unit normals ``[..., 3]``."""
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, _A0 * _C0),
        _A1 * _C1 * x, _A1 * _C1 * y, _A1 * _C1 * z,
        _A2 * _C2 * x * y, _A2 * _C2 * y * z, _A2 * _C3 * (3 * z * z - 1), _A2 * _C2 * x * z,
        _A2 * _C4 * (x * x - y * y),
    ], -1)


def sh_shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor, ambient: float = 0.8) -> torch.Tensor:
    """Lambertian SH shading.

    albedo ``[N, P, 3]`` in [0, 1], unit normals ``[N, P, 3]``, gamma ``[N, 27]`` -> colour ``[N, P, 3]``
    (not clamped). ``ambient`` is added to each channel's DC coefficient, so gamma = 0 gives a uniform
    light of irradiance ``ambient * pi * c0`` (about 0.71 for the default 0.8).
    """
    if gamma.shape[-1] != 27:
        raise ValueError(f"lighting must have 27 coefficients (9 SH x RGB), got {gamma.shape[-1]}")
    gamma = gamma.reshape(gamma.shape[0], 3, 9)  # [N, RGB, 9]
    gamma = gamma + torch.tensor([ambient] + [0.0] * 8, device=gamma.device, dtype=gamma.dtype)
    basis = sh_basis(normals)  # [N, P, 9]
    irradiance = torch.einsum("npk,nck->npc", basis, gamma)  # [N, P, 3]
    return albedo * irradiance


def rotate_sh_lighting(gamma: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Express world-frame SH lighting in a rotated frame.

    gamma ``[N, 27]`` lights normals given in the world frame; ``rotation [N, 3, 3]`` maps world to camera
    (``n_cam = R @ n_world``). Returns ``[N, 27]`` such that shading camera-frame normals with it equals
    shading the world-frame normals with ``gamma``. Exact: bands 0-2 are closed under rotation; the
    per-band matrices are found by least squares on fixed sample directions. The ambient term
    (:func:`sh_shade`'s ``ambient``) is rotation invariant and needs nothing.
    """
    generator = torch.Generator().manual_seed(0)
    normals_cam = torch.nn.functional.normalize(torch.randn(64, 3, generator=generator, dtype=torch.float64), dim=-1)
    rotation = rotation.to(torch.float64)
    basis_cam = sh_basis(normals_cam)  # [S, 9]
    normals_world = torch.einsum("nji,sj->nsi", rotation, normals_cam)  # R^T n_cam, [N, S, 3]
    basis_world = sh_basis(normals_world)  # [N, S, 9]
    # basis_cam @ M = basis_world  =>  gamma_cam = M @ gamma_world for each colour channel
    mapping = torch.linalg.lstsq(basis_cam.expand(rotation.shape[0], -1, -1), basis_world).solution  # [N, 9, 9]
    gamma_rgb = gamma.to(torch.float64).reshape(-1, 3, 9)
    rotated = torch.einsum("nij,ncj->nci", mapping, gamma_rgb)
    return rotated.reshape(-1, 27).to(gamma.dtype)
