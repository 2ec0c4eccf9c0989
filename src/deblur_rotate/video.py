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
import json
import math
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deblur_rotate.errors import UserError
from deblur_rotate.face_tracks import FaceTrack, FaceTracker, local_linear_smooth
from deblur_rotate.video_io import VIDEO_EXTS, Mp4Writer, VideoInfo, iter_frames, probe_video

if TYPE_CHECKING:  # torch is imported where it is used: `run --help` stays light
    import torch

__all__ = [
    "VideoOptions",
    "add_video_arguments",
    "allowed_factors",
    "choose_order",
    "is_video_request",
    "process_video",
    "run_video_command",
]

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


# ----------------------------------------------------------------------------------------------- face tracks


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
        codes, pose, refined = self.pipe.encode_with_report(batch)                     # [F, T, nw, wd], [F, 3]
        codes = self.pipe.resample_frames(codes, self.factor)                          # [F, K, nw, wd]
        same = refined.add_residual(self.pipe.synthesize(codes))                       # [F, K, 3, R, R] input view
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

        from deblur_rotate.faces import paste_back
        from deblur_rotate.files import save_png, to_uint8

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
        record = _video_record(info, renderer, tracks, options, factor, written, audio)
        from deblur_rotate.files import atomic_write_json

        atomic_write_json(stage / RESULT, record)
        replace_dir(stage, dest)
    except BaseException:
        if renderer is not None:
            renderer.abort()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return record


def _video_record(info: VideoInfo, renderer, tracks, options: VideoOptions, factor: int, written: list[str],
                  audio: dict) -> dict:
    """``result.json`` of a rendered video: input and output timing, views, time orders, smoothing, audio
    (``audio``: what the renderer's close() said of each written track), and per face its folder and (tracked
    input) how many frames were detected or filled in."""
    from deblur_rotate.outputs import view_name

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
    # (seconds per frame on a CPU), while photos use the model's default; the residual (one G pass) is as the model says
    pipe.refine = pipe.refine_settings(getattr(args, "refine_steps", None) or 0,
                                       getattr(args, "refine_residual", None))
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
