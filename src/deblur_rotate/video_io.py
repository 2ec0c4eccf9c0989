"""Video in and out for ``run`` on videos: probing (PyAV; a folder of frames with --fps), streaming frames
upright as uint8 RGB ``[H, W, 3]``, the H.264 writer, and copying the input's audio into the output (shifted by
the frames the model adds). Memory does not grow with the video's length: frames are decoded and encoded one by
one.
"""
from __future__ import annotations

import contextlib
import heapq
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from deblur_rotate.errors import UserError

__all__ = ["MAX_FPS", "MP4_AUDIO_COPY", "VIDEO_EXTS", "Mp4Writer", "VideoInfo", "iter_frames", "mux_audio",
           "probe_video"]

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
              ".mts", ".m2ts", ".ogv", ".gif", ".y4m"}
MAX_FPS = 1000.0          # input rates above this are taken as a broken header (a time base, not a rate)
MP4_AUDIO_COPY = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}  # codecs copied into MP4 as they are


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
                self.audio = mux_audio(self._tmp, self.audio_from, self.audio_offset, muxed)
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


def mux_audio(video: Path, source: Path, offset: float, out: Path) -> str:
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
