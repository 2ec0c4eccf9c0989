"""Blurry low-frame-rate video in, sharp high-frame-rate video out (``deblur-rotate run -i clip.mp4``).

The paper's motivating use (§1): a video call that sends fewer, longer-exposed frames, or a webcam in low
light. Every input frame is one exposure; the model turns it into the K = 5 sharp frames of that exposure
(or K = 3: frames 1, 3, 5 of the 5, with ``--factor 3``), so the output runs at K times the input frame rate
and lasts as many seconds as the input.

Input: any file PyAV (FFmpeg) reads with a video stream, or a folder of numbered frames (natural order,
``frame_2`` before ``frame_10``) with ``--fps``. ``--fps`` given for a file overrides the rate it records.
A display rotation (phone videos) is applied to the decoded frames. Variable-frame-rate files are read as
evenly spaced frames at their average rate.

Output, in ``OUT/<stem>/`` (built in a hidden sibling folder ``.<stem>.partial-<pid>`` and renamed into place
when complete, so an interrupted run leaves no complete-looking video; inside it every MP4 is first written
under a hidden temporary name and renamed when closed)::

    video_<view>.mp4             each view (``input_view``, ``yaw+30``, ``frontal`` ...) at K x the input rate:
                                 the R x R aligned face, H.264; the input's audio copied (or re-encoded to AAC
                                 when its codec cannot go into MP4)
    video_pasted.mp4             --paste-back: the full frames with the sharp same-view face blended in
    frames/<view>/frame_000001.png ...   --save-frames: every output frame as PNG (also frames/pasted/)
    track.jsonl                  one line per input frame: per face, detected or filled, the smoothed crop box,
                                 the chosen time order, the smoothed pose (degrees)
    result.json                  rates, frame counts, faces, orders, audio, files

With several faces each gets ``face_1/``, ``face_2/`` ... (largest first) holding its ``video_<view>.mp4``
and ``frames/``; ``video_pasted.mp4`` (all faces pasted) and the JSON files stay at the top.

How the frames are made consistent over time (the part single-image tools get wrong):

* **Time order.** From one blurry frame the direction of time cannot be told (the same blur comes from a
  forward or a backward motion), so E_v's 5 frames may come out in either order. Each input frame's order
  (forward or backward) is chosen to continue its neighbours (:func:`choose_order`), by the sum of four
  mean absolute pixel differences of the same-view frames: its first frame against the previous input
  frame's last output frame (the issue's rule), its last frame against the nearer end of the next input
  frame's frames (a one-frame look-ahead), and its first and last frames against the previous and next
  *blurry input* frames (an exposure's start lies nearer in time to the previous exposure, its end to the
  next; this term needs no model output and is the steadier cue on a short-trained model). Frames of
  neighbouring inputs are first resampled into this frame's crop (:func:`crop_to_crop`), since each frame
  is cut along its own track position. For the first frame only the look-ahead terms count; they also fix
  the direction of the whole video. Every view of a face uses the order chosen for it.
* **One track per person.** Pass 1 decodes the video once and runs the face detector (dlib HOG, CNN
  fallback) on every frame. A detection continues the track whose last box it overlaps (IoU >= 0.2) or whose
  centre is within 0.75 box sides (fast motion at low frame rates), greedily best match first; others start
  new tracks. Tracks with fewer than 3 detections (min(3, the longest track)) are dropped as false
  positives; the rest are numbered largest (mean box area) first, and keep that index for the whole video.
  ``--only-center-face`` keeps the track whose mean box centre is nearest the frame centre.
  A frame where the detector misses a face is **filled from the track**: its 68 landmarks are linearly
  interpolated between the nearest detections before and after it; before a track's first detection and
  after its last they are held at that detection (the face videos keep their full length; --paste-back
  does not paste a face outside its first..last detection).
* **Smoothing.** The filled landmark track is smoothed by a local linear fit with Gaussian weights
  (sigma ``--track-smoothing`` input frames, default 1; a window of +-2 sigma), which removes detector jitter
  but keeps steady motion exactly (no lag, no shrinking at the ends); the crop (the similarity transform of
  :func:`deblur_rotate.faces.alignment_matrix`) is computed from the smoothed landmarks.
  The head pose from E_3D is smoothed over the track the same way (``--pose-smoothing``). It sets the
  turn of ``--to-frontal`` (delta p = view - pose); views relative to the input (``--yaw``/``--pitch``
  without ``--to-frontal``) do not depend on the pose, so there the smoothed pose is only recorded.
* **--paste-back.** The background is **repeated**: each input frame (itself the exposure's blurred
  background) is shown K times, and the face of output frame k is warped back into it with the soft
  face mask of :func:`deblur_rotate.faces.paste_back` (the crop of the smoothed track).

Memory does not grow with the video length: frames are streamed in and out (at most ``1 + lag`` decoded
frames are held, lag = max(1, 2 x pose sigma) input frames, for the pose smoothing and the order look-ahead),
and the encoders write as they go. What is kept per input frame is the face track of pass 1: 68 landmarks
and a box as float32, about 0.6 kB per face per frame (2 MB per face per hour at 1 fps, 65 MB at 30 fps;
twice that for a moment while a track is smoothed). ``--aligned`` input has no track: constant memory.

Bad input is a :class:`~deblur_rotate.errors.UserError` naming the file (``error: ...``, exit status 2)
and writes nothing: not a video, a damaged file, no video stream, zero frames, an unknown frame rate, frames
of different sizes in a folder, no face in any frame. Inputs are checked before any output is started; a
problem found later (damage in the middle, no face) removes the half-built folder.
"""
from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deblur_rotate.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `run --help` stays light
    import torch

__all__ = [
    "VIDEO_EXTS",
    "FaceTrack",
    "FaceTracker",
    "Mp4Writer",
    "VideoInfo",
    "VideoOptions",
    "add_video_arguments",
    "allowed_factors",
    "choose_order",
    "fill_missing",
    "is_video_request",
    "iter_frames",
    "local_linear_smooth",
    "probe_video",
    "process_video",
    "run_video_command",
]

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
              ".mts", ".m2ts", ".ogv", ".gif", ".y4m"}
MAX_FPS = 1000.0          # input rates above this are taken as a broken header (a time base, not a rate)
MP4_AUDIO_COPY = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}  # codecs copied into MP4 as they are
RESULT = "result.json"
TRACK = "track.jsonl"
SUMMARY = "summary.json"
PASTED = "pasted"


