"""Readers of real face data (paper §4). Frame sources (folders of frames, video files, 300VW annotations) are
:mod:`deblur_rotate.data.sources`; the 2:1:1 mixing sampler and colour jitter :mod:`deblur_rotate.data.mixing`.

Every reader yields the sample structure of :class:`~deblur_rotate.data.synthbmfd.SynthBMFD`:

  ``blurry``            [3, S, S] float32 in [-1, 1]
  ``targets``           [5, 3, S, S]: the sharp frames [c-m, c-m/2, c, c+m/2, c+m] (stills: 5 copies)
  ``view``              int: rig view 1..8 where known, 0 otherwise
  ``pose``              [3] (pitch, yaw, roll) radians, NaN when unknown
  ``coeffs``            [C] 3DMM coefficients, or None when unknown
  ``landmarks``         [68, 2] (u, v) pixels at the output size of the middle target, NaN when unknown
  ``target_landmarks``  [5, 68, 2] landmarks of the 5 targets
  ``source`` (str: reader kind), ``item`` (str: clip or file), ``center`` (int; -1 for stills),
  ``mirrored`` (bool), and ``skin`` [5, 1, S, S] when a skin model is given.

Readers
  :class:`StillImages`    any folder of images (FFHQ): blur by a random 9x9 motion kernel.
  :class:`VideoClips`     single-view video: 300VW (``NNN/vid.avi`` + ``NNN/annot/000001.pts``), any video
                          files, or folders of frames; blur = mean of frames c-m..c+m (m = 4 by default).
  :class:`MultiViewClips` the BMFD layout ``subject/performance/view_k/frame_XXXXX.png`` (m = 32), with
                          same-instant access across views (:meth:`MultiViewClips.load_views`).
  :class:`Vidtimit`       VIDTIMIT ``subject/video/head*/NNN`` for evaluation.
Each also reads the folders written by ``deblur-rotate prepare`` (an ``index.json`` at the top, landmarks in
``landmarks.npy`` files). ``mirror='pair'`` returns a sample and its horizontal mirror stacked on a leading
[2] axis (a second view for single-view data); ``mirror='random'`` flips half the samples.

Video is decoded lazily with PyAV (a window of frames per sample; no full video in memory).

Randomness (blur kernels, random mirroring) is a pure function of ``(seed, epoch, index)``: call
``set_epoch`` before each epoch (it reaches DataLoader workers when they are re-created each epoch, the
default ``persistent_workers=False``).
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.data.blur import (
    NUM_TARGETS,
    apply_kernels,
    random_motion_kernels,
    target_indices,
    valid_centers,
)
from deblur_rotate.data.samples import (  # re-exported: the readers' sample helpers
    apply_affine,
    collate_samples,
    mirror_sample,
    seed_from,
    square_resize,
    stack_samples,
)
from deblur_rotate.data.sources import VIDEO_EXTS, FrameFolder, VideoFile, pts_landmarks, read_frame
from deblur_rotate.errors import UserError
from deblur_rotate.files import from_uint8
from deblur_rotate.images import IMAGE_EXTS, natural_key

__all__ = [
    "seed_from", "square_resize", "mirror_sample", "stack_samples", "collate_samples", "StillImages", "VideoClips",
    "MultiViewClips", "Vidtimit", "Clip", "find_clips", "open_dataset", "open_training_dataset", "detect_kind", "KINDS",
]
KINDS = ("images", "300vw", "multiview", "vidtimit")
INDEX = "index.json"
LANDMARKS = "landmarks.npy"


def _nan_landmarks(*shape: int) -> torch.Tensor:
    return torch.full((*shape, 68, 2), float("nan"))


class _FaceDataset(torch.utils.data.Dataset):
    """Shared machinery: mirroring modes, epoch, skin maps. Subclasses implement ``load(i)``."""

    kind = "?"

    def __init__(self, size: int, mirror: str, seed: int, skin_model: Callable | None):
        if mirror not in ("none", "random", "pair"):
            raise UserError(f"mirror must be 'none', 'random' or 'pair' (got {mirror!r})")
        if not 16 <= int(size) <= 2048:
            raise UserError(f"size must be between 16 and 2048 pixels (got {size})")
        self.size, self.mirror, self.seed, self.skin_model = int(size), mirror, int(seed), skin_model
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []  # (item, reason) found unusable while listing

    def set_epoch(self, epoch: int) -> None:
        """Draw new blur kernels / mirror flips this epoch (kernels are a function of seed, epoch, index)."""
        self.epoch = int(epoch)

    def _finish(self, sample: dict) -> dict:
        if self.skin_model is not None:
            with torch.no_grad():
                sample["skin"] = self.skin_model(sample["targets"])  # [5, 1, S, S] weights, once per sample
        return sample

    def __getitem__(self, i: int) -> dict:
        sample = self._finish(self.load(int(i)))
        if self.mirror == "pair":
            return stack_samples([sample, mirror_sample(sample)])
        if self.mirror == "random" and np.random.default_rng(seed_from(self.seed, self.epoch, i, 1)).random() < 0.5:
            return mirror_sample(sample)
        return sample

    def load(self, i: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def _read_index(root: Path, kinds: Sequence[str]) -> dict | None:
    path = root / INDEX
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is damaged ({err}); rerun `deblur-rotate prepare` to rebuild it") from err
    if index.get("kind") not in kinds:
        return None
    return index


# -------------------------------------------------------------------------------------------------- stills

class StillImages(_FaceDataset):
    """Still face images (FFHQ, or any folder of images at any depth, or a ``prepare --kind images``
    output): blurry = the sharp image convolved with a random 9 x 9 motion kernel, targets = 5 copies of
    the sharp image, view 0, pose NaN, landmarks from the prepared index (NaN otherwise)."""

    kind = "images"

    def __init__(self, root: str | os.PathLike,
                 size: int = 256,  # output side, pixels (non-square images are centre-cropped)
                 kernel_size: int = 9,  # side of the random motion kernels, pixels (odd)
                 mirror: str = "none",  # 'none', 'random' (flip half) or 'pair' (sample + mirror, leading [2])
                 seed: int = 0,  # kernels and flips are functions of (seed, epoch, index)
                 skin_model: Callable | None = None):  # targets [5,3,S,S] -> skin weights [5,1,S,S]; None: no map
        super().__init__(size, mirror, seed, skin_model)
        self.root, self.kernel_size = Path(root), int(kernel_size)
        if not self.root.is_dir():
            raise UserError(f"image folder {self.root} does not exist")
        index = _read_index(self.root, ("images",))
        self.landmarks: np.ndarray | None = None
        if index is not None:
            self.files = [self.root / item["file"] for item in index["items"]]
            lm_path = self.root / LANDMARKS
            if lm_path.exists():
                self.landmarks = np.load(lm_path)
        else:
            self.files = sorted((p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                                 and not any(part.startswith(".") for part in p.relative_to(self.root).parts)),
                                key=lambda p: str(p.relative_to(self.root)))
        if not self.files:
            raise UserError(f"no images in {self.root}: expected image files ({', '.join(sorted(IMAGE_EXTS))}) "
                            "at any depth, e.g. FFHQ's 00000/00000.png")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> dict:
        image = read_frame(self.files[i])
        sharp, affine = square_resize(image[None], self.size)  # [1, 3, S, S]
        generator = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, i))
        kernel = random_motion_kernels(1, generator, size=self.kernel_size)
        blurry = apply_kernels(sharp, kernel)[0].clamp(-1, 1)
        if self.landmarks is not None:
            lm = apply_affine(affine, self.landmarks[i])
        else:
            lm = _nan_landmarks()
        return {
            "blurry": blurry,
            "targets": sharp.expand(NUM_TARGETS, -1, -1, -1).clone(),
            "view": 0,
            "pose": torch.full((3,), float("nan")),
            "coeffs": None,
            "landmarks": lm,
            "target_landmarks": lm.expand(NUM_TARGETS, -1, -1).clone(),
            "source": self.kind,
            "item": str(self.files[i].relative_to(self.root)),
            "center": -1,
            "mirrored": False,
        }


# ----------------------------------------------------------------------------------------- single view

@dataclass
class Clip:
    """One single-view clip: its frames and where its landmarks come from."""

    name: str  # path relative to the dataset root
    frames: FrameFolder | VideoFile
    annot: Path | None = None  # 300VW annot folder of .pts files
    landmarks_file: Path | None = None  # [T, 68, 2] .npy written by prepare
    num_frames: int = 0
    _landmarks: np.ndarray | None = field(default=None, repr=False)

    def landmarks(self) -> np.ndarray:
        """``[T, 68, 2]`` float32 source-pixel landmarks (NaN where unknown), loaded once."""
        if self._landmarks is None:
            if self.landmarks_file is not None and self.landmarks_file.exists():
                self._landmarks = np.load(self.landmarks_file).astype(np.float32)
            elif self.annot is not None:
                self._landmarks = pts_landmarks(self.annot, self.num_frames)
            else:
                self._landmarks = np.full((self.num_frames, 68, 2), np.nan, np.float32)
        return self._landmarks


def find_clips(root: Path) -> list[Clip]:
    """Single-view clips under ``root``: video files (with a sibling ``annot/`` folder of .pts, as 300VW's
    ``NNN/vid.avi``) and folders that directly hold image frames. Hidden folders are ignored."""
    clips: list[Clip] = []
    candidates = [root] + sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: str(p))
    for folder in candidates:
        rel = folder.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or folder.name == "annot":
            continue
        files = sorted((p for p in folder.iterdir() if p.is_file()), key=natural_key)
        for video in (p for p in files if p.suffix.lower() in VIDEO_EXTS):
            annot = folder / "annot"
            clips.append(Clip(str(video.relative_to(root)), VideoFile(video), annot=annot if annot.is_dir() else None))
        frames = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        if frames:
            lm = folder / LANDMARKS
            clips.append(Clip(str(rel) if str(rel) != "." else folder.name, FrameFolder(folder, frames),
                              landmarks_file=lm if lm.exists() else None))
    return clips


class VideoClips(_FaceDataset):
    """Single-view video samples: one per (clip, centre frame c), blurry = mean of frames c-m..c+m, targets
    frames [c-m, c-m/2, c, c+m/2, c+m], landmarks from 300VW .pts files or prepared ``landmarks.npy``
    (NaN otherwise), view 0, pose NaN. Non-square frames are centre-cropped, then resized to ``size``."""

    kind = "300vw"
    _expected = ("300VW (NNN/vid.avi with NNN/annot/000001.pts ...), video files (.avi, .mp4, ...) or folders of "
                 "frames (CLIP/000001.png ...)")

    def __init__(self, root: str | os.PathLike,
                 m: int = 4,  # blur half-window in frames (even): 2m+1 frames are averaged; 300VW: 4 (9 frames)
                 size: int = 256,  # output side, pixels
                 stride: int = 1,  # take every stride-th centre frame
                 mirror: str = "none",  # 'none', 'random' or 'pair' (sample + mirror as a second view)
                 seed: int = 0,
                 skin_model: Callable | None = None):  # targets [5,3,S,S] -> [5,1,S,S] skin weights
        super().__init__(size, mirror, seed, skin_model)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"video folder {self.root} does not exist")
        if isinstance(m, bool) or not isinstance(m, int) or m < 2 or m % 2:
            raise UserError(f"m must be an even number >= 2 (got {m})")
        if stride < 1:
            raise UserError(f"stride must be >= 1 (got {stride})")
        self.m, self.stride = m, stride
        self.clips = self._discover()
        self.items: list[tuple[int, int]] = []
        usable = []
        for clip in self.clips:
            try:
                n = clip.num_frames or len(clip.frames)
            except UserError as err:
                self.skipped.append((clip.name, str(err)))
                continue
            clip.num_frames = n
            if n < 2 * m + 1:
                self.skipped.append((clip.name, f"{n} frames, fewer than the {2 * m + 1} that m={m} needs"))
                continue
            usable.append(clip)
        self.clips = usable
        for k, clip in enumerate(self.clips):
            self.items.extend((k, c) for c in valid_centers(clip.num_frames, m)[::stride])
        if not self.items:
            why = f"; skipped: {self.skipped[0][0]}: {self.skipped[0][1]}" if self.skipped else ""
            raise UserError(f"nothing usable in {self.root}: expected {self._expected} with at least {2 * m + 1} "
                            f"frames per clip (m={m}){why}")

    def _discover(self) -> list[Clip]:
        index = _read_index(self.root, (self.kind, "video"))
        if index is not None:
            return [Clip(c["path"], FrameFolder(self.root / c["path"]),
                         landmarks_file=self.root / c["path"] / LANDMARKS,
                         num_frames=c["num_frames"]) for c in index["clips"]]
        return find_clips(self.root)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> dict:
        k, center = self.items[i]
        clip = self.clips[k]
        return self.load_clip(clip, center)

    def load_clip(self, clip: Clip, center: int, view: int = 0, extra: dict | None = None) -> dict:
        """The sample of ``clip`` at centre frame ``center`` (see the class docstring)."""
        m = self.m
        window = list(range(center - m, center + m + 1))
        tidx = target_indices(center, m)
        frames = clip.frames.read(window)  # uint8 [2m+1, H, W, 3]
        # mean of the [-1, 1] frames, summed exactly in integers (the mean commutes with the linear crop and
        # resize below, so they run on 6 images instead of 2m+1)
        total = torch.from_numpy(frames.sum(0, dtype=np.uint32).astype(np.float32)).permute(2, 0, 1)
        blurry = total[None] / (127.5 * len(window)) - 1.0
        sharp = from_uint8(frames[[t - window[0] for t in tidx]])  # [5, 3, H, W]
        images, affine = square_resize(torch.cat([blurry, sharp]), self.size)
        lm = apply_affine(affine, clip.landmarks()[tidx])  # [5, 68, 2]
        sample = {
            "blurry": images[0],
            "targets": images[1:],
            "view": view,
            "pose": torch.full((3,), float("nan")),
            "coeffs": None,
            "landmarks": lm[2],
            "target_landmarks": lm,
            "source": self.kind,
            "item": clip.name,
            "center": center,
            "mirrored": False,
        }
        if extra:
            sample.update(extra)
        return sample


class Vidtimit(VideoClips):
    """VIDTIMIT head-rotation sequences ``subject/video/head*/NNN`` (extension-less JPEG frames, 25 fps)
    for evaluation, or a ``prepare --kind vidtimit`` output. Non-overlapping windows by default."""

    kind = "vidtimit"
    _expected = "VIDTIMIT sequences SUBJECT/video/head*/ holding frames 001 002 ..."

    def __init__(self, root: str | os.PathLike, m: int = 4, size: int = 256, stride: int | None = None,
                 mirror: str = "none", seed: int = 0, skin_model: Callable | None = None):
        """stride: centre step; default 2m+1 (disjoint windows). See :class:`VideoClips` for the rest."""
        super().__init__(root, m=m, size=size, stride=stride or 2 * m + 1, mirror=mirror, seed=seed,
                         skin_model=skin_model)

    def _discover(self) -> list[Clip]:
        index = _read_index(self.root, ("vidtimit",))
        if index is not None:
            return super()._discover()
        clips = []
        for folder in sorted(self.root.glob("*/video/head*")):
            if folder.is_dir():
                lm = folder / LANDMARKS
                clips.append(Clip(str(folder.relative_to(self.root)), FrameFolder(folder),
                                  landmarks_file=lm if lm.exists() else None))
        return clips


# ------------------------------------------------------------------------------------------- multi-view

_VIEW_RE = re.compile(r"^view_(\d+)$")


class MultiViewClips(VideoClips):
    """Multi-view high-frame-rate video in the BMFD layout ``ROOT/subject/performance/view_k/frame_XXXXX.png``
    (views k = 1..8 from one side of the rig to the other; frame numbers shared by all views, so frame t of
    every view is the same instant). One sample per (subject, performance, view, centre frame); m = 32 by
    default (65 frames at 112 fps).

    Landmarks come from ``view_k/landmarks.npy`` ([T, 68, 2], written by prepare) or a SynthBMFD
    ``performance/meta.npz`` (which also gives pose and coeffs). ``pairs=True`` makes item i the instant
    ``instants[i]`` seen from two distinct views drawn from (seed, epoch, i), stacked on a leading [2] axis.
    """

    kind = "multiview"
    _expected = "the BMFD layout SUBJECT/PERFORMANCE/view_K/frame_XXXXX.png"

    def __init__(self, root: str | os.PathLike,
                 m: int = 32,  # blur half-window in frames (even); BMFD: 32, i.e. 65 frames at 112 fps
                 size: int = 256,  # output side, pixels
                 views: Sequence[int] | None = None,  # subset of rig views to use; default all found
                 stride: int = 1,  # take every stride-th centre frame
                 mirror: str = "none",  # 'none', 'random' or 'pair' (mirror: view v -> 9 - v)
                 pairs: bool = False,  # items are instants with two distinct views (fusion stage, L_mview)
                 seed: int = 0,
                 skin_model: Callable | None = None):
        self.view_filter = None if views is None else [int(v) for v in views]
        self.pairs = bool(pairs)
        super().__init__(root, m=m, size=size, stride=stride, mirror=mirror, seed=seed, skin_model=skin_model)
        # group clips into performances: (subject/performance) -> {view: clip index}
        self.performances: dict[str, dict[int, int]] = {}
        for k, clip in enumerate(self.clips):
            perf, view = clip.name.rsplit("/", 1)
            self.performances.setdefault(perf, {})[int(_VIEW_RE.match(view).group(1))] = k
        self.instants: list[tuple[str, int]] = []
        for perf, views_k in self.performances.items():
            n = min(self.clips[k].num_frames for k in views_k.values())
            self.instants.extend((perf, c) for c in valid_centers(n, self.m)[::stride])
        if self.pairs and not any(len(v) >= 2 for v in self.performances.values()):
            raise UserError(f"pairs of views need performances with at least two views; {self.root} has one view each")
        self.views = sorted({v for views_k in self.performances.values() for v in views_k})
        self._meta_cache: OrderedDict = OrderedDict()

    def _discover(self) -> list[Clip]:
        index = _read_index(self.root, ("multiview",))
        clips = []
        folders = ([self.root / c["path"] for c in index["clips"]] if index is not None
                   else sorted(self.root.glob("*/*/view_*")))
        counts = {c["path"]: c["num_frames"] for c in index["clips"]} if index is not None else {}
        for folder in folders:
            match = _VIEW_RE.match(folder.name)
            if not folder.is_dir() or match is None:
                continue
            if self.view_filter is not None and int(match.group(1)) not in self.view_filter:
                continue
            rel = str(folder.relative_to(self.root))
            lm = folder / LANDMARKS
            clips.append(Clip(rel, FrameFolder(folder), landmarks_file=lm if lm.exists() else None,
                              num_frames=counts.get(rel, 0)))
        for clip in clips:
            if not clip.frames.files:
                self.skipped.append((clip.name, "no image frames"))
        return [c for c in clips if c.frames.files]

    def __len__(self) -> int:
        return len(self.instants) if self.pairs else len(self.items)

    def _meta(self, perf: str) -> dict | None:
        if perf not in self._meta_cache:
            path = self.root / perf / "meta.npz"
            meta = None
            if path.exists():
                try:
                    with np.load(path) as data:
                        meta = {k: data[k] for k in ("landmarks", "pose", "coeffs") if k in data.files}
                except (OSError, ValueError) as err:
                    raise UserError(f"cannot read {path} ({err}); the dataset is damaged") from err
            self._meta_cache[perf] = meta
            if len(self._meta_cache) > 8:
                self._meta_cache.popitem(last=False)
        return self._meta_cache[perf]

    def load_view(self, perf: str, view: int, center: int) -> dict:
        """The sample of one view of ``perf`` ('subject/performance') at centre frame ``center``."""
        k = self.performances[perf].get(view)
        if k is None:
            raise UserError(f"{self.root / perf} has no view_{view}")
        clip = self.clips[k]
        subject, performance = perf.split("/")
        extra = {"subject": subject, "performance": performance}
        meta = self._meta(perf)
        if meta is not None and clip.landmarks_file is None and clip._landmarks is None and "landmarks" in meta:
            clip._landmarks = meta["landmarks"][view - 1].astype(np.float32)
        if meta is not None and "pose" in meta:
            extra["pose"] = torch.from_numpy(meta["pose"][view - 1, center].astype(np.float32))
        if meta is not None and "coeffs" in meta:
            extra["coeffs"] = torch.from_numpy(meta["coeffs"][view - 1, center].astype(np.float32))
        return self.load_clip(clip, center, view=view, extra=extra)

    def load_views(self, perf: str, center: int, views: Sequence[int]) -> dict:
        """The same instant seen from several views: tensors gain a leading [len(views)] axis."""
        return stack_samples([self._finish(self.load_view(perf, int(v), center)) for v in views])

    def load(self, i: int) -> dict:
        k, center = self.items[i]
        perf, view = self.clips[k].name.rsplit("/", 1)
        return self.load_view(perf, int(_VIEW_RE.match(view).group(1)), center)

    def __getitem__(self, i: int) -> dict:
        if not self.pairs:
            return super().__getitem__(i)
        perf, center = self.instants[i]
        rng = np.random.default_rng(seed_from(self.seed, self.epoch, i, 2))
        available = sorted(self.performances[perf])
        if len(available) < 2:
            raise UserError(f"{self.root / perf} has a single view; pairs need two")
        u, v = rng.choice(available, size=2, replace=False)
        return self.load_views(perf, center, [int(u), int(v)])


# ------------------------------------------------------------------------------------------------ factory

def detect_kind(root: str | os.PathLike) -> str:
    """Guess a folder's kind: 'synthbmfd', 'images', '300vw', 'multiview' or 'vidtimit' (a prepared
    ``index.json`` decides when present). UserError when nothing matches."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    if (root / "synthbmfd.json").exists():
        return "synthbmfd"
    index = _read_index(root, KINDS)
    if index is not None:
        return index["kind"]
    if any(root.glob("*/*/view_*")):
        return "multiview"
    if any(root.glob("*/video/head*")):
        return "vidtimit"
    for p in root.rglob("*"):
        if p.suffix.lower() in VIDEO_EXTS or (p.name == "annot" and p.is_dir()):
            return "300vw"
    if any(p.suffix.lower() in IMAGE_EXTS for p in root.rglob("*")):
        return "images"
    raise UserError(f"cannot tell what {root} holds: expected images (FFHQ), 300VW videos, the BMFD layout "
                    "SUBJECT/PERFORMANCE/view_K/frame_XXXXX.png or VIDTIMIT SUBJECT/video/head*/NNN")


