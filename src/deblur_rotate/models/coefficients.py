"""The layout of a 3DMM coefficient vector: what E_3D predicts and the morphable model renders.

``[alpha (n_id) | beta (n_tex) | delta (n_exp) | gamma (27) | R (3) | t (3)]``: identity shape, albedo,
expression, 9-band spherical-harmonics lighting per RGB channel, pose (pitch, yaw, roll) in radians and
translation (docs/DESIGN.md). Here, below both the encoders (``models.encoders``) and the face models
(``face3d.model``), so that neither imports the other for it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["CoeffLayout", "NUM_SH_COEFFS"]

NUM_SH_COEFFS = 27  # 9 SH bands x RGB


@dataclass(frozen=True)
class CoeffLayout:
    """Sizes of the coefficient groups; slices into the flat coefficient vector."""

    n_id: int  # identity (shape) modes
    n_tex: int  # albedo modes
    n_exp: int  # expression modes

    @property
    def size(self) -> int:
        """Total length of the coefficient vector."""
        return self.n_id + self.n_tex + self.n_exp + NUM_SH_COEFFS + 6

    def slices(self) -> dict[str, slice]:
        """Named slices: id, tex, exp, light, rotation, translation."""
        sizes = [("id", self.n_id), ("tex", self.n_tex), ("exp", self.n_exp), ("light", NUM_SH_COEFFS),
                 ("rotation", 3), ("translation", 3)]
        out, start = {}, 0
        for name, size in sizes:
            out[name] = slice(start, start + size)
            start += size
        return out

    def split(self, coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., size]`` -> dict of ``[..., group size]`` views."""
        if coeffs.shape[-1] != self.size:
            raise ValueError(f"coefficient vector has {coeffs.shape[-1]} entries, layout expects {self.size} "
                             f"({self.n_id} id + {self.n_tex} tex + {self.n_exp} exp + 27 light + 3 R + 3 t)")
        return {name: coeffs[..., s] for name, s in self.slices().items()}

    def join(self, id, tex, exp, light, rotation, translation) -> torch.Tensor:  # noqa: A002
        """Inverse of :meth:`split`; every argument ``[..., group size]``."""
        return torch.cat([id, tex, exp, light, rotation, translation], -1)

    def to_dict(self) -> dict:
        return asdict(self)
