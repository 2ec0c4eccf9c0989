"""The fusion network F (paper §3.5): turn a frame's W+ code to a new viewpoint.

``F(z, Δp)`` takes a frame code ``z [.., num_ws, w_dim]`` and a pose change ``Δp [.., 3]`` = (Δpitch,
Δyaw, Δroll) in radians (Δp = R_target − R_input) and returns the code of the same face seen from the
rotated viewpoint. Two variants, as the paper's ablation:

* ``FCx``  (``residual=False``): ``F(z, Δp) = MLP([z, Δp])``
* ``FCxR`` (``residual=True``):  ``F(z, Δp) = z + MLP([z, Δp])`` (the last layer starts at zero, so an
  untrained FCxR is the identity)

with x fully connected layers. The MLP acts on each W+ entry ``z_k`` (``w_dim`` values) together with
``Δp`` and a learned embedding of the entry index k, so its size does not grow with ``num_ws * w_dim``
squared (a flattened 14 x 512 code would need 7k x 7k layers); the same F is applied to every frame of a
video independently, with the same Δp.
"""
from __future__ import annotations

import torch
from torch import nn

from deblur_rotate.models.io import register
from deblur_rotate.models.stylegan2 import PRESETS, num_ws_for, stylegan2_config

__all__ = ["FusionNetwork", "fusion_config"]


def fusion_config(preset: str, arch: str = "FC3R") -> dict:
    """Constructor arguments of F for a preset (``micro``, ``tiny``, ``paper``) and an architecture name
    ``FC<x>`` or ``FC<x>R`` (x layers; R: residual)."""
    name = arch.upper()
    residual = name.endswith("R")
    digits = name[2:-1] if residual else name[2:]
    if not name.startswith("FC") or not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"fusion architecture must look like FC3 or FC3R, got {arch!r}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    g = stylegan2_config(preset, "generator")  # F's codes are the preset G's W+ codes; hidden width = w_dim
    return dict(num_ws=num_ws_for(g["img_resolution"]), w_dim=g["w_dim"], num_layers=int(digits),
                hidden=g["w_dim"], residual=residual)


@register("fusion")
class FusionNetwork(nn.Module):
    """F: (frame codes ``[..., num_ws, w_dim]``, pose change ``[..., 3]`` radians) -> rotated codes, same shape.

    ``delta_pose`` broadcasts over the leading dimensions of ``ws``: ``ws [N, T, num_ws, w_dim]`` with
    ``delta_pose [N, 3]`` applies one Δp to all T frames of each sample.
    """

    def __init__(self,
                 num_ws: int = 10,          # W+ entries of the generator
                 w_dim: int = 256,          # width of W
                 num_layers: int = 3,       # x of FCx: fully connected layers
                 hidden: int = 256,         # width of the hidden layers
                 residual: bool = True,     # FCxR (z + MLP) instead of FCx (MLP)
                 index_dim: int = 16,       # size of the learned W+-index embedding
                 ):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.config = dict(num_ws=int(num_ws), w_dim=int(w_dim), num_layers=int(num_layers), hidden=int(hidden),
                           residual=bool(residual), index_dim=int(index_dim))
        self.num_ws, self.w_dim, self.residual = int(num_ws), int(w_dim), bool(residual)
        self.index_embedding = nn.Parameter(torch.randn(num_ws, index_dim) * 0.1)  # [num_ws, index_dim]
        widths = [w_dim + 3 + index_dim] + [hidden] * (num_layers - 1) + [w_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.LeakyReLU(0.2))
        self.mlp = nn.Sequential(*layers)
        if self.residual:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        # W is far from zero-mean and unit-scale; the MLP sees (z - w_offset) / w_scale (set from the data)
        self.register_buffer("w_offset", torch.zeros(w_dim))  # [w_dim]
        self.register_buffer("w_scale", torch.ones(()))       # [] typical |z - w_offset| per entry

    @property
    def arch_name(self) -> str:
        return f"FC{self.config['num_layers']}{'R' if self.residual else ''}"

    def set_latent_statistics(self, w_offset: torch.Tensor, w_scale: float | torch.Tensor) -> None:
        """Normalisation of the input codes: mean W ``[w_dim]`` and a scalar spread."""
        self.w_offset.copy_(w_offset.detach().reshape(self.w_dim))
        self.w_scale.copy_(torch.as_tensor(w_scale, dtype=torch.float32).reshape(()))

    def forward(self, ws: torch.Tensor, delta_pose: torch.Tensor) -> torch.Tensor:
        """ws ``[..., num_ws, w_dim]``, delta_pose ``[..., 3]`` (leading dims of ws or a prefix of them)
        -> ``[..., num_ws, w_dim]``."""
        if ws.shape[-2:] != (self.num_ws, self.w_dim):
            raise ValueError(f"expected codes [..., {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if delta_pose.shape[-1] != 3:
            raise ValueError(f"expected delta_pose [..., 3] (pitch, yaw, roll), got {tuple(delta_pose.shape)}")
        lead = ws.shape[:-2]
        dp = delta_pose.reshape(*delta_pose.shape[:-1], *([1] * (len(lead) - (delta_pose.ndim - 1))), 3)
        dp = dp.to(ws.dtype).unsqueeze(-2).expand(*lead, self.num_ws, 3)          # [..., num_ws, 3]
        idx = self.index_embedding.to(ws.dtype).expand(*lead, -1, -1)             # [..., num_ws, index_dim]
        x = (ws - self.w_offset) / self.w_scale
        out = self.mlp(torch.cat([x, dp, idx], dim=-1)) * self.w_scale
        return ws + out if self.residual else out + self.w_offset
