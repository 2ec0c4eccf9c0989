"""``deblur-rotate demo``: the main job until a trained model ships with the package.

Renders a small SynthBMFD sample (a few subjects, one performance, 8 views, one blur window) and writes
  contact_sheet.png    rows: per subject the blurry input (mean of 65 frames, m = 32) over the sharp
                       middle frame; columns: views 1..8
  blur_vs_sharp.gif    subject 1, view 4: the blurry image beside the sharp frames it averages
  demo.json            the resolved settings
  synthbmfd/           the rendered dataset itself (readable by ``SynthBMFD``)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_bytes, atomic_write_json

__all__ = ["run_demo", "contact_sheet"]

_MARKER = "demo.json"
_M = 32  # the paper's BMFD half-window: 65 frames at 112 fps


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; give a folder for -o")
    if out.is_dir() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise UserError(f"output folder {out} is not empty and was not written by the demo; "
                        "choose a new or empty folder for -o")


def contact_sheet(rows: list[np.ndarray], row_labels: list[str], col_labels: list[str], pad: int = 2) -> Image.Image:
    """Grid image from rows of uint8 images [C, H, W, 3], with text labels on the left and top."""
    h, w = rows[0].shape[1:3]
    left, top = 64, 14
    sheet = Image.new("RGB", (left + len(col_labels) * (w + pad), top + len(rows) * (h + pad)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(col_labels):
        draw.text((left + c * (w + pad) + 2, 1), label, fill=(230, 230, 230))
    for r, (row, label) in enumerate(zip(rows, row_labels)):
        y = top + r * (h + pad)
        draw.text((2, y + h // 2 - 5), label, fill=(230, 230, 230))
        for c, image in enumerate(row):
            sheet.paste(Image.fromarray(image), (left + c * (w + pad), y))
    return sheet


def run_demo(out: str | Path, subjects: int = 3, size: int = 96, seed: int = 0, progress: bool = True) -> list[Path]:
    """Render the demo into ``out``; returns the paths written."""
    from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, contact_frames, generate
    from deblur_rotate.files import to_uint8

    out = Path(out)
    _check_out(out)
    if subjects < 1:
        raise UserError(f"--subjects must be at least 1 (got {subjects})")
    started = time.time()
    config = SynthConfig(subjects=subjects, test_subjects=0, performances=1, size=size,
                         seconds=(2 * _M + 3) / 112.0, supersample=1, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / _MARKER, {"command": "demo", "m": _M, "synthbmfd": config.to_dict()})
    generate(out / "synthbmfd", config, progress=progress)

    blurry, sharp = contact_frames(out / "synthbmfd", m=_M, subjects=subjects)
    rows, labels = [], []
    for s in range(blurry.shape[0]):
        rows += [blurry[s], sharp[s]]
        labels += [f"S{s + 1} blurry", f"S{s + 1} sharp"]
    sheet = contact_sheet(rows, labels, [f"view {v}" for v in range(1, blurry.shape[1] + 1)])
    written = [out / "contact_sheet.png"]
    _save_image_atomic(sheet, written[0])

    # GIF: the blurry image (static) beside the sharp frames sweeping through its exposure window.
    ds = SynthBMFD(out / "synthbmfd", split="all", m=_M)
    center = config.num_frames // 2
    view = 4 if 4 in ds.views else ds.views[0]
    sample = ds.load("subject_000", "perf_00", view, center)
    frames = ds.load_frames("subject_000", "perf_00", view, list(range(center - _M, center + _M + 1, 4)))
    left = to_uint8(sample["blurry"])
    gif_frames = [np.concatenate([left, np.zeros((size, 4, 3), np.uint8), to_uint8(f)], 1) for f in frames]
    gif_frames = [np.array(Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST))
                  for g in gif_frames]
    written.append(out / "blur_vs_sharp.gif")
    _save_gif_atomic(gif_frames, written[-1], fps=8)
    info = json.loads((out / _MARKER).read_text())
    info["seconds"] = round(time.time() - started, 2)
    atomic_write_json(out / _MARKER, info)
    return written + [out / _MARKER]


def _save_image_atomic(image: Image.Image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _save_gif_atomic(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import io

    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(buffer, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
