"""``deblur-rotate run``: deblur and rotate the faces of photos with a trained model, and write the results.

For each input image ``PATH`` the results go to ``OUT/<stem>/`` (written in a hidden sibling folder and
renamed into place when complete, so a folder is never half-written)::

    input.png                       the aligned face crop the networks saw (R x R)
    frames/<view>/frame_1..T.png    the sharp frames of each view
    <view>.gif, <view>.mp4          each view as a video (--fps)
    sweep.gif, sweep.mp4            --sweep: an orbit of views, time running back and forth
    contact_sheet.png               rows: views by increasing yaw, the input view's row framed in yellow;
                                    columns: the input, then frames 1..T (the paper's Figure 5)
    pose.json                       --save-pose: E_3D's head pose (degrees and radians)
    latents.npz                     --save-latents: codes [T, num_ws, w_dim], view_codes [V, T, num_ws, w_dim],
                                    views [V, 2] (dyaw, dpitch degrees), pose [3] radians
    pasted/frame_1..T.png, pasted.gif, pasted.mp4   --paste-back: the same-view frames in the photo
    result.json                     what was done: faces (boxes, detector scores, poses), views, files, the
                                    detections dropped as non-faces (``dropped_detections``, with the reason)

A photo with several faces (and no --only-center-face) gets one sub-folder per face, ``face_1`` (the
largest), ``face_2``, ... each holding the per-face files above; ``pasted/`` and ``result.json`` stay at
``OUT/<stem>/``. View folders are named ``input_view`` (0, 0), ``yaw+30``, ``pitch-10``, ``yaw+30_pitch-10``;
with --to-frontal the angles are relative to the frontal view and the names start with ``frontal``.

``OUT/summary.json`` lists the inputs done (with the detections dropped as non-faces) and the ones that failed
with the reason, ``model_warnings`` (said once per run, also on stderr: a model trained on synthetic faces only,
views outside those it was trained on) and ``warnings``: faces cut by the image edge (the crop fills the missing
part in by mirroring the photo, so that part of the result is made up) and animated images (only the first
frame is used). It is rewritten when a run starts
(``"complete": false``), after each input, and at the end (``"complete": true``), so it always describes the
latest run. A damaged image, an image without a face, a too-small image or an ``OUT/<stem>`` that is a file
fail that input only: the run goes on and exits with status 1. Problems with the whole run (no inputs,
``-o`` is a file, an unusable model folder, a request the model cannot do) are a one-line ``error: ...``
with status 2. A run that starts removes the hidden ``.NAME.partial-<pid>`` folders left in ``OUT`` by
killed runs (their process no longer exists). Names that are not valid UTF-8 are printed with the
undecodable bytes shown as U+FFFD (summary.json keeps them as surrogate escapes).

Inputs are resolved and deduplicated (a file reached twice, by a symlink, a folder and a glob, is done once;
``**`` globs walk each real folder once, so symlink loops are not followed). A full disk stops the run at the
first input it hits with ``error: no space left on OUT`` (status 2): that input's staging folder is removed, the
later inputs are not started. A grey-scale photo is fed as RGB and its results are written in grey.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError
from deblur_rotate.input_files import list_inputs
from deblur_rotate.outputs import (
    check_output_folder,
    contact_sheet,
    encode_gif,
    encode_mp4,
    encode_png,
    output_names,
    view_name,
    write_frames,
    write_output,
)

__all__ = [
    "RunOptions",
    "add_arguments",
    "clean_stale_partials",
    "list_inputs",
    "process_input",
    "run_command",
    "shown",
    "views_from_angles",
]

SUMMARY = "summary.json"
EDGE_WARNING = 0.02  # warn when more than this share of a face lies outside the photo (filled by mirroring)
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")  # process_input's staging folders
MAX_VIEWS = 64


# --------------------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``deblur-rotate run``."""
    p.add_argument("-i", "--input", nargs="+", required=True, metavar="PATH",
                   help="image file(s), folder(s) of images, or glob pattern(s) such as 'photos/*.jpg'")
    p.add_argument("-o", "--out", "--output", dest="output", required=True, type=Path, metavar="OUT",
                   help="output folder; results go to OUT/<image stem>/")
    p.add_argument("--model", type=Path, default=None, metavar="FOLDER",
                   help="model folder (pipeline.json + one sub-folder per network); default: the bundled model")
    p.add_argument("--yaw", type=float, nargs="+", default=[0.0, -30.0, 30.0], metavar="DEG",
                   help="view changes in yaw, degrees (+ turns the nose to the image's left; default 0 -30 30)")
    p.add_argument("--pitch", type=float, nargs="+", default=[0.0], metavar="DEG",
                   help="view changes in pitch, degrees (default 0); every yaw is combined with every pitch")
    p.add_argument("--to-frontal", action="store_true",
                   help="angles are relative to the frontal view (the face looking into the camera), not the input")
    p.add_argument("--sweep", type=float, nargs="?", const=45.0, default=None, metavar="DEG",
                   help="also write an orbit video: yaw 0 -> +DEG -> -DEG -> 0 (default 45)")
    p.add_argument("--sweep-steps", type=int, default=36, help="views in the orbit (default 36)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="sharp frames per view (default: the model's, 5); other counts interpolate the codes")
    p.add_argument("--fps", type=float, default=None,
                   help="photos: frame rate of the GIF/MP4 videos (default 10); video input: the input frame rate "
                        "(needed for a folder of frames, which --fps makes one video; overrides a file's)")
    p.add_argument("--aligned", action="store_true",
                   help="inputs already are aligned face crops: no detection, just resize")
    p.add_argument("--only-center-face", action="store_true",
                   help="only the face nearest the image centre (default: every face found)")
    p.add_argument("--paste-back", action="store_true",
                   help="also paste the sharp same-view frames back into the original photo")
    p.add_argument("--save-pose", action="store_true", help="write pose.json (E_3D's head pose)")
    p.add_argument("--save-latents", action="store_true", help="write latents.npz (the W+ codes)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    from deblur_rotate.refine import add_refine_argument

    add_refine_argument(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from deblur_rotate.video import add_video_arguments  # video input (issue 14): --factor, --save-frames, ...

    add_video_arguments(p)


@dataclass
class RunOptions:
    """Resolved settings of one ``run`` (what :func:`process_input` needs)."""

    views: list[tuple[float, float]]          # [(dyaw_deg, dpitch_deg)] in order
    to_frontal: bool = False                  # views relative to the frontal pose
    num_frames: int | None = None             # frames per view (None: the model's T)
    fps: float = 10.0                         # video frame rate
    sweep: float | None = None                # orbit amplitude in degrees, None: no sweep
    sweep_steps: int = 36                     # views in the orbit
    aligned: bool = False                     # inputs are aligned crops
    only_center_face: bool = False            # keep the face nearest the centre only
    paste_back: bool = False                  # write pasted/ frames
    save_pose: bool = False                   # write pose.json
    save_latents: bool = False                # write latents.npz


def views_from_angles(yaws: list[float], pitches: list[float]) -> list[tuple[float, float]]:
    """Every (yaw, pitch) combination, pitch-major, duplicates removed; UserError on unusable angles."""
    for a in [*yaws, *pitches]:
        if not math.isfinite(a) or abs(a) > 180:
            raise UserError(f"view angles must be finite degrees in [-180, 180] (got {a})")
    views = list(dict.fromkeys((float(y), float(p)) for p in pitches for y in yaws))
    if len(views) > MAX_VIEWS:
        raise UserError(f"{len(views)} views asked for (--yaw x --pitch); at most {MAX_VIEWS}")
    return views


def _options(args) -> RunOptions:
    fps = 10.0 if args.fps is None else args.fps  # None: not given (video input then reads the file's rate)
    if not (fps > 0 and math.isfinite(fps)) or fps > 240:
        raise UserError(f"--fps must be in (0, 240] (got {fps})")
    if args.num_frames is not None and not 1 <= args.num_frames <= 256:
        raise UserError(f"--num-frames must be between 1 and 256 (got {args.num_frames})")
    if args.sweep is not None and not 0 < args.sweep <= 180:
        raise UserError(f"--sweep amplitude must be in (0, 180] degrees (got {args.sweep})")
    if not 2 <= args.sweep_steps <= 720:
        raise UserError(f"--sweep-steps must be between 2 and 720 (got {args.sweep_steps})")
    if args.paste_back and args.aligned:
        raise UserError("--paste-back puts the faces back into the original photo, but with --aligned the input "
                        "already is the face crop; drop one of the two")
    return RunOptions(views=views_from_angles(args.yaw, args.pitch), to_frontal=args.to_frontal,
                      num_frames=args.num_frames, fps=fps, sweep=args.sweep, sweep_steps=args.sweep_steps,
                      aligned=args.aligned, only_center_face=args.only_center_face, paste_back=args.paste_back,
                      save_pose=args.save_pose, save_latents=args.save_latents)


# --------------------------------------------------------------------------------------------------- printing


def shown(text: str) -> str:
    """``text`` (a path or message, maybe holding undecodable file-name bytes as surrogate escapes) as
    printable text: each undecodable byte becomes U+FFFD."""
    try:
        return os.fsencode(text).decode(sys.getfilesystemencoding(), "replace")
    except UnicodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "replace").decode("utf-8")


def _say(text: str, file=None) -> None:
    """``print`` that cannot fail on a name: :func:`shown`, then ``?`` for what the stream's encoding lacks."""
    file = sys.stdout if file is None else file
    text = shown(text)
    encoding = getattr(file, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeError:
        text = text.encode(encoding, "replace").decode(encoding)
    except LookupError:
        text = text.encode("ascii", "replace").decode("ascii")
    print(text, file=file)


# ----------------------------------------------------------------------------------------------- one input


def process_input(path: Path, dest: Path, pipe, options: RunOptions, finder=None) -> dict:
    """Run one image through the pipeline and write its results to ``dest`` (replaced when complete).

    Returns the record written to ``dest/result.json``. UserError for problems of this input (unreadable,
    too small, no face, ``dest`` is a file)."""
    import torch

    from deblur_rotate.faces import prepare_image
    from deblur_rotate.files import replace_dir, to_uint8
    from deblur_rotate.images import grey_like, is_grey, read_image
    from deblur_rotate.pipeline import sweep_views

    if dest.exists() and not dest.is_dir():
        raise UserError(f"{path}: its output path {dest} is a file; move it away or choose another -o")
    photo = read_image(path)
    warnings: list[dict] = []
    frames_in_file = _frame_count(path)
    if frames_in_file > 1:
        warnings.append({"warning": f"animated image of {frames_in_file} frames: only the first frame was used"})
    dropped: list[dict] = []
    faces = prepare_image(photo, pipe.resolution, crop=pipe.crop, aligned=options.aligned,
                          only_center_face=options.only_center_face, finder=finder, name=str(path), dropped=dropped)
    # a grey photo is fed as RGB (R = G = B); the model, which only saw colour faces, invents colours (a blue or
    # purple cast), so what it makes of a grey photo is written in grey too
    grey = is_grey(photo)
    batch = torch.stack([f.tensor() for f in faces])                                  # [F, 3, R, R]
    result = pipe(batch, views=options.views, num_frames=options.num_frames, to_frontal=options.to_frontal)
    frames = to_uint8(result.frames.flatten(0, 2)).reshape(*result.frames.shape[:3], *faces[0].image.shape)
    frames = grey_like(frames) if grey else frames
    names = [view_name(v, options.to_frontal) for v in result.views]
    sweep = None
    if options.sweep is not None:
        orbit = sweep_views(options.sweep_steps, options.sweep)
        sweep = to_uint8(pipe.sweep(result.codes, result.pose, orbit, options.to_frontal).flatten(0, 1))
        sweep = sweep.reshape(len(faces), len(orbit), *faces[0].image.shape)         # [F, K, R, R, 3]
        sweep = grey_like(sweep) if grey else sweep

    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    written: list[str] = []
    record: dict = {"input": str(path), "image_size": [int(photo.shape[1]), int(photo.shape[0])],
                    "views": [{"name": n, "dyaw_deg": v[0], "dpitch_deg": v[1]} for n, v in zip(names, result.views)],
                    "to_frontal": options.to_frontal, "num_frames": int(result.frames.shape[2]),
                    "refine": pipe.refine.to_json(), "faces": [], "dropped_detections": dropped}
    if grey:
        record["grey_input"] = True  # the frames were written in grey, as the photo is
    try:
        for k, face in enumerate(faces):
            sub = "" if len(faces) == 1 else f"face_{k + 1}/"
            face_sweep = None if sweep is None else sweep[k]
            record["faces"].append(_write_face(stage, sub, k, face, frames[k], names, face_sweep, result, pipe,
                                               options, written, warnings))
        if options.paste_back:
            _write_pasted(stage, photo, faces, frames, result, pipe, options, grey, written)
        record["files"] = sorted(written)
        record["warnings"] = warnings
        write_output(stage, "result.json", (json.dumps(record, indent=2) + "\n").encode(), written)
        replace_dir(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return record


def _write_face(stage: Path, sub: str, k: int, face, face_frames: np.ndarray, names: list[str],
                face_sweep: np.ndarray | None, result, pipe, options: RunOptions, written: list[str],
                warnings: list[dict]) -> dict:
    """Write face ``k``'s files into ``stage/sub`` (input, frames per view ``face_frames [V, T, R, R, 3]`` uint8,
    sweep, contact sheet, pose, latents); returns its ``result.json`` entry and appends its warnings."""
    write_output(stage, f"{sub}input.png", encode_png(face.image), written)
    for v, name in enumerate(names):
        write_frames(stage, f"{sub}frames/{name}", f"{sub}{name}", face_frames[v], options.fps, written)
    if face_sweep is not None:
        write_output(stage, f"{sub}sweep.gif", encode_gif(face_sweep, options.fps), written)
        write_output(stage, f"{sub}sweep.mp4", encode_mp4(face_sweep, options.fps), written)
    input_yaw = None if result.pose is None else math.degrees(float(result.pose[k, 1]))
    sheet = contact_sheet(face.image, face_frames, names, input_yaw)
    write_output(stage, f"{sub}contact_sheet.png", sheet, written)
    info: dict = {"folder": sub.rstrip("/") or ".",
                  "box": None if face.box is None else [round(b, 1) for b in face.box]}
    if face.detection is not None:  # detector, score, landmark_disagreement
        info["detection"] = {k2: v2 for k2, v2 in face.detection.items() if k2 != "box"}
    if result.refine is not None and pipe.refine.active:
        info["refine"] = result.refine.records()[k]
        if not info["refine"]["applied"]:
            warnings.append({"face": k + 1, "warning": (
                f"the model's frames do not explain this face (blur-consistency error "
                f"{info['refine']['start_error']:.2f} > {pipe.refine.max_start_error:g}): the refinement "
                "was skipped (no residual added) and the frames are the model's own guess; a model trained on "
                "faces like this one is needed (README: Training)")})
    if face.outside > EDGE_WARNING:
        info["outside_share"] = round(face.outside, 3)
        warnings.append({"face": k + 1, "warning": f"the face is cut by the image edge ({face.outside:.0%} "
                         "of it outside the photo): the crop fills that part in by mirroring the photo, so "
                         "the result there is made up"})
    if result.pose is not None:
        rad = [float(a) for a in result.pose[k].cpu()]
        info["pose_deg"] = dict(zip(("pitch", "yaw", "roll"), (round(math.degrees(a), 3) for a in rad)))
        if options.save_pose:
            pose = {"pitch_deg": math.degrees(rad[0]), "yaw_deg": math.degrees(rad[1]),
                    "roll_deg": math.degrees(rad[2]), "radians": rad,
                    "convention": "(pitch, yaw, roll) about the camera's x, y, z axes; OpenCV camera"}
            write_output(stage, f"{sub}pose.json", (json.dumps(pose, indent=2) + "\n").encode(), written)
    if options.save_latents:
        arrays = {"codes": result.codes[k].float().cpu().numpy(),
                  "view_codes": result.view_codes[k].float().cpu().numpy(),
                  "views": np.asarray(result.views, dtype=np.float32)}
        if result.pose is not None:
            arrays["pose"] = result.pose[k].float().cpu().numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_output(stage, f"{sub}latents.npz", buffer.getvalue(), written)
    return info


def _write_pasted(stage: Path, photo: np.ndarray, faces: list, frames: np.ndarray, result, pipe,
                  options: RunOptions, grey: bool, written: list[str]) -> None:
    """The frames of every face at the input view pasted back into the photo (``stage/pasted``)."""
    from deblur_rotate.faces import paste_back
    from deblur_rotate.files import to_uint8
    from deblur_rotate.images import grey_like

    same = [i for i, v in enumerate(result.views) if v == (0.0, 0.0)]
    if same and not options.to_frontal:
        own = frames[:, same[0]]                                               # [F, T, R, R, 3]
    else:
        own = to_uint8(pipe.synthesize(result.codes).flatten(0, 1))
        own = own.reshape(len(faces), -1, *faces[0].image.shape)
        own = grey_like(own) if grey else own
    pasted = np.stack([paste_back(photo, [(f, own[k, j]) for k, f in enumerate(faces)])
                       for j in range(own.shape[1])])
    write_frames(stage, "pasted", "pasted", pasted, options.fps, written)


def _frame_count(path: Path) -> int:
    """Frames in an image file (an animated GIF, WebP, APNG or TIFF has more than one); 1 when unknown."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - read_image has already judged the file; this is only a count
        return 1


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (assumed alive where that cannot be asked safely: outside POSIX)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove the hidden staging folders ``OUT/.NAME.partial-<pid>`` of runs whose process is gone (killed
    mid-input); returns what was removed. Those of running processes (another run) are left alone; so is
    this process's own, which it is about to replace anyway."""
    removed = []
    try:
        entries = list(out.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def _stop_disk_full(out: Path, path: Path, done: list[dict], created: bool, write_summary, failed: list[dict]) -> None:
    """The disk filled up while ``path`` was written: its staging folder is gone already (process_input removes
    it), so no partial result stays; record why in summary.json if it still fits (an ``OUT`` this run created
    and nothing was finished in is removed), then stop with one line."""
    failed.append({"input": str(path), "reason": f"no space left on {out}"})
    try:
        write_summary(False)
    except (UserError, OSError):
        pass
    if created and not done:
        shutil.rmtree(out, ignore_errors=True)
    raise UserError(f"no space left on {out}: stopped at {shown(str(path))} (the inputs after it were not started); "
                    f"{len(done)} input(s) were "
                    "finished before. Free some space and rerun the same command")


def run_command(args) -> int:
    """``deblur-rotate run``: returns 0 when every input was done, 1 when some failed."""
    from tqdm import tqdm

    from deblur_rotate.faces import FaceFinder

    options = _options(args)
    # --- video input (issue 14): a video file, or a folder of frames with --fps -> deblur_rotate.video
    from deblur_rotate.video import is_video_request, run_video_command

    if is_video_request(args):
        return run_video_command(args, options)
    # ---
    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; give a folder for -o")
    paths, problems = list_inputs(args.input)
    if not paths:
        reasons = "; ".join(f"{spec}: {why}" for spec, why in problems)
        raise UserError(f"no input images found ({reasons})")
    pipe = _load_pipeline(args, options)
    from deblur_rotate.model_folder import model_warnings, view_warnings

    # said once per run, plainly: what the model cannot do (synthetic faces only, views it never saw)
    model_notes = model_warnings(pipe.facts) + view_warnings(pipe.facts, options.views, options.to_frontal,
                                                             options.sweep)
    created = not out.exists()
    check_output_folder(out)
    clean_stale_partials(out)

    from deblur_rotate.files import atomic_write_json, disk_full
    from deblur_rotate.pipeline import bundled_model_dir

    finder = None if options.aligned else FaceFinder()
    done: list[dict] = []
    failed: list[dict] = [{"input": spec, "reason": why} for spec, why in problems]
    warnings: list[dict] = []
    model = args.model if args.model is not None else bundled_model_dir()

    def write_summary(complete: bool) -> None:
        try:
            atomic_write_json(out / SUMMARY, {"complete": complete, "model": str(model), "device": str(pipe.device),
                                              "views": [view_name(v, options.to_frontal) for v in options.views],
                                              "inputs": len(paths) + len(problems), "model_warnings": model_notes,
                                              "done": done, "failed": failed, "warnings": warnings})
        except OSError as err:
            if disk_full(err):
                raise UserError(f"no space left on {out} (writing {SUMMARY}); free some space and rerun") from None
            raise

    write_summary(False)  # a summary of an earlier run must not stand for this one, even if it is killed
    for note in model_notes:
        _say(f"warning: {note}", file=sys.stderr)
    for spec, why in problems:
        _say(f"skipped {spec}: {why}", file=sys.stderr)
    full: tuple[Path, BaseException] | None = None
    bar = tqdm(list(zip(paths, output_names(paths))), unit="image", disable=not args.progress, file=sys.stderr)
    for path, name in bar:
        bar.set_postfix_str(shown(path.name[-30:]), refresh=False)
        full = _run_one(path, out / name, pipe, options, finder, done, failed, warnings)
        if full is not None:  # the disk is full: every later input would fail the same way
            break
        write_summary(False)
    bar.close()
    if full is not None:
        _stop_disk_full(out, full[0], done, created, write_summary, failed)

    write_summary(True)
    return _say_summary(out, len(paths) + len(problems), done, failed, warnings)


def _load_pipeline(args, options: RunOptions):
    """The model ``run`` uses, with its refinement set and the request checked against what it can do."""
    from deblur_rotate.pipeline import DeblurRotatePipeline

    pipe = DeblurRotatePipeline.from_pretrained(args.model, device=args.device)
    pipe.refine = pipe.refine_settings(args.refine_steps, getattr(args, "refine_residual", None))  # None: the model's
    pipe.check_request(options.views, options.to_frontal)
    if options.sweep is not None and not pipe.can_rotate:
        raise UserError(f"{pipe.name} has no fusion network (F): it cannot render --sweep")
    if options.save_pose and not pipe.has_pose:
        raise UserError(f"{pipe.name} has no face3d_encoder (E_3D): there is no pose for --save-pose")
    return pipe


def _run_one(path: Path, dest: Path, pipe, options: RunOptions, finder, done: list[dict], failed: list[dict],
             warnings: list[dict]) -> tuple[Path, BaseException] | None:
    """Process one input into ``dest`` and append its outcome to ``done`` / ``failed`` / ``warnings``; returns
    ``(path, error)`` when the disk is full (the caller stops), else None."""
    from tqdm import tqdm

    from deblur_rotate.files import disk_full

    try:
        record = process_input(path, dest, pipe, options, finder)
        done.append({"input": str(path), "output": str(dest), "faces": len(record["faces"])})
        if record.get("dropped_detections"):  # detections rejected as non-faces, with the reason
            done[-1]["dropped_detections"] = record["dropped_detections"]
        for warning in record.get("warnings", []):
            warnings.append({"input": str(path), **warning})
            face = f" (face {warning['face']})" if "face" in warning else ""
            tqdm.write(shown(f"warning: {path}{face}: {warning['warning']}"), file=sys.stderr)
    except UserError as err:
        reason = str(err)
        reason = reason[len(str(path)) + 2:] if reason.startswith(f"{path}: ") else reason
        failed.append({"input": str(path), "reason": reason})
        tqdm.write(shown(f"failed {path}: {reason}"), file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - one bad input must not stop the others; the trace is shown
        if disk_full(err):
            return path, err
        traceback.print_exc(file=sys.stderr)
        failed.append({"input": str(path), "reason": f"unexpected {type(err).__name__}: {err}"})
    return None


def _say_summary(out: Path, total: int, done: list[dict], failed: list[dict], warnings: list[dict]) -> int:
    """The closing lines of ``run``; returns its exit status (1 when some input failed)."""
    _say(f"done: {len(done)} of {total} input(s) -> {out}")
    for item in done:
        faces = f" ({item['faces']} faces)" if item["faces"] > 1 else ""
        _say(f"  {item['input']} -> {item['output']}{faces}")
    if warnings:
        _say(f"warnings: {len(warnings)} (see {out / SUMMARY})", file=sys.stderr)
    if failed:
        _say(f"failed: {len(failed)}", file=sys.stderr)
        for item in failed:
            _say(f"  {item['input']}: {item['reason']}", file=sys.stderr)
        return 1
    return 0
