"""Faces in real photos: how the training faces were framed (pipeline.json ``crop``), detection (dlib HOG, CNN
fallback) with 68 landmarks, alignment into the model's crop, and pasting the sharp faces back into the photo.

``crop`` says how the faces the networks were trained on are framed, so that real photos are aligned the same
way: with the FFHQ recipe (:func:`deblur_rotate.data.align.ffhq_transform`) the face's oriented square fills the
whole crop; training faces that sit smaller or off-centre (SynthBMFD's rig camera) are described by the side of
that square as a fraction of the image side (``face_side``) and its centre in fractions of the image
(``face_center`` = (x, y) from the top-left outer corner); :func:`crop_from_landmarks` measures both.
Where the crop reaches past the photo's edge it is filled by mirroring the photo; ``AlignedFace.outside``
(:func:`face_outside_share`) says how much of the face itself was made up that way. Images are uint8 RGB
``[H, W, 3]`` numpy arrays (:func:`deblur_rotate.images.read_image`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deblur_rotate.errors import UserError

__all__ = ["DEFAULT_CROP", "AlignedFace", "Detection", "FaceFinder", "alignment_matrix", "check_crop",
           "crop_from_landmarks", "crop_templates", "crop_values", "face_mask", "face_outside_share", "paste_back",
           "prepare_image", "similarity_fits", "square_resize", "template_crop_from_landmarks"]

# FFHQ framing: the face's oriented square fills the crop.
DEFAULT_CROP: dict = {"method": "ffhq", "face_side": 1.0, "face_center": [0.5, 0.5], "source": "FFHQ alignment"}


CROP_FORMS = ('{"method": "ffhq", "face_side": s, "face_center": [x, y]} or '
              '{"method": "template", "templates": [[[x, y] x 68] x K]}')


def crop_values(crop: dict | None) -> tuple[float, np.ndarray]:
    """(face_side, face_center [2]) of an ``ffhq`` pipeline.json ``crop`` entry, validated."""
    crop = DEFAULT_CROP if crop is None else crop
    if not isinstance(crop, dict) or crop.get("method", "ffhq") != "ffhq":
        raise UserError(f"crop: must be {CROP_FORMS}; got {str(crop)[:80]}")
    side, center = crop.get("face_side", 1.0), crop.get("face_center", [0.5, 0.5])
    if isinstance(side, bool) or not isinstance(side, (int, float)) or not 0.05 <= side <= 20.0:
        raise UserError(f"crop.face_side: must be a number in [0.05, 20]; got {side!r}")
    try:
        center = np.asarray(center, dtype=np.float64).reshape(2)
    except (TypeError, ValueError):
        center = np.full(2, np.nan)
    if not np.isfinite(center).all() or np.abs(center).max() > 100:
        raise UserError(f"crop.face_center: must be two numbers (x, y), fractions of the image; got {str(center)[:60]}")
    return float(side), center


def crop_templates(crop: dict) -> np.ndarray:
    """The landmark templates ``[K, 68, 2]`` (fractions of the crop side, (x, y) from the top-left outer corner)
    of a ``template`` pipeline.json ``crop`` entry, validated."""
    try:
        templates = np.asarray(crop.get("templates"), dtype=np.float64)
    except (TypeError, ValueError):
        templates = np.zeros(0)
    if templates.ndim != 3 or templates.shape[1:] != (68, 2) or len(templates) == 0:
        raise UserError("crop.templates: must be a list of K >= 1 sets of 68 (x, y) points; got an array of shape "
                        f"{templates.shape}")
    if not np.isfinite(templates).all() or np.abs(templates).max() > 20:
        raise UserError("crop.templates: must be finite fractions of the crop side (|x| <= 20)")
    spread = templates.std(axis=1).min()
    if spread < 1e-3:
        raise UserError("crop.templates: a template's 68 points all coincide")
    return templates


def is_template_crop(crop: dict | None) -> bool:
    """Whether a pipeline.json ``crop`` entry describes landmark templates (else the FFHQ square)."""
    return isinstance(crop, dict) and crop.get("method") == "template"


def describe_crop(crop: dict | None) -> str:
    """One line for reports: the FFHQ square's values, or a template crop's count and source (not its numbers)."""
    if crop is None:
        return "none given (the FFHQ default)"
    if is_template_crop(crop):
        templates = crop.get("templates") or []
        return (f"template: {len(templates)} landmark templates of the training framing"
                f" ({crop.get('source', 'source not recorded')})")
    return json.dumps(crop)


def check_crop(crop: dict | None) -> None:
    """UserError (naming the field: ``crop.face_side: ...``) unless ``crop`` is a crop description the pipeline can
    align faces with (``ffhq`` or ``template``; None means the default FFHQ framing)."""
    if is_template_crop(crop):
        crop_templates(crop)
    else:
        crop_values(crop)


def crop_from_landmarks(landmarks: np.ndarray | torch.Tensor, size: int, source: str = "training landmarks") -> dict:
    """Measure how training faces are framed, for pipeline.json's ``crop`` (the ``ffhq`` description).

    landmarks: ``[N, 68, 2]`` (u, v) pixels of N training images of side ``size`` (e.g. SynthBMFD's
               ``landmarks``); NaN rows are skipped.
    Returns ``{"method": "ffhq", "face_side": s, "face_center": [x, y], "source": ...}``: the median side of
    the faces' FFHQ squares as a fraction of ``size`` and the median centre in fractions of the image.
    """
    from deblur_rotate.data.align import ffhq_transform, invert_affine

    lm = _finite_landmark_sets(landmarks)
    sides, centers = [], []
    for points in lm:
        a = ffhq_transform(points, size)  # training-image pixels -> FFHQ crop pixels
        scale = math.sqrt(abs(np.linalg.det(a[:, :2])))
        inv = invert_affine(a)
        c = inv[:, :2] @ np.full(2, (size - 1) / 2.0) + inv[:, 2]  # square centre, training-image pixels
        sides.append(1.0 / scale)
        centers.append((c + 0.5) / size)
    return {"method": "ffhq", "face_side": float(np.median(sides)),
            "face_center": [float(v) for v in np.median(np.stack(centers), 0)], "source": f"{source} ({len(lm)})"}


def _finite_landmark_sets(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[N, 68, 2]`` float64 without the sets holding a NaN; ValueError when the shape is wrong or none is left."""
    lm = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"expected landmarks [N, 68, 2], got {lm.shape}")
    lm = lm[np.isfinite(lm).all(axis=(1, 2))]
    if len(lm) == 0:
        raise ValueError("no finite landmark set to measure the crop from")
    return lm


