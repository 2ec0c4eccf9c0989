"""A trained E_3D and the morphable model its coefficients belong to, as inference and evaluation load them.

``RUN/face3d_encoder`` (and a model folder's ``face3d_encoder``) holds the network (config.json +
model.safetensors) and ``face_model.json``: which morphable model (procedural sizes or BFM files), the camera of
the training renders and the image sizes. :func:`load_face3d` rebuilds all of it; ``train/face3d.py`` writes it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from deblur_rotate.errors import UserError

__all__ = ["FACE_MODEL_FILE", "PROCEDURAL_KEYS", "Face3DBundle", "build_face_model", "load_face3d",
           "procedural_sizes", "resize_images"]

FACE_MODEL_FILE = "face_model.json"  # beside config.json in RUN/face3d_encoder: which model, which camera
PROCEDURAL_KEYS = ("n_id", "n_exp", "n_tex", "n_lat", "n_lon", "seed")  # build_procedural_model's arguments


def procedural_sizes(sizes: dict, what: str) -> dict:
    """The procedural model's arguments as ints; UserError naming ``what`` on unknown keys or bad values."""
    unknown = sorted(set(sizes) - set(PROCEDURAL_KEYS))
    if unknown:
        raise UserError(f"{what}: unknown procedural model sizes {unknown} (known: {', '.join(PROCEDURAL_KEYS)})")
    try:
        return {k: int(v) for k, v in sizes.items()}
    except (TypeError, ValueError):
        raise UserError(f"{what}: procedural model sizes must be integers (got {sizes})") from None


def build_face_model(spec: dict):
    """The :class:`deblur_rotate.face3d.model.MorphableModel` of a spec from ``train.face3d.face_model_spec`` (CPU).
    The procedural model is cached on disk after its first build; BFM files are read again."""
    kind = spec.get("kind")
    if kind == "procedural":
        from deblur_rotate.face3d.procedural import build_procedural_model

        sizes = procedural_sizes({k: v for k, v in spec.items() if k != "kind"}, "procedural model")
        try:
            return build_procedural_model(**sizes)
        except ValueError as err:
            raise UserError(f"procedural model {sizes}: {err}") from None
    if kind == "bfm":
        from deblur_rotate.face3d.bfm import load_bfm

        return load_bfm(spec["path"], spec.get("expression_path"), spec.get("landmarks_path"), n_id=spec.get("n_id"),
                        n_tex=spec.get("n_tex"), n_exp=spec.get("n_exp"))
    raise UserError(f"unknown morphable model kind {kind!r} (expected procedural or bfm)")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, S, S] -> [N, 3, size, size] (area when shrinking, bilinear when growing; unchanged when S == size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    import torch.nn.functional as F

    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class Face3DBundle:
    """A trained E_3D with what it needs to be rendered (see :func:`load_face3d`)."""

    encoder: torch.nn.Module  # FaceCoefficientEncoder, eval mode
    face_model: torch.nn.Module  # MorphableModel its coefficients belong to
    camera_matrix: torch.Tensor  # [3, 3] intrinsics of the training renders (pixels at image_size)
    image_size: int  # side of the training renders and landmarks, pixels
    input_size: int  # side of the images the encoder was trained on, pixels

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Coefficients [N, C] (float32) of face crops [N, 3, S, S] in [-1, 1] (any S: resized to input_size)."""
        return self.encoder(resize_images(images, self.input_size)).float()


def load_face3d(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Face3DBundle:
    """Load ``RUN/face3d_encoder`` (config.json + model.safetensors + face_model.json) for the pipeline
    and evaluation. UserError when a file is missing or does not fit."""
    from deblur_rotate.models.io import load_pretrained

    folder = Path(folder)
    encoder = load_pretrained("encoders.face3d", folder, device)
    path = folder / FACE_MODEL_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no {FACE_MODEL_FILE} (written by `deblur-rotate train face3d`); it names the "
                        "morphable model and camera the encoder was trained with") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    face_model = build_face_model(info["face_model"]).to(device)
    if face_model.layout != encoder.layout:
        raise UserError(f"{folder}: the encoder predicts {encoder.layout} but {FACE_MODEL_FILE} names a model with "
                        f"{face_model.layout}")
    return Face3DBundle(encoder=encoder, face_model=face_model,
                        camera_matrix=torch.tensor(info["camera_matrix"], dtype=torch.float32, device=device),
                        image_size=int(info["image_size"]), input_size=int(info["input_size"]))
