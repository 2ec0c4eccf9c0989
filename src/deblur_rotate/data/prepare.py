"""``deblur-rotate prepare``: detect, align and crop faces of a dataset once, cache landmarks, write an index.

Kinds and what they become (``OUT`` is then readable by :mod:`deblur_rotate.data.readers`):

  images     SRC/**/*.png|jpg ...              -> OUT/images/<same path>.png, OUT/landmarks.npy [N, 68, 2]
                                                  (a.png -> images/a.png; other types keep their extension:
                                                  a.jpg -> images/a.jpg.png)
  300vw      SRC/NNN/vid.avi (+ annot/*.pts),  -> OUT/<clip>/seg_SSS/frame_XXXXX.png + landmarks.npy [T, 68, 2]
             other videos, folders of frames      (<clip>: NNN/vid, or NNN/vid.avi when vid.mp4 or a
                                                  folder NNN/vid is there too)
  multiview  SRC/subject/perf/view_K/frames    -> OUT/subject/perf_sSSS/view_K/frame_XXXXX.png + landmarks.npy
  vidtimit   SRC/subject/video/head*/NNN       -> OUT/subject/video/head*/seg_SSS/frame_XXXXX.png + landmarks.npy

Stills get the FFHQ crop of their largest face. Video is cut into segments of ``segment`` frames and every
frame of a segment gets the SAME crop (the FFHQ crop of the segment's mean landmarks), so the face motion
that makes the blur is kept; the segments of a multi-view performance are cut at the same frames in every
view. Landmarks come from 300VW's .pts files where present (frames without one, and datasets without any,
use dlib's 68-point predictor; in video the face detector runs every ``detect_every`` frames and the
predictor on every frame). All landmarks are stored in crop pixels.

Output names are unique: two sources never write the same output (compared ignoring case, for file systems
that do). They follow the table above; where that still leaves two sources on one name (``a.jpg.png`` and
``a.jpg``, ``A.png`` and ``a.png``), one keeps it (a ``.png`` named like its source first, else the first
in order) and the others get a short hash of their source path (``images/a.jpg-1a2b3c4d.png``), with a note
in the index.

Resumable: each source item (image, clip, view) is finished by writing ``OUT/.state/<item>.json`` (its outputs,
or why it was skipped), after its files were written through ``OUT/.partial`` and moved into place; a rerun
skips finished items, except those whose recorded output another item also claims (as folders prepared
before names kept the extension can hold: ``a.png`` and ``a.jpg`` both in ``images/a.png``): those are
prepared again under their own names, and outputs no item uses any more are removed. ``OUT/index.json`` is
written last, atomically. Unreadable files, damaged videos, folders in the wrong layout and faces not found
are skipped, each with its reason in the summary, and left out of the index; a source with nothing usable
is an error naming the expected layout.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from deblur_rotate.data.align import FaceAligner, ffhq_transform, transform_points, warp_image
from deblur_rotate.data.prepare_options import EXPECTED
from deblur_rotate.data.readers import INDEX, LANDMARKS, Clip, find_clips
from deblur_rotate.data.sources import FrameFolder, pts_landmarks
from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_bytes, atomic_write_json, save_png
from deblur_rotate.images import IMAGE_EXTS, natural_key

__all__ = ["prepare", "run_prepare", "EXPECTED", "segment_bounds",
           "clip_landmarks"]

FORMAT_VERSION = 1
_STATE, _PARTIAL, _OPTIONS = ".state", ".partial", "prepare.json"
_DEFAULT_SEGMENT = {"images": 1, "300vw": 90, "multiview": 224, "vidtimit": 1_000_000}


def segment_bounds(num_frames: int, segment: int) -> list[tuple[int, int]]:
    """Cut ``num_frames`` into consecutive [start, stop) segments of ``segment`` frames; a remainder shorter
    than half a segment joins the last one."""
    if num_frames <= 0:
        return []
    bounds = [(a, min(a + segment, num_frames)) for a in range(0, num_frames, segment)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < segment / 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def _state_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"


def _image_name(rel: Path) -> str:
    """Output file of the image at ``rel`` (relative to SRC): ``images/<rel>`` for a ``.png``, else the name
    with its extension kept and ``.png`` added (``a.jpg`` -> ``images/a.jpg.png``): ``a.png`` and ``a.jpg``
    of one folder must not meet in ``images/a.png``."""
    name = rel if rel.suffix == ".png" else rel.with_name(rel.name + ".png")
    return str(Path("images") / name)


def _clip_bases(clips: list[Clip]) -> dict[str, str]:
    """Output folder (above its ``seg_SSS``) of each clip, by clip name: a folder of frames keeps its path, a
    video drops its extension (``001/vid.avi`` -> ``001/vid``) unless another clip would get that name too
    (``vid.avi`` beside ``vid.mp4``, or a folder ``vid``): then it keeps it (``001/vid.avi``)."""
    wanted = {}
    for clip in clips:
        base = Path(clip.name)
        wanted[clip.name] = str(base if isinstance(clip.frames, FrameFolder) else base.with_suffix(""))
    taken: dict[str, int] = {}
    for name in wanted.values():
        taken[name.casefold()] = taken.get(name.casefold(), 0) + 1
    shared = {clip.name for clip in clips
              if not isinstance(clip.frames, FrameFolder) and taken[wanted[clip.name].casefold()] > 1}
    return {clip.name: clip.name if clip.name in shared else wanted[clip.name] for clip in clips}


def _with_hash(name: str, key: str) -> str:
    """``name`` made unique by a short hash of the source ``key``: ``images/a-1a2b3c4d.png``, ``001/vid-1a2b3c4d``."""
    tag = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{name[:-4]}-{tag}.png" if name.endswith(".png") else f"{name}-{tag}"


def _unique_names(wanted: dict[str, str], natural: set[str] = frozenset()) -> tuple[dict[str, str], list[dict]]:
    """One output name per key from ``wanted`` (key -> name), none shared (ignoring case). Where keys still
    share a name, the first of them in (natural first, then key) order keeps it and the others get
    :func:`_with_hash`; ``natural`` keys are those whose name is their source path unchanged. Returns
    (key -> name, notes for the index)."""
    groups: dict[str, list[str]] = {}
    for key, name in wanted.items():
        groups.setdefault(name.casefold(), []).append(key)
    names, notes = dict(wanted), []
    used = {n.casefold() for n in wanted.values()}
    for keys in groups.values():
        if len(keys) < 2:
            continue
        keys = sorted(keys, key=lambda k: (k not in natural, k))
        for key in keys[1:]:
            name = _with_hash(wanted[key], key)
            while name.casefold() in used:  # a source already named like that: hash again
                name = _with_hash(name, key)
            used.add(name.casefold())
            names[key] = name
            notes.append({"item": key, "note": f"written as {name}: {wanted[key]} is the output of {keys[0]}"})
    return names, notes


class _Run:
    """Bookkeeping of one preparation: state files, partial folder, counters."""

    def __init__(self, out: Path):
        self.out = out
        self.state_dir = out / _STATE
        self.partial = out / _PARTIAL
        self.faces = 0

    def done(self, key: str) -> dict | None:
        path = self.state_dir / _state_name(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None  # damaged state: redo the item

    def finish(self, key: str, record: dict) -> None:
        atomic_write_json(self.state_dir / _state_name(key), {"item": key, **record})

    def commit(self, tmp: Path, rel: str) -> None:
        """Move a finished folder from .partial into place (replacing a stale one)."""
        dest = self.out / rel
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)


# -------------------------------------------------------------------------------------------------- landmarks

def clip_landmarks(frames, aligner: FaceAligner, given: np.ndarray | None = None, detect_every: int = 5,
                   num_frames: int | None = None):
    """Landmarks of every frame of a clip, one streaming pass.

    frames: iterable of uint8 [H, W, 3]; given: ``[T, 68, 2]`` known landmarks (NaN rows are filled by dlib)
    or None. Returns (landmarks ``[T, 68, 2]`` float32 with NaN where no face was found, dict frame -> reason
    for frames that could not be read, total frames seen). The detector runs every ``detect_every`` frames
    (and whenever the last detection failed); in between the predictor reuses the last box.
    """
    out, bad = [], {}
    box, since = None, detect_every
    t = 0
    iterator = iter(frames)
    while True:
        try:
            image = next(iterator)
        except StopIteration:
            break
        except UserError as err:  # an unreadable frame (folders) or the rest of a damaged video
            bad[t] = str(err)
            out.append(np.full((68, 2), np.nan, np.float32))
            t += 1
            if isinstance(frames, _VideoFrames):
                break
            continue
        if given is not None and t < len(given) and np.isfinite(given[t]).all():
            out.append(given[t].astype(np.float32))
        else:
            if box is None or since >= detect_every:
                boxes = aligner.detect(image)
                box, since = (boxes[0] if boxes else None), 0
            since += 1
            out.append(aligner.landmarks(image, box) if box is not None else np.full((68, 2), np.nan, np.float32))
        t += 1
    if num_frames is not None and t < num_frames:
        out.extend(np.full((68, 2), np.nan, np.float32) for _ in range(t, num_frames))
    lm = np.stack(out) if out else np.zeros((0, 68, 2), np.float32)
    return lm, bad, t


class _VideoFrames:
    """Frames of a video file, one pass; a decode error is raised as UserError and ends the pass."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        return iter(self.source.frames())


