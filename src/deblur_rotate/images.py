"""Reading images the one way every part of the project does (photos at inference, dataset frames in training):
any PIL format and mode to uint8 RGB ``[H, W, 3]``, EXIF-upright, alpha over black (the training background),
16-bit and float scaled to 8 bits; and the file-listing conventions (which suffixes are images, natural order).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError

__all__ = ["IMAGE_EXTS", "MIN_IMAGE_SIDE", "as_rgb8", "grey_like", "is_grey", "natural_key", "read_image"]

# suffixes read as images (GIF: its first frame), by photo listing and dataset readers alike
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})
MIN_IMAGE_SIDE = 16  # pixels; smaller photos cannot hold a usable face


def natural_key(path: Path) -> list:
    """Sort key of a path: digit runs compared as numbers (frame_2 before frame_10), letters without case, the
    whole path (files of one folder stay together when a listing spans several)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _to_rgb8(img) -> np.ndarray:
    """A PIL image of any mode -> uint8 RGB [H, W, 3] (16-bit and float scaled, alpha over black)."""

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "F" and np.nanmax(arr, initial=0.0) <= 1.0:
            arr = arr * 255.0
        elif mode == "I" and np.nanmax(arr, initial=0.0) > 255:
            arr = arr * (255.0 / 65535.0) if np.nanmax(arr) <= 65535 else arr * (255.0 / np.nanmax(arr))
        grey = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode not in ("RGB", "RGBA", "LA", "La", "RGBa", "PA"):
        img = img.convert("RGB")
    if img.mode != "RGB":
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # composite over black (the training background)
        return rgb.round().clip(0, 255).astype(np.uint8)
    out = np.array(img, dtype=np.uint8)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2)


def is_grey(rgb: np.ndarray, tolerance: int = 3) -> bool:
    """Whether uint8 RGB ``rgb`` [H, W, 3] is a grey-scale picture: R, G and B within ``tolerance`` levels of each
    other in 99.5 % of the pixels (a grey JPEG stored as colour carries a little chroma noise)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.size == 0:
        return a.ndim == 2
    step = max(1, int(math.sqrt(a.shape[0] * a.shape[1] / 250_000)))  # about 250k pixels suffice
    x = a[::step, ::step].astype(np.int16)
    spread = np.maximum(np.abs(x[..., 0] - x[..., 1]), np.abs(x[..., 1] - x[..., 2]))
    return bool((spread <= tolerance).mean() >= 0.995)


def grey_like(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` colour -> the same shape in grey (ITU-R 601 luma in all three channels)."""
    a = np.asarray(frames, dtype=np.float32)
    luma = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """An image array as uint8 RGB ``[H, W, 3]``: grey ``[H, W]`` / ``[H, W, 1]``, grey + alpha ``[H, W, 2]`` and
    RGBA ``[H, W, 4]`` (alpha over black, the training background) are converted; float arrays in [0, 1] and
    16-bit arrays are scaled to 8 bits. For arrays that did not come through :func:`read_image` (web uploads)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise UserError(f"expected an image array [H, W] or [H, W, 1..4], got shape {tuple(a.shape)}")
    if a.dtype == np.uint16:
        a = a.astype(np.float32) / 257.0
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32)) * (255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0)
    a = np.clip(a.astype(np.float32), 0, 255)
    if a.shape[2] in (2, 4):
        a = a[..., :-1] * (a[..., -1:] / 255.0)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(np.round(a).astype(np.uint8))


def read_image(path: str | os.PathLike, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Read a photo or a dataset frame (jpg, png, webp, bmp, tiff, ...; grey, palette, RGBA, 16-bit) as a
    writable uint8 RGB ``[H, W, 3]``, turned upright by its EXIF orientation. UserError naming the file when it
    is missing, corrupt, truncated, or smaller than ``min_side`` pixels a side (photos: MIN_IMAGE_SIDE)."""
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for damaged files
        reason = str(err) or type(err).__name__
        raise UserError(f"{path}: not a readable image ({reason})") from None
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        raise UserError(f"{path}: image is {w}x{h} pixels, too small to hold a face (at least {min_side} "
                        "pixels a side)")
    return rgb
