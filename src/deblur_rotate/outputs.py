"""Writing results: view and output-folder names, PNG/GIF/MP4 encoders, the contact sheet, atomic writes into a
result folder. Shared by ``run`` (photos), ``video``, ``demo`` and ``serve``; numpy, PIL, imageio and PyAV only.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError

__all__ = ["SHEET_MIN_CELL", "check_output_folder", "contact_sheet", "encode_gif", "encode_mp4", "encode_png",
           "output_names", "sheet_order", "view_from_name", "view_name", "write_frames", "write_output"]

SHEET_MIN_CELL = 128  # contact-sheet cells are enlarged (nearest neighbour) to at least this many pixels


def _fmt(deg: float) -> str:
    return f"{deg:+g}"


def view_name(view: tuple[float, float], to_frontal: bool = False) -> str:
    """Folder-safe name of a view: ``input_view``, ``yaw+30``, ``pitch-10``, ``yaw+30_pitch-10``; with
    ``to_frontal`` ``frontal``, ``frontal_yaw+30``, ..."""
    yaw, pitch = view
    parts = ([f"yaw{_fmt(yaw)}"] if yaw != 0 else []) + ([f"pitch{_fmt(pitch)}"] if pitch != 0 else [])
    if to_frontal:
        return "_".join(["frontal", *parts])
    return "_".join(parts) or "input_view"


def output_names(paths: list[Path]) -> list[str]:
    """One output folder name per input: the file stem; inputs sharing a stem get their extension appended
    (``a_png``, ``a_jpg``), and a counter if that is not enough."""
    stems = [p.stem or p.name for p in paths]
    names = [f"{s}_{p.suffix.lstrip('.').lower()}" if stems.count(s) > 1 else s for s, p in zip(stems, paths)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k + 1}")
    return out


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [K, H, W, 3] -> looping animated GIF bytes."""
    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(buffer, np.asarray(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return buffer.getvalue()


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [K, H, W, 3] -> H.264 MP4 bytes (PyAV; odd sides are padded by one black pixel, as yuv420p
    needs even sides)."""
    import av

    frames = np.asarray(frames)
    _k, h, w = frames.shape[:3]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)))
    buffer = io.BytesIO()
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "medium"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


_NAME_PART = re.compile(r"(yaw|pitch)([+-][0-9.e+-]+)")


def view_from_name(name: str) -> tuple[float, float, bool] | None:
    """(dyaw, dpitch, to_frontal) of a :func:`view_name`; None for a label that is not one."""
    frontal = name == "frontal" or name.startswith("frontal_")
    rest = name[len("frontal"):].lstrip("_") if frontal else ("" if name == "input_view" else name)
    angles = {"yaw": 0.0, "pitch": 0.0}
    for part in filter(None, rest.split("_")):
        match = _NAME_PART.fullmatch(part)
        if match is None:
            return None
        try:
            angles[match[1]] = float(match[2])
        except ValueError:
            return None
    return angles["yaw"], angles["pitch"], frontal


def sheet_order(view_labels: list[str], input_yaw_deg: float | None = None) -> tuple[list[int], int | None]:
    """The contact sheets' one row order: views by increasing yaw (then pitch), relative to the input view;
    views relative to the frontal view (``frontal...``) are placed by ``input_yaw_deg`` (the input's estimated
    yaw; taken as 0 when unknown). Returns (row order as indices into ``view_labels``, the index of the row that
    shows the input view, or None). Labels that are no view names keep their place after the others."""
    keys = []
    for i, label in enumerate(view_labels):
        parsed = view_from_name(label)
        if parsed is None:
            keys.append((1, 0.0, 0.0, i))
            continue
        yaw, pitch, frontal = parsed
        if frontal:
            yaw -= input_yaw_deg or 0.0
        keys.append((0, yaw, pitch, i))
    order = [k[-1] for k in sorted(keys)]
    exact = [i for i, k in enumerate(keys) if k[0] == 0 and k[1] == 0 and k[2] == 0]
    if exact:
        return order, exact[0]
    if input_yaw_deg is not None:  # frontal-relative views only: mark the one nearest the input's own view
        near = [i for i, k in enumerate(keys) if k[0] == 0 and abs(k[1]) <= 5 and k[2] == 0]
        if near:
            return order, min(near, key=lambda i: abs(keys[i][1]))
    return order, None


def contact_sheet(input_image: np.ndarray, frames: np.ndarray, view_labels: list[str],
                  input_yaw_deg: float | None = None) -> bytes:
    """PNG bytes of a grid like the paper's Figure 5: one row per view, the input then frames 1..T.

    input_image: uint8 [R, R, 3]; frames: uint8 [V, T, R, R, 3]; view_labels: V row labels (:func:`view_name`s).
    Rows run by increasing yaw and the input view's row is marked (:func:`sheet_order`; ``input_yaw_deg``: the
    input's estimated yaw, which places ``frontal`` views), the same order everywhere."""
    from PIL import Image, ImageDraw

    order, marked = sheet_order(list(view_labels), input_yaw_deg)
    marked_row = None if marked is None else order.index(marked)
    view_labels = [view_labels[i] + (" = input view" if i == marked and view_labels[i] != "input_view" else "")
                   for i in order]
    frames = np.asarray(frames)[order]
    v, t, r = frames.shape[:3]
    scale = max(1, math.ceil(SHEET_MIN_CELL / r))
    cell, pad, top = r * scale, 4, 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(probe.textlength(label) for label in view_labels)) + 10
    sheet = Image.new("RGB", (left + (t + 1) * (cell + pad), top + v * (cell + pad)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(["input"] + [f"frame {j + 1}" for j in range(t)]):
        draw.text((left + c * (cell + pad) + 2, 2), label, fill=(230, 230, 230))

    def big(a):
        return Image.fromarray(a).resize((cell, cell), Image.NEAREST)

    for row in range(v):
        y = top + row * (cell + pad)
        marked_here = row == marked_row
        draw.text((4, y + cell // 2 - 6), view_labels[row], fill=(255, 210, 60) if marked_here else (230, 230, 230))
        sheet.paste(big(input_image), (left, y))
        for j in range(t):
            sheet.paste(big(frames[row, j]), (left + (j + 1) * (cell + pad), y))
        if marked_here:  # the input view's row: a yellow frame around its cells
            draw.rectangle([left - 2, y - 2, left + (t + 1) * (cell + pad) - pad + 1, y + cell + 1],
                           outline=(255, 210, 60), width=2)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_output(folder: Path, rel: str, data: bytes, written: list[str]) -> None:
    """Write ``data`` to ``folder/rel`` atomically and note ``rel`` in ``written`` (the result's file list)."""
    from deblur_rotate import files  # imports torch: only when writing (and a test may patch the writer)

    files.atomic_write_bytes(folder / rel, data)
    written.append(rel)


def write_frames(folder: Path, frames_dir: str, video: str, frames: np.ndarray, fps: float,
                  written: list[str]) -> None:
    """frames uint8 [T, H, W, 3] -> frames_dir/frame_1..T.png + video.gif + video.mp4 (paths relative)."""
    for j, frame in enumerate(frames):
        write_output(folder, f"{frames_dir}/frame_{j + 1}.png", encode_png(frame), written)
    write_output(folder, f"{video}.gif", encode_gif(frames, fps), written)
    write_output(folder, f"{video}.mp4", encode_mp4(frames, fps), written)


def check_output_folder(out: Path) -> None:
    """Create the output folder ``out``; UserError when it is a file or cannot be made."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; give a folder for -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output folder {out} ({err.strerror or err})") from None