def similarity_fits(source: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarities (rotation, uniform scale, shift; no reflection) taking the points
    ``source [P, 2]`` onto each of ``targets [K, P, 2]``: (``A [K, 2, 3]``, RMS residual ``[K]`` in target units).
    Closed form: with points as complex numbers, the map is ``t = c s + d`` (Umeyama 1991 without reflection)."""
    src = np.asarray(source, np.float64)
    tgt = np.asarray(targets, np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(1)                                 # [2], [K, 2]
    s = (src[:, 0] - mu_s[0]) + 1j * (src[:, 1] - mu_s[1])                # [P]
    t = (tgt[..., 0] - mu_t[:, None, 0]) + 1j * (tgt[..., 1] - mu_t[:, None, 1])  # [K, P]
    c = (np.conj(s)[None] * t).sum(1) / max(float((np.abs(s) ** 2).sum()), 1e-12)  # [K]
    residual = np.sqrt((np.abs(t - c[:, None] * s[None]) ** 2).mean(1))  # [K]
    linear = np.stack([np.stack([c.real, -c.imag], -1), np.stack([c.imag, c.real], -1)], 1)  # [K, 2, 2]
    offset = mu_t - np.einsum("kij,j->ki", linear, mu_s)                 # [K, 2]
    return np.concatenate([linear, offset[..., None]], 2), residual


TEMPLATE_COUNT = 32   # landmark templates in a ``template`` crop: pose clusters of the training faces
TEMPLATE_BLEND = 3    # an alignment blends the similarities onto this many best-fitting templates


def template_crop_from_landmarks(landmarks: np.ndarray | torch.Tensor, size: int, count: int = TEMPLATE_COUNT,
                                 source: str = "training landmarks", seed: int = 0) -> dict:
    """Describe how training faces are framed by landmark templates, for pipeline.json's ``crop``.

    For training images framed by a fixed camera (SynthBMFD's rig) rather than by a face alignment: the FFHQ
    square follows the eyes and mouth, which for a turned head sit off the head's centre, so a photo aligned
    with it is framed unlike any training image. Here the training sets (``[N, 68, 2]`` pixels of images of side
    ``size``) are clustered by shape (k-means on their similarity-normalised points: pose and expression) and
    each cluster's mean set, in the training images' own framing, becomes a template. :func:`alignment_matrix`
    maps a photo's landmarks onto the templates they fit best, which frames the face as training faces of that
    pose were framed. Returns ``{"method": "template", "templates": [K][68][2] fractions of the side, ...}``.
    """
    lm = _finite_landmark_sets(landmarks)
    count = max(1, min(int(count), len(lm)))
    reference = lm.mean(0)
    for _ in range(3):  # generalised Procrustes: every set onto the mean shape, then the mean again
        fits, _ = zip(*(similarity_fits(points, reference[None]) for points in lm))
        normalised = np.stack([points @ a[0, :, :2].T + a[0, :, 2] for points, a in zip(lm, fits)])
        reference = normalised.mean(0)
    features = normalised.reshape(len(lm), -1)
    labels = _kmeans(features, count, seed)
    templates = np.stack([lm[labels == k].mean(0) for k in range(count) if (labels == k).any()])
    fractions = (templates + 0.5) / size
    return {"method": "template", "templates": np.round(fractions, 4).tolist(),
            "source": f"{source} ({len(lm)} sets, {len(templates)} templates)"}


def _kmeans(features: np.ndarray, count: int, seed: int, iterations: int = 30) -> np.ndarray:
    """Cluster labels ``[N]`` of ``features [N, D]``: k-means++ seeding (deterministic for ``seed``), Lloyd steps."""
    rng = np.random.default_rng(seed)
    centres = [features[rng.integers(len(features))]]
    for _ in range(1, count):
        d2 = np.min(((features[:, None] - np.stack(centres)[None]) ** 2).sum(-1), 1)
        total = d2.sum()
        centres.append(features[rng.choice(len(features), p=d2 / total)] if total > 0 else features[0])
    centres = np.stack(centres)
    labels = np.zeros(len(features), dtype=np.int64)
    for _ in range(iterations):
        labels = ((features[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([features[labels == k].mean(0) if (labels == k).any() else centres[k]
                          for k in range(count)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return labels


def alignment_matrix(landmarks: np.ndarray, size: int, crop: dict | None = None) -> np.ndarray:
    """Similarity ``A`` (2 x 3 float64, photo pixels -> crop pixels) framing the face with ``landmarks
    [68, 2]`` in a ``size`` x ``size`` crop as the training faces were framed (``crop``, default FFHQ).

    ``template`` crops: the similarities taking the landmarks onto the ``TEMPLATE_BLEND`` best-fitting templates,
    averaged with weights 1 / residual^2 (a blend, so that a face turning slowly in a video is not framed in
    jumps when the best template changes)."""
    if is_template_crop(crop):
        points = np.asarray(landmarks, np.float64)
        if points.shape != (68, 2) or not np.isfinite(points).all():
            raise ValueError(f"landmarks must be a finite [68, 2] array, got shape {points.shape}")
        fits, residual = similarity_fits(points, crop_templates(crop) * size - 0.5)
        best = np.argsort(residual)[:TEMPLATE_BLEND]
        weights = 1.0 / (residual[best] ** 2 + 1e-6 * size ** 2)
        return np.einsum("k,kij->ij", weights / weights.sum(), fits[best])
    from deblur_rotate.data.align import ffhq_transform

    side, center = crop_values(crop)
    a = ffhq_transform(landmarks, size)
    mid = (size - 1) / 2.0
    target = center * size - 0.5  # the square's centre in crop pixels (pixel centres at integers)
    linear = side * a[:, :2]
    offset = side * (a[:, 2] - mid) + target
    return np.concatenate([linear, offset[:, None]], 1)


@dataclass
class AlignedFace:
    """One face cut out of a photo, ready for the pipeline."""

    image: np.ndarray                    # uint8 [R, R, 3] the aligned crop (what the networks see)
    affine: np.ndarray | None            # [2, 3] photo pixels -> crop pixels; None for --aligned inputs
    box: tuple[float, float, float, float] | None  # detector box (left, top, right, bottom), photo pixels
    landmarks: np.ndarray | None         # [68, 2] (u, v) photo pixels, iBUG 300-W order; None for --aligned
    outside: float = 0.0                 # share of the face (its landmark outline) outside the photo, filled
                                         # in by mirroring the image at its edge (0 for --aligned inputs)
    detection: dict | None = None        # how it was found: detector, score, landmark_disagreement (Detection)

    def tensor(self) -> torch.Tensor:
        """The crop as ``[3, R, R]`` float in [-1, 1]."""
        from deblur_rotate.files import from_uint8

        return from_uint8(self.image)


@dataclass
class Detection:
    """One detector hit: the face (or non-face) found, how sure the detector was, how well landmarks fit it."""

    box: tuple[float, float, float, float]  # (left, top, right, bottom), photo pixels
    landmarks: np.ndarray                   # [68, 2] (u, v) photo pixels, iBUG 300-W order
    detector: str                           # "hog" or "cnn"
    score: float                            # HOG adjusted score (>= 0) or CNN confidence
    landmark_disagreement: float            # FaceAligner.mirror_disagreement: ~0.01 for a face
    reason: str | None = None               # why it was dropped; None: kept as a face

    @property
    def side(self) -> float:
        """The box's mean side, pixels."""
        return ((self.box[2] - self.box[0]) + (self.box[3] - self.box[1])) / 2.0

    def record(self) -> dict:
        """JSON for result.json / summary.json."""
        out = {"box": [round(float(b), 1) for b in self.box], "detector": self.detector,
               "score": round(self.score, 3), "landmark_disagreement": round(self.landmark_disagreement, 4)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceFinder:
    """dlib's HOG face detector, with the (slower) CNN detector as a fallback for faces HOG misses (blurry
    or turned faces); 68 landmarks for each face found. Models load on first use.

    Detections that are not faces are dropped (:meth:`detect` says which and why), by three tests in turn:

    * landmark fit: the 68 landmarks of a face agree with those predicted on the mirror image (disagreement
      about 0.01 of the box width, also on motion-blurred faces); above ``max_disagreement`` it is no face, and a
      weak detection (score below ``weak_score``) must stay below ``weak_max_disagreement``. On scikit-image's
      astronaut the mission patch on the suit scores 0.12 (HOG) with a disagreement of 0.11 and is dropped;
    * size: smaller than ``min_relative_size`` of the largest face kept (a background pattern, a far-off face);
    * duplicates: a box overlapping a face already kept (intersection over union above 0.5).
    """

    def __init__(self,
                 upsample: int = 1,        # HOG upsampling (finds faces ~2x smaller per step)
                 cnn_fallback: bool = True,  # try the CNN (MMOD) detector when HOG finds no face
                 max_side: int = 640,      # images are shrunk to this longest side for detection (speed)
                 max_disagreement: float = 0.04,       # landmark disagreement above which a detection is no face
                 weak_score: float = 0.5,               # detections scoring below this are weak ...
                 weak_max_disagreement: float = 0.025,  # ... and must have landmarks fitting better than this
                 min_relative_size: float = 0.3,        # faces smaller than this share of the largest are dropped
                 ):
        from deblur_rotate.data.align import FaceAligner

        self.hog = FaceAligner("hog", upsample=upsample, max_side=max_side)
        self.cnn_fallback = bool(cnn_fallback)
        self.max_side = int(max_side)
        self.max_disagreement = float(max_disagreement)
        self.weak_score = float(weak_score)
        self.weak_max_disagreement = float(weak_max_disagreement)
        self.min_relative_size = float(min_relative_size)
        self._cnn: dict[int, FaceAligner] = {}

    def _cnn_for(self, image: np.ndarray):
        from deblur_rotate.data.align import FaceAligner

        # on CPU the CNN is slow: upsample only small images (faces of >= ~80 px are found without it)
        up = 1 if max(image.shape[:2]) < 320 else 0
        if up not in self._cnn:
            self._cnn[up] = FaceAligner("cnn", upsample=up, max_side=self.max_side)
        return self._cnn[up]

    def _judge(self, image: np.ndarray, aligner, kind: str) -> list[Detection]:
        """Every hit of one detector on ``image``, with ``reason`` set on those that are no face."""
        hits = aligner.detect_scored(image)
        if not hits:
            return []
        mirrored = np.ascontiguousarray(image[:, ::-1])
        found = []
        for box, score in hits:
            lm = aligner.landmarks(image, box)
            d = Detection(tuple(float(v) for v in box), lm, kind, score,
                          aligner.mirror_disagreement(image, box, lm, mirrored))
            if d.landmark_disagreement > self.max_disagreement:
                d.reason = (f"landmarks do not fit a face (mirror disagreement {d.landmark_disagreement:.3f} of the "
                            f"box width; faces stay below {self.max_disagreement:g})")
            elif d.score < self.weak_score and d.landmark_disagreement > self.weak_max_disagreement:
                d.reason = (f"weak detection ({kind} score {d.score:.2f} < {self.weak_score:g}) whose landmarks fit "
                            f"poorly (mirror disagreement {d.landmark_disagreement:.3f} > "
                            f"{self.weak_max_disagreement:g})")
            found.append(d)
        kept = [d for d in found if d.reason is None]
        if kept:
            largest = max(d.side for d in kept)
            for d in sorted(kept, key=lambda d: -d.score):
                if d.side < self.min_relative_size * largest:
                    d.reason = (f"{d.side:.0f} px, smaller than {self.min_relative_size:.0%} of the largest face "
                                f"({largest:.0f} px)")
                    continue
                twin = next((k for k in found if k is not d and k.reason is None and k.score >= d.score
                             and _iou(k.box, d.box) > 0.5), None)
                if twin is not None:
                    d.reason = f"the same face as the {twin.detector} box at {[round(v) for v in twin.box[:2]]}"
        return found

    def detect(self, image: np.ndarray) -> tuple[list[Detection], list[Detection]]:
        """(faces kept, detections dropped with their ``reason``) in uint8 ``image`` [H, W, 3], largest first.
        The CNN detector is tried when HOG keeps no face."""
        found = self._judge(image, self.hog, "hog")
        if not any(d.reason is None for d in found) and self.cnn_fallback:
            found += self._judge(image, self._cnn_for(image), "cnn")
        kept = sorted((d for d in found if d.reason is None), key=lambda d: -d.side)
        return kept, [d for d in found if d.reason is not None]

    def find(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], np.ndarray]]:
        """[(box, landmarks [68, 2]), ...] of the faces in uint8 ``image`` [H, W, 3], largest first (non-faces
        dropped, see :meth:`detect`)."""
        kept, _ = self.detect(image)
        return [(d.box, d.landmarks) for d in kept]


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (when not square) and resize to size x size (Lanczos)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[top:top + s, left:left + s]
    if s == size:
        return np.ascontiguousarray(square)
    return np.array(Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.LANCZOS))


