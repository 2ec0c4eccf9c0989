"""Frame sources of the dataset readers: folders of frames, video files decoded lazily with PyAV, and 300VW's
``.pts`` landmark annotations. Frames are uint8 RGB ``[H, W, 3]`` numpy arrays, read by the project's one image
reader (:func:`deblur_rotate.images.read_image`).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError
from deblur_rotate.images import IMAGE_EXTS, natural_key, read_image

__all__ = ["VIDEO_EXTS", "FrameFolder", "VideoFile", "pts_landmarks", "read_frame", "read_pts"]

VIDEO_EXTS = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def read_frame(path: Path) -> np.ndarray:
    """A dataset image as uint8 RGB ``[H, W, 3]`` (:func:`deblur_rotate.images.read_image`, the reader photos
    go through too); UserError naming the file and the way out when it cannot be read."""
    try:
        return read_image(path, min_side=1)
    except UserError as err:
        raise UserError(f"{err}; remove it, or run `deblur-rotate prepare`, which skips unreadable files") from None


# -------------------------------------------------------------------------------------------- frame sources

class FrameFolder:
    """A clip stored as one image file per frame, in natural name order (``frame_2`` before ``frame_10``).

    Files with an image extension count as frames; a folder with none (VIDTIMIT's ``001 002 ...``) uses its
    extension-less files instead.
    """

    def __init__(self, path: str | os.PathLike, files: list[Path] | None = None):
        self.path = Path(path)
        self.files = files if files is not None else self.list_frames(self.path)

    @staticmethod
    def list_frames(path: Path) -> list[Path]:
        entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        frames = [p for p in entries if p.suffix.lower() in IMAGE_EXTS]
        if not frames:
            frames = [p for p in entries if p.suffix == "" and p.name.isdigit()]
        return sorted(frames, key=natural_key)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 frames ``[len(indices), H, W, 3]``."""
        return np.stack([read_frame(self.files[i]) for i in indices])

    def frames(self):
        """Iterate over all frames in order (uint8 [H, W, 3]); unreadable ones raise UserError."""
        for f in self.files:
            yield read_frame(f)


class VideoFile:
    """A video file decoded lazily with PyAV: ``read`` seeks to the keyframe before the first frame asked
    for and decodes forward. Frame ``k`` is the one whose timestamp is ``k / fps`` after the stream start
    (constant frame rate assumed, as in 300VW). The container stays open between reads (per process)."""

    def __init__(self, path: str | os.PathLike, num_frames: int | None = None):
        self.path = Path(path)
        self._container = None
        self._pid = None  # process that opened the container
        self._num_frames = num_frames

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_container"] = None  # containers do not pickle; each worker process reopens
        return state

    def _open(self):
        if self._container is not None and self._pid != os.getpid():
            self._container = None  # inherited through fork: the parent's decoder state is not ours to share
        if self._container is None:
            import av

            self._pid = os.getpid()

            try:
                self._container = av.open(str(self.path))
                self._stream = self._container.streams.video[0]
            except (OSError, IndexError, av.error.FFmpegError) as err:
                self._container = None
                raise UserError(f"cannot open video {self.path} ({err}); remove it, or run `deblur-rotate prepare`, "
                                "which skips unreadable videos") from err
            # Single-threaded decoding: FFmpeg's decoder threads in a process that later forks DataLoader
            # workers can leave the children deadlocked (seen in the test suite); the windows read per
            # sample are short, so threads gain little here.
            rate = self._stream.average_rate or self._stream.guessed_rate or 25
            self._fps = float(rate)
            self._tb = float(self._stream.time_base)
            self._start = self._stream.start_time or 0
        return self._container

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __len__(self) -> int:
        if self._num_frames is None:
            container = self._open()
            container.seek(0)
            self._num_frames = sum(1 for p in container.demux(self._stream) if p.size)
            self.close()  # listing many videos must not keep them all open
        return self._num_frames

    def _index_of(self, frame) -> int:
        return int(round((frame.pts - self._start) * self._tb * self._fps))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 frames ``[len(indices), H, W, 3]``."""
        import av

        wanted = sorted(set(int(i) for i in indices))
        first, last = wanted[0], wanted[-1]
        container = self._open()
        got: dict[int, np.ndarray] = {}
        try:
            target = self._start + int(math.floor(first / self._fps / self._tb))
            container.seek(target, stream=self._stream, backward=True, any_frame=False)
            for frame in container.decode(self._stream):
                k = self._index_of(frame) if frame.pts is not None else None
                if k is None:
                    break
                if k > last:
                    break
                if k in wanted:
                    got[k] = frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            self.close()
            raise UserError(f"cannot decode frames {first}..{last} of {self.path} ({err}); run "
                            "`deblur-rotate prepare`, which skips damaged videos") from err
        if len(got) < len(wanted):  # no usable timestamps: decode from the start, counting frames
            got = {k: v for k, v in enumerate(self._sequential(last + 1)) if k in wanted}
        if len(got) < len(wanted):
            raise UserError(f"{self.path} has no frame {max(set(wanted) - set(got))} (it decodes to fewer frames than "
                            "its header says); run `deblur-rotate prepare` on it")
        return np.stack([got[int(i)] for i in indices])

    def _sequential(self, count: int):
        container = self._open()
        container.seek(0)
        for k, frame in enumerate(container.decode(self._stream)):
            if k >= count:
                break
            yield frame.to_ndarray(format="rgb24")

    def frames(self):
        """Iterate over all frames in order (uint8 [H, W, 3]); one decode pass, nothing kept."""
        import av

        try:
            container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as err:
            raise UserError(f"cannot open video {self.path} ({err})") from err
        try:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise UserError(f"video {self.path} is damaged ({err})") from err
        finally:
            container.close()


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Landmarks ``[N, 2]`` float32 from an iBUG ``.pts`` file, converted from its 1-based pixel
    coordinates to ours (pixel centres at 0..W-1): ``u = x - 1``. ValueError when malformed."""
    text = Path(path).read_text(errors="replace")
    match = re.search(r"\{(.*)\}", text, re.S)
    if match is None:
        raise ValueError(f"{path} is not a .pts file (no {{ }} block)")
    values = np.array(match.group(1).split(), dtype=np.float64)
    if values.size % 2:
        raise ValueError(f"{path} has an odd number of coordinates")
    return (values.reshape(-1, 2) - 1.0).astype(np.float32)


def pts_landmarks(annot: Path, num_frames: int) -> np.ndarray:
    """Landmarks ``[num_frames, 68, 2]`` from a 300VW ``annot`` folder (``000001.pts`` is frame 0); NaN
    where a file is missing or malformed."""
    out = np.full((num_frames, 68, 2), np.nan, np.float32)
    for f in annot.glob("*.pts"):
        if not f.stem.isdigit():
            continue
        k = int(f.stem) - 1
        if 0 <= k < num_frames:
            try:
                pts = read_pts(f)
            except (OSError, ValueError):
                continue
            if pts.shape == (68, 2):
                out[k] = pts
    return out