class _FolderFrames:
    """Frames of a folder, one by one; an unreadable frame raises UserError for that frame only."""

    def __init__(self, folder: FrameFolder, stop: int | None = None):
        self.folder, self.stop = folder, stop

    def __iter__(self):
        return _FolderIter(self.folder, self.stop)


class _FolderIter:
    def __init__(self, folder, stop):
        self.folder, self.k = folder, 0
        self.stop = len(folder) if stop is None else min(stop, len(folder))

    def __iter__(self):
        return self

    def __next__(self):
        if self.k >= self.stop:
            raise StopIteration
        k = self.k
        self.k += 1
        return self.folder.read([k])[0]


def _frames_of(source, stop: int | None = None):
    if isinstance(source, FrameFolder):
        return _FolderFrames(source, stop)
    return _VideoFrames(source)


# --------------------------------------------------------------------------------------------------- items

def _prepare_image(run: _Run, path: Path, rel: str, size: int, aligner: FaceAligner) -> dict:
    """Align the largest face of the image ``path`` into ``OUT/rel``; the item's record."""
    from deblur_rotate.images import read_image

    try:
        image = read_image(path, min_side=1)
    except UserError as err:  # "PATH: not a readable image (reason)" -> "unreadable image (reason)"
        return {"skipped": f"unreadable image ({str(err).split('(', 1)[-1].rstrip(')')})"}
    lm = aligner(image)
    if lm is None:
        return {"skipped": "no face found"}
    affine = ffhq_transform(lm, size)
    dest = run.out / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    save_png(tmp, warp_image(image, affine, size))
    os.replace(tmp, dest)
    run.faces += 1
    return {"file": rel, "landmarks": transform_points(affine, lm).tolist()}