def prepare_image(image: np.ndarray, size: int, *, crop: dict | None = None, aligned: bool = False,
                  only_center_face: bool = False, finder: FaceFinder | None = None,
                  name: str = "image", dropped: list | None = None) -> list[AlignedFace]:
    """Cut the faces of a photo (uint8 ``[H, W, 3]``) into ``size`` px crops framed like the training faces.

    aligned:          the photo already is such a crop: centre-crop to a square if needed and resize.
    only_center_face: keep only the detected face nearest the image centre; otherwise all faces, largest first.
    dropped:          a list that receives the records (:meth:`Detection.record`, with ``reason``) of the
                      detections rejected as non-faces (a finder without ``detect`` reports none).
    UserError (naming ``name``) when no face is found.
    """
    if aligned:
        return [AlignedFace(square_resize(image, size), None, None, None)]
    finder = finder or FaceFinder()
    rejected: list[Detection] = []
    if hasattr(finder, "detect"):
        kept, rejected = finder.detect(image)
        found = [(d.box, d.landmarks, d.record()) for d in kept]
    else:  # any object with find() (tests, other detectors)
        found = [(box, lm, None) for box, lm in finder.find(image)]
    if dropped is not None:
        dropped.extend(d.record() for d in rejected)
    if not found:
        why = ""
        if rejected:
            why = f"; {len(rejected)} detection(s) rejected as non-faces: " + "; ".join(d.reason for d in rejected[:3])
        raise UserError(f"{name}: no face found (dlib HOG and CNN detectors{why}); if the image already is an "
                        "aligned face crop, pass --aligned")
    if only_center_face:
        h, w = image.shape[:2]
        found = [min(found, key=lambda f: math.hypot((f[0][0] + f[0][2]) / 2 - (w - 1) / 2,
                                                     (f[0][1] + f[0][3]) / 2 - (h - 1) / 2))]
    from deblur_rotate.data.align import warp_image

    faces = []
    for box, lm, record in found:
        a = alignment_matrix(lm, size, crop)
        faces.append(AlignedFace(warp_image(image, a, size), a, tuple(float(v) for v in box), lm,
                                 outside=face_outside_share(image.shape, a, lm, size), detection=record))
    return faces


