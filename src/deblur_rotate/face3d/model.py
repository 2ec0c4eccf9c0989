"""The linear morphable face model shared by the procedural model, the BFM loader and the renderer.

Coefficient vector layout (docs/DESIGN.md): ``[alpha (n_id) | beta (n_tex) | delta (n_exp) | gamma (27) |
R (3) | t (3)]``: identity shape, albedo, expression, 9-band spherical-harmonics lighting per RGB channel
(9 x 3, channel-major: gamma[0:9] red, gamma[9:18] green, gamma[18:27] blue), pose (pitch, yaw, roll)
in radians and translation in the model's length unit (centimetres for our models).

Shapes are in the model frame (see :mod:`deblur_rotate.render.camera`); ``forward`` returns vertices in
the camera frame.
"""
from __future__ import annotations

import torch
from torch import nn

from deblur_rotate.models.coefficients import NUM_SH_COEFFS, CoeffLayout
from deblur_rotate.render.camera import euler_to_matrix, transform
from deblur_rotate.render.shading import sh_shade, vertex_normals

__all__ = ["CoeffLayout", "MorphableModel", "NUM_SH_COEFFS"]  # the layout is models.coefficients'


def _apply_basis(basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """basis ``[V, 3, K]`` x coeffs ``[N, K]`` -> ``[N, V, 3]`` as one matrix product."""
    num_vertices, _, k = basis.shape
    return (coeffs @ basis.reshape(num_vertices * 3, k).T).reshape(-1, num_vertices, 3)


class MorphableModel(nn.Module):
    """Linear 3D morphable face model with spherical-harmonics lighting.

    shape(alpha, delta) = mean_shape + id_basis @ alpha + exp_basis @ delta
    albedo(beta)        = mean_albedo + albedo_basis @ beta          (RGB in [0, 1])

    Every basis has its standard deviation folded in, so coefficients are ~N(0, 1) for plausible faces.
    Everything is a registered buffer, so ``.to(device)`` moves the whole model.
    """

    def __init__(
        self,
        mean_shape: torch.Tensor,  # [V, 3] model-frame vertex positions (cm)
        id_basis: torch.Tensor,  # [V, 3, n_id] identity displacement per unit coefficient
        exp_basis: torch.Tensor,  # [V, 3, n_exp] expression displacement per unit coefficient
        mean_albedo: torch.Tensor,  # [V, 3] RGB in [0, 1]
        albedo_basis: torch.Tensor,  # [V, 3, n_tex] albedo change per unit coefficient
        triangles: torch.Tensor,  # [F, 3] int64 vertex indices, counter-clockwise seen from outside
        landmark_indices: torch.Tensor,  # [68] int64 vertex indices in iBUG 300-W order
        name: str = "morphable-model",  # shown in reports and configs
        ambient: float = 0.8,  # added to the DC SH coefficient so zero lighting coefficients light the face
    ):
        super().__init__()
        num_vertices = mean_shape.shape[0]
        if mean_shape.shape != (num_vertices, 3):
            raise ValueError(f"mean_shape must be [V, 3], got {tuple(mean_shape.shape)}")
        for label, basis in (("id_basis", id_basis), ("exp_basis", exp_basis), ("albedo_basis", albedo_basis)):
            if basis.dim() != 3 or basis.shape[:2] != (num_vertices, 3):
                raise ValueError(f"{label} must be [V={num_vertices}, 3, K], got {tuple(basis.shape)}")
        if mean_albedo.shape != (num_vertices, 3):
            raise ValueError(f"mean_albedo must be [V, 3], got {tuple(mean_albedo.shape)}")
        if triangles.dim() != 2 or triangles.shape[1] != 3:
            raise ValueError(f"triangles must be [F, 3], got {tuple(triangles.shape)}")
        if int(triangles.min()) < 0 or int(triangles.max()) >= num_vertices:
            raise ValueError("triangles index vertices outside the mesh")
        if landmark_indices.shape != (68,):
            raise ValueError(f"landmark_indices must hold 68 vertex indices, got {tuple(landmark_indices.shape)}")
        self.name = name
        self.ambient = float(ambient)
        self.layout = CoeffLayout(id_basis.shape[2], albedo_basis.shape[2], exp_basis.shape[2])
        self.register_buffer("mean_shape", mean_shape.float().contiguous())
        self.register_buffer("id_basis", id_basis.float().contiguous())
        self.register_buffer("exp_basis", exp_basis.float().contiguous())
        self.register_buffer("mean_albedo", mean_albedo.float().contiguous())
        self.register_buffer("albedo_basis", albedo_basis.float().contiguous())
        self.register_buffer("triangles", triangles.long().contiguous())
        self.register_buffer("landmark_indices", landmark_indices.long().contiguous())

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_coeffs(self) -> int:
        return self.layout.size

    def shape(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
        """Model-frame vertices ``[N, V, 3]`` from ``id_coeffs [N, n_id]`` and ``exp_coeffs [N, n_exp]``."""
        offset = _apply_basis(self.id_basis, id_coeffs) + _apply_basis(self.exp_basis, exp_coeffs)
        return self.mean_shape + offset

    def albedo(self, tex_coeffs: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo ``[N, V, 3]`` (RGB, clamped to [0, 1]) from ``tex_coeffs [N, n_tex]``."""
        albedo = self.mean_albedo + _apply_basis(self.albedo_basis, tex_coeffs)
        return albedo.clamp(0.0, 1.0)

    def forward(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coeffs ``[N, layout.size]`` -> (camera-frame vertices ``[N, V, 3]``, lit vertex colours
        ``[N, V, 3]`` in [0, 1])."""
        parts = self.layout.split(coeffs)
        model_vertices = self.shape(parts["id"], parts["exp"])
        rotation = euler_to_matrix(parts["rotation"])
        vertices = transform(model_vertices, rotation, parts["translation"])
        # Lighting is expressed in the camera frame, so normals are taken after the rotation.
        normals = vertex_normals(vertices, self.triangles)
        colors = sh_shade(self.albedo(parts["tex"]), normals, parts["light"], ambient=self.ambient)
        return vertices, colors.clamp(0.0, 1.0)

    def forward_views(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward` for ``coeffs [V, F, C]``: F frames seen by V cameras, where every view of
        a frame has the same identity, albedo and expression (only lighting and pose differ). Shape,
        normals and albedo are computed once per frame and rotated into each view, so it costs about
        1/V of ``forward`` on the flattened batch. Returns ``[V * F, Vtx, 3]`` twice (view-major)."""
        num_views, num_frames = coeffs.shape[:2]
        parts = self.layout.split(coeffs)
        shape = self.shape(parts["id"][0], parts["exp"][0])  # [F, Vtx, 3], model frame
        normals = vertex_normals(shape, self.triangles)  # [F, Vtx, 3]
        albedo = self.albedo(parts["tex"][0])  # [F, Vtx, 3]
        rotation = euler_to_matrix(parts["rotation"])  # [V, F, 3, 3]
        vertices = shape @ rotation.transpose(-1, -2) + parts["translation"].unsqueeze(-2)  # [V, F, Vtx, 3]
        normals = normals @ rotation.transpose(-1, -2)
        flat = num_views * num_frames
        colors = sh_shade(albedo.expand(num_views, -1, -1, -1).reshape(flat, -1, 3), normals.reshape(flat, -1, 3),
                          parts["light"].reshape(flat, -1), ambient=self.ambient)
        return vertices.reshape(flat, -1, 3), colors.clamp(0.0, 1.0)

    def landmarks_3d(self, vertices: torch.Tensor) -> torch.Tensor:
        """The 68 landmark vertices ``[N, 68, 3]`` of ``vertices [N, V, 3]``."""
        return vertices[:, self.landmark_indices]

    def config(self) -> dict:
        """Sizes and name, for reports and run configs."""
        return {"name": self.name, "num_vertices": self.num_vertices, "num_triangles": int(self.triangles.shape[0]),
                **self.layout.to_dict()}