def _prepare_clip(run: _Run, key: str, clip: Clip, out_names: list[str], bounds: list[tuple[int, int]], size: int,
                  aligner: FaceAligner, detect_every: int, min_found: float, m_min: int) -> dict:
    """Prepare one single-view clip cut at ``bounds``; segment j goes to ``OUT/out_names[j]``."""
    given = None
    notes = []
    if clip.annot is not None:
        try:
            n = len(clip.frames)
        except UserError as err:
            return {"skipped": f"unreadable video ({err})"}
        given = pts_landmarks(clip.annot, n)
        missing = int((~np.isfinite(given).all(axis=(1, 2))).sum())
        if missing:
            notes.append(f"{missing} frames without a .pts file: landmarks from dlib")
    stop = bounds[-1][1] if bounds else None
    try:
        lm, bad, seen = clip_landmarks(_frames_of(clip.frames, stop), aligner, given, detect_every)
    except UserError as err:
        return {"skipped": str(err)}
    if seen == 0:
        return {"skipped": "no readable frame"}
    if bounds is None or not bounds:
        return {"skipped": "no frames"}
    skipped_segments = []
    plans = []
    for j, (a, b) in enumerate(bounds):
        if b > len(lm):
            skipped_segments.append(f"segment {a}-{b - 1}: the clip ends at frame {len(lm) - 1}")
            continue
        bad_here = [f for f in bad if a <= f < b]
        if bad_here:
            skipped_segments.append(f"segment {a}-{b - 1}: unreadable frame {bad_here[0]} ({bad[bad_here[0]]})")
            continue
        found = np.isfinite(lm[a:b]).all(axis=(1, 2))
        if found.mean() < min_found:
            skipped_segments.append(f"segment {a}-{b - 1}: face found in {int(found.sum())} of {b - a} frames")
            continue
        if b - a < 2 * m_min + 1:
            skipped_segments.append(f"segment {a}-{b - 1}: {b - a} frames, fewer than {2 * m_min + 1}")
            continue
        plans.append((j, a, b, ffhq_transform(lm[a:b][found].mean(0), size)))
    if not plans:
        return {"skipped": "; ".join(skipped_segments) or "no usable segment"}
    # second pass: write the crops of the kept segments
    tmp_root = run.partial / _state_name(key)[:-5]
    shutil.rmtree(tmp_root, ignore_errors=True)
    plan_of = {}
    for j, a, b, affine in plans:
        (tmp_root / str(j)).mkdir(parents=True)
        for f in range(a, b):
            plan_of[f] = (j, a, affine)
    stop = plans[-1][2]
    if isinstance(clip.frames, FrameFolder):  # read only the frames of kept segments
        frames = ((f, clip.frames.read([f])[0]) for f in sorted(plan_of))
    else:
        frames = enumerate(_frames_of(clip.frames, stop))
    try:
        for f, image in frames:
            if f >= stop:
                break
            if f in plan_of:
                j, a, affine = plan_of[f]
                save_png(tmp_root / str(j) / f"frame_{f - a:05d}.png", warp_image(image, affine, size))
    except UserError as err:
        shutil.rmtree(tmp_root, ignore_errors=True)
        return {"skipped": f"failed on the second read ({err})"}
    outputs = []
    for j, a, b, affine in plans:
        np.save(tmp_root / str(j) / LANDMARKS, transform_points(affine, lm[a:b]))
        run.commit(tmp_root / str(j), out_names[j])
        run.faces += int(np.isfinite(lm[a:b]).all(axis=(1, 2)).sum())
        outputs.append({"path": out_names[j], "num_frames": b - a, "first_frame": a})
    shutil.rmtree(tmp_root, ignore_errors=True)
    record = {"clips": outputs}
    if skipped_segments or notes:
        record["notes"] = notes + skipped_segments
    return record


