"""``deblur-rotate demo``: the main job in one command.

With a model (the one bundled in ``deblur_rotate/assets/model/``, or ``--model FOLDER``) it takes the built-in
blurry examples (``deblur_rotate/assets/examples/``: rendered by SynthBMFD from held-out subjects, with their
5 sharp ground-truth frames) and writes, per example::

  example_K/frames/<view>/frame_1..5.png, <view>.gif, <view>.mp4   views yaw -30, input view, yaw +30
  example_K/contact_sheet.png                                      input, then frames x views
and at the top ``contact_sheet.png`` (all examples), ``demo.json`` (settings, PSNR figures, seconds), and it
prints the same-view PSNR of the 5 frames (better of the two time orders) next to the blurry input's PSNR
against the same ground truth.

Without any model (an install without the bundled one) it falls back to :func:`run_render_demo`: a small
SynthBMFD sample rendered on the spot (blurry inputs over sharp frames, for all 8 views).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_bytes, atomic_write_json

__all__ = ["DEMO_VIEWS", "contact_sheet", "load_examples", "run_demo", "run_model_demo", "run_render_demo",
           "verify_checksums", "write_examples"]

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
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top = max(64, int(max(probe.textlength(label) for label in row_labels)) + 8), 14
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


def run_render_demo(out: str | Path, subjects: int = 3, size: int = 96, seed: int = 0,
                    progress: bool = True) -> list[Path]:
    """The model-free demo: render a small SynthBMFD sample into ``out``; returns the paths written."""
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


# ------------------------------------------------------------------------------------------------ model demo

DEMO_VIEWS = ((-30.0, 0.0), (0.0, 0.0), (30.0, 0.0))  # (dyaw, dpitch) degrees, relative to the input view
CHECKSUMS = "checksums.json"


def examples_dir() -> Path:
    """The built-in blurry examples shipped with the package."""
    return Path(__file__).resolve().parent / "assets" / "examples"


def write_examples(data_root: str | Path, out: str | Path, count: int = 4, m: int = _M, seed: int = 0,
                   views: tuple[int, ...] = (4, 5)) -> list[Path]:
    """Pick ``count`` blurry samples of SynthBMFD's test split (near-frontal ``views``, the most blurred of a
    random pool) and write each as ``out/example_K/{blurry.png, sharp_1..5.png, example.json}``."""
    import torch

    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.evaluate.metrics import psnr
    from deblur_rotate.files import save_png, to_uint8

    ds = SynthBMFD(data_root, split="test", m=m, views=list(views))
    rng = np.random.default_rng(seed)
    pool = rng.choice(len(ds), size=min(len(ds), 16 * count), replace=False)
    scored = []
    for i in pool:
        s = ds[int(i)]
        scored.append((float(psnr(s["blurry"][None].expand(5, -1, -1, -1), s["targets"]).mean()), int(i)))
    chosen, subjects = [], set()
    for _, i in sorted(scored):  # most blurred first, one per subject while possible
        subject = ds.items[i][0]
        if subject not in subjects or len(subjects) >= len({ds.items[j][0] for _, j in scored}):
            chosen.append(i)
            subjects.add(subject)
        if len(chosen) == count:
            break
    out = Path(out)
    written = []
    for k, i in enumerate(chosen, 1):
        s = ds[i]
        folder = out / f"example_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        save_png(folder / "blurry.png", to_uint8(s["blurry"]))
        for j in range(5):
            save_png(folder / f"sharp_{j + 1}.png", to_uint8(s["targets"][j]))
        pose = torch.rad2deg(s["pose"]).tolist()
        atomic_write_json(folder / "example.json", {
            "source": "SynthBMFD test split (held-out subject)", "subject": s["subject"],
            "performance": s["performance"], "view": int(s["view"]), "center": int(s["center"]), "m": m,
            "pose_deg": {"pitch": pose[0], "yaw": pose[1], "roll": pose[2]}})
        written.append(folder)
    return written


def load_examples(folder: str | Path) -> list[dict]:
    """Examples written by :func:`write_examples`: ``[{name, blurry [3, R, R], sharp [5, 3, R, R], meta}]``."""
    import torch

    from deblur_rotate.files import from_uint8, load_png

    folder = Path(folder)
    found = sorted(p for p in folder.glob("example_*") if p.is_dir())
    if not found:
        raise UserError(f"no demo examples in {folder} (expected example_K/blurry.png + sharp_1..5.png); "
                        "reinstall deblur-rotate or give --examples")
    out = []
    for p in found:
        try:
            blurry = from_uint8(load_png(p / "blurry.png"))
            sharp = torch.stack([from_uint8(load_png(p / f"sharp_{j}.png")) for j in range(1, 6)])
            meta = json.loads((p / "example.json").read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"demo example {p} is damaged ({err}); reinstall deblur-rotate") from None
        out.append({"name": p.name, "blurry": blurry, "sharp": sharp, "meta": meta})
    return out


def verify_checksums(folder: str | Path) -> None:
    """Check every file listed in ``folder/checksums.json`` ({relative path: sha256}); UserError saying
    the install is damaged (and how to reinstall) on a missing or changed file."""
    import hashlib

    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        return
    expected = json.loads(listing.read_text())
    for rel, digest in expected.items():
        path = folder / rel
        ok = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest
        if not ok:
            raise UserError(f"the bundled model is damaged: {path} is {'changed' if path.is_file() else 'missing'} "
                            "(its checksum is in checksums.json / MODEL_CARD.md); reinstall deblur-rotate "
                            "(pip install --force-reinstall --no-deps -e .) or pass --model FOLDER")


def run_model_demo(out: str | Path, model: str | Path | None = None, examples: str | Path | None = None,
                   device: str | None = "cpu", fps: float = 8.0, refine_steps: int | None = None,
                   refine_residual: bool | None = None) -> dict:
    """The demo on a trained model (default: the bundled one); returns the summary written to demo.json.
    ``refine_steps``: blur-consistency refinement steps (None: the model's default, 0: off); ``refine_residual``:
    the refinement's residual on the input view (None: the model's default)."""
    import torch

    from deblur_rotate.evaluate.metrics import psnr, video_metric
    from deblur_rotate.files import to_uint8
    from deblur_rotate.outputs import contact_sheet as view_sheet
    from deblur_rotate.outputs import encode_png, view_name, write_frames, write_output
    from deblur_rotate.pipeline import DeblurRotatePipeline, bundled_model_dir

    started = time.time()
    out = Path(out)
    _check_out(out)
    if model is None:
        verify_checksums(bundled_model_dir())
    pipe = DeblurRotatePipeline.from_pretrained(model, device=device)
    pipe.refine = pipe.refine_settings(refine_steps, refine_residual)  # None: the model's default
    items = load_examples(examples or examples_dir())
    views = list(DEMO_VIEWS) if pipe.can_rotate else [(0.0, 0.0)]
    names = [view_name(v) for v in views]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / _MARKER, {"command": "demo", "model": str(model or bundled_model_dir())})
    blurry = torch.stack([it["blurry"] for it in items])                 # [N, 3, R, R]
    sharp = torch.stack([it["sharp"] for it in items])                   # [N, 5, 3, R, R]
    if blurry.shape[-1] != pipe.resolution:
        blurry = torch.nn.functional.interpolate(blurry, size=pipe.resolution, mode="area")
        sharp = torch.nn.functional.interpolate(sharp.flatten(0, 1), size=pipe.resolution,
                                                mode="area").unflatten(0, sharp.shape[:2])
    result = pipe(blurry, views=views)
    frames = result.frames.clamp(-1, 1).cpu()                            # [N, V, T, 3, R, R]
    same = frames[:, names.index("input_view")]                           # [N, T, 3, R, R]
    # the frames as written (8-bit), scored against the ground truth with the better time order
    same_8bit = torch.from_numpy(to_uint8(same.flatten(0, 1))).permute(0, 3, 1, 2).float() / 127.5 - 1
    ours = video_metric(psnr, same_8bit.reshape_as(same), sharp).per_frame.mean(1)         # [N]
    base = psnr(blurry[:, None].expand_as(sharp), sharp).mean(1)                           # [N]
    r = pipe.resolution
    summary = {"model": str(model or bundled_model_dir()), "views": names, "refine": pipe.refine.to_json(),
               "examples": []}
    rows = []
    for n, it in enumerate(items):
        folder = out / it["name"]
        written: list[str] = []
        video = to_uint8(frames[n].flatten(0, 1)).reshape(len(views), -1, r, r, 3)          # [V, T, R, R, 3]
        for v, name in enumerate(names):
            write_frames(folder, f"frames/{name}", name, video[v], fps, written)
        write_output(folder, "input.png", encode_png(to_uint8(blurry[n])), written)
        write_output(folder, "contact_sheet.png", view_sheet(to_uint8(blurry[n]), video, names), written)
        rows.append(video)
        entry = {"name": it["name"], "same_view_psnr_db": round(float(ours[n]), 3),
                 "blurry_psnr_db": round(float(base[n]), 3), "source": it["meta"]}
        summary["examples"].append(entry)
        print(f"{it['name']}: same-view PSNR {entry['same_view_psnr_db']:.2f} dB "
              f"(blurry input {entry['blurry_psnr_db']:.2f} dB) -> {folder}")
    sheet = np.concatenate([np.concatenate([to_uint8(blurry[n])[None], rows[n][v]], 0)
                            for n in range(len(items)) for v in range(len(views))], 0)
    labels = [f"{it['name']} {name}" for it in items for name in names]
    grid = contact_sheet([sheet[i * 6:(i + 1) * 6] for i in range(len(labels))], labels,
                         ["blurry"] + [f"frame {j}" for j in range(1, 6)])
    _save_image_atomic(grid, out / "contact_sheet.png")
    summary["mean_same_view_psnr_db"] = round(float(ours.mean()), 3)
    summary["mean_blurry_psnr_db"] = round(float(base.mean()), 3)
    summary["seconds"] = round(time.time() - started, 2)
    atomic_write_json(out / _MARKER, {"command": "demo", **summary})
    print(f"mean same-view PSNR {summary['mean_same_view_psnr_db']:.2f} dB vs blurry input "
          f"{summary['mean_blurry_psnr_db']:.2f} dB over {len(items)} examples; views {', '.join(names)}; "
          f"{summary['seconds']:.1f} s; contact sheet {out / 'contact_sheet.png'}")
    return summary


def run_demo(out: str | Path, model: str | Path | None = None, examples: str | Path | None = None,
             device: str | None = "cpu", refine_steps: int | None = None, refine_residual: bool | None = None,
             **render_kwargs) -> list[Path]:
    """The demo: on the given or bundled model; without any model, the render-only fallback."""
    from deblur_rotate.pipeline import PIPELINE_FILE, bundled_model_dir

    if model is None and not (bundled_model_dir() / PIPELINE_FILE).is_file():
        print("no trained model is bundled with this install: showing the training data instead "
              "(give --model FOLDER to run a model you trained)")
        return run_render_demo(out, **render_kwargs)
    run_model_demo(out, model=model, examples=examples, device=device, refine_steps=refine_steps,
                   refine_residual=refine_residual)
    return [Path(out) / "contact_sheet.png", Path(out) / _MARKER]