def face_outside_share(image_shape: Sequence[int], affine: np.ndarray, landmarks: np.ndarray, size: int) -> float:
    """Share in [0, 1] of a face's crop pixels (inside the outline of :func:`face_mask`) whose source lies
    outside the photo: the part of a face cut by the image edge, which the crop fills in by mirroring.

    image_shape: the photo's (H, W, ...); affine: [2, 3] photo -> crop pixels; landmarks: [68, 2] photo pixels."""
    from deblur_rotate.data.align import invert_affine, transform_points

    mask = face_mask(transform_points(affine, landmarks), size, feather=0) > 0.5
    if not mask.any():
        return 0.0
    v, u = np.nonzero(mask)
    src = transform_points(invert_affine(affine), np.stack([u, v], -1).astype(np.float64))
    h, w = image_shape[:2]
    out = (src[:, 0] < -0.5) | (src[:, 0] > w - 0.5) | (src[:, 1] < -0.5) | (src[:, 1] > h - 0.5)
    return float(out.mean())


def face_mask(landmarks: np.ndarray | None, size: int, feather: float | None = None) -> np.ndarray:
    """Soft mask float32 ``[size, size]`` in [0, 1] of the face in a crop: the polygon of the jaw line and
    the brows raised by a third of the brow-to-chin height (the forehead), fading to 0 over ``feather`` px
    (default size / 16) inside its edge. Without landmarks: the whole crop with feathered borders."""
    import kornia
    from PIL import Image, ImageDraw

    feather = size / 16.0 if feather is None else float(feather)
    scale = 4  # draw at 4x, then box-reduce: anti-aliased edges
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    if landmarks is None:
        draw.rectangle([0, 0, size * scale - 1, size * scale - 1], fill=255)
    else:
        lm = np.asarray(landmarks, dtype=np.float64)
        jaw, brows = lm[0:17], lm[17:27][::-1]
        up = (lm[8] - brows.mean(0)) / 3.0  # brow-to-chin direction, a third of its length
        poly = np.concatenate([jaw, brows - up])
        draw.polygon([((u + 0.5) * scale - 0.5, (v + 0.5) * scale - 0.5) for u, v in poly], fill=255)
    mask = torch.from_numpy(np.asarray(canvas.reduce(scale), dtype=np.float32) / 255.0)[None, None]
    if feather > 0:
        # blur, then keep the inner half of the ramp: 0 on the edge, ~1 at `feather` px inside it
        sigma = feather / 2.0
        k = int(2 * math.ceil(3 * sigma) + 1)
        blurred = kornia.filters.gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="constant")
        mask = (2.0 * blurred - 1.0).clamp(0.0, 1.0)
    return mask[0, 0].numpy()


