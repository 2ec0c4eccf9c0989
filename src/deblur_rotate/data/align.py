"""Face detection (dlib), 68-point landmarks and the FFHQ-style similarity crop.

Conventions (docs/DESIGN.md): images on disk and in this module are uint8 ``[H, W, 3]`` RGB numpy arrays;
landmarks are ``[68, 2]`` float (u, v) pixels in the iBUG 300-W layout with pixel centres at integer
coordinates (the top-left pixel's centre is (0, 0)).

The crop follows the FFHQ recipe (Karras et al. 2019, ``ffhq-dataset/download_ffhq.py``): an oriented
square centred a little below the eyes' midpoint, its x axis along the eye-to-eye direction corrected
by the eye-to-mouth direction, side ``2 * max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|)``. Here it is a
similarity transform ``A`` (2 x 3, source pixel -> output pixel), so the same matrix maps the image
(:func:`warp_image`) and the landmarks (:func:`transform_points`). Unlike FFHQ we pad by reflection
without the blurred border blend.

The dlib models ship with the ``face_recognition_models`` package; we locate its folder without importing
it (its ``__init__`` needs ``pkg_resources``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deblur_rotate.dlib_models import LANDMARKS_68, dlib_model_file
from deblur_rotate.errors import UserError

__all__ = ["FaceAligner", "MIRROR_68", "dlib_model_dir", "ffhq_transform", "transform_points", "warp_image",
           "invert_affine"]

_PREDICTOR = LANDMARKS_68
_CNN_DETECTOR = "mmod_human_face_detector.dat"
# iBUG 300-W point k of a face <-> point MIRROR_68[k] of its mirror image (jaw, brows, nostrils, eyes, mouth swap
# sides; the nose bridge and the mouth's middle points stay)
MIRROR_68 = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
                     + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                     + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


def dlib_model_dir() -> Path:
    """Folder holding dlib's model files (from the ``face_recognition_models`` package)."""
    return dlib_model_file(_PREDICTOR).parent


