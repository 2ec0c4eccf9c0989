"""The sample helpers every reader shares (torch + numpy, no I/O): deterministic seeds, square crop-and-resize
with its landmark map, the mirrored sample, stacking views of one instant, and a collate function that batches
samples of any reader. The sample structure is :mod:`deblur_rotate.data.readers`'s."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deblur_rotate.data.blur import mirror_images, mirror_landmarks, mirror_pose, mirror_view
from deblur_rotate.files import from_uint8

__all__ = ["apply_affine", "collate_samples", "mirror_sample", "seed_from", "square_resize", "stack_samples"]


def seed_from(*values: int) -> int:
    """A 63-bit seed from integers (order matters)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------- geometry

def square_resize(frames: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Centre-crop frames to a square and resize to ``size``.

    frames: uint8 ``[T, H, W, 3]`` or float ``[T, 3, H, W]`` in [-1, 1]. Returns (float ``[T, 3, size, size]``
    in [-1, 1], the 2 x 3 affine map from source pixels to output pixels, for landmarks). Shrinking is
    antialiased (bilinear with antialias), so the mean of frames commutes with it.
    """
    x = from_uint8(frames) if isinstance(frames, np.ndarray) else frames
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if side != h or side != w:
        x = x[..., top:top + side, left:left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    s = size / side
    # pixel centres at integers: u' = (u - left + 0.5) * s - 0.5
    affine = np.array([[s, 0.0, (0.5 - left) * s - 0.5], [0.0, s, (0.5 - top) * s - 0.5]])
    return x.clamp(-1, 1), affine


def apply_affine(affine: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """``points [..., 2]`` mapped by the 2 x 3 ``affine`` (e.g. :func:`square_resize`'s), float32."""
    p = np.asarray(points, dtype=np.float64)
    return torch.from_numpy((p @ affine[:, :2].T + affine[:, 2]).astype(np.float32))


# ------------------------------------------------------------------------------------------ sample helpers

def mirror_sample(sample: dict) -> dict:
    """The horizontally mirrored sample: images flipped, landmarks flipped and renumbered, pose
    (pitch, -yaw, -roll), rig view v -> 9 - v (0 stays 0), coeffs dropped (None: a mirrored 3DMM fit is not a
    sign flip), ``mirrored`` toggled. Pure: the input is not modified."""
    out = dict(sample)
    width = sample["blurry"].shape[-1]
    out["blurry"] = mirror_images(sample["blurry"])
    out["targets"] = mirror_images(sample["targets"])
    out["landmarks"] = mirror_landmarks(sample["landmarks"], width)
    out["target_landmarks"] = mirror_landmarks(sample["target_landmarks"], width)
    out["pose"] = mirror_pose(sample["pose"])
    view = sample.get("view", 0)
    out["view"] = mirror_view(view) if isinstance(view, int) and 1 <= view <= 8 else view
    out["coeffs"] = None
    if sample.get("skin") is not None:
        out["skin"] = mirror_images(sample["skin"])
    out["mirrored"] = not sample.get("mirrored", False)
    return out


def stack_samples(samples: Sequence[dict]) -> dict:
    """Several samples of the same instant (views, or a sample and its mirror) -> one dict whose tensors
    gain a leading [len(samples)] axis; ``view`` becomes an int64 tensor, ``mirrored`` a bool tensor;
    None-valued keys stay None unless all are tensors; other values come from the first sample."""
    out = {}
    for key, value in samples[0].items():
        values = [s.get(key) for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        elif key in ("view", "mirrored"):
            out[key] = torch.tensor(values)
        elif any(v is None for v in values):
            out[key] = None
        else:
            out[key] = value
    return out


def collate_samples(samples: Sequence[dict]) -> dict:
    """Batch samples from any readers (a DataLoader ``collate_fn``): tensors of equal shape are stacked,
    ints/bools/floats become tensors, anything else (str, None, tensors of unequal shape, keys absent from
    some samples) becomes a list with None where missing."""
    keys = list(dict.fromkeys(k for s in samples for k in s))
    out = {}
    for key in keys:
        values = [s.get(key) for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        elif all(isinstance(v, (bool, int, float)) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
