"""The work behind ``deblur-rotate serve``'s page, without the page: the limits, checking an upload (photo or
video), and :class:`ServeApp`, which holds the one pipeline and face finder and turns a request into files and
text for the page (:mod:`deblur_rotate.serve` builds the page around it). Importing this module imports neither
torch nor Gradio.
"""
from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_VIEW_RANGE", "KEEP_RESULTS", "MAX_SIDE", "MAX_UPLOAD_MB",
           "FaceResult", "RequestResult", "ServeApp", "boxed_photo", "check_upload", "check_video", "is_video",
           "view_range"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 25              # largest upload, megabytes (Gradio refuses larger ones at upload time too)
MAX_SIDE = 4096                 # largest image side the page takes, pixels
MAX_FACES = 8                   # faces processed per photo (the largest ones)
KEEP_RESULTS = 8                # request folders kept (older ones are removed)
QUEUE_SIZE = 16                 # requests waiting at most; more are refused with a message
FPS = 10.0                      # frame rate of the GIFs/MP4s (as `run`'s default)
SWEEP_STEPS = 36                # views in the orbit (as `run`'s default)
PHOTO_DISPLAY_SIDE = 1024       # the boxed photo is shrunk to this longest side for the page ...
PHOTO_MIN_SIDE = 256            # ... and small ones are enlarged (nearest neighbour) to at least this
DEFAULT_VIEW_RANGE = {"yaw_deg": (-60.0, 60.0), "pitch_deg": (-20.0, 20.0)}
MAX_VIDEO_FRAMES = 300          # longest video upload, input frames (10 s at 30 fps)
VIDEO_FRAMES_SHOWN = 15         # output frames per view shown on the page for a video (all are in the zip)

VIEW_INPUT = "input view"
VIEW_NEW = "new view (yaw/pitch sliders)"
VIEW_FRONTAL = "frontal"
VIEW_SWEEP = "sweep (orbit)"


