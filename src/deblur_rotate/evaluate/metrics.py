"""Evaluation instruments of the paper's tables (§4): PSNR, SSIM, landmark error, identity accuracy.

Every function here is pure (no hidden state; dlib's models are loaded once and cached, read-only).
Conventions (docs/DESIGN.md): images ``[..., 3, H, W]`` float in [-1, 1]; videos ``[N, T, 3, H, W]``;
landmarks ``[..., 68, 2]`` (u, v) pixels, pixel centres at integer coordinates, iBUG 300-W order.

Forward/backward ambiguity (paper §4): a blurry image does not tell which way time ran, so a predicted
5-frame video is scored as ordered and reversed and the better of the two is kept per sequence
(:func:`best_order`, :func:`video_metric`). Frame groups of Table 1 (:data:`FRAME_GROUPS`): the middle
frame (3), frames 2 and 4, frames 1 and 5, and all five (frames numbered 1..5 as in the paper).

Missing values are NaN: a frame where dlib finds no face has NaN landmarks and a NaN descriptor; the
summaries (:func:`frame_group_summary`, :func:`view_pair_summary`) average what is there and count
what is missing, so a report can say "n = 118 of 120, 2 without a detected face".

The settings are in :data:`PROTOCOL` (print it with every table).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deblur_rotate.image_metrics import (  # the image and video measures, shared with training
    SSIM_SIGMA,
    SSIM_WINDOW,
    OrderChoice,
    apply_order,
    best_order,
    motion_energy,
    motion_ratio,
    psnr,
    reverse_frames,
    sharpness,
    sharpness_ratio,
    ssim,
    video_metric,
)

__all__ = [
    "FRAME_GROUPS",
    "PROTOCOL",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "VIEW_PAIRS",
    "LandmarkDetections",
    "LandmarkError",
    "OrderChoice",
    "apply_order",
    "best_order",
    "detect_landmarks",
    "face_descriptors",
    "frame_group_summary",
    "identity_topk",
    "landmark_error",
    "motion_energy",
    "motion_ratio",
    "nanmean_count",
    "psnr",
    "reverse_frames",
    "sharpness",
    "sharpness_ratio",
    "ssim",
    "video_metric",
    "view_pair_summary",
]

PROTOCOL = (
    "PSNR: 10 log10(1 / MSE) on images mapped from [-1, 1] to [0, 1] (data range 1), MSE over all pixels and "
    "RGB channels of one image, dB, identical images give inf. "
    f"SSIM: kornia.metrics.ssim on [0, 1] images, {SSIM_WINDOW}x{SSIM_WINDOW} Gaussian window, sigma "
    f"{SSIM_SIGMA}, K1 = 0.01, K2 = 0.03, data range 1, 'valid' region (no padding, as Wang et al.'s code and "
    "skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False)), mean over pixels "
    "and RGB channels of one image. "
    "Videos: every sequence scored as ordered and reversed, the better order kept per sequence "
    "(forward/backward ambiguity). "
    "Landmarks: dlib HOG face detector + 68-point shape predictor (face_recognition_models) on frames "
    "upscaled to at least 256 px, largest face; error = mean point-to-point distance over the 68 points, in "
    "pixels of the evaluated image and in % of its width; frames without a detected face are counted and left "
    "out of the means. "
    "Identity: 128-d descriptors of the ported dlib face-recognition ResNet on 150 px chips aligned from the "
    "68 landmarks (dlib's get_face_chip geometry, padding 0.25); a query is classified by the identity of its "
    "nearest gallery descriptor (Euclidean); top-k = the true identity is among the k nearest identities."
)

# Frame groups of Table 1, as 0-based indices into a 5-frame video.
FRAME_GROUPS: dict[str, tuple[int, ...]] = {
    "middle (3)": (2,),
    "frames 2,4": (1, 3),
    "frames 1,5": (0, 4),
    "all": (0, 1, 2, 3, 4),
}

# Mirror pairs of the 8-view rig (views numbered 1..8; 4 and 5 nearest to frontal).
VIEW_PAIRS: tuple[tuple[int, int], ...] = ((1, 8), (2, 7), (3, 6), (4, 5))


# ------------------------------------------------------------------------------------------ landmarks

@dataclass
class LandmarkDetections:
    """Result of :func:`detect_landmarks`."""

    landmarks: torch.Tensor  # [..., 68, 2] float32 CPU, (u, v) pixels of the input images; NaN where no face
    found: torch.Tensor  # [...] bool: a face was detected

    @property
    def missed(self) -> int:
        """Number of images without a detected face."""
        return int((~self.found).sum())


@functools.lru_cache(maxsize=4)
def _aligner(detector: str, upsample: int):
    from deblur_rotate.data.align import FaceAligner

    # max_side large: the caller already chose the detection size
    return FaceAligner(detector=detector, upsample=upsample, max_side=4096)


def _resize_uint8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def detect_landmarks(images: torch.Tensor, min_size: int = 256, upsample: int = 0,
                     detector: str = "hog") -> LandmarkDetections:
    """dlib's 68 landmarks of the largest face in each image; NaN (and ``found`` False) where none is found.

    images: ``[..., 3, H, W]`` in [-1, 1] (e.g. generated frames ``[N, T, 3, H, W]``).
    min_size: images whose shorter side is below this are upscaled (bicubic) to it before detection, because
              dlib's HOG detector misses faces under ~80 px (generated frames are 64-256 px); the landmarks
              are mapped back to the input's pixels.
    upsample: dlib detector upsampling (each step finds faces ~2x smaller, and more false faces).
    detector: 'hog' (dlib's frontal detector) or 'cnn' (MMOD; slower, more poses).
    Returns :class:`LandmarkDetections` (``landmarks [..., 68, 2]``, ``found [...]``). Not differentiable.
    """
    from deblur_rotate.files import to_uint8

    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images [..., 3, H, W], got {tuple(images.shape)}")
    lead = images.shape[:-3]
    h, w = images.shape[-2:]
    pixels = to_uint8(images.reshape(-1, 3, h, w))  # [M, H, W, 3]
    scale = max(1.0, min_size / min(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # (width, height) for detection
    sx, sy = size[0] / w, size[1] / h
    aligner = _aligner(detector, int(upsample))
    out = np.full((pixels.shape[0], 68, 2), np.nan, dtype=np.float32)
    for i, image in enumerate(pixels):
        big = image if scale == 1.0 else _resize_uint8(image, *size)
        points = aligner(big)
        if points is not None:
            # pixel centres at integers: u = (u' + 0.5) / s - 0.5
            out[i] = (points + 0.5) / np.array([sx, sy], dtype=np.float32) - 0.5
    landmarks = torch.from_numpy(out).reshape(*lead, 68, 2)
    return LandmarkDetections(landmarks=landmarks, found=~landmarks.isnan().flatten(-2).any(-1))


@dataclass
class LandmarkError:
    """Result of :func:`landmark_error`."""

    pixels: torch.Tensor  # [...] mean point-to-point error, pixels; NaN where a prediction is missing
    percent_width: torch.Tensor  # [...] the same in % of the image width


def landmark_error(pred: torch.Tensor, gt: torch.Tensor, image_width: float) -> LandmarkError:
    """Mean point-to-point (Euclidean) landmark error per image.

    pred, gt: ``[..., 68, 2]`` (u, v) pixels (any K points work); NaN rows in ``pred`` (no face found) give NaN.
    image_width: width of the images the landmarks live in, pixels (for the % figure).
    Returns :class:`LandmarkError` with ``pixels [...]`` and ``percent_width [...]``.
    """
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"expected two [..., K, 2] landmark tensors, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    err = (pred.double() - gt.double()).norm(dim=-1).mean(-1).float()  # [...]
    return LandmarkError(pixels=err, percent_width=err * (100.0 / float(image_width)))


# ------------------------------------------------------------------------------------------- identity

@functools.lru_cache(maxsize=2)
def _identity_net(device: str):
    from deblur_rotate.models.identity import load_dlib_face_recognition

    return load_dlib_face_recognition(device=device)


@torch.no_grad()
def face_descriptors(images: torch.Tensor, landmarks: torch.Tensor | None = None,
                     net: torch.nn.Module | None = None, batch_size: int = 32) -> torch.Tensor:
    """128-d dlib face descriptors (ported network, :mod:`deblur_rotate.models.identity`).

    images: ``[N, 3, H, W]`` in [-1, 1].
    landmarks: ``[N, 68, 2]`` pixels to align the 150 px chips with (e.g. ground truth); None: detected
               with :func:`detect_landmarks`. Rows with NaN landmarks give NaN descriptors.
    net: a :class:`~deblur_rotate.models.identity.DlibFaceRecognitionNet` taking [-1, 1] chips (default: dlib's
         weights, loaded once, on the images' device).
    Returns ``[N, 128]`` float32 (on the images' device).
    """
    from deblur_rotate.models.identity import chip_transforms_from_landmarks, extract_face_chips

    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    if landmarks is None:
        landmarks = detect_landmarks(images).landmarks
    if landmarks.shape != (images.shape[0], 68, 2):
        raise ValueError(f"expected landmarks [{images.shape[0]}, 68, 2], got {tuple(landmarks.shape)}")
    net = net if net is not None else _identity_net(str(images.device))
    out = torch.full((images.shape[0], 128), float("nan"), device=images.device)
    ok = ~landmarks.isnan().flatten(1).any(1)
    index = ok.nonzero().flatten().tolist()
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        transforms = chip_transforms_from_landmarks(landmarks[part].cpu())  # [B, 2, 3] chip -> image pixels
        chips = extract_face_chips(images[part].float(), transforms)  # [B, 3, 150, 150]
        out[part] = net(chips).float()
    return out


def _label_ids(labels: Sequence | np.ndarray | torch.Tensor, vocabulary: dict) -> np.ndarray:
    values = labels.tolist() if isinstance(labels, (torch.Tensor, np.ndarray)) else list(labels)
    return np.array([vocabulary.setdefault(v, len(vocabulary)) for v in values], dtype=np.int64)


def identity_topk(query_desc: torch.Tensor, query_labels: Sequence | torch.Tensor | np.ndarray,
                  gallery_desc: torch.Tensor, gallery_labels: Sequence | torch.Tensor | np.ndarray,
                  k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Nearest-identity classification accuracy (paper's identity metric).

    query_desc: ``[Q, D]`` descriptors of generated faces; query_labels: Q identity labels (ints or strings).
    gallery_desc: ``[G, D]`` descriptors of real faces; gallery_labels: G labels (every query's identity must
                  appear). Identities are ranked by the distance to their nearest gallery descriptor.
    k: the top-k accuracies to report.
    Returns ``{"top1": ..., "top5": ..., "n": Q, "missing": M}``: accuracies in [0, 1] over all Q queries,
    where a query with a NaN descriptor (no face found) counts as wrong; ``missing`` counts those.
    """
    query, gallery = query_desc.double().cpu(), gallery_desc.double().cpu()
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected descriptors [Q, D] and [G, D], got {tuple(query.shape)} and {tuple(gallery.shape)}")
    vocabulary: dict = {}
    gallery_ids = _label_ids(gallery_labels, vocabulary)
    num_ids = len(vocabulary)
    query_ids = _label_ids(query_labels, vocabulary)
    if len(query_ids) != query.shape[0] or len(gallery_ids) != gallery.shape[0]:
        raise ValueError("one label per descriptor is needed")
    if len(vocabulary) > num_ids:
        unknown = [v for v, i in vocabulary.items() if i >= num_ids][:3]
        raise ValueError(f"query identities {unknown} are not in the gallery")
    if gallery.isnan().any():
        raise ValueError("the gallery holds NaN descriptors: leave out the faces that were not found")
    dist = torch.cdist(query.nan_to_num(0.0), gallery)  # [Q, G]
    per_id = torch.full((query.shape[0], num_ids), float("inf"), dtype=torch.float64)
    per_id = per_id.scatter_reduce(1, torch.from_numpy(gallery_ids).expand(query.shape[0], -1), dist, "amin")
    missing = query.isnan().any(1)  # [Q]
    true_dist = per_id.gather(1, torch.from_numpy(query_ids)[:, None])  # [Q, 1]
    rank = (per_id < true_dist).sum(1)  # identities strictly nearer than the true one
    out: dict[str, float] = {}
    for kk in k:
        hit = (rank < int(kk)) & ~missing
        out[f"top{int(kk)}"] = float(hit.double().mean()) if len(hit) else float("nan")
    out["n"] = int(query.shape[0])
    out["missing"] = int(missing.sum())
    return out


# ----------------------------------------------------------------------------------------- summaries

def nanmean_count(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``{"mean": nanmean, "n": finite count, "missing": NaN count}`` of any array (+-inf count as present)."""
    v = torch.as_tensor(values).double().flatten()
    present = ~v.isnan()
    n = int(present.sum())
    return {"mean": float(v[present].mean()) if n else float("nan"), "n": n, "missing": int((~present).sum())}


def frame_group_summary(per_frame: torch.Tensor,
                        groups: Mapping[str, Sequence[int]] = FRAME_GROUPS) -> dict[str, dict[str, float]]:
    """Table 1's frame groups: ``per_frame [N, 5]`` (e.g. ``OrderChoice.per_frame``) -> ``{group: {"mean",
    "n", "missing"}}`` over the sequences and the group's frames (NaN entries counted as missing)."""
    if per_frame.dim() != 2:
        raise ValueError(f"expected [N, T] per-frame figures, got {tuple(per_frame.shape)}")
    num_frames = per_frame.shape[1]
    out = {}
    for name, frames in groups.items():
        if max(frames) >= num_frames:
            raise ValueError(f"frame group {name!r} needs {max(frames) + 1} frames, the videos have {num_frames}")
        out[name] = nanmean_count(per_frame[:, list(frames)])
    return out


def view_pair_summary(values: torch.Tensor, views: torch.Tensor | Sequence[int],
                      pairs: Sequence[tuple[int, int]] = VIEW_PAIRS) -> dict[str, dict[str, float]]:
    """Mean over the rig's mirror view pairs and over everything, as the paper's tables.

    values: ``[N, ...]`` figures per sample (extra axes, e.g. frames, are pooled); views: ``[N]`` view number
    (1..8) of each sample. Returns ``{"1,8": {...}, "2,7": ..., "3,6": ..., "4,5": ..., "all": ...}`` with
    :func:`nanmean_count` dicts; a pair without samples has mean NaN and n 0.
    """
    v = torch.as_tensor(views).long().flatten()
    values = torch.as_tensor(values)
    if values.shape[0] != v.shape[0]:
        raise ValueError(f"{values.shape[0]} values but {v.shape[0]} view numbers")
    out = {}
    for a, b in pairs:
        mask = (v == a) | (v == b)
        out[f"{a},{b}"] = nanmean_count(values[mask])
    out["all"] = nanmean_count(values)
    return out
