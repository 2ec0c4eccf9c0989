"""Video input to `deblur-rotate run` (issue 14): frame counts and rates, audio, time-order continuity, face
tracks, bad input, temporary files. Micro random-weight models and tiny synthetic clips, CPU only."""
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import micro_networks, write_video
from PIL import Image

from deblur_rotate.cli import main
from deblur_rotate.errors import UserError
from deblur_rotate.face_tracks import FaceTracker, fill_missing, local_linear_smooth
from deblur_rotate.faces import DEFAULT_CROP
from deblur_rotate.pipeline import DeblurRotatePipeline, assemble_model
from deblur_rotate.refine import RefineResult
from deblur_rotate.video import VideoOptions, choose_order, crop_to_crop, is_video_request, process_video
from deblur_rotate.video_io import Mp4Writer, _frame_rate

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    g, ev, e3, f = micro_networks()
    return assemble_model(tmp_path_factory.mktemp("model") / "micro", generator=g, blur_encoder=ev,
                          face3d_encoder=e3, fusion=f, preset="micro")


def _smooth_frames(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: a bright blob drifting over a smooth background, so consecutive frames differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    base = rng.integers(20, 60, 3)
    out = []
    for k in range(n):
        cx, cy = w * (0.3 + 0.4 * k / max(n - 1, 1)), h * 0.5
        blob = 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (w / 8) ** 2))
        out.append(np.clip(base + blob[..., None] + rng.normal(0, 3, (h, w, 3)), 0, 255))
    return np.stack(out).astype(np.uint8)