# ----------------------------------------------------------------------------------------------- discovery

def _list_images(src: Path) -> list[Path]:
    return sorted((p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and not any(part.startswith(".") for part in p.relative_to(src).parts)),
                  key=lambda p: str(p.relative_to(src)))


def _items(kind: str, src: Path, segment: int) -> tuple[list, list[dict]]:
    """(work items, skipped records found while listing). A work item is (key, payload)."""
    skipped = []
    if kind == "images":
        return [(str(p.relative_to(src)), p) for p in _list_images(src)], skipped
    if kind in ("300vw", "vidtimit"):
        if kind == "vidtimit":
            folders = sorted(p for p in src.glob("*/video/head*") if p.is_dir())
            clips = [Clip(str(f.relative_to(src)), FrameFolder(f)) for f in folders]
            for c in clips:
                if not c.frames.files:
                    skipped.append({"item": c.name, "reason": "no frame files (expected 001 002 ...)"})
            clips = [c for c in clips if c.frames.files]
        else:
            clips = find_clips(src)
        return [(c.name, c) for c in clips], skipped
    # multiview: subject/perf/view_K
    items = []
    for perf in sorted(p for p in src.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        if perf.parent.name.startswith("."):
            continue
        views = sorted((v for v in perf.iterdir() if v.is_dir() and re.fullmatch(r"view_\d+", v.name)),
                       key=natural_key)
        if not views:
            why = ("a view folder directly under a subject" if re.fullmatch(r"view_\d+", perf.name)
                   else "no view_K folders")
            skipped.append({"item": str(perf.relative_to(src)),
                            "reason": f"{why} (expected SUBJECT/PERFORMANCE/view_K/frame_XXXXX.png)"})
            continue
        folders = [FrameFolder(v) for v in views]
        n = min(len(f) for f in folders)
        for v, f in zip(views, folders):
            if not len(f):
                skipped.append({"item": str(v.relative_to(src)), "reason": "no image frames"})
                continue
            items.append((str(v.relative_to(src)), (perf, v, f, n)))
    return items, skipped


# --------------------------------------------------------------------------------------------------- driver

def prepare(kind: str, src: str | os.PathLike, out: str | os.PathLike, size: int = 256, detector: str = "hog",
            segment: int | None = None, detect_every: int = 5, min_found: float = 0.5, m_min: int = 2,
            progress: bool = True, aligner: FaceAligner | None = None) -> dict:
    """Prepare ``src`` (a dataset of ``kind``) into ``out``; returns the summary (also in ``OUT/index.json``).

    size: crop side in pixels; detector: 'hog' or 'cnn'; segment: frames per fixed-crop video segment
    (default 90 for 300VW, 224 for multi-view, whole sequences for VIDTIMIT); detect_every: frames between
    face detections in video; min_found: share of a segment's frames that must have a face; m_min: the
    smallest blur half-window the output must support (segments shorter than 2 m_min + 1 are dropped).
    """
    if kind not in EXPECTED:
        raise UserError(f"--kind must be one of {', '.join(EXPECTED)} (got {kind!r})")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    if not 16 <= size <= 2048:
        raise UserError(f"--size must be between 16 and 2048 pixels (got {size})")
    segment = int(segment or _DEFAULT_SEGMENT[kind])
    if kind != "images" and segment < 2 * m_min + 1:
        raise UserError(f"--segment must be at least {2 * m_min + 1} frames (got {segment})")
    if detect_every < 1:
        raise UserError(f"--detect-every must be >= 1 (got {detect_every})")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} must be outside --src {src}")
    options = {"format_version": FORMAT_VERSION, "kind": kind, "size": size, "detector": detector,
               "segment": segment, "min_found": min_found, "source": str(src.resolve())}
    _check_out(out, options)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / _OPTIONS, options)
    run = _Run(out)
    shutil.rmtree(run.partial, ignore_errors=True)
    aligner = aligner or FaceAligner(detector)

    items, skipped = _items(kind, src, segment)
    if not items:
        raise UserError(f"nothing to prepare in {src}: expected {EXPECTED[kind]} for --kind {kind}")
    names, name_notes = _output_names(kind, src, items)
    previous = {key: run.done(key) for key, _ in items}
    redo = _conflicting_records(kind, names, previous)
    from tqdm.auto import tqdm

    records = []
    start = time.perf_counter()
    bar = tqdm(items, desc=f"prepare {kind}", unit="item", disable=not progress)
    for key, payload in bar:
        record = None if key in redo else previous[key]
        if record is None:
            if kind == "images":
                record = _prepare_image(run, payload, names[key], size, aligner)
            elif kind == "multiview":
                perf, view, folder, n = payload
                bounds = segment_bounds(n, segment)
                subject_rel = perf.parent.relative_to(src)
                names = [str(subject_rel / f"{perf.name}_s{j:03d}" / view.name) for j in range(len(bounds))]
                record = _prepare_clip(run, key, Clip(key, folder), names, bounds, size, aligner, detect_every,
                                       min_found, m_min)
            else:
                clip = payload
                try:
                    n = len(clip.frames)
                except UserError as err:
                    record = {"skipped": f"unreadable video ({err})"}
                else:
                    bounds = segment_bounds(n, segment)
                    base = Path(names[key])  # 001/vid.avi -> 001/vid/seg_000 (or 001/vid.avi/seg_000, see above)
                    segment_names = [str(base / f"seg_{j:03d}") for j in range(len(bounds))]
                    record = _prepare_clip(run, key, clip, segment_names, bounds, size, aligner, detect_every,
                                           min_found, m_min)
            run.finish(key, record)
        records.append((key, record))
        elapsed = time.perf_counter() - start
        bar.set_postfix(faces_per_s=f"{run.faces / max(elapsed, 1e-9):.1f}")
    bar.close()
    shutil.rmtree(run.partial, ignore_errors=True)
    _remove_unused_outputs(out, kind, [previous[k] for k in redo], [r for _, r in records])
    elapsed = time.perf_counter() - start
    return _write_index(out, kind, size, src, records, skipped, run.faces, elapsed, name_notes)