# --------------------------------------------------------------------------------------------------- options


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``deblur-rotate run`` that only apply to video input (a group of their own)."""
    g = p.add_argument_group("video input (a video file, or a folder of numbered frames with --fps)")
    g.add_argument("--factor", type=int, default=None, metavar="K",
                   help="output frames per input frame, so K x the frame rate (default: the model's 5; 3 keeps "
                        "frames 1, 3, 5; 1 keeps the middle frame at the input rate)")
    g.add_argument("--save-frames", action="store_true", help="also write every output frame as PNG")
    g.add_argument("--track-smoothing", type=float, default=1.0, metavar="SIGMA",
                   help="smoothing of the face crop over time, in input frames (Gaussian sigma; 0: none; default 1)")
    g.add_argument("--pose-smoothing", type=float, default=1.0, metavar="SIGMA",
                   help="smoothing of the E_3D head pose over time, in input frames (0: none; default 1)")


@dataclass
class VideoOptions:
    """Resolved settings of one video run (what :func:`process_video` needs)."""

    views: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0)])  # [(dyaw_deg, dpitch_deg)]
    to_frontal: bool = False          # views relative to the frontal pose (uses the smoothed E_3D pose)
    factor: int | None = None         # K: output frames per input frame (None: the model's T)
    fps: float | None = None          # input frame rate, frames/s: required for a folder, overrides a file's
    aligned: bool = False             # frames already are aligned face crops: no detection, just resize
    only_center_face: bool = False    # keep the track nearest the frame centre only
    paste_back: bool = False          # also write video_pasted.mp4 (full frames)
    save_frames: bool = False         # also write every output frame as PNG
    track_smoothing: float = 1.0      # Gaussian sigma of the landmark smoothing, input frames (0: off)
    pose_smoothing: float = 1.0       # Gaussian sigma of the pose smoothing, input frames (0: off)
    progress: bool = True             # tqdm progress bars on stderr


def allowed_factors(num_frames: int) -> list[int]:
    """Factors K that pick whole frames out of a model's ``num_frames`` (T) frames per exposure: 1 (the middle
    frame) and every K with (T - 1) divisible by (K - 1), e.g. [1, 2, 3, 5] for T = 5."""
    return [k for k in range(1, num_frames + 1) if k == 1 or (num_frames - 1) % (k - 1) == 0]


def _check_factor(factor: int | None, num_frames: int) -> int:
    """The factor K to use (``None``: the model's ``num_frames``); UserError when it does not pick whole frames."""
    k = num_frames if factor is None else int(factor)
    if k not in allowed_factors(num_frames):
        raise UserError(f"--factor {k}: this model predicts {num_frames} frames per input frame; the factors that "
                        f"keep whole frames are {', '.join(map(str, allowed_factors(num_frames)))}")
    return k


def _spec_paths(spec: str) -> list[Path]:
    """An ``-i`` argument -> the paths it names (glob patterns expanded, in natural order)."""
    import glob

    from deblur_rotate.images import natural_key

    if any(ch in spec for ch in "*?[") and not Path(spec).exists():
        return sorted((Path(f) for f in glob.glob(spec, recursive=True)), key=natural_key)
    return [Path(spec)]


def _is_video_path(path: Path, fps: float | None) -> bool:
    """A video file (by its extension, existing or not), or a folder when --fps is given."""
    if path.is_dir():
        return fps is not None
    return path.suffix.lower() in VIDEO_EXTS


def is_video_request(args) -> bool:
    """True when ``deblur-rotate run`` was given video input: an ``-i`` that is a video file (by extension), or
    a folder together with ``--fps`` (the numbered frames of one video)."""
    fps = getattr(args, "fps", None)
    return any(_is_video_path(p, fps) for spec in args.input for p in _spec_paths(spec))


# ------------------------------------------------------------------------------------------------------ input


@dataclass
class VideoInfo:
    """What :func:`probe_video` learned about a video input (the frames are read by :func:`iter_frames`)."""

    path: Path                        # the file, or the folder of frames
    kind: str                         # "file" (decoded by PyAV) or "frames" (a folder of images)
    fps: Fraction                     # input frame rate, frames per second (exact rational)
    width: int                        # frame width after the display rotation, pixels
    height: int                       # frame height after the display rotation, pixels
    num_frames: int | None            # frames announced (a file's header, may be absent or approximate);
                                      # exact for a folder
    rotation: int = 0                 # display rotation applied on decoding, degrees counter-clockwise
    start_time: float = 0.0           # presentation time of the first video frame, seconds (audio is shifted)
    audio_codec: str | None = None    # codec of the first audio stream; None without audio
    frame_files: list[Path] = field(default_factory=list)  # a folder's frames in order ([] for files)

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _frame_rate(stream, override: float | Fraction | None, path: Path) -> Fraction:
    """The frame rate of a PyAV video ``stream`` (average, else guessed, else base rate) or ``override``;
    UserError when neither gives a usable rate in (0, MAX_FPS] frames/s."""
    if override is not None:
        return _as_fraction(override, "--fps")
    for name in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, name, None)
        if rate is not None and 0 < float(rate) <= MAX_FPS:
            return Fraction(rate)
    raise UserError(f"{path}: the frame rate is unknown (the file records none, or an unusable one); give it "
                    "with --fps")