def view_range(config: dict | None) -> dict[str, tuple[float, float]]:
    """The yaw/pitch range (degrees, relative to the input view) the sliders allow: pipeline.json's
    ``view_range`` (top level or under ``extra``) or ``view_range_deg`` (``{"yaw": [lo, hi], "pitch": [lo,
    hi]}``, written by :func:`deblur_rotate.pipeline.assemble_model`) when present and valid, else
    DEFAULT_VIEW_RANGE.

    ``view_range`` is ``{"yaw_deg": [lo, hi], "pitch_deg": [lo, hi]}`` with lo < 0 < hi, |angles| <= 180;
    a missing key keeps its default; an unusable entry is a UserError naming it."""
    config = config or {}
    spec = config.get("view_range")
    if spec is None and isinstance(config.get("extra"), dict):
        spec = config["extra"].get("view_range")
    written = config.get("view_range_deg")  # what assemble_model writes: {"yaw": [lo, hi], "pitch": [lo, hi]}
    if spec is None and isinstance(written, dict):
        spec = {f"{k}_deg": v for k, v in written.items() if k in ("yaw", "pitch")}
    out = dict(DEFAULT_VIEW_RANGE)
    if spec is None:
        return out
    if not isinstance(spec, dict):
        raise UserError(f"pipeline.json view_range must be {{'yaw_deg': [lo, hi], 'pitch_deg': [lo, hi]}}, "
                        f"got {spec!r}")
    for key in DEFAULT_VIEW_RANGE:
        if key not in spec:
            continue
        try:
            lo, hi = (float(v) for v in spec[key])
        except (TypeError, ValueError):
            raise UserError(f"pipeline.json view_range[{key!r}] must be two numbers [lo, hi], got "
                            f"{spec[key]!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and -180 <= lo < 0 < hi <= 180):
            raise UserError(f"pipeline.json view_range[{key!r}] = {spec[key]!r}: need -180 <= lo < 0 < hi <= 180")
        out[key] = (lo, hi)
    return out


# ---------------------------------------------------------------------------------------------------- inputs


def is_video(path: str | os.PathLike) -> bool:
    """True for an upload that goes through the video path (by its extension, as ``deblur-rotate run``)."""
    from deblur_rotate.video_io import VIDEO_EXTS

    return Path(path).suffix.lower() in VIDEO_EXTS


def _check_file(path: Path, name: str) -> None:
    """UserError when the upload is missing or over MAX_UPLOAD_MB."""
    if not path.is_file():
        raise UserError(f"{name}: the upload did not arrive (no file); upload it again")
    size_mb = path.stat().st_size / 1e6
    if size_mb > MAX_UPLOAD_MB:
        raise UserError(f"{name}: the file is {size_mb:.1f} MB; this page takes files up to {MAX_UPLOAD_MB} MB")


def check_video(path: str | os.PathLike, name: str):
    """Probe an uploaded video (:func:`deblur_rotate.video.probe_video`) -> its VideoInfo. UserError with a
    readable sentence for a missing, too large, unreadable or empty video, frames over MAX_SIDE pixels a side,
    or more than MAX_VIDEO_FRAMES frames."""
    from deblur_rotate.video_io import probe_video

    path = Path(path)
    _check_file(path, name)
    try:
        info = probe_video(path)
    except UserError as err:
        raise UserError(str(err).replace(str(path), name)) from None
    if max(info.width, info.height) > MAX_SIDE:
        raise UserError(f"{name}: the video's frames are {info.width} x {info.height} pixels, too large; this page "
                        f"takes frames up to {MAX_SIDE} x {MAX_SIDE} pixels")
    if info.num_frames is not None and info.num_frames > MAX_VIDEO_FRAMES:
        raise UserError(f"{name}: the video has {info.num_frames} frames; this page takes up to {MAX_VIDEO_FRAMES} "
                        "(use `deblur-rotate run -i VIDEO` for longer ones)")
    return info


def check_upload(path: str | os.PathLike, name: str) -> np.ndarray:
    """Read an uploaded photo as uint8 RGB ``[H, W, 3]`` (``name``: how messages call it, the user's file
    name); for a video, its first frame (after :func:`check_video`). UserError with a readable sentence for a
    missing, too large or unreadable file, or an image over MAX_SIDE pixels a side (checked from the header,
    before decoding)."""
    from PIL import Image

    from deblur_rotate.images import read_image

    path = Path(path)
    if is_video(path):
        from deblur_rotate.video_io import iter_frames

        return next(iter(iter_frames(check_video(path, name))))
    _check_file(path, name)
    limit = f"this page takes images up to {MAX_SIDE} x {MAX_SIDE} pixels"
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise UserError(f"{name}: the image is far too large to decode safely; {limit}") from None
    except Exception:  # noqa: BLE001 - not an image PIL knows: read_image below says so in its own words
        w = h = 0
    if max(w, h) > MAX_SIDE:
        raise UserError(f"{name}: the image is {w} x {h} pixels, too large; {limit} (shrink it and upload it again)")
    try:
        return read_image(path)
    except UserError as err:
        raise UserError(str(err).replace(str(path), name)) from None


# ----------------------------------------------------------------------------------------------- processing


@dataclass
class FaceResult:
    """What the page shows for one face of a request (paths inside the request folder)."""

    crop: str                                   # the aligned crop the networks saw (PNG)
    box: list[float] | None                     # detector box (left, top, right, bottom), photo pixels
    pose_deg: dict[str, float] | None           # E_3D's (pitch, yaw, roll), degrees; None without E_3D
    videos: list[tuple[str, str, str]]          # per view: (view name, shown file (GIF; a video's MP4), MP4)
    frames: list[tuple[str, str]]               # (PNG path, caption "view · frame j") per view and frame
    contact_sheet: str | None                   # PNG; None when only the sweep was asked for


@dataclass
class RequestResult:
    """One finished request."""

    name: str                                   # the uploaded file's name
    folder: str                                 # the request folder (inside the server's temp folder)
    photo: str                                  # the input photo with the faces boxed and numbered (PNG)
    image_size: tuple[int, int]                 # (width, height) of the photo
    views: list[str]                            # view names, in order (sweep last)
    faces: list[FaceResult] = field(default_factory=list)
    faces_found: int = 0                        # faces the detector found (MAX_FACES of them are processed)
    zip_path: str = ""                          # every frame of every face and view
    seconds: float = 0.0                        # time the request took
    kind: str = "photo"                         # "photo" or "video"
    notes: list[str] = field(default_factory=list)  # said under the status line (a video's rates, skips)
    extra_files: list[str] = field(default_factory=list)  # more downloads (a video's result.json, track.jsonl)


def _png(path: Path, image: np.ndarray) -> str:
    """Write uint8 ``image`` [H, W, 3] as a PNG at ``path`` (folders made); returns the path as text."""
    from deblur_rotate.outputs import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))
    return str(path)