def open_dataset(kind: str, root: str | os.PathLike, size: int = 256, m: int | None = None, **kwargs):
    """A reader by kind ('auto', 'images', '300vw' (any single-view video), 'multiview', 'vidtimit',
    'synthbmfd'); ``m`` defaults to the kind's own (300VW/VIDTIMIT 4, multi-view 32)."""
    if kind == "auto":
        kind = detect_kind(root)
    if kind == "images":
        return StillImages(root, size=size, **kwargs)
    if kind in ("300vw", "video"):
        return VideoClips(root, m=m or 4, size=size, **kwargs)
    if kind == "multiview":
        return MultiViewClips(root, m=m or 32, size=size, **kwargs)
    if kind == "vidtimit":
        return Vidtimit(root, m=m or 4, size=size, **kwargs)
    if kind == "synthbmfd":
        from deblur_rotate.data.synthbmfd import SynthBMFD

        return SynthBMFD(root, m=m or 32, size=size, **{k: v for k, v in kwargs.items() if k in ("split", "views",
                                                                                                  "stride")})
    raise UserError(f"unknown dataset kind {kind!r}: use auto, images, 300vw, multiview, vidtimit or synthbmfd")


def open_training_dataset(kind: str, root: str | os.PathLike, size: int, m: int | None = None,
                          split: str = "train", needs: str = "sharp faces"):
    """The reader a training stage uses: :func:`open_dataset` with the split applied where the kind has
    one (SynthBMFD), checked to hold samples.

    kind: 'auto' or a kind of :func:`open_dataset`; root: the folder; size: output side in pixels;
    m: blur half-window in frames (even, >= 2; None: the kind's own); split: SynthBMFD split;
    needs: what the stage trains on, for the error messages ("sharp faces", "blurry images with their
    sharp frames").
    """
    if not str(root):
        raise UserError(f"--data is required: a dataset folder of {needs} (SynthBMFD, images, 300VW videos or the "
                        "multi-view layout; e.g. `deblur-rotate synth --out data/synthbmfd`)")
    if m is not None and (m < 2 or m % 2):
        raise UserError(f"--m must be an even number >= 2 (got {m})")
    root = Path(root)
    kwargs = {"split": split} if kind in ("auto", "synthbmfd") else {}
    try:
        ds = open_dataset(kind, root, size=size, m=m, **kwargs)
    except TypeError:  # a kind detected by 'auto' that has no split
        ds = open_dataset(kind, root, size=size, m=m)
    if len(ds) == 0:
        raise UserError(f"{root} holds no training samples: expected {needs} (SynthBMFD, a folder of images, "
                        "300VW videos or the multi-view layout)")
    return ds