def _as_fraction(fps: float | Fraction, what: str) -> Fraction:
    """A frame rate in (0, MAX_FPS] as an exact fraction (29.97 -> 2997/100, 30000/1001 kept)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number of frames per second (got {fps!r})") from None
    if not (math.isfinite(value) and 0 < value <= MAX_FPS):
        raise UserError(f"{what} must be in (0, {MAX_FPS:g}] frames per second (got {fps})")
    return Fraction(fps) if isinstance(fps, Fraction) else Fraction(str(value)).limit_denominator(100000)


def _display_rotation(frame) -> int:
    """Counter-clockwise display rotation of a decoded PyAV frame, rounded to 0, 90, 180 or 270 degrees."""
    try:
        angle = float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0
    return round(angle / 90.0) % 4 * 90


def _rgb(frame, rotation: int) -> np.ndarray:
    """A decoded PyAV video frame -> uint8 [H, W, 3] RGB, turned upright by ``rotation`` (degrees CCW)."""
    image = frame.to_ndarray(format="rgb24")
    if rotation:
        image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
    return image


def probe_video(path: str | os.PathLike, fps: float | Fraction | None = None) -> VideoInfo:
    """Open a video file (or a folder of frames, which needs ``fps``), read its first frame, and describe it.

    UserError naming the path when it does not exist, is not a readable video, has no video stream, has no
    frames (zero-length), has no usable frame rate and none is given, or has frames smaller than
    MIN_IMAGE_SIDE pixels."""
    from deblur_rotate.images import MIN_IMAGE_SIDE

    path = Path(path)
    if path.is_dir():
        info = _probe_folder(path, fps)
    elif not path.exists():
        raise UserError(f"{path}: no such file")
    else:
        info = _probe_file(path, fps)
    if min(info.width, info.height) < MIN_IMAGE_SIDE:
        raise UserError(f"{path}: frames are {info.width}x{info.height} pixels, too small to hold a face (at least "
                        f"{MIN_IMAGE_SIDE} pixels a side)")
    return info


def _probe_file(path: Path, fps: float | Fraction | None) -> VideoInfo:
    import av

    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes), a zero-length video")
    try:
        container = av.open(str(path))
    except av.error.EOFError:
        raise UserError(f"{path}: the file ends before its first frame (an empty or zero-length video)") from None
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise UserError(f"{path}: not a readable video ({err.__class__.__name__}: {err})") from None
    try:
        if not container.streams.video:
            what = "only audio" if container.streams.audio else "no streams at all"
            raise UserError(f"{path}: holds no video stream ({what}); give a video file or a folder of frames")
        stream = container.streams.video[0]
        rate = _frame_rate(stream, fps, path)
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as err:
            raise UserError(f"{path}: damaged video data before the first frame ({err})") from None
        if first is None:
            raise UserError(f"{path}: the video has no frames (zero-length)")
        rotation = _display_rotation(first)
        h, w = _rgb(first, rotation).shape[:2]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(path=path, kind="file", fps=rate, width=int(w), height=int(h),
                         num_frames=int(stream.frames) or None, rotation=rotation, start_time=start,
                         audio_codec=audio)
    finally:
        container.close()


def _probe_folder(path: Path, fps: float | Fraction | None) -> VideoInfo:
    from deblur_rotate.images import IMAGE_EXTS, natural_key, read_image

    if fps is None:
        raise UserError(f"{path}: a folder of frames needs its frame rate: give --fps")
    rate = _as_fraction(fps, "--fps")
    files = sorted((f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=natural_key)
    if not files:
        raise UserError(f"{path}: the folder has no image files to use as frames ({', '.join(sorted(IMAGE_EXTS))}); "
                        "the video has no frames")
    first = read_image(files[0])
    return VideoInfo(path=path, kind="frames", fps=rate, width=int(first.shape[1]), height=int(first.shape[0]),
                     num_frames=len(files), frame_files=files)


def iter_frames(info: VideoInfo) -> Iterator[np.ndarray]:
    """The frames of a probed video, one at a time, as uint8 [H, W, 3] RGB (upright, all of one size).

    UserError naming the file and frame (counted from 1) when the data is damaged on the way, or a folder's
    frame has another size than its first."""
    if info.kind == "frames":
        from deblur_rotate.images import read_image

        for k, file in enumerate(info.frame_files):
            image = read_image(file)
            if image.shape[:2] != (info.height, info.width):
                raise UserError(f"{file}: frame {k + 1} is {image.shape[1]}x{image.shape[0]} pixels but the first "
                                f"frame is {info.width}x{info.height}; all frames of a video must have one size")
            yield image
        return
    import av

    try:
        container = av.open(str(info.path))
    except (av.error.FFmpegError, OSError) as err:
        raise UserError(f"{info.path}: cannot reopen the video ({err})") from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        k = 0
        try:
            for frame in container.decode(stream):
                image = _rgb(frame, info.rotation)
                if image.shape[:2] != (info.height, info.width):  # a mid-stream size change: keep one size
                    size = (info.width, info.height) if info.rotation in (0, 180) else (info.height, info.width)
                    image = _rgb(frame.reformat(width=size[0], height=size[1]), info.rotation)
                k += 1
                yield image
        except av.error.FFmpegError as err:
            raise UserError(f"{info.path}: damaged video data after frame {k} ({err})") from None


# ----------------------------------------------------------------------------------------------- face tracks


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (left, top, right, bottom) in pixels, in [0, 1]."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _box_shift(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance between the centres of two boxes in units of the side of ``a`` (mean of its width and height)."""
    side = max(((a[2] - a[0]) + (a[3] - a[1])) / 2.0, 1e-6)
    return float(math.hypot((a[0] + a[2] - b[0] - b[2]) / 2.0, (a[1] + a[3] - b[1] - b[3]) / 2.0) / side)


@dataclass
class FaceTrack:
    """One person's face over a whole video, filled and smoothed (see the module docstring)."""

    landmarks: np.ndarray             # [n, 68, 2] float32 smoothed landmarks, photo pixels, every frame
    boxes: np.ndarray                 # [n, 4] float32 smoothed boxes (left, top, right, bottom), photo pixels
    detected: np.ndarray              # [n] bool: the detector found this face in the frame
    first: int                        # first frame with a detection (0-based)
    last: int                         # last frame with a detection

    @property
    def num_frames(self) -> int:
        return int(self.detected.shape[0])

    def mean_area(self) -> float:
        """Mean box area over the detected frames, square pixels."""
        b = self.boxes[self.detected]
        return float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).mean())

    def mean_center(self) -> np.ndarray:
        """Mean box centre (x, y) over the detected frames, pixels [2]."""
        b = self.boxes[self.detected]
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], -1).mean(0)