def boxed_photo(photo: np.ndarray, boxes: list[list[float] | None]) -> np.ndarray:
    """The photo (shrunk to PHOTO_DISPLAY_SIDE, small ones enlarged to PHOTO_MIN_SIDE) with each face's box
    drawn and numbered 1..N."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(photo)
    scale = min(1.0, PHOTO_DISPLAY_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    elif max(img.size) < PHOTO_MIN_SIDE:
        scale = float(math.ceil(PHOTO_MIN_SIDE / max(img.size)))
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 200))
    for k, box in enumerate(boxes):
        if box is None:
            continue
        left, top, right, bottom = (v * scale for v in box)
        draw.rectangle([left, top, right, bottom], outline=(255, 210, 0), width=width)
        draw.text((left + width + 1, top + width), str(k + 1), fill=(255, 210, 0))
    return np.asarray(img)


class ServeApp:
    """The page's work, without the page: one pipeline and one face finder for every request.

    Not thread-safe by itself: the page's queue runs one request at a time (``concurrency_limit=1``).
    """

    def __init__(self,
                 pipe,                          # a DeblurRotatePipeline (loaded once)
                 root: str | os.PathLike,       # the server's own temp folder; request folders go in root/results
                 model_label: str = "model",    # how the page names the model
                 finder=None,                   # a FaceFinder (default: one made here, models load on first use)
                 ):
        """Keep the pipeline and a face finder for every request; make root/results."""
        from deblur_rotate.faces import FaceFinder

        self.pipe = pipe
        self.root = Path(root)
        self.results = self.root / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.model_label = model_label
        self.finder = finder or FaceFinder()
        self.range = view_range(pipe.config)
        self._count = 0
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the face detectors (HOG and the CNN fallback) and run the networks once, so that the first
        request is as quick as the others."""
        import torch

        blank = np.zeros((64, 64, 3), np.uint8)
        self.finder.find(blank)                                   # HOG finds nothing -> the CNN loads too
        with torch.no_grad():
            codes, _pose = self.pipe.encode(torch.zeros(1, 3, self.pipe.resolution, self.pipe.resolution), refine=0)
            self.pipe.synthesize(codes[:, :1])

    # ------------------------------------------------------------------ facts for the page

    def view_choices(self) -> list[str]:
        """The view choices this model can do."""
        choices = [VIEW_INPUT]
        if self.pipe.can_rotate:
            choices += [VIEW_NEW] + ([VIEW_FRONTAL] if self.pipe.has_pose else []) + [VIEW_SWEEP]
        return choices

    # ------------------------------------------------------------------ one request

    def _new_folder(self) -> Path:
        """A fresh request folder; all but the newest KEEP_RESULTS folders are removed."""
        with self._lock:
            self._count += 1
            folder = self.results / f"{self._count:05d}-{uuid.uuid4().hex[:8]}"
            old = sorted(p for p in self.results.iterdir() if p.is_dir())
            for p in old[:max(0, len(old) - KEEP_RESULTS + 1)]:
                shutil.rmtree(p, ignore_errors=True)
            folder.mkdir()
        return folder

    def _views(self, chosen: list[str], yaw: float, pitch: float) -> tuple[list[tuple[float, float]], bool, bool]:
        """(views relative to the input, frontal asked, sweep asked); UserError for nothing chosen or angles
        outside the trained range."""
        unknown = [c for c in chosen if c not in self.view_choices()]
        if unknown:
            raise UserError(f"this model cannot render the view(s) {', '.join(unknown)}; "
                            f"it offers: {', '.join(self.view_choices())}")
        relative: list[tuple[float, float]] = []
        if VIEW_INPUT in chosen:
            relative.append((0.0, 0.0))
        if VIEW_NEW in chosen:
            for label, value, key in (("yaw", yaw, "yaw_deg"), ("pitch", pitch, "pitch_deg")):
                lo, hi = self.range[key]
                if value is None or not math.isfinite(float(value)) or not lo <= float(value) <= hi:
                    raise UserError(f"{label} {value} is outside the range the model was trained on "
                                    f"({lo:g} to {hi:g} degrees)")
            view = (float(yaw), float(pitch))
            if view not in relative:
                relative.append(view)
        frontal, sweep = VIEW_FRONTAL in chosen, VIEW_SWEEP in chosen
        if not (relative or frontal or sweep):
            raise UserError("choose at least one view (input view, new view, frontal or sweep)")
        return relative, frontal, sweep

    def process(self, path: str | os.PathLike | None, name: str | None = None, aligned: bool = False,
                chosen: list[str] | tuple[str, ...] = (VIEW_INPUT,), yaw: float = 0.0, pitch: float = 0.0,
                progress=None) -> RequestResult:
        """Run one uploaded photo: faces, codes, every chosen view, files for the page and the downloads.

        progress: ``progress(fraction, desc=...)`` (Gradio's) or None. UserError, with a sentence for the
        page, for problems of this upload or request."""
        import torch

        from deblur_rotate.faces import prepare_image
        from deblur_rotate.files import to_uint8
        from deblur_rotate.outputs import view_name
        from deblur_rotate.pipeline import sweep_views

        def step(fraction: float, desc: str) -> None:
            """Report progress to the page (when there is one)."""
            if progress is not None:
                progress(fraction, desc=desc)

        started = time.perf_counter()
        if path is None:
            raise UserError("no photo yet: upload one (or click a built-in example) first")
        name = name or Path(path).name
        relative, frontal, sweep = self._views(list(chosen or []), yaw, pitch)
        if is_video(path):
            return self._process_video(Path(path), name, aligned, relative, frontal, sweep, started, step)
        step(0.05, "reading the photo")
        photo = check_upload(path, name)
        step(0.15, "finding faces")
        pipe = self.pipe
        try:
            faces = prepare_image(photo, pipe.resolution, crop=pipe.crop, aligned=aligned, finder=self.finder,
                                  name=name)
        except UserError:
            h, w = photo.shape[:2]
            raise UserError(f"{name}: no face found in this {w} x {h} photo (dlib's HOG and CNN detectors). If it "
                            "already is a face crop framed like the built-in examples, tick \"The photo is an "
                            "aligned face crop\" and run it again") from None
        found = len(faces)
        faces = faces[:MAX_FACES]
        step(0.35, f"deblurring {len(faces)} face(s)" + (" and refining" if pipe.refine.active else ""))
        with torch.no_grad():
            batch = torch.stack([f.tensor() for f in faces])                           # [F, 3, R, R]
            codes, pose, refined = pipe.encode_with_report(batch)
            names = [view_name(v) for v in relative] + ([view_name((0.0, 0.0), True)] if frontal else [])
            frames = None
            if names:
                step(0.5, f"rendering {len(names)} view(s)")
                parts = []
                if relative:  # the input view gets the refinement's residual, as in the pipeline's __call__
                    parts.append(pipe.add_residual(pipe.synthesize(pipe.rotate(codes, pose, relative)), refined,
                                                   relative))                          # [F, V, T, 3, R, R]
                if frontal:
                    parts.append(pipe.synthesize(pipe.rotate(codes, pose, [(0.0, 0.0)], to_frontal=True)))
                rendered = torch.cat(parts, 1)                                         # [F, V, T, 3, R, R]
                frames = to_uint8(rendered.flatten(0, 2)).reshape(*rendered.shape[:3], *faces[0].image.shape)
            orbit = None
            if sweep:
                step(0.65, "rendering the sweep")
                amplitude = min(abs(v) for v in self.range["yaw_deg"])
                orbit = to_uint8(pipe.sweep(codes, pose, sweep_views(SWEEP_STEPS, amplitude)).flatten(0, 1))
                orbit = orbit.reshape(len(faces), SWEEP_STEPS, *faces[0].image.shape)  # [F, K, R, R, 3]

        step(0.8, "writing the videos")
        folder = self._new_folder()
        stem = _safe_stem(name)
        result = RequestResult(name=name, folder=str(folder), photo="", views=names + (["sweep"] if sweep else []),
                               image_size=(int(photo.shape[1]), int(photo.shape[0])), faces_found=found)
        result.photo = _png(folder / "photo.png", boxed_photo(photo, [f.box for f in faces]))
        skipped = [k + 1 for k, r in enumerate(refined.records()) if pipe.refine.active and not r["applied"]]
        if skipped:
            result.notes.append(f"face(s) {', '.join(map(str, skipped))}: the model's frames do not explain this face, "
                                "so the refinement was skipped (no residual added); the frames are the model's "
                                "own guess")
        for k, face in enumerate(faces):
            result.faces.append(_write_face_result(folder / f"face_{k + 1}", face, None if pose is None else pose[k],
                                                   names, None if frames is None else frames[k],
                                                   None if orbit is None else orbit[k]))
        step(0.95, "packing the downloads")
        result.zip_path = _zip_frames(folder, stem, len(faces))
        result.seconds = round(time.perf_counter() - started, 2)
        return result

    def _process_video(self, path: Path, name: str, aligned: bool, relative: list[tuple[float, float]],
                       frontal: bool, sweep: bool, started: float, step) -> RequestResult:
        """A video upload through :func:`deblur_rotate.video.process_video`: one run for the views relative to
        the input, one for the frontal view; the page shows the MP4s and the first output frames."""
        import json

        from deblur_rotate.outputs import view_name
        from deblur_rotate.video import VideoOptions, process_video
        from deblur_rotate.video_io import iter_frames

        step(0.05, "reading the video")
        info = check_video(path, name)
        first = next(iter(iter_frames(info)))
        folder = self._new_folder()
        stem = _safe_stem(name)
        runs = (([("views", relative, False)] if relative else [])
                + ([("frontal", [(0.0, 0.0)], True)] if frontal else []))
        if not runs:
            raise UserError("the sweep is for photos; for a video choose the input view, a new view or frontal")
        records = []
        for k, (sub, views, to_frontal) in enumerate(runs):
            step(0.1 + 0.8 * k / len(runs), f"video: {', '.join(view_name(v, to_frontal) for v in views)}")
            options = VideoOptions(views=views, to_frontal=to_frontal, aligned=aligned, save_frames=True,
                                   progress=True)
            try:
                records.append((folder / sub, process_video(info, folder / sub, self.pipe, options, self.finder)))
            except UserError as err:
                raise UserError(str(err).replace(str(path), name)) from None
        first_record = records[0][1]
        result = RequestResult(name=name, folder=str(folder), photo="", image_size=(info.width, info.height),
                               views=[v["name"] for _d, r in records for v in r["views"]], kind="video",
                               faces_found=len(first_record["faces"]))
        result.notes.append(f"video: {first_record['frames_in']} frames at {first_record['fps_in']:.4g} fps -> "
                            f"{first_record['frames_out']} sharp frames at {first_record['fps_out']:.4g} fps per view")
        if sweep:
            result.notes.append("the sweep is for photos: left out for this video")
        track = [json.loads(line) for line in (records[0][0] / "track.jsonl").read_text().splitlines() if line]
        first_faces = track[0]["faces"] if track else []
        boxes = [f.get("box") for f in first_faces]
        result.photo = _png(folder / "photo.png", boxed_photo(first, boxes))
        for k in range(result.faces_found):
            fr = FaceResult(crop="", box=boxes[k] if k < len(boxes) else None, videos=[], frames=[],
                            pose_deg=first_faces[k].get("pose_deg") if k < len(first_faces) else None,
                            contact_sheet=None)
            if fr.box is not None:
                x0, y0, x1, y1 = (round(v) for v in fr.box)
                crop = first[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
            else:
                crop = first
            fr.crop = _png(folder / f"face_{k + 1}_first_frame.png", np.ascontiguousarray(crop))
            for dest, record in records:
                base = dest / record["faces"][k]["folder"]
                for view in (v["name"] for v in record["views"]):
                    mp4 = str(base / f"video_{view}.mp4")
                    fr.videos.append((view, mp4, mp4))
                    for j, png in enumerate(sorted((base / "frames" / view).glob("frame_*.png"))[:VIDEO_FRAMES_SHOWN]):
                        fr.frames.append((png.as_posix(), f"{view} · frame {j + 1}"))
            if fr.pose_deg is not None:
                fr.pose_deg = {a: round(float(fr.pose_deg[a]), 1) for a in ("pitch", "yaw", "roll")}
            result.faces.append(fr)
        step(0.95, "packing the downloads")
        result.zip_path = str(folder / f"{stem}_frames.zip")
        with zipfile.ZipFile(result.zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for dest, _record in records:
                for p in sorted(dest.rglob("*.png")):
                    zf.write(p, f"{stem}/{p.relative_to(folder)}")
        for dest, _record in records:
            result.extra_files += [str(dest / "result.json"), str(dest / "track.jsonl")]
        result.seconds = round(time.perf_counter() - started, 2)
        return result

    # ------------------------------------------------------------------ what the page shows

    def status_text(self, result: RequestResult) -> str:
        """The one-line summary above the results."""
        faces = f"{len(result.faces)} face" + ("s" if len(result.faces) != 1 else "")
        if result.faces_found > len(result.faces):
            faces += f" (of {result.faces_found} found: the largest {len(result.faces)})"
        notes = "".join(f"  \n{note}" for note in result.notes)
        return (f"**Done** in {result.seconds:.2f} s: `{result.name}` ({result.kind}, {result.image_size[0]} x "
                f"{result.image_size[1]} px), {faces}, views: {', '.join(result.views)}.{notes}")

    def details_text(self, result: RequestResult, k: int) -> str:
        """Pose, box and timing of face ``k`` as Markdown."""
        face = result.faces[k]
        lines = [f"**Face {k + 1}** of {len(result.faces)}"]
        if face.pose_deg is not None:
            p = face.pose_deg
            when = " in the first frame (smoothed over the track)" if result.kind == "video" else ""
            lines.append(f"Estimated head pose (E_3D){when}: pitch {p['pitch']:+.1f}°, yaw {p['yaw']:+.1f}°, "
                         f"roll {p['roll']:+.1f}°")
        else:
            lines.append("Estimated head pose: not available (this model has no E_3D)")
        if face.box is not None:
            lines.append("Face box (left, top, right, bottom): " + ", ".join(f"{b:.0f}" for b in face.box) + " px")
        else:
            lines.append("Face box: none (the photo was taken as an aligned crop)")
        lines.append(f"Time taken: {result.seconds:.2f} s on {self.pipe.device} ({self.model_label})")
        return "  \n".join(lines)

    def downloads(self, result: RequestResult, k: int) -> list[str]:
        """The files offered for download while face ``k`` is shown: the zip of all frames, then the face's
        MP4s and GIFs and its contact sheet."""
        face = result.faces[k]
        files = [result.zip_path]
        for _view, shown, mp4 in face.videos:
            files += [mp4] + ([shown] if shown != mp4 else [])
        if face.contact_sheet:
            files.append(face.contact_sheet)
        return files + result.extra_files


def _safe_stem(name: str) -> str:
    """A file-name-safe stem of the upload's name (for the zip)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:60] or "upload"


def _write_face_result(sub: Path, face, pose, names: list[str], frames, orbit) -> FaceResult:
    """Write one face's files into ``sub`` (its crop, per view the frames ``frames [V, T, R, R, 3]`` uint8 as PNGs,
    a GIF and an MP4, the sweep ``orbit [K, R, R, 3]``, the contact sheet) and return what the page shows of it.
    ``pose``: E_3D's (pitch, yaw, roll) radians ``[3]`` or None."""
    from deblur_rotate.outputs import contact_sheet, encode_gif, encode_mp4

    pose_deg = None
    if pose is not None:
        pose_deg = {a: round(math.degrees(float(r)), 1) for a, r in zip(("pitch", "yaw", "roll"), pose)}
    fr = FaceResult(crop=_png(sub / "input.png", face.image),
                    box=None if face.box is None else [round(b, 1) for b in face.box],
                    pose_deg=pose_deg, videos=[], frames=[], contact_sheet=None)
    for v, view in enumerate(names):
        for j in range(frames.shape[1]):
            fr.frames.append((_png(sub / "frames" / view / f"frame_{j + 1}.png", frames[v, j]),
                              f"{view} · frame {j + 1}"))
        (sub / f"{view}.gif").write_bytes(encode_gif(frames[v], FPS))
        (sub / f"{view}.mp4").write_bytes(encode_mp4(frames[v], FPS))
        fr.videos.append((view, str(sub / f"{view}.gif"), str(sub / f"{view}.mp4")))
    if orbit is not None:
        (sub / "sweep.gif").write_bytes(encode_gif(orbit, FPS))
        (sub / "sweep.mp4").write_bytes(encode_mp4(orbit, FPS))
        fr.videos.append(("sweep", str(sub / "sweep.gif"), str(sub / "sweep.mp4")))
    if frames is not None:
        (sub / "contact_sheet.png").write_bytes(contact_sheet(face.image, frames, names))
        fr.contact_sheet = str(sub / "contact_sheet.png")
    return fr


def _zip_frames(folder: Path, stem: str, num_faces: int) -> str:
    """``folder/<stem>_frames.zip`` of every face's PNGs (paths ``stem/face_k/...``); returns its path."""
    path = str(folder / f"{stem}_frames.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(num_faces):
            sub = folder / f"face_{k + 1}"
            for p in sorted(sub.rglob("*.png")):
                zf.write(p, f"{stem}/{p.relative_to(folder)}")
    return path