class FaceAligner:
    """dlib face detector + 68-landmark predictor. Models load lazily on first use (so instances pickle
    cheaply into worker processes)."""

    def __init__(self, detector: str = "hog",  # 'hog' (fast, frontal-ish faces) or 'cnn' (MMOD, slower, more poses)
                 upsample: int = 1,  # times the detector upsamples the image (finds faces ~2x smaller each time)
                 max_side: int = 640):  # images are shrunk to this longest side for detection only (speed)
        if detector not in ("hog", "cnn"):
            raise UserError(f"face detector must be 'hog' or 'cnn' (got {detector!r})")
        self.detector_kind, self.upsample, self.max_side = detector, int(upsample), int(max_side)
        self._detector = None
        self._predictor = None

    def __getstate__(self):
        return {"detector_kind": self.detector_kind, "upsample": self.upsample, "max_side": self.max_side,
                "_detector": None, "_predictor": None}

    def _load(self) -> None:
        if self._predictor is not None:
            return
        import dlib

        folder = dlib_model_dir()
        self._predictor = dlib.shape_predictor(str(folder / _PREDICTOR))
        if self.detector_kind == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(folder / _CNN_DETECTOR))
        else:
            self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes ``(left, top, right, bottom)`` in pixels of ``image`` (uint8 [H, W, 3]), largest first."""
        return [box for box, _ in self.detect_scored(image)]

    def detect_scored(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """``[(box, score), ...]``, largest box first: the boxes of :meth:`detect` with the detector's score
        (HOG: its adjusted SVM score, >= 0 for what dlib reports as a face; CNN: the MMOD confidence)."""
        self._load()
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = image
        if scale < 1.0:
            h, w = image.shape[:2]
            small = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                             Image.BILINEAR))
        small = np.ascontiguousarray(small)
        if self.detector_kind == "cnn":
            found = self._detector(small, self.upsample)
            scored = [(d.rect, float(d.confidence)) for d in found]
        else:
            rects, scores, _ = self._detector.run(small, self.upsample, 0.0)  # 0: dlib's own threshold
            scored = list(zip(rects, (float(v) for v in scores)))
        boxes = [((r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale), score)
                 for r, score in scored]
        return sorted(boxes, key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 landmarks ``[68, 2]`` float32 (u, v) pixels of the face in ``box`` (left, top, right, bottom)."""
        import dlib

        self._load()
        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def mirror_disagreement(self, image: np.ndarray, box: tuple[float, float, float, float],
                            landmarks: np.ndarray, mirrored: np.ndarray | None = None) -> float:
        """How badly the 68 landmarks fit: the mean distance between ``landmarks`` and those predicted on the
        mirror image (mirrored back, points paired by :data:`MIRROR_68`), as a share of the box width. A face
        gives about 0.01 (0.004-0.013 on sharp and motion-blurred photos); the predictor run on a non-face
        (a patch, a pattern) disagrees with itself several times more. Points outside the photo (a face cut by
        its edge) are guesses both ways and are left out while 20 or more remain. ``mirrored``:
        ``image[:, ::-1]`` when the caller already has it (it is made otherwise)."""
        h, w = image.shape[:2]
        flipped = np.ascontiguousarray(image[:, ::-1]) if mirrored is None else mirrored
        other = self.landmarks(flipped, (w - 1 - box[2], box[1], w - 1 - box[0], box[3])).astype(np.float64)
        other[:, 0] = w - 1 - other[:, 0]
        other = other[MIRROR_68]
        own = np.asarray(landmarks, np.float64)
        distance = np.linalg.norm(own - other, axis=1)

        def inside(p: np.ndarray) -> np.ndarray:
            return (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)

        keep = inside(own) & inside(other)
        if keep.sum() >= 20:
            distance = distance[keep]
        return float(distance.mean() / max(box[2] - box[0], 1.0))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks ``[68, 2]`` of the largest face in ``image``, or None when no face is found."""
        boxes = self.detect(image)
        if not boxes:
            return None
        return self.landmarks(image, boxes[0])


def ffhq_transform(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Similarity ``A`` (2 x 3 float64) mapping source pixels (u, v) to pixels of the ``size`` x ``size``
    FFHQ-style crop of the face with ``landmarks [68, 2]``: ``out = A @ [u, v, 1]``.

    The oriented square's corners land on the output's outer pixel edges (-0.5 and size - 0.5).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ValueError(f"landmarks must be a finite [68, 2] array, got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= max(np.hypot(*x), 1e-8)
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)  # half the square's side, pixels
    center = eye_avg + eye_to_mouth * 0.1
    scale = size / (2.0 * half)
    # rows of R: the crop's x axis (unit x) and y axis (x turned +90 degrees, i.e. pointing down the face)
    rot = np.array([[x[0], x[1]], [-x[1], x[0]]])
    linear = scale * rot
    offset = (size - 1) / 2.0 - linear @ center
    return np.concatenate([linear, offset[:, None]], 1)


def invert_affine(a: np.ndarray) -> np.ndarray:
    """Inverse of a 2 x 3 affine map."""
    linear_inv = np.linalg.inv(a[:, :2])
    return np.concatenate([linear_inv, (-linear_inv @ a[:, 2])[:, None]], 1)


def transform_points(a: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply the 2 x 3 map ``a`` to points ``[..., 2]``; NaN points stay NaN. float32 out."""
    p = np.asarray(points, dtype=np.float64)
    out = p @ a[:, :2].T + a[:, 2]
    return out.astype(np.float32)


def warp_image(image: np.ndarray, a: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` (uint8 [H, W, 3]) under ``a`` (source -> output pixels):
    bilinear sampling, reflection padding outside the image; when the crop shrinks the image more than
    2x, the image is first box-reduced by an integer factor (anti-aliasing). uint8 [size, size, 3] out."""
    a = np.asarray(a, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    factor = int(np.floor(1.0 / scale)) if scale < 0.5 else 1
    src = image
    if factor > 1:
        src = np.asarray(Image.fromarray(image).reduce(factor))
        # reduced pixel j covers source pixels j*f .. j*f + f - 1: u = f * u' + (f - 1) / 2
        up = np.array([[factor, 0.0, (factor - 1) / 2.0], [0.0, factor, (factor - 1) / 2.0], [0, 0, 1]])
        a = a @ up
    inv = invert_affine(a)  # output -> source pixels
    grid_u, grid_v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    su = inv[0, 0] * grid_u + inv[0, 1] * grid_v + inv[0, 2]
    sv = inv[1, 0] * grid_u + inv[1, 1] * grid_v + inv[1, 2]
    h, w = src.shape[:2]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels
    grid = np.stack([su / max(w - 1, 1) * 2 - 1, sv / max(h - 1, 1) * 2 - 1], -1)
    tensor = torch.from_numpy(np.array(src, copy=True)).permute(2, 0, 1)[None].float()
    out = F.grid_sample(tensor, torch.from_numpy(grid)[None].float(), mode="bilinear", padding_mode="reflection",
                        align_corners=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