class FaceTracker:
    """Assigns each frame's detections to face tracks, online (pass 1 of the video path).

    ``update(frame, detections)`` for every frame in order, then ``tracks(n, ...)``. A detection continues the
    track whose latest box it overlaps by IoU >= ``min_iou``, or whose centre lies within ``max_shift`` box
    sides of it (also of the box predicted at constant velocity from the track's last two detections);
    best pairs are matched first, one detection per track per frame; the others start new tracks.
    """

    def __init__(self,
                 min_iou: float = 0.2,      # boxes overlapping at least this much (IoU, 0..1) continue a track
                 max_shift: float = 0.75,   # ... or centres closer than this, in units of the track's box side
                 ):
        self.min_iou = float(min_iou)
        self.max_shift = float(max_shift)
        # per track: frames [k], boxes [k, 4], landmarks [k, 68, 2] of its detections, in frame order
        self._tracks: list[dict] = []

    def _reference_boxes(self, track: dict, frame: int) -> list[np.ndarray]:
        """The track's last box, and the box moved on at its last velocity to ``frame`` (when it has two)."""
        last = track["boxes"][-1]
        refs = [last]
        if len(track["frames"]) >= 2:
            gap = track["frames"][-1] - track["frames"][-2]
            velocity = (last - track["boxes"][-2]) / max(gap, 1)
            refs.append(last + velocity * (frame - track["frames"][-1]))
        return refs

    def update(self, frame: int, detections: Sequence[tuple[Sequence[float], np.ndarray]]) -> list[int]:
        """Add the detections ``[(box (left, top, right, bottom), landmarks [68, 2]), ...]`` of ``frame`` (0-based,
        increasing). Returns the track index of each detection."""
        pairs = []
        for t, track in enumerate(self._tracks):
            refs = self._reference_boxes(track, frame)
            for d, (box, _lm) in enumerate(detections):
                iou = max(_box_iou(r, box) for r in refs)
                shift = min(_box_shift(r, box) for r in refs)
                if iou >= self.min_iou or shift <= self.max_shift:
                    pairs.append((iou - shift, t, d))
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _score, t, d in sorted(pairs, reverse=True):
            if t not in used_tracks and d not in assigned:
                assigned[d] = t
                used_tracks.add(t)
        out = []
        for d, (box, lm) in enumerate(detections):
            t = assigned.get(d)
            if t is None:
                t = len(self._tracks)
                self._tracks.append({"frames": [], "boxes": [], "landmarks": []})
            track = self._tracks[t]
            track["frames"].append(int(frame))
            track["boxes"].append(np.asarray(box, dtype=np.float32).reshape(4))
            track["landmarks"].append(np.asarray(lm, dtype=np.float32).reshape(68, 2))
            out.append(t)
        return out

    def tracks(self, num_frames: int, smoothing: float = 1.0, min_detections: int = 3) -> list[FaceTrack]:
        """The finished tracks over ``num_frames`` frames, largest (mean box area) first: misses filled, then
        smoothed with sigma ``smoothing`` frames. Tracks with fewer than min(min_detections, the longest
        track's) detections are dropped."""
        if not self._tracks:
            return []
        need = min(int(min_detections), max(len(t["frames"]) for t in self._tracks))
        out = []
        for track in self._tracks:
            if len(track["frames"]) < need:
                continue
            frames = np.asarray(track["frames"])
            detected = np.zeros(num_frames, dtype=bool)
            detected[frames] = True
            values = np.full((num_frames, 68 * 2 + 4), np.nan, dtype=np.float64)
            values[frames, :136] = np.stack(track["landmarks"]).reshape(len(frames), 136)
            values[frames, 136:] = np.stack(track["boxes"])
            values = local_linear_smooth(fill_missing(values, detected), smoothing)
            out.append(FaceTrack(landmarks=values[:, :136].reshape(num_frames, 68, 2).astype(np.float32),
                                 boxes=values[:, 136:].astype(np.float32), detected=detected,
                                 first=int(frames.min()), last=int(frames.max())))
        return sorted(out, key=lambda t: -t.mean_area())


def fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill the rows of ``values`` [n, D] where ``valid`` [n] (bool) is False: linear interpolation between the
    nearest valid rows before and after, and the nearest valid row held before the first / after the last.
    Returns a new float64 [n, D]; ValueError when no row is valid."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if values.ndim != 2 or valid.shape != values.shape[:1]:
        raise ValueError(f"expected values [n, D] and valid [n], got {values.shape} and {valid.shape}")
    if not valid.any():
        raise ValueError("no valid row to fill from")
    if valid.all():
        return values.copy()
    t = np.arange(values.shape[0])
    known = t[valid]
    return np.stack([np.interp(t, known, values[valid, d]) for d in range(values.shape[1])], -1)