def paste_back(photo: np.ndarray, faces: Sequence[tuple[AlignedFace, np.ndarray]]) -> np.ndarray:
    """Warp each face's sharp same-view frame (uint8 ``[R, R, 3]``) back into ``photo`` (uint8 ``[H, W, 3]``)
    with a feathered mask of the face; faces given without an ``affine`` (aligned inputs) are skipped.
    Returns a new uint8 ``[H, W, 3]``."""
    import kornia

    from deblur_rotate.data.align import invert_affine, transform_points

    h, w = photo.shape[:2]
    out = torch.from_numpy(np.array(photo, dtype=np.float32)).permute(2, 0, 1)  # [3, H, W]
    for face, frame in faces:
        if face.affine is None:
            continue
        size = frame.shape[0]
        inv = invert_affine(face.affine)                                           # crop -> photo pixels
        corners = transform_points(inv, np.array([[-1, -1], [size, -1], [-1, size], [size, size]], np.float64))
        x0, y0 = np.floor(corners.min(0)).astype(int).clip(0, [w - 1, h - 1])
        x1, y1 = np.ceil(corners.max(0)).astype(int).clip(0, [w - 1, h - 1])
        if x1 <= x0 or y1 <= y0:
            continue  # the face lies outside the photo
        lm_crop = None if face.landmarks is None else transform_points(face.affine, face.landmarks)
        src = torch.cat([torch.from_numpy(np.array(frame, dtype=np.float32)).permute(2, 0, 1),
                         torch.from_numpy(face_mask(lm_crop, size))[None] * 255.0])[None]   # [1, 4, R, R]
        m = inv.copy()
        m[:, 2] -= (x0, y0)                                                        # crop -> box pixels
        box = kornia.geometry.transform.warp_affine(src, torch.from_numpy(m).float()[None],
                                                    dsize=(y1 - y0 + 1, x1 - x0 + 1), mode="bilinear",
                                                    padding_mode="zeros", align_corners=True)[0]
        alpha = (box[3:] / 255.0).clamp(0, 1)
        region = out[:, y0:y1 + 1, x0:x1 + 1]
        out[:, y0:y1 + 1, x0:x1 + 1] = region * (1 - alpha) + box[:3] * alpha
    return out.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
