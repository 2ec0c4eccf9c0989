"""E_3D's training data: pairs of views of one instant (SynthBMFD's rig, or real multi-view folders), or a face
and its mirror image for single-view data (paper §4), with landmarks where known (:mod:`deblur_rotate.train.face3d`
trains on them; :mod:`deblur_rotate.train.fusion` pairs views with them too).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.face3d.loading import procedural_sizes

__all__ = ["SINGLE_VIEW_KINDS", "Face3DPairs", "ViewPairs", "open_view_pairs", "procedural_model_from",
           "reader_has_landmarks", "reader_has_poses"]

# dataset kinds of --kind: DATA_KINDS (train/options.py); single-view kinds pair each sample with its mirror image
SINGLE_VIEW_KINDS = ("images", "300vw", "video", "vidtimit")


class Face3DPairs(torch.utils.data.Dataset):
    """Every unordered pair of views {u, v} (u != v) of every instant of a SynthBMFD split.

    Item = ``{"blurry": [2, 3, S, S], "target": [2, 3, S, S] (the sharp middle frames), "landmarks":
    [2, 68, 2] (pixels), "pose": [2, 3] (radians)}`` at the dataset's size. A pure function of the index.
    """

    def __init__(self, dataset):  # dataset: a SynthBMFD with at least two views
        if len(dataset.views) < 2:
            raise UserError("E_3D training needs at least two views per instant (for L_mview)")
        self.dataset = dataset
        self.pairs = list(itertools.combinations(dataset.views, 2))

    def __len__(self) -> int:
        return len(self.dataset.instants) * len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        instant, pair = divmod(int(i), len(self.pairs))
        subject, perf, center = self.dataset.instants[instant]
        s = self.dataset.load_views(subject, perf, center, list(self.pairs[pair]))
        return {"blurry": s["blurry"], "target": s["targets"][:, 2], "landmarks": s["landmarks"], "pose": s["pose"]}


class ViewPairs(torch.utils.data.Dataset):
    """Two views of one instant from a reader of :mod:`deblur_rotate.data.readers` (no SynthBMFD ground truth).

    * :class:`~deblur_rotate.data.readers.MultiViewClips` (the BMFD layout): true views, every unordered pair
      {u, v} (u < v) of the views each performance has, at every instant; with ``mirror_copies`` each pair
      also comes left-right mirrored (both views flipped, landmarks renumbered, view k -> 9 - k).
    * A single-view reader (StillImages, VideoClips, Vidtimit) opened with ``mirror='pair'``: view u is the
      sample, view v its horizontal mirror (paper §4), with landmarks flipped and renumbered
      (:func:`deblur_rotate.data.readers.mirror_sample`) and the pose mirrored where known.

    Item (leading [2] axis = the views u, v; S = the reader's size)::

        blurry     [2, 3, S, S]     in [-1, 1]
        targets    [2, 5, 3, S, S]  the 5 sharp frames of each view (``middle_only``: ``target [2, 3, S, S]``,
                                    the middle frame only)
        landmarks  [2, 68, 2]       middle-frame landmarks, (u, v) pixels; NaN where unknown
        pose       [2, 3]           (pitch, yaw, roll) radians; NaN where unknown
        view       [2]              int64 rig views (0: unknown)
        mirrored   [2]              bool: the view is a left-right flipped copy

    Attributes: ``second_view`` ("true" or "mirror"), ``copies`` (2 when mirrored copies are interleaved:
    odd items are the mirrored ones), ``pairs`` (the view pairs used; empty for single-view data). A pure
    function of the index (and of the reader's seed and epoch, which draw the stills' blur kernels).
    """

    def __init__(self,
                 reader,                      # MultiViewClips, or a single-view reader with mirror='pair'
                 mirror_copies: bool = False,  # MultiViewClips only: add left-right mirrored copies of every pair
                 middle_only: bool = False):   # return the middle sharp frame ``target`` instead of ``targets``
        from deblur_rotate.data.readers import MultiViewClips

        self.reader = reader
        self.middle_only = bool(middle_only)
        if isinstance(reader, MultiViewClips):
            self.second_view = "true"
            self.copies = 2 if mirror_copies else 1
            self.perf_pairs = {perf: list(itertools.combinations(sorted(views), 2))
                               for perf, views in reader.performances.items()}
            self.instants = [(perf, c) for perf, c in reader.instants if self.perf_pairs[perf]]
            if not self.instants:
                raise UserError(f"{reader.root}: every performance has a single view, so there are no view pairs; "
                                "give at least two views per performance (view_1, view_2, ...)")
            counts = [len(self.perf_pairs[perf]) for perf, _ in self.instants]
            self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [instants + 1]
            self.pairs = sorted({pair for pairs in self.perf_pairs.values() for pair in pairs})
        else:
            if getattr(reader, "mirror", None) != "pair":
                raise ValueError("a single-view reader must be opened with mirror='pair' (its mirror is view v)")
            self.second_view = "mirror"
            self.copies = 1
            self.pairs = []

    def __len__(self) -> int:
        n = int(self.offsets[-1]) if self.second_view == "true" else len(self.reader)
        return n * self.copies

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from deblur_rotate.data.readers import mirror_sample, stack_samples

        i, flip = divmod(int(i), self.copies)
        if self.second_view == "true":
            k = int(np.searchsorted(self.offsets, i, side="right") - 1)
            perf, center = self.instants[k]
            views = self.perf_pairs[perf][i - int(self.offsets[k])]
            samples = [self.reader.load_view(perf, v, center) for v in views]
            if flip:
                samples = [mirror_sample(x) for x in samples]
            s = stack_samples(samples)
        else:
            s = self.reader[i]  # the sample and its mirror, stacked
        out = {"blurry": s["blurry"].float(), "landmarks": s["landmarks"].float(), "pose": s["pose"].float(),
               "view": torch.as_tensor(s["view"]).long(), "mirrored": torch.as_tensor(s["mirrored"]).bool()}
        if self.middle_only:
            out["target"] = s["targets"][:, 2].float()
        else:
            out["targets"] = s["targets"].float()
        return out


def open_view_pairs(kind: str, root: str | os.PathLike, size: int, m: int | None = None, stride: int = 1,
                    seed: int = 0, mirror_copies: bool = False, middle_only: bool = False) -> ViewPairs:
    """:class:`ViewPairs` of a real-data folder: ``kind`` 'multiview' (true views) or one of
    :data:`SINGLE_VIEW_KINDS` (the mirror image as the second view). size: output side, pixels; m: blur
    half-window (None: the kind's own; ignored for stills); stride: centre-frame step of video kinds;
    seed: the stills' blur kernels; mirror_copies / middle_only: see :class:`ViewPairs`."""
    from deblur_rotate.data.readers import open_dataset

    if kind == "multiview":
        reader = open_dataset("multiview", root, size=size, m=m, stride=stride, seed=seed)
    elif kind in SINGLE_VIEW_KINDS:
        extra = {} if kind == "images" else {"stride": stride}
        reader = open_dataset(kind, root, size=size, m=m, mirror="pair", seed=seed, **extra)
    else:
        raise UserError(f"no view pairs for dataset kind {kind!r}: expected multiview or one of "
                        f"{', '.join(SINGLE_VIEW_KINDS)}")
    pairs = ViewPairs(reader, mirror_copies=mirror_copies, middle_only=middle_only)
    if len(pairs) == 0:
        raise UserError(f"{root} holds no usable samples ({kind})")
    return pairs


def _npz_keys(path: Path) -> set[str]:
    """Array names of an .npz file (nothing loaded); empty when missing or unreadable."""
    if not path.is_file():
        return set()
    try:
        with np.load(path) as data:
            return set(data.files)
    except (OSError, ValueError):
        return set()


def reader_has_landmarks(reader) -> bool:
    """Whether a reader of :mod:`deblur_rotate.data.readers` has any landmarks to give (a prepared index's
    ``landmarks.npy``, 300VW ``.pts`` files, a multi-view ``meta.npz``), without loading samples."""
    from deblur_rotate.data.readers import MultiViewClips, StillImages

    if isinstance(reader, StillImages):
        return reader.landmarks is not None and bool(np.isfinite(reader.landmarks).any())
    for clip in getattr(reader, "clips", []):
        if clip.annot is not None or clip._landmarks is not None or \
                (clip.landmarks_file is not None and clip.landmarks_file.is_file()):
            return True
    if isinstance(reader, MultiViewClips):
        return any("landmarks" in _npz_keys(reader.root / perf / "meta.npz") for perf in reader.performances)
    return False


def reader_has_poses(reader) -> bool:
    """Whether every sample of a reader has a known head pose: only multi-view folders whose every
    performance carries a ``meta.npz`` with ``pose`` (SynthBMFD read as the BMFD layout); real data has none."""
    from deblur_rotate.data.readers import MultiViewClips

    if not isinstance(reader, MultiViewClips):
        return False
    return all("pose" in _npz_keys(reader.root / perf / "meta.npz") for perf in reader.performances)


def procedural_model_from(folder: str | os.PathLike) -> dict:
    """The procedural model sizes a SynthBMFD folder was rendered with (its ``index.json`` ``model``), so E_3D
    on real data can use the same model (``--model-from``). UserError when the folder is not a SynthBMFD one."""
    path = Path(folder) / "index.json"
    try:
        index = json.loads(path.read_text())
        return procedural_sizes(dict(index["model"]), str(path))
    except FileNotFoundError:
        raise UserError(f"--model-from {folder}: no index.json; give a SynthBMFD folder (`deblur-rotate synth`)") \
            from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--model-from {folder}: {path} names no procedural model ({err}); give a SynthBMFD "
                        "folder (`deblur-rotate synth`)") from None