def local_linear_smooth(values: np.ndarray, sigma: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Smooth a series ``values`` [n, D] over its first axis (time, in steps of one frame) by a local linear fit
    with Gaussian weights of ``sigma`` frames over a window of +-ceil(2 sigma) frames: a straight-line motion
    comes out unchanged (also at the ends), jitter is averaged away. Rows where ``valid`` [n] is False are
    not used as data (they get the fit of their neighbours; a row with no valid neighbour keeps its value).
    sigma <= 0 returns a copy. Returns float64 [n, D]."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"expected values [n, D], got {y.shape}")
    n = y.shape[0]
    ok = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if sigma <= 0 or n < 2:
        return y.copy()
    radius = math.ceil(2.0 * sigma)
    s0 = np.zeros(n)
    s1 = np.zeros(n)
    s2 = np.zeros(n)
    t0 = np.zeros_like(y)
    t1 = np.zeros_like(y)
    yz = np.where(ok[:, None], y, 0.0)
    for d in range(-radius, radius + 1):
        lo, hi = max(0, -d), min(n, n - d)  # frames i with i + d inside [0, n)
        if hi <= lo:
            continue
        w = math.exp(-0.5 * (d / sigma) ** 2) * ok[lo + d:hi + d]
        s0[lo:hi] += w
        s1[lo:hi] += w * d
        s2[lo:hi] += w * d * d
        t0[lo:hi] += w[:, None] * yz[lo + d:hi + d]
        t1[lo:hi] += (w * d)[:, None] * yz[lo + d:hi + d]
    det = s0 * s2 - s1 * s1
    out = y.copy()
    line = det > 1e-9 * np.maximum(s0 * s2, 1e-12)           # enough spread for a line
    mean = (s0 > 0) & ~line                                  # one point (or one side only at distance 0)
    out[line] = (s2[line, None] * t0[line] - s1[line, None] * t1[line]) / det[line, None]
    out[mean] = t0[mean] / s0[mean, None]
    return out


def _scan_faces(info: VideoInfo, finder, options: VideoOptions) -> tuple[list[FaceTrack], int]:
    """Pass 1: detect faces in every frame and build the tracks. Returns (tracks, number of frames); UserError
    when no frame has a face."""
    from tqdm import tqdm

    tracker = FaceTracker()
    n = 0
    bar = tqdm(total=info.num_frames, unit="frame", desc="finding faces", disable=not options.progress,
               file=sys.stderr, leave=False)
    try:
        for image in iter_frames(info):
            tracker.update(n, finder.find(image))
            n += 1
            bar.update(1)
    finally:
        bar.close()
    if n == 0:
        raise UserError(f"{info.path}: the video has no frames (zero-length)")
    tracks = tracker.tracks(n, smoothing=options.track_smoothing)
    if not tracks:
        raise UserError(f"{info.path}: no face found in any of its {n} frames (dlib HOG and CNN detectors); if the "
                        "frames already are aligned face crops, pass --aligned")
    if options.only_center_face:
        center = np.array([(info.width - 1) / 2.0, (info.height - 1) / 2.0])
        tracks = [min(tracks, key=lambda t: float(np.hypot(*(t.mean_center() - center))))]
    return tracks, n


# ----------------------------------------------------------------------------------------------- time order


def crop_to_crop(image: torch.Tensor, source: np.ndarray | None, target: np.ndarray | None) -> torch.Tensor:
    """Resample ``image`` [C, R, R] (a crop cut from one frame with the similarity ``source`` [2, 3], photo ->
    crop pixels) into the crop of another frame cut with ``target``, so both show the same photo pixels.
    Pixels that fall outside ``image`` are NaN. Without affines (aligned input) the image is returned as is."""
    import torch
    if source is None or target is None:
        return image
    from deblur_rotate.data.align import invert_affine

    r = image.shape[-1]
    inv_t = np.vstack([invert_affine(np.asarray(target, np.float64)), [0.0, 0.0, 1.0]])
    m = np.asarray(source, np.float64) @ inv_t                                      # target crop -> source crop
    v, u = np.meshgrid(np.arange(r, dtype=np.float64), np.arange(r, dtype=np.float64), indexing="ij")
    su = m[0, 0] * u + m[0, 1] * v + m[0, 2]
    sv = m[1, 0] * u + m[1, 1] * v + m[1, 2]
    grid = torch.from_numpy(np.stack([su, sv], -1) / max(r - 1, 1) * 2 - 1).float()[None].to(image.device)
    src = torch.cat([image.float(), torch.ones_like(image[:1]).float()])[None]    # [1, C + 1, R, R]
    out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    return torch.where(out[-1:] > 0.999, out[:-1], torch.full_like(out[:-1], float("nan")))


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two images over the pixels where both are defined (not NaN); inf if none."""
    import torch
    diff = (a.float() - b.float()).abs()
    return float(torch.nanmean(diff)) if bool(torch.isfinite(diff).any()) else math.inf


def choose_order(frames: torch.Tensor, previous_last: torch.Tensor | None = None,
                 following: torch.Tensor | None = None, previous_input: torch.Tensor | None = None,
                 following_input: torch.Tensor | None = None) -> bool:
    """Whether to reverse one exposure's frames so that the video continues smoothly (module docstring).

    frames:          [K, 3, R, R] this input frame's frames in E_v's order, [-1, 1]
    previous_last:   [3, R, R] the last frame written for the previous input frame (None for the first)
    following:       [K, 3, R, R] the next input frame's frames in E_v's order (None for the last frame)
    previous_input, following_input: [3, R, R] the previous and next blurry input crops (None: not used)
    All in this frame's crop coordinates (:func:`crop_to_crop`; NaN pixels are left out). Cost of an order
    (first, last): d(previous_last, first) + min(d(last, following[0]), d(last, following[-1]))
    + d(previous_input, first) + d(last, following_input), d the mean absolute difference, each term only
    when given: the sequence continues the previous output, the next output, and the neighbouring input
    frames (the start of an exposure lies nearer in time to the previous exposure, its end to the next).
    Returns True when the backward order costs less (ties: forward)."""
    if frames.shape[0] < 2:
        return False
    costs = []
    for first, last in ((frames[0], frames[-1]), (frames[-1], frames[0])):
        cost = 0.0
        if previous_last is not None:
            cost += _distance(previous_last, first)
        if following is not None:
            cost += min(_distance(last, following[0]), _distance(last, following[-1]))
        if previous_input is not None:
            cost += _distance(previous_input, first)
        if following_input is not None:
            cost += _distance(last, following_input)
        costs.append(cost)
    return costs[1] < costs[0]


# ----------------------------------------------------------------------------------------------- writing


class Mp4Writer:
    """Streams uint8 [H, W, 3] frames into an H.264 MP4 (libx264, CRF 16; MPEG-4 Part 2 where PyAV lacks
    libx264) at a rational frame rate.

    Frames are encoded into a hidden temporary file beside ``path``; :meth:`close` muxes in the audio of
    ``audio_from`` (copied when MP4 takes its codec, else re-encoded to AAC) and renames the result to ``path``,
    so ``path`` only ever exists complete. :meth:`abort` deletes the temporary files. Odd sides are padded by
    one black pixel (yuv420p needs even sides).
    """

    def __init__(self,
                 path: str | os.PathLike,             # the finished file
                 fps: Fraction,                       # frame rate, frames per second
                 audio_from: str | os.PathLike | None = None,  # a media file whose first audio stream to add
                 audio_offset: float = 0.0,           # seconds of that audio before this video's first frame
                 crf: int = 16,                       # x264 quality (0 lossless .. 51 worst)
                 ):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.audio_from = None if audio_from is None else Path(audio_from)
        self.audio_offset = float(audio_offset)
        self.crf = int(crf)
        self.frames = 0
        self.audio: str | None = None          # what happened to the audio (set by close)
        self._tmp = self.path.with_name(f".{self.path.name}.video.tmp")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W) of the frames

    def _open(self, h: int, w: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), "w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": str(self.crf), "preset": "medium"}
        self._size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] frame (all frames of one writer must have one size)."""
        import av

        frame = np.asarray(frame, dtype=np.uint8)
        if self._container is None:
            self._open(*frame.shape[:2])
        if frame.shape[:2] != self._size:
            raise ValueError(f"frame is {frame.shape[:2]}, this video's frames are {self._size}")
        h, w = self._size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file (flush the encoder, add the audio) and rename it to ``path``. Returns ``path``."""
        if self._container is None:
            raise ValueError(f"{self.path}: no frames were written")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        if self.audio_from is not None:
            muxed = self.path.with_name(f".{self.path.name}.tmp")
            try:
                self.audio = _mux_audio(self._tmp, self.audio_from, self.audio_offset, muxed)
            except BaseException:
                muxed.unlink(missing_ok=True)
                raise
            self._tmp.unlink(missing_ok=True)
            os.replace(muxed, self.path)
        else:
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (nothing is left at ``path`` or in the temporary files)."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is deleted anyway
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)
        self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)


def _audio_layout(channels: int) -> str:
    """A named channel layout for the AAC encoder (more than 2 channels are downmixed to stereo)."""
    return "mono" if channels == 1 else "stereo"


def _mux_audio(video: Path, source: Path, offset: float, out: Path) -> str:
    """Write ``out`` (MP4): the video stream of ``video`` (copied) and the first audio stream of ``source``,
    shifted earlier by ``offset`` seconds (the source's first video frame time, so sound and picture stay in
    step; audio from before it is dropped), interleaved by time. The audio is copied when MP4 takes its codec,
    else decoded and re-encoded to AAC. Returns a description ("copied (aac)", "re-encoded to AAC (from ...)")."""
    import av

    with av.open(str(video)) as vin, av.open(str(source)) as ain, av.open(str(out), "w", format="mp4") as dst:
        v_in, a_in = vin.streams.video[0], ain.streams.audio[0]
        v_out = dst.add_stream_from_template(v_in)
        name = a_in.codec_context.name
        copy = name in MP4_AUDIO_COPY
        if copy:
            a_out = dst.add_stream_from_template(a_in)
        else:
            rate = a_in.codec_context.sample_rate or 48000
            channels = a_in.codec_context.channels or 2
            a_out = dst.add_stream("aac", rate=rate)
            a_out.layout = _audio_layout(channels)
            a_out.bit_rate = int(min(64000 * min(channels, 2), 6 * rate * min(channels, 2)))

        def video_packets():
            for p in vin.demux(v_in):
                if p.dts is not None:
                    yield float(p.dts * p.time_base), 0, p

        def audio_packets():
            if copy:
                shift = round(offset / a_in.time_base) if offset else 0
                for p in ain.demux(a_in):
                    if p.dts is None or p.pts is None:
                        continue
                    p.pts, p.dts = p.pts - shift, p.dts - shift
                    if p.pts + (p.duration or 0) <= 0:
                        continue  # wholly before the first video frame
                    yield float(p.dts * p.time_base), 1, p
                return
            for p in ain.demux(a_in):
                for f in p.decode():
                    if f.pts is not None:
                        f.pts -= round(offset / f.time_base) if offset else 0
                        if f.pts < 0:
                            continue
                    for q in a_out.encode(f):
                        yield float((q.dts if q.dts is not None else 0) * q.time_base), 1, q
            for q in a_out.encode(None):
                yield float((q.dts if q.dts is not None else 0) * q.time_base), 1, q

        for _t, kind, packet in heapq.merge(video_packets(), audio_packets(), key=lambda x: (x[0], x[1])):
            packet.stream = v_out if kind == 0 else a_out
            dst.mux(packet)
    return f"copied ({name})" if copy else f"re-encoded to AAC (from {name})"


# ----------------------------------------------------------------------------------------------- rendering


@dataclass
class _Pending:
    """One input frame between encoding and writing (held for the pose smoothing and the order look-ahead)."""

    index: int                        # input frame number, from 0
    photo: np.ndarray | None          # uint8 [H, W, 3] the input frame (kept for --paste-back only)
    faces: list                       # [F] AlignedFace: crop [R, R, 3], affine, smoothed box and landmarks
    codes: torch.Tensor               # [F, K, num_ws, w_dim] E_v codes resampled to K frames, E_v's order
    pose: torch.Tensor | None         # [F, 3] raw E_3D pose (pitch, yaw, roll), radians; None without E_3D
    same: torch.Tensor                # [F, K, 3, R, R] same-view frames G(codes), E_v's order


class _Renderer:
    """Pass 2: encode each input frame, then (one lag later) choose its order, turn it and write it."""

    def __init__(self, pipe, options: VideoOptions, info: VideoInfo, stage: Path, tracks: list[FaceTrack] | None,
                 factor: int):
        from deblur_rotate.outputs import view_name

        self.pipe, self.options, self.info, self.stage = pipe, options, info, stage
        self.tracks = tracks                  # None: --aligned (one face, the whole frame)
        self.factor = factor                  # K output frames per input frame
        self.num_faces = 1 if tracks is None else len(tracks)
        self.names = [view_name(v, options.to_frontal) for v in options.views]
        self.turn = [i for i, v in enumerate(options.views) if options.to_frontal or v != (0.0, 0.0)]
        self.lag = max(1, math.ceil(2.0 * options.pose_smoothing))
        self.pending: deque[_Pending] = deque()
        self.raw_poses: deque[tuple[int, torch.Tensor]] = deque()   # (frame, [F, 3]) of frames j-lag .. newest
        # per face, of the previous input frame: (last frame written [3, R, R], crop affine [2, 3] or None,
        # blurry input crop [3, R, R]), for the order choice
        self.previous: list[tuple | None] = [None] * self.num_faces
        self.orders = {"forward": 0, "backward": 0}
        self.frames_in = 0
        self.frames_out = 0
        fps_out = info.fps * factor
        audio = info.path if info.has_audio else None
        self.writers: dict[str, Mp4Writer] = {}
        for k in range(self.num_faces):
            for name in self.names:
                self.writers[self._rel(k, f"video_{name}.mp4")] = Mp4Writer(
                    stage / self._rel(k, f"video_{name}.mp4"), fps_out, audio, info.start_time)
        if options.paste_back:
            self.writers[f"video_{PASTED}.mp4"] = Mp4Writer(stage / f"video_{PASTED}.mp4", fps_out, audio,
                                                            info.start_time)
        self.track_log = open(stage / TRACK, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()/abort()

    def _rel(self, face: int, name: str) -> str:
        """Path of a per-face file relative to the output folder (``face_k/`` only with several faces)."""
        return name if self.num_faces == 1 else f"face_{face + 1}/{name}"

    # ------------------------------------------------------------ in

    def push(self, index: int, image: np.ndarray) -> None:
        """Encode input frame ``index`` (uint8 [H, W, 3]) and write the frames that are now ready."""
        import torch

        from deblur_rotate.data.align import warp_image
        from deblur_rotate.faces import AlignedFace, alignment_matrix, square_resize

        r = self.pipe.resolution
        if self.tracks is None:
            faces = [AlignedFace(square_resize(image, r), None, None, None)]
        else:
            faces = []
            for track in self.tracks:
                lm = track.landmarks[index].astype(np.float64)
                a = alignment_matrix(lm, r, self.pipe.crop)
                faces.append(AlignedFace(warp_image(image, a, r), a, tuple(float(v) for v in track.boxes[index]), lm))
        batch = torch.stack([f.tensor() for f in faces])                               # [F, 3, R, R]
        codes, pose = self.pipe.encode(batch)                                          # [F, T, nw, wd], [F, 3]
        codes = self.pipe.resample_frames(codes, self.factor)                          # [F, K, nw, wd]
        same = self.pipe.synthesize(codes)                                             # [F, K, 3, R, R]
        self.pending.append(_Pending(index, image if self.options.paste_back else None, faces, codes,
                                     None if pose is None else pose.detach(), same))
        if pose is not None:
            self.raw_poses.append((index, pose.detach().float().cpu()))
        self.frames_in += 1
        while len(self.pending) > self.lag:
            self._emit()

    def finish(self) -> None:
        """Write the frames still held."""
        while self.pending:
            self._emit()

    # ------------------------------------------------------------ out

    def _smoothed_pose(self, index: int) -> torch.Tensor | None:
        """The pose of frame ``index`` smoothed over the held window (local linear fit), [F, 3] radians."""
        import torch
        if not self.raw_poses:
            return None
        while self.raw_poses and self.raw_poses[0][0] < index - self.lag:
            self.raw_poses.popleft()
        frames = [i for i, _ in self.raw_poses]
        window = torch.stack([p for _, p in self.raw_poses]).numpy().astype(np.float64)  # [m, F, 3]
        window = np.unwrap(window, axis=0)
        smooth = local_linear_smooth(window.reshape(len(frames), -1), self.options.pose_smoothing)
        at = frames.index(index)
        return torch.from_numpy(smooth[at].reshape(self.num_faces, 3)).float().to(self.pipe.device)

    def _in_track(self, face: int, index: int) -> bool:
        """Whether face ``face`` is pasted at frame ``index`` (between its first and last detection)."""
        return self.tracks is None or self.tracks[face].first <= index <= self.tracks[face].last

    def _emit(self) -> None:
        import torch

        from deblur_rotate.files import save_png, to_uint8
        from deblur_rotate.faces import paste_back

        item = self.pending.popleft()
        following = self.pending[0] if self.pending else None
        pose = self._smoothed_pose(item.index)
        codes, same = item.codes, item.same
        flips = []
        for k in range(self.num_faces):
            here = item.faces[k].affine                                                # [2, 3] or None
            prev = self.previous[k]                                                    # (last, affine, input)
            nxt = None if following is None else following.faces[k]
            flip = choose_order(
                same[k],
                previous_last=None if prev is None else crop_to_crop(prev[0], prev[1], here),
                following=None if nxt is None else torch.stack(
                    [crop_to_crop(f, nxt.affine, here) for f in following.same[k, [0, -1]]]),
                previous_input=None if prev is None else crop_to_crop(prev[2], prev[1], here),
                following_input=None if nxt is None else crop_to_crop(nxt.tensor().to(same), nxt.affine, here))
            flips.append(flip)
            self.orders["backward" if flip else "forward"] += 1
        if any(flips):
            idx = torch.tensor(flips, device=codes.device)
            codes = torch.where(idx[:, None, None, None], codes.flip(1), codes)
            same = torch.where(idx[:, None, None, None, None], same.flip(1), same)
        for k in range(self.num_faces):
            self.previous[k] = (same[k, -1], item.faces[k].affine, item.faces[k].tensor().to(same))
        per_view = [None] * len(self.names)                                            # [F, K, 3, R, R] each
        for i in range(len(self.names)):
            if i not in self.turn:
                per_view[i] = same
        if self.turn:
            views = [self.options.views[i] for i in self.turn]
            turned = self.pipe.synthesize(self.pipe.rotate(codes, pose, views, self.options.to_frontal))
            for j, i in enumerate(self.turn):                                          # turned: [F, V', K, 3, R, R]
                per_view[i] = turned[:, j]
        r = self.pipe.resolution
        for i, name in enumerate(self.names):
            frames = to_uint8(per_view[i].flatten(0, 1)).reshape(self.num_faces, self.factor, r, r, 3)
            for k in range(self.num_faces):
                writer = self.writers[self._rel(k, f"video_{name}.mp4")]
                for t in range(self.factor):
                    writer.write(frames[k, t])
                    if self.options.save_frames:
                        self._png(self._rel(k, f"frames/{name}"), item.index * self.factor + t, frames[k, t],
                                  save_png)
        if self.options.paste_back:
            own = to_uint8(same.flatten(0, 1)).reshape(self.num_faces, self.factor, r, r, 3)
            present = [k for k in range(self.num_faces) if self._in_track(k, item.index)]
            writer = self.writers[f"video_{PASTED}.mp4"]
            for t in range(self.factor):
                pasted = paste_back(item.photo, [(item.faces[k], own[k, t]) for k in present])
                writer.write(pasted)
                if self.options.save_frames:
                    self._png(f"frames/{PASTED}", item.index * self.factor + t, pasted, save_png)
        self.frames_out += self.factor
        self._log(item, flips, pose)

    def _png(self, folder: str, number: int, image: np.ndarray, save_png) -> None:
        """frames/<...>/frame_NNNNNN.png, numbered from 1 over the whole output video."""
        path = self.stage / folder / f"frame_{number + 1:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(path, image, compress_level=6)

    def _log(self, item: _Pending, flips: list[bool], pose: torch.Tensor | None) -> None:
        faces = []
        for k in range(self.num_faces):
            entry: dict = {"face": k + 1, "order": "backward" if flips[k] else "forward"}
            if self.tracks is not None:
                track = self.tracks[k]
                entry["detected"] = bool(track.detected[item.index])
                entry["in_track"] = self._in_track(k, item.index)
                entry["box"] = [round(float(v), 2) for v in track.boxes[item.index]]
            if pose is not None:
                entry["pose_deg"] = dict(zip(("pitch", "yaw", "roll"),
                                             (round(math.degrees(float(a)), 3) for a in pose[k].cpu())))
            faces.append(entry)
        line = {"frame": item.index, "time_s": round(float(item.index / self.info.fps), 6), "faces": faces}
        self.track_log.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------ end

    def close(self) -> dict[str, str | None]:
        """Finish every video (rename into place inside the stage). Returns {file: audio description}."""
        self.track_log.close()
        return {rel: (w.close(), w.audio)[1] for rel, w in self.writers.items()}

    def abort(self) -> None:
        """Drop every unfinished file."""
        if not self.track_log.closed:
            self.track_log.close()
        for w in self.writers.values():
            w.abort()


def process_video(source: str | os.PathLike | VideoInfo, dest: str | os.PathLike, pipe, options: VideoOptions,
                  finder=None) -> dict:
    """Turn one video (a file, a folder of frames, or a :class:`VideoInfo` from :func:`probe_video`) into the
    outputs of the module docstring, in ``dest`` (replaced when complete; nothing is left there on an error).

    pipe: a :class:`~deblur_rotate.pipeline.DeblurRotatePipeline`; finder: a face finder with
    ``find(image) -> [(box, landmarks [68, 2]), ...]`` (default :class:`~deblur_rotate.faces.FaceFinder`; not
    used with ``options.aligned``). Returns the record written to ``dest/result.json``. UserError for problems
    of this input (see the module docstring) or of the request (a --factor the model cannot do)."""
    from tqdm import tqdm

    from deblur_rotate.files import replace_dir
    from deblur_rotate.outputs import view_name

    info = source if isinstance(source, VideoInfo) else probe_video(source, options.fps)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{info.path}: its output path {dest} is a file; move it away or choose another -o")
    factor = _check_factor(options.factor, pipe.num_frames)
    pipe.check_request(options.views, options.to_frontal)
    for sigma, what in ((options.track_smoothing, "--track-smoothing"), (options.pose_smoothing, "--pose-smoothing")):
        if not (math.isfinite(sigma) and 0 <= sigma <= 100):
            raise UserError(f"{what} must be between 0 and 100 input frames (got {sigma})")

    tracks, n = None, info.num_frames
    if not options.aligned:
        if finder is None:
            from deblur_rotate.faces import FaceFinder

            finder = FaceFinder()
        tracks, n = _scan_faces(info, finder, options)

    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    renderer = None
    try:
        renderer = _Renderer(pipe, options, info, stage, tracks, factor)
        bar = tqdm(total=n, unit="frame", desc="rendering", disable=not options.progress, file=sys.stderr,
                   leave=False)
        try:
            for index, image in enumerate(iter_frames(info)):
                if tracks is not None and index >= tracks[0].num_frames:
                    break  # a second decode that yields more frames than the first: keep the tracked ones
                renderer.push(index, image)
                bar.update(1)
            renderer.finish()
        finally:
            bar.close()
        if renderer.frames_in == 0:
            raise UserError(f"{info.path}: the video has no frames (zero-length)")
        audio = renderer.close()
        written = sorted(str(p.relative_to(stage).as_posix()) for p in stage.rglob("*") if p.is_file())
        fps_out = info.fps * factor
        record = {
            "input": str(info.path),
            "kind": "video file" if info.kind == "file" else "folder of frames",
            "size": [info.width, info.height],
            "rotation_deg": info.rotation,
            "fps_in": float(info.fps), "fps_in_exact": str(info.fps),
            "fps_out": float(fps_out), "fps_out_exact": str(fps_out),
            "factor": factor,
            "frames_in": renderer.frames_in, "frames_out": renderer.frames_out,
            "seconds": float(renderer.frames_in / info.fps),
            "views": [{"name": view_name(v, options.to_frontal), "dyaw_deg": v[0], "dpitch_deg": v[1]}
                      for v in options.views],
            "to_frontal": options.to_frontal,
            "aligned": options.aligned,
            "order": dict(renderer.orders),
            "smoothing": {"track_sigma_frames": options.track_smoothing, "pose_sigma_frames": options.pose_smoothing},
            "paste_back": ({"background": "repeated: each input frame shown for its K output frames"}
                           if options.paste_back else None),
            "audio": next(iter(audio.values()), None) if info.has_audio else None,
            "faces": [],
            "files": written + [RESULT],
        }
        for k in range(renderer.num_faces):
            face = {"folder": renderer._rel(k, ".").rstrip("/.") or "."}
            if tracks is not None:
                t = tracks[k]
                face.update({"detected_frames": int(t.detected.sum()),
                             "filled_frames": int(t.num_frames - t.detected.sum()),
                             "first_detected_frame": t.first, "last_detected_frame": t.last})
            record["faces"].append(face)
        from deblur_rotate.files import atomic_write_json

        atomic_write_json(stage / RESULT, record)
        replace_dir(stage, dest)
    except BaseException:
        if renderer is not None:
            renderer.abort()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return record


# ---------------------------------------------------------------------------------------------------- command


def run_video_command(args, run_options) -> int:
    """``deblur-rotate run`` on video input (``is_video_request(args)``): every ``-i`` must be a video. Inputs are
    all checked first (a bad one: UserError, nothing written); then each goes to ``OUT/<stem>/`` and
    ``OUT/summary.json`` lists them. Returns 0."""
    from deblur_rotate.files import atomic_write_json
    from deblur_rotate.outputs import check_output_folder, output_names
    from deblur_rotate.pipeline import DeblurRotatePipeline, bundled_model_dir

    paths: list[Path] = []
    for spec in args.input:
        found = _spec_paths(spec)
        if not found:
            raise UserError(f"{spec}: the pattern matches no files")
        for p in found:
            if not _is_video_path(p, args.fps):
                raise UserError(f"{p} is not a video (or a folder given with --fps) but other inputs are: run photos "
                                "and videos separately")
            paths.append(p)
    paths = list(dict.fromkeys(paths))
    for flag, given in (("--sweep", args.sweep is not None), ("--num-frames", args.num_frames is not None),
                        ("--save-latents", args.save_latents)):
        if given:
            hint = " (use --factor for the frames per input frame)" if flag == "--num-frames" else ""
            raise UserError(f"{flag} is for photos; it does not apply to video input{hint}")
    options = VideoOptions(views=run_options.views, to_frontal=run_options.to_frontal, factor=args.factor,
                           fps=args.fps, aligned=run_options.aligned, only_center_face=run_options.only_center_face,
                           paste_back=run_options.paste_back, save_frames=args.save_frames,
                           track_smoothing=args.track_smoothing, pose_smoothing=args.pose_smoothing,
                           progress=args.progress)
    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; give a folder for -o")
    infos = [probe_video(p, options.fps) for p in paths]  # every input checked before anything is written
    pipe = DeblurRotatePipeline.from_pretrained(args.model, device=args.device)
    # video input refines only when asked (--refine-steps N): the refinement costs N passes of G per input frame
    # (seconds per frame on a CPU), while photos use the model's default
    pipe.refine = pipe.refine_settings(getattr(args, "refine_steps", None) or 0)
    pipe.check_request(options.views, options.to_frontal)
    _check_factor(options.factor, pipe.num_frames)
    if run_options.save_pose and not pipe.has_pose:
        raise UserError(f"{pipe.name} has no face3d_encoder (E_3D): there is no pose for --save-pose")
    check_output_folder(out)
    finder = None
    if not options.aligned:
        from deblur_rotate.faces import FaceFinder

        finder = FaceFinder()
    done = []
    for info, name in zip(infos, output_names(paths)):
        record = process_video(info, out / name, pipe, options, finder)
        done.append({"input": str(info.path), "output": str(out / name), "frames_in": record["frames_in"],
                     "frames_out": record["frames_out"], "fps_out": record["fps_out"], "faces": len(record["faces"])})
        print(f"  {info.path} -> {out / name}: {record['frames_in']} frames at {record['fps_in']:.4g} fps -> "
              f"{record['frames_out']} at {record['fps_out']:.4g} fps, {len(record['faces'])} face(s)")
    model = args.model if args.model is not None else bundled_model_dir()
    atomic_write_json(out / SUMMARY, {"model": str(model), "device": str(pipe.device), "kind": "video",
                                      "done": done, "failed": []})
    print(f"done: {len(done)} video(s) -> {out}")
    return 0