def _output_names(kind: str, src: Path, items: list) -> tuple[dict[str, str], list[dict]]:
    """key -> output name of each item (images: the file; 300vw/vidtimit: the folder above seg_SSS;
    multiview: none, its names are unique by construction), all distinct; and notes on renamed ones."""
    if kind == "images":
        wanted = {key: _image_name(path.relative_to(src)) for key, path in items}
        natural = {key for key, path in items if path.suffix == ".png"}
        return _unique_names(wanted, natural)
    if kind in ("300vw", "vidtimit"):
        clips = [clip for _, clip in items]
        wanted = _clip_bases(clips)
        natural = {clip.name for clip in clips if isinstance(clip.frames, FrameFolder)}
        return _unique_names(wanted, natural)
    return {}, []


def _record_outputs(kind: str, record: dict | None) -> list[str]:
    """The output names a finished item's record owns (as :func:`_output_names` names them)."""
    if not record:
        return []
    if kind == "images":
        return [record["file"]] if isinstance(record.get("file"), str) else []
    if kind in ("300vw", "vidtimit"):
        return sorted({str(Path(c["path"]).parent) for c in record.get("clips", []) if isinstance(c, dict)
                       and isinstance(c.get("path"), str)})
    return []


def _conflicting_records(kind: str, names: dict[str, str], previous: dict[str, dict | None]) -> set[str]:
    """Keys whose finished record must not be reused: an output it owns is also claimed by another item
    (its new name, or another record's output), as when ``a.png`` and ``a.jpg`` were both written to
    ``images/a.png`` by an earlier version. Such items are prepared again."""
    claims: dict[str, set[str]] = {}
    for key, name in names.items():
        claims.setdefault(name.casefold(), set()).add(key)
    for key, record in previous.items():
        for name in _record_outputs(kind, record):
            claims.setdefault(name.casefold(), set()).add(key)
    return {key for key, record in previous.items()
            if any(claims[name.casefold()] != {key} for name in _record_outputs(kind, record))}


