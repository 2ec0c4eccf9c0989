"""Face tracks through a video: detections linked frame to frame by box overlap into tracks, gaps filled and
landmarks smoothed over time (a local linear fit with Gaussian weights), so that each face is cropped the same way
from frame to frame. Pure numpy: landmarks ``[68, 2]`` (u, v) pixels, boxes (left, top, right, bottom) pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FaceTrack", "FaceTracker", "fill_missing", "local_linear_smooth"]


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