def _video_facts(path: Path) -> dict:
    """Frames, average rate, duration (s) and audio codec of a video file, as read back by PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        return {"frames": frames, "rate": Fraction(v.average_rate), "seconds": c.duration / 1e6, "audio": audio,
                "size": (v.codec_context.width, v.codec_context.height)}


def _run(*args) -> int:
    return main(["run", *map(str, args), "--no-progress"])


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f)).astype(int) for f in sorted(folder.glob("frame_*.png"))]


# ------------------------------------------------------------------------------------------ counts, rates


def test_video_gives_k_times_the_frames_at_k_times_the_rate(tmp_path, model_dir, capsys):
    clip = tmp_path / "in" / "clip.avi"
    write_video(clip, _smooth_frames(6, 40, 48), fps=10)
    out = tmp_path / "out"
    assert _run("-i", clip, "-o", out, "--model", model_dir, "--aligned", "--yaw", "0", "20", "--save-frames") == 0, \
        capsys.readouterr().err
    res = out / "clip"
    for view in ("input_view", "yaw+20"):
        facts = _video_facts(res / f"video_{view}.mp4")
        assert facts["frames"] == 30 and facts["rate"] == 50 and facts["size"] == (32, 32)
        assert facts["seconds"] == pytest.approx(0.6, abs=0.021)  # as long as the input (6 frames at 10 fps)
        assert len(_pngs(res / "frames" / view)) == 30
    record = json.loads((res / "result.json").read_text())
    assert (record["fps_in"], record["fps_out"], record["factor"]) == (10.0, 50.0, 5)
    assert (record["frames_in"], record["frames_out"], record["seconds"]) == (6, 30, pytest.approx(0.6))
    assert record["audio"] is None and sum(record["order"].values()) == 6
    lines = (res / "track.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(6))
    assert not [p for p in out.rglob(".*")]  # no staging folder or temporary file left
    assert json.loads((out / "summary.json").read_text())["done"][0]["frames_out"] == 30
    five = _pngs(res / "frames" / "input_view")

    # the same frames as a folder of numbered PNGs with --fps; --factor 3 keeps frames 1, 3, 5 of every 5
    folder = tmp_path / "in" / "frames"
    folder.mkdir()
    with av.open(str(clip)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(folder / f"f{k + 1}.png")
    out3 = tmp_path / "out3"
    assert _run("-i", folder, "-o", out3, "--model", model_dir, "--aligned", "--yaw", "0", "--fps", "7.5",
                "--factor", "3", "--save-frames") == 0
    facts = _video_facts(out3 / "frames" / "video_input_view.mp4")
    assert facts["frames"] == 18 and facts["rate"] == Fraction(45, 2)
    assert facts["seconds"] == pytest.approx(0.8, abs=0.05)
    three = _pngs(out3 / "frames" / "frames" / "input_view")
    for k in range(6):
        picked = [five[5 * k + j] for j in (0, 2, 4)]
        got = three[3 * k:3 * k + 3]
        same = max(np.abs(a - b).max() for a, b in zip(got, picked))
        reversed_ = max(np.abs(a - b).max() for a, b in zip(got, picked[::-1]))
        assert min(same, reversed_) <= 1
    assert _run("-i", clip, "-o", tmp_path / "o4", "--model", model_dir, "--aligned", "--yaw", "0",
                "--factor", "4") == 2
    assert "--factor 4" in capsys.readouterr().err and not (tmp_path / "o4" / "clip").exists()


def test_audio_is_copied_or_reencoded(tmp_path, model_dir):
    rate, seconds, tone = 16000, 0.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.4 * np.sin(2 * np.pi * tone * t)
    frames = _smooth_frames(5)
    for name, vcodec, acodec, fmt in (("talk.mp4", "libx264", "aac", "fltp"), ("talk.avi", "png", "pcm_s16le", "s16")):
        src = tmp_path / name
        with av.open(str(src), "w") as c:
            vs = c.add_stream(vcodec, rate=10)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p" if vcodec == "libx264" else "rgb24"
            a = c.add_stream(acodec, rate=rate)
            a.layout = "mono"
            for f in frames:
                for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            samples = wave.astype(np.float32) if fmt == "fltp" else (wave * 32767).astype(np.int16)
            for k in range(0, len(samples), 1024):
                af = av.AudioFrame.from_ndarray(samples[None, k:k + 1024], format=fmt, layout="mono")
                af.sample_rate, af.pts = rate, k
                for p in a.encode(af):
                    c.mux(p)
            for s in (a, vs):
                for p in s.encode():
                    c.mux(p)
        out = tmp_path / f"out_{src.suffix[1:]}"
        assert _run("-i", src, "-o", out, "--model", model_dir, "--aligned", "--yaw", "0") == 0
        video = out / "talk" / "video_input_view.mp4"
        facts = _video_facts(video)
        assert facts["frames"] == 25 and facts["audio"] == "aac"
        record = json.loads((out / "talk" / "result.json").read_text())
        assert record["audio"] == ("copied (aac)" if acodec == "aac" else "re-encoded to AAC (from pcm_s16le)")
        with av.open(str(video)) as c:
            stream = c.streams.audio[0]
            heard = np.concatenate([f.to_ndarray()[0] for f in c.decode(stream)])
            heard_rate = stream.codec_context.sample_rate
        assert abs(len(heard) / heard_rate - seconds) < 0.15  # the whole sound, not more
        spectrum = np.abs(np.fft.rfft(heard))
        assert np.fft.rfftfreq(len(heard), 1 / heard_rate)[spectrum.argmax()] == pytest.approx(tone, abs=5)


# ------------------------------------------------------------------------------------------------ order


class _TruthPipeline:
    """A stand-in pipeline whose "E_v" returns the true sharp frames of each blurry frame (found by nearest
    match), in a random direction per frame, and whose "G" shows codes as images: the video path's order
    choice alone decides whether the output runs in the true order."""

    def __init__(self, blurry: np.ndarray, sharp: np.ndarray, seed: int = 0):
        self.blurry = torch.from_numpy(blurry).float()                      # [N, R, R, 3] uint8 values
        self.sharp = torch.from_numpy(sharp).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # [N, 5, 3, R, R]
        self.reversed = np.random.default_rng(seed).random(len(blurry)) < 0.5  # E_v's order per input frame
        self.reversed[:2] = [True, False]
        self.resolution, self.num_frames, self.crop = sharp.shape[2], 5, DEFAULT_CROP
        self.device, self.name, self.has_pose, self.can_rotate = torch.device("cpu"), "truth", False, False
        self.resample_frames = DeblurRotatePipeline.resample_frames

    def check_request(self, views, to_frontal=False):
        assert list(views) == [(0.0, 0.0)] and not to_frontal

    def encode(self, images):                                               # [F, 3, R, R] in [-1, 1]
        pixels = ((images + 1) * 127.5).permute(0, 2, 3, 1)
        k = [int(((self.blurry - p).abs().flatten(1).mean(1)).argmin()) for p in pixels]
        frames = torch.stack([self.sharp[i].flip(0) if self.reversed[i] else self.sharp[i] for i in k])
        return frames.flatten(2)[:, :, None], None                          # codes [F, 5, 1, 3 R R]

    def encode_with_report(self, images):                                   # no refinement, no residual
        codes, pose = self.encode(images)
        nan = torch.full((codes.shape[0],), float("nan"))
        return codes, pose, RefineResult(codes, nan, nan.clone(), torch.zeros(codes.shape[0], dtype=torch.bool))

    def synthesize(self, ws):                                               # [..., 1, 3 R R] -> [..., 3, R, R]
        r = self.resolution
        return ws.reshape(*ws.shape[:-2], 3, r, r)


def test_order_continues_across_input_frames_on_a_clip_with_known_truth(tmp_path):
    n, r = 12, 32
    yy, xx = np.mgrid[:r, :r].astype(np.float64)
    sharp = []
    for t in range(5 * n):  # a blob on a circle, 6 degrees a frame: each exposure's 5 frames move visibly
        a = 2 * math.pi * t / 60
        cx, cy = r / 2 + 9 * math.cos(a), r / 2 + 9 * math.sin(a)
        blob = 230 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5 ** 2))
        sharp.append(np.repeat(blob[..., None], 3, -1) + 10)
    sharp = np.stack(sharp).round().clip(0, 255).astype(np.uint8).reshape(n, 5, r, r, 3)
    blurry = sharp.astype(np.float64).mean(1).round().astype(np.uint8)     # [n, R, R, 3] one exposure each
    clip = tmp_path / "clip.avi"
    write_video(clip, blurry, fps=8)
    pipe = _TruthPipeline(blurry, sharp)
    assert 0 < pipe.reversed.sum() < n  # E_v gives both orders, so the choice has something to undo
    record = process_video(clip, tmp_path / "out", pipe, VideoOptions(aligned=True, save_frames=True,
                                                                        progress=False))
    out = np.stack(_pngs(tmp_path / "out" / "frames" / "input_view"))
    assert out.shape == (5 * n, r, r, 3)
    assert np.abs(out - sharp.reshape(5 * n, r, r, 3).astype(int)).max() <= 1  # the true order, every frame
    orders = [json.loads(line)["faces"][0]["order"] for line in
              (tmp_path / "out" / "track.jsonl").read_text().splitlines()]
    assert orders == ["backward" if rev else "forward" for rev in pipe.reversed]
    assert record["order"] == {"forward": int(n - pipe.reversed.sum()), "backward": int(pipe.reversed.sum())}


def test_choose_order_terms():
    frames = torch.linspace(-1, 1, 5)[:, None, None, None].expand(5, 3, 4, 4)  # brightening: 5 frames
    assert not choose_order(frames, previous_last=torch.full((3, 4, 4), -1.0))
    assert choose_order(frames, previous_last=torch.full((3, 4, 4), 1.0))
    assert choose_order(frames, following=frames - 2)  # the next exposure starts dark: this one must end dark
    assert choose_order(frames, previous_input=torch.full((3, 4, 4), 1.0), following_input=torch.full((3, 4, 4), -1.))
    assert not choose_order(frames[:1], previous_last=torch.ones(3, 4, 4))  # one frame: nothing to order
    nan_left = torch.full((3, 4, 4), 1.0)
    nan_left[..., :2] = float("nan")  # undefined pixels are left out
    assert choose_order(frames, previous_last=nan_left)


def test_crop_to_crop_shows_the_same_photo_pixels():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 16, 16))).float()
    a = np.array([[0.5, 0.0, 2.0], [0.0, 0.5, 1.0]])   # photo -> crop A: half size
    b = a.copy()
    b[0, 2] -= 1.0                                     # crop B starts 2 photo pixels (1 crop pixel) further right
    moved = crop_to_crop(image, a, b)
    np.testing.assert_allclose(moved[:, :, :15].numpy(), image[:, :, 1:].numpy(), atol=1e-5)
    assert torch.isnan(moved[:, :, 15]).all()
    assert crop_to_crop(image, None, b) is image


# ------------------------------------------------------------------------------------------------ tracks


def _template(cx: float, cy: float, side: float) -> np.ndarray:
    """68 landmarks [68, 2] (iBUG order) of a schematic frontal face of width ``side`` px centred at (cx, cy)."""
    pts = []
    for phi in np.linspace(0, np.pi, 17):                                  # jaw, ear to ear through the chin (8)
        pts.append((-0.9 * math.cos(phi), 0.1 + 0.9 * math.sin(phi)))
    pts += [(x, -0.45) for x in np.linspace(-0.7, -0.15, 5)] + [(x, -0.45) for x in np.linspace(0.15, 0.7, 5)]
    pts += [(0.0, y) for y in np.linspace(-0.3, 0.15, 4)] + [(x, 0.2) for x in np.linspace(-0.2, 0.2, 5)]
    for ex in (-0.4, 0.4):                                                 # eyes, 6 points each
        pts += [(ex + 0.12 * math.cos(a), -0.3 + 0.06 * math.sin(a)) for a in np.linspace(np.pi, -np.pi, 6, False)]
    pts += [(0.3 * math.cos(a), 0.55 + 0.1 * math.sin(a)) for a in np.linspace(np.pi, -np.pi, 12, False)]
    pts += [(0.2 * math.cos(a), 0.55 + 0.05 * math.sin(a)) for a in np.linspace(np.pi, -np.pi, 8, False)]
    lm = np.asarray(pts, np.float64) * side / 2 + (cx, cy)
    assert lm.shape == (68, 2)
    return lm


def _detection(lm: np.ndarray):
    return (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max())), lm


def test_tracks_keep_identity_fill_misses_and_smooth_jitter():
    rng = np.random.default_rng(3)
    n = 24
    truth_a = [_template(40 + 6 * k, 60, 60) for k in range(n)]      # large face moving right
    truth_b = [_template(200 - 6 * k, 70, 40) for k in range(n)]     # smaller face moving left, crossing A
    tracker = FaceTracker()
    raw_a = {}
    for k in range(n):
        dets = []
        if k not in (5, 6, 7):
            raw_a[k] = truth_a[k] + rng.normal(0, 1.0, (68, 2))
            dets.append(_detection(raw_a[k]))
        if k != 12:
            dets.append(_detection(truth_b[k] + rng.normal(0, 1.0, (68, 2))))
        if k == 3:
            dets.append(_detection(_template(150, 200, 30)))          # a one-frame false positive
        rng.shuffle(dets)                                               # detector order carries no identity
        tracker.update(k, dets)
    tracks = tracker.tracks(n, smoothing=1.5)
    assert len(tracks) == 2
    a, b = tracks                                                       # largest first
    assert a.mean_area() > b.mean_area()
    assert not a.detected[[5, 6, 7]].any() and a.detected.sum() == n - 3
    assert not b.detected[12] and b.detected.sum() == n - 1
    assert (a.first, a.last, b.first, b.last) == (0, n - 1, 0, n - 1)
    truth = np.stack(truth_a)
    # identity kept: every frame's track A landmarks sit on face A (within a few pixels), never on B
    assert np.abs(a.landmarks - truth).max() < 4
    assert np.abs(b.landmarks - np.stack(truth_b)).max() < 4
    # misses filled from the track (linear interpolation of straight motion: close to the truth)
    assert np.abs(a.landmarks[5:8] - truth[5:8]).mean() < 1.0
    # smoothing: less jitter than the raw detections
    seen = sorted(raw_a)
    raw_err = np.sqrt(np.mean([(raw_a[k] - truth[k]) ** 2 for k in seen]))
    smooth_err = np.sqrt(np.mean((a.landmarks[seen] - truth[seen]) ** 2))
    assert smooth_err < 0.7 * raw_err


def test_smoothing_keeps_straight_motion_and_fill_interpolates():
    t = np.arange(30, dtype=np.float64)
    line = np.stack([3 * t + 1, -0.5 * t], -1)
    np.testing.assert_allclose(local_linear_smooth(line, 2.0), line, atol=1e-9)  # no lag, also at the ends
    rng = np.random.default_rng(0)
    noisy = line + rng.normal(0, 1, line.shape)
    assert np.abs(local_linear_smooth(noisy, 2.0) - line).std() < 0.7 * np.abs(noisy - line).std()
    np.testing.assert_array_equal(local_linear_smooth(noisy, 0.0), noisy)
    valid = np.ones(30, bool)
    valid[10:14] = False
    broken = noisy.copy()
    broken[10:14] = 1e6                                   # invalid rows are not used as data
    assert np.abs(local_linear_smooth(broken, 2.0, valid)[10:14] - line[10:14]).max() < 5
    filled = fill_missing(np.where(valid[:, None], line, np.nan), valid)
    np.testing.assert_allclose(filled, line, atol=1e-9)  # straight motion is filled exactly
    ends = np.zeros(30, bool)
    ends[[5, 20]] = True
    held = fill_missing(line, ends)
    assert (held[:5] == line[5]).all() and (held[21:] == line[20]).all()
    with pytest.raises(ValueError):
        fill_missing(line, np.zeros(30, bool))


class _FakeFinder:
    """Two faces moving across the frame; the second one is missed in frame 2."""

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def find(self, image):
        k = self.calls
        self.calls += 1
        faces = [_detection(_template(40 + 3 * k, 45, 44))]
        if k != 2:
            faces.append(_detection(_template(100 - 2 * k, 50, 30)))
        return faces


def test_detected_faces_pasted_back_into_full_frames(tmp_path, model_dir, monkeypatch):
    import deblur_rotate.faces as faces_module

    monkeypatch.setattr(faces_module, "FaceFinder", _FakeFinder)
    clip = tmp_path / "two.avi"
    frames = _smooth_frames(4, 95, 127)                      # odd sides: the MP4 gets one black pixel of padding
    write_video(clip, frames, fps=5)
    out = tmp_path / "out"
    assert _run("-i", clip, "-o", out, "--model", model_dir, "--yaw", "0", "--paste-back", "--save-frames") == 0
    res = out / "two"
    for face in ("face_1", "face_2"):
        assert _video_facts(res / face / "video_input_view.mp4")["frames"] == 20
    facts = _video_facts(res / "video_pasted.mp4")
    assert facts["frames"] == 20 and facts["size"] == (128, 96) and facts["rate"] == 25
    record = json.loads((res / "result.json").read_text())
    assert [f["detected_frames"] for f in record["faces"]] == [4, 3]
    assert record["faces"][1]["filled_frames"] == 1 and "repeated" in record["paste_back"]["background"]
    log = [json.loads(line) for line in (res / "track.jsonl").read_text().splitlines()]
    assert [f["detected"] for f in log[2]["faces"]] == [True, False]
    assert all(len(entry["faces"]) == 2 and "pose_deg" in entry["faces"][0] for entry in log)
    pasted = _pngs(res / "frames" / "pasted")
    assert len(pasted) == 20 and pasted[0].shape == (95, 127, 3)
    for j in range(20):  # the background is the input frame, repeated; the faces are replaced
        photo = frames[j // 5].astype(int)
        assert (pasted[j][85:, :10] == photo[85:, :10]).all()
        assert np.abs(pasted[j][40:50, 35:50] - photo[40:50, 35:50]).mean() > 3


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_video_input_is_one_clear_error_and_writes_nothing(tmp_path, model_dir, capsys, monkeypatch):
    out = tmp_path / "out"

    def fails(path, *extra) -> str:
        code = _run("-i", path, "-o", out, "--model", model_dir, *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert not out.exists() or not [p for p in out.rglob("*") if p.suffix in (".mp4", ".png", ".json")]
        assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".")]
        return err[0]

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all " * 50)
    assert "not a readable video" in fails(junk, "--aligned")
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    assert "zero-length" in fails(empty, "--aligned")
    no_frames = tmp_path / "noframes.mkv"
    with av.open(str(no_frames), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    assert "zero-length" in fails(no_frames, "--aligned")
    cut = tmp_path / "cut.avi"
    write_video(cut, _smooth_frames(8), fps=10)
    cut.write_bytes(cut.read_bytes()[:300])
    assert "cut.avi" in fails(cut, "--aligned")
    (tmp_path / "frames").mkdir()
    assert "no image files" in fails(tmp_path / "frames", "--fps", "10", "--aligned")
    assert "no such file" in fails(tmp_path / "missing.mp4", "--aligned")
    photo = tmp_path / "photo.png"
    Image.fromarray(_smooth_frames(1)[0]).save(photo)
    code = main(["run", "-i", str(junk), str(photo), "-o", str(out), "--model", str(model_dir), "--aligned"])
    assert code == 2 and "run photos and videos separately" in capsys.readouterr().err

    # a video with no face in any frame: found after the detection pass, and nothing is written
    class NoFaces:
        def __init__(self, *args, **kwargs):
            pass

        def find(self, image):
            return []

    import deblur_rotate.faces as faces_module

    monkeypatch.setattr(faces_module, "FaceFinder", NoFaces)
    clip = tmp_path / "nobody.avi"
    write_video(clip, _smooth_frames(6), fps=10)
    assert "no face found in any of its 6 frames" in fails(clip, "--yaw", "0")


def test_unknown_frame_rate_needs_fps():
    class Stream:
        average_rate = None
        guessed_rate = Fraction(0)
        base_rate = Fraction(90000)  # a time base, not a frame rate

    with pytest.raises(UserError, match="frame rate is unknown.*--fps"):
        _frame_rate(Stream(), None, Path("clip.mp4"))
    assert _frame_rate(Stream(), 29.97, Path("clip.mp4")) == Fraction(2997, 100)
    Stream.average_rate = Fraction(30000, 1001)
    assert _frame_rate(Stream(), None, Path("clip.mp4")) == Fraction(30000, 1001)
    with pytest.raises(UserError, match="--fps"):
        _frame_rate(Stream(), -5, Path("clip.mp4"))


def test_what_counts_as_video_input(tmp_path):
    class Args:
        fps = None

    folder = tmp_path / "frames"
    folder.mkdir()
    args = Args()
    args.input = [str(folder)]
    assert not is_video_request(args)  # a folder without --fps: photos
    args.fps = 12.0
    assert is_video_request(args)
    args.fps, args.input = None, [str(tmp_path / "a.png")]
    assert not is_video_request(args)
    args.input = [str(tmp_path / "a.png"), str(tmp_path / "talk.MOV")]
    assert is_video_request(args)


# ------------------------------------------------------------------------------------------ temporary files


def test_mp4_writer_only_renames_complete_files(tmp_path):
    path = tmp_path / "v.mp4"
    writer = Mp4Writer(path, Fraction(25))
    for f in _smooth_frames(60):  # more than x264's look-ahead, so packets are on disk already
        writer.write(f)
    hidden = [p for p in tmp_path.iterdir()]
    assert not path.exists() and hidden and all(p.name.startswith(".") and p.stat().st_size > 0 for p in hidden)
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"] and _video_facts(path)["frames"] == 60
    other = Mp4Writer(tmp_path / "w.mp4", Fraction(25))
    other.write(_smooth_frames(1)[0])
    other.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_interrupted_run_leaves_no_partial_video(tmp_path, model_dir, monkeypatch):
    clip = tmp_path / "clip.avi"
    write_video(clip, _smooth_frames(6), fps=10)
    pipe = DeblurRotatePipeline.from_pretrained(model_dir)
    options = VideoOptions(views=[(0.0, 0.0), (15.0, 0.0)], aligned=True, progress=False)
    out = tmp_path / "out"
    process_video(clip, out / "clip", pipe, options)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real_write = Mp4Writer.write

    def write_then_stop(self, frame):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        real_write(self, frame)

    monkeypatch.setattr(Mp4Writer, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        process_video(clip, out / "clip", pipe, options)
    with pytest.raises(KeyboardInterrupt):
        process_video(clip, out / "new", pipe, options)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier complete result untouched, nothing of the interrupted runs left
    assert sorted(p.name for p in out.iterdir()) == ["clip"]


def test_to_frontal_turns_by_the_pose_smoothed_over_the_track(tmp_path, model_dir):
    from deblur_rotate.faces import square_resize
    from deblur_rotate.files import from_uint8

    frames = _smooth_frames(7, 36, 36, seed=4)
    clip = tmp_path / "clip.avi"
    write_video(clip, frames, fps=4)
    pipe = DeblurRotatePipeline.from_pretrained(model_dir)
    options = VideoOptions(views=[(0.0, 0.0), (20.0, 0.0)], to_frontal=True, aligned=True, pose_smoothing=1.0,
                           progress=False)
    record = process_video(clip, tmp_path / "out", pipe, options)
    assert [v["name"] for v in record["views"]] == ["frontal", "frontal_yaw+20"]
    assert _video_facts(tmp_path / "out" / "video_frontal.mp4")["frames"] == 35
    crops = torch.stack([from_uint8(square_resize(f, pipe.resolution)) for f in frames])
    raw = np.degrees(pipe.encode(crops)[1].numpy())                              # [7, 3] E_3D pose per frame
    logged = np.array([[e["faces"][0]["pose_deg"][k] for k in ("pitch", "yaw", "roll")] for e in
                       map(json.loads, (tmp_path / "out" / "track.jsonl").read_text().splitlines())])
    np.testing.assert_allclose(logged, local_linear_smooth(raw, 1.0), atol=2e-3)  # the whole track's smoothing
    assert np.abs(logged - raw).max() > 1e-2                                      # ... which changed it