def _remove_unused_outputs(out: Path, kind: str, old: list[dict | None], new: list[dict]) -> None:
    """Delete the outputs of redone records (``old``) that no finished record (``new``) uses any more."""
    keep = {name.casefold() for record in new for name in _record_outputs(kind, record)}
    for record in old:
        for name in _record_outputs(kind, record):
            if name.casefold() in keep:
                continue
            path = out / name
            if kind == "images" and path.is_file():
                path.unlink(missing_ok=True)
            elif kind != "images" and path.is_dir():
                for c in record.get("clips", []):
                    seg = out / c["path"]
                    if seg.parent == path and seg.is_dir():
                        shutil.rmtree(seg, ignore_errors=True)
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when nothing else is in it


def _check_out(out: Path, options: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / _OPTIONS
    if not marker.exists():
        raise UserError(f"--out {out} is not empty and holds no prepared data; choose a new or empty folder")
    try:
        previous = json.loads(marker.read_text())
    except ValueError as err:
        raise UserError(f"{marker} is damaged ({err}); delete {out} and prepare again") from err
    if previous != options:
        changed = sorted(k for k in set(previous) | set(options) if previous.get(k) != options.get(k))
        raise UserError(f"{out} was prepared with other settings ({', '.join(changed)} differ); rerun with the same "
                        "options to resume, or choose a new --out folder")


def _write_index(out: Path, kind: str, size: int, src: Path, records: list, skipped: list, faces: int,
                 elapsed: float, notes: list[dict] | None = None) -> dict:
    """Write ``OUT/index.json`` (and, for images, ``OUT/landmarks.npy``) from the item records; returns the
    summary. UserError when nothing is usable, or (a bug guard) when two items name one output."""
    skipped = list(skipped)
    notes = list(notes or [])
    owner: dict[str, str] = {}
    for key, rec in records:
        for name in (rec.get("file"), *(c.get("path") for c in rec.get("clips", []))):
            if isinstance(name, str):
                other = owner.setdefault(name.casefold(), key)
                if other != key:
                    raise UserError(f"{other} and {key} were both prepared into {out / name}; delete {out / _STATE} "
                                    "and prepare again")
    index = {"format_version": FORMAT_VERSION, "kind": kind, "size": size, "source": str(src)}
    if kind == "images":
        items, landmarks = [], []
        for key, rec in records:
            if "skipped" in rec:
                skipped.append({"item": key, "reason": rec["skipped"]})
            else:
                items.append({"file": rec["file"], "source": key})
                landmarks.append(rec["landmarks"])
        index["items"] = items
        if items:
            import io

            buf = io.BytesIO()
            np.save(buf, np.asarray(landmarks, np.float32))
            atomic_write_bytes(out / LANDMARKS, buf.getvalue())
        usable = len(items)
    else:
        clips = []
        for key, rec in records:
            if "skipped" in rec:
                skipped.append({"item": key, "reason": rec["skipped"]})
                continue
            clips.extend({**c, "source": key} for c in rec["clips"])
            notes.extend({"item": key, "note": n} for n in rec.get("notes", []))
        clips.sort(key=lambda c: c["path"])  # views of a multi-view segment share bounds, hence frame counts
        index["clips"] = clips
        usable = len(clips)
    index["skipped"] = skipped
    index["notes"] = notes
    summary = {"kind": kind, "items": len(records), "usable": usable, "skipped": skipped, "notes": notes,
               "faces": faces, "seconds": round(elapsed, 3), "faces_per_s": round(faces / max(elapsed, 1e-9), 2),
               "index": str(out / INDEX)}
    index["summary"] = {k: v for k, v in summary.items() if k not in ("skipped", "notes", "index")}
    if usable == 0:
        atomic_write_json(out / INDEX, index)
        first = f" (e.g. {skipped[0]['item']}: {skipped[0]['reason']})" if skipped else ""
        raise UserError(f"nothing usable in {src}: every item was skipped{first}; expected {EXPECTED[kind]} with a "
                        "detectable face")
    atomic_write_json(out / INDEX, index)
    return summary


# ------------------------------------------------------------------------------------------------------ CLI

def run_prepare(args) -> int:
    summary = prepare(args.kind, args.src, args.out, size=args.size, detector=args.detector, segment=args.segment,
                      detect_every=args.detect_every, progress=not args.quiet)
    print(f"prepared {summary['usable']} {'images' if summary['kind'] == 'images' else 'clips'} from "
          f"{summary['items']} items into {args.out} ({summary['faces']} faces, {summary['faces_per_s']} faces/s); "
          f"index: {summary['index']}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])}:")
        for s in summary["skipped"][:20]:
            print(f"  {s['item']}: {s['reason']}")
        if len(summary["skipped"]) > 20:
            print(f"  ... and {len(summary['skipped']) - 20} more (see the index)")
    for n in summary["notes"][:10]:
        print(f"note: {n['item']}: {n['note']}")
    return 0
