"""`deblur-rotate serve`: the web page, end to end in a real browser (Debian's Chromium driven by Playwright),
plus the checks of its pieces that need no browser.

The browser test starts the server in a subprocess on a free local port (bundled model), uploads bad files
and a built-in example, presses the button and checks what the page shows; it is skipped, with the reason,
only where no Chromium (or Playwright) is available. With DEBLUR_ROTATE_SCREENSHOTS=1 it also saves
docs/serve_page.png and docs/serve_result.png (CI leaves docs alone).
"""
from __future__ import annotations

import io
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import micro_networks, write_video
from PIL import Image

from deblur_rotate.demo import examples_dir
from deblur_rotate.errors import UserError
from deblur_rotate.serve_app import DEFAULT_VIEW_RANGE, MAX_SIDE, check_upload, view_range

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DEBLUR_ROTATE_CHROMIUM", "/usr/bin/chromium")
# the flags this machine's closed network needs (no background connections), as root (no sandbox)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.environ.get("DEBLUR_ROTATE_SCREENSHOTS") == "1"
EXAMPLE = examples_dir() / "example_1" / "blurry.png"


# --------------------------------------------------------------------------------------- no browser needed


def test_cli_has_serve_with_local_defaults_and_imports_gradio_lazily():
    from deblur_rotate.cli import build_parser

    had_gradio = "gradio" in sys.modules
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.device) == ("127.0.0.1", 7860, None, "cpu")
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "m"])
    assert (args.host, args.port, str(args.model)) == ("0.0.0.0", 8000, "m")
    if not had_gradio:  # building the parser (what `deblur-rotate --help` does) must not load Gradio
        assert "gradio" not in sys.modules


def test_view_range_from_pipeline_json():
    assert view_range({}) == DEFAULT_VIEW_RANGE
    assert view_range({"extra": {"trained_on": "x"}}) == DEFAULT_VIEW_RANGE
    got = view_range({"extra": {"view_range": {"yaw_deg": [-45, 40]}}})
    assert got == {"yaw_deg": (-45.0, 40.0), "pitch_deg": DEFAULT_VIEW_RANGE["pitch_deg"]}
    assert view_range({"view_range": {"pitch_deg": [-10, 15]}})["pitch_deg"] == (-10.0, 15.0)
    written = view_range({"view_range_deg": {"yaw": [-50, 55], "pitch": [-12, 12]}})  # assemble_model's field
    assert written == {"yaw_deg": (-50.0, 55.0), "pitch_deg": (-12.0, 12.0)}
    for bad in ({"yaw_deg": [10, 40]}, {"yaw_deg": "wide"}, [1, 2], {"pitch_deg": [-200, 20]}):
        with pytest.raises(UserError, match="view_range"):
            view_range({"view_range": bad})


def test_upload_checks_give_readable_messages(tmp_path):
    broken = tmp_path / "x1.png"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(UserError) as err:
        check_upload(broken, "holiday.png")
    assert str(err.value).startswith("holiday.png: not a readable image")
    assert str(tmp_path) not in str(err.value)  # the server's paths stay out of the message

    wide = tmp_path / "x2.png"
    Image.new("RGB", (MAX_SIDE + 1, 20)).save(wide)
    with pytest.raises(UserError, match=f"{MAX_SIDE + 1} x 20 pixels, too large; this page takes images up to "
                                        f"{MAX_SIDE} x {MAX_SIDE}"):
        check_upload(wide, "wide.png")

    clip = tmp_path / "x3.mp4"
    clip.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="^clip.mp4: not a readable video"):
        check_upload(clip, "clip.mp4")

    photo = check_upload(EXAMPLE, "example.png")
    assert photo.dtype == np.uint8 and photo.shape == (64, 64, 3)


def _two_faces() -> np.ndarray:
    """Two built-in examples side by side: a photo in which dlib finds two faces (the first two examples in
    which the face finder finds one: blurry 64 px faces are not always found, and the examples change with
    the bundled model)."""
    from deblur_rotate.faces import FaceFinder
    from deblur_rotate.images import read_image

    finder = FaceFinder()
    found = [image for image in (read_image(folder / "blurry.png") for folder in sorted(examples_dir().iterdir())
                                 if (folder / "blurry.png").is_file())
             if finder.detect(image)[0]]
    assert len(found) >= 2, "fewer than two built-in examples with a detectable face"
    return np.concatenate(found[:2], 1)


def _micro_pipeline(with_rotation: bool = True):
    """A random-weight micro pipeline (fast); without rotation: no E_3D, no F."""
    from deblur_rotate.pipeline import DeblurRotatePipeline

    g, ev, e3, f = micro_networks()
    if not with_rotation:
        return DeblurRotatePipeline(g, ev)
    return DeblurRotatePipeline(g, ev, e3, f, config={"view_range": {"yaw_deg": [-40, 40]}})


def test_app_processes_every_face_and_view(tmp_path, monkeypatch):
    from deblur_rotate import serve_app

    photo = tmp_path / "two faces.png"
    Image.fromarray(_two_faces()).save(photo)
    app = serve_app.ServeApp(_micro_pipeline(), tmp_path / "root", model_label="micro")
    assert app.range == {"yaw_deg": (-40.0, 40.0), "pitch_deg": DEFAULT_VIEW_RANGE["pitch_deg"]}
    assert app.view_choices() == [serve_app.VIEW_INPUT, serve_app.VIEW_NEW, serve_app.VIEW_FRONTAL,
                                  serve_app.VIEW_SWEEP]
    calls = []
    result = app.process(photo, "two faces.png", False, app.view_choices(), -20, 10,
                         progress=lambda f, desc: calls.append(f))
    assert calls == sorted(calls) and 0 < calls[0] and calls[-1] < 1
    assert result.views == ["input_view", "yaw-20_pitch+10", "frontal", "sweep"]
    assert len(result.faces) == result.faces_found == 2
    half = _two_faces().shape[1] / 2  # one face in each half of the photo (faces come largest first)
    assert sorted(face.box[0] < half for face in result.faces) == [False, True]
    for face in result.faces:
        assert [v for v, _gif, _mp4 in face.videos] == result.views
        assert len(face.frames) == 3 * 5 and all(Path(p).is_file() for p, _ in face.frames)
        assert set(face.pose_deg) == {"pitch", "yaw", "roll"}
        assert Path(face.videos[-1][1]).read_bytes()[:4] == b"GIF8"
    with zipfile.ZipFile(result.zip_path) as zf:
        assert sum("/frames/" in n for n in zf.namelist()) == 2 * 15
    assert Path(result.folder).parent == tmp_path / "root" / "results"
    assert "Face 2** of 2" in app.details_text(result, 1) and "micro" in app.details_text(result, 1)
    assert app.downloads(result, 1)[0] == result.zip_path and len(app.downloads(result, 1)) == 1 + 2 * 4 + 1

    with pytest.raises(UserError, match="outside the range the model was trained on \\(-40 to 40 degrees\\)"):
        app.process(photo, "two faces.png", False, [serve_app.VIEW_NEW], 50, 0)
    with pytest.raises(UserError, match="choose at least one view"):
        app.process(photo, "two faces.png", False, [], 0, 0)
    with pytest.raises(UserError, match="no photo yet"):
        app.process(None)
    # only the newest KEEP_RESULTS request folders are kept
    monkeypatch.setattr(serve_app, "KEEP_RESULTS", 2)
    for _ in range(2):
        last = app.process(photo, "p.png", True, [serve_app.VIEW_INPUT], 0, 0)
    assert max(p.name for p in (tmp_path / "root" / "results").iterdir()) == Path(last.folder).name
    assert len(list((tmp_path / "root" / "results").iterdir())) == 2 and not Path(result.folder).exists()

    plain = serve_app.ServeApp(_micro_pipeline(with_rotation=False), tmp_path / "plain")
    assert plain.view_choices() == [serve_app.VIEW_INPUT]
    with pytest.raises(UserError, match="cannot render the view"):
        plain.process(photo, "p.png", True, [serve_app.VIEW_FRONTAL], 0, 0)
    one = plain.process(photo, "p.png", True, [serve_app.VIEW_INPUT], 0, 0)
    assert one.faces[0].pose_deg is None and one.faces[0].box is None and len(one.faces[0].frames) == 5


def test_app_sends_a_video_upload_through_the_video_path(tmp_path):
    from deblur_rotate import serve_app
    from deblur_rotate.images import read_image

    frame = read_image(EXAMPLE)
    clip = tmp_path / "clip.avi"
    write_video(clip, np.stack([frame, np.roll(frame, 1, 1), np.roll(frame, 2, 1)]), fps=8)
    app = serve_app.ServeApp(_micro_pipeline(), tmp_path / "root")
    assert serve_app.is_video(clip) and not serve_app.is_video(EXAMPLE)
    assert serve_app.check_upload(clip, "clip.avi").shape == frame.shape  # the preview: its first frame
    result = app.process(clip, "clip.avi", False, [serve_app.VIEW_INPUT, serve_app.VIEW_NEW, serve_app.VIEW_FRONTAL,
                                                   serve_app.VIEW_SWEEP], 20, 0)
    assert result.kind == "video" and result.views == ["input_view", "yaw+20", "frontal"]
    assert "3 frames at 8 fps -> 15 sharp frames at 40 fps" in result.notes[0]
    assert "sweep is for photos" in result.notes[1]
    assert len(result.faces) == 1
    face = result.faces[0]
    assert [v for v, _shown, _mp4 in face.videos] == result.views and face.box is not None
    for _view, shown, mp4 in face.videos:
        assert shown == mp4 and Path(mp4).read_bytes()[4:8] == b"ftyp"
    assert len(face.frames) == 3 * serve_app.VIDEO_FRAMES_SHOWN and set(face.pose_deg) == {"pitch", "yaw", "roll"}
    with zipfile.ZipFile(result.zip_path) as zf:
        assert sum(n.endswith(".png") for n in zf.namelist()) == 3 * 15
    assert any(p.endswith("track.jsonl") for p in app.downloads(result, 0))

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"no video in here")
    with pytest.raises(UserError) as err:
        app.process(bad, "holiday.mp4", False, [serve_app.VIEW_INPUT], 0, 0)
    assert str(err.value).startswith("holiday.mp4: ") and str(tmp_path) not in str(err.value)
    with pytest.raises(UserError, match="the sweep is for photos"):
        app.process(clip, "clip.avi", False, [serve_app.VIEW_SWEEP], 0, 0)


# ---------------------------------------------------------------------------------------------- the browser


def _no_browser_reason() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM} (install Debian's package: apt-get install -y chromium; .ci/run does "
                "this as root; or set DEBLUR_ROTATE_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"Playwright's Python package is not installed ({err}); pip install -r requirements.txt"
    return None


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """`deblur-rotate serve` in a subprocess, in an empty working folder and home; its output is collected."""

    def __init__(self, tmp_path: Path):
        """Start the server on a free port, in ``tmp_path``/cwd with ``tmp_path``/home as HOME."""
        self.port = _free_port()
        self.cwd, self.home = tmp_path / "cwd", tmp_path / "home"
        self.cwd.mkdir()
        self.home.mkdir()
        env = {**os.environ, "HOME": str(self.home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("DEBLUR_ROTATE_CACHE", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "deblur_rotate.cli", "serve", "--port", str(self.port)],
                                     cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Collect the server's output lines (a thread)."""
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        """The first output line containing ``text`` (fails when the server dies or time runs out)."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "server died:\n" + "\n".join(self.lines)
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _all_loaded(page, selector: str) -> list[int]:
    """naturalWidth of every <img> matching ``selector`` (0 for one that did not load)."""
    return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")


def _shows_file(page, name: str) -> None:
    """Wait until the upload field shows the file ``name``."""
    page.locator(f'#photo-upload td.filename[aria-label="{name}"]').wait_for(timeout=20_000)


def _upload(page, path: Path) -> None:
    """Upload ``path`` as a person would: clear the field if it holds a file, then choose the new one."""
    clear = page.locator("#photo-upload button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.set_input_files("#photo-upload input[type=file]", str(path))
    _shows_file(page, path.name)


def _run_and_wait(page, name: str, ok: bool = True, timeout: float = 60_000) -> str:
    """Press the button; wait until the status line reports on the file ``name`` ("Done" or, with ok=False,
    "Could not process"); return the status text."""
    page.click("#run-button")
    word = "Done" if ok else "Could not process"
    page.locator("#status", has_text=re.compile(f"{word}.*{re.escape(name)}")).wait_for(timeout=timeout)
    return page.inner_text("#status")


@pytest.mark.slow
def test_page_in_a_real_browser(tmp_path):
    reason = _no_browser_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"this is not an image at all")
    Image.new("RGB", (MAX_SIDE + 100, 16), (90, 90, 90)).save(bad / "huge.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(bad / "wall.png")
    upload = tmp_path / "up"
    upload.mkdir()
    shutil.copyfile(EXAMPLE, upload / "blurry_face.png")
    two = upload / "two_faces.png"
    Image.fromarray(_two_faces()).save(two)
    clip = upload / "clip.avi"
    frame = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    write_video(clip, np.stack([frame, np.roll(frame, 1, 1), np.roll(frame, 2, 1)]), fps=8)

    server = _Server(tmp_path)
    temp_root = None
    try:
        start = server.wait_for(f"http://127.0.0.1:{server.port}/")
        assert "bound to this machine only (127.0.0.1)" in start
        temp_root = Path(server.wait_for("temp folder:").split("temp folder: ")[1].split(" (removed")[0])
        assert temp_root.is_dir()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{server.port}/", wait_until="domcontentloaded")
                page.wait_for_selector("#run-button", timeout=30_000)
                # the built-in examples are offered
                page.wait_for_function("document.querySelectorAll('#examples img').length == 4", timeout=20_000)

                # bad uploads: a readable sentence on the page each time, and the server stays up
                _upload(page, bad / "broken.png")
                text = _run_and_wait(page, "broken.png", ok=False)
                assert "broken.png: not a readable image" in text and str(temp_root) not in text
                _upload(page, bad / "huge.png")
                text = _run_and_wait(page, "huge.png", ok=False)
                assert f"{MAX_SIDE + 100} x 16 pixels, too large" in text and f"up to {MAX_SIDE} x {MAX_SIDE}" in text
                _upload(page, bad / "wall.png")
                text = _run_and_wait(page, "wall.png", ok=False)
                assert "wall.png: no face found" in text
                assert page.locator("#videos img").count() == 0

                # a built-in example, uploaded; every kind of view
                _upload(page, upload / "blurry_face.png")
                for label in ("frontal", "sweep"):
                    page.locator("#views label", has_text=label).click()
                if SCREENSHOTS:
                    page.screenshot(path=str(ROOT / "docs" / "serve_page.png"), full_page=True)
                text = _run_and_wait(page, "blurry_face.png")
                assert "1 face" in text
                for view in ("input_view", "yaw+30", "frontal", "sweep"):
                    assert view in text
                page.wait_for_function("document.querySelectorAll('#frames img').length == 15", timeout=20_000)
                page.wait_for_function(
                    "[...document.querySelectorAll('#videos img, #frames img, #contact-sheet img, #faces img')]"
                    ".every(e => e.complete && e.naturalWidth > 0)", timeout=20_000)
                gifs = page.eval_on_selector_all("#videos img", "els => els.map(e => e.src)")
                assert len(gifs) == 4  # input view, yaw+30, frontal, sweep
                for src in gifs:
                    assert page.request.get(src).body()[:4] == b"GIF8"
                assert _all_loaded(page, "#frames img") == [64] * 15
                assert len(_all_loaded(page, "#faces img")) == 1
                assert _all_loaded(page, "#contact-sheet img")[0] > 64 * 4
                details = page.inner_text("#details")
                assert "Estimated head pose (E_3D): pitch" in details and "Time taken:" in details

                # downloads: the frames zip (every frame + the crop) and an MP4 per view
                links = page.eval_on_selector_all("#downloads a", "els => els.map(e => e.href)")
                names = [unquote(link.rsplit("/", 1)[-1]) for link in links]
                assert "blurry_face_frames.zip" in names
                assert {"input_view.mp4", "yaw+30.mp4", "frontal.mp4", "sweep.mp4"} <= set(names)
                data = page.request.get(links[names.index("blurry_face_frames.zip")]).body()
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    pngs = [n for n in zf.namelist() if n.endswith(".png")]
                frames_in_zip = [n for n in pngs if "/frames/" in n]
                assert len(frames_in_zip) == 15 and "blurry_face/face_1/frames/yaw+30/frame_5.png" in pngs
                assert {"blurry_face/face_1/input.png", "blurry_face/face_1/contact_sheet.png"} == \
                    set(pngs) - set(frames_in_zip)
                mp4 = page.request.get(links[names.index("yaw+30.mp4")]).body()
                assert mp4[4:8] == b"ftyp"
                if SCREENSHOTS:
                    page.screenshot(path=str(ROOT / "docs" / "serve_result.png"), full_page=True)

                # a photo with two faces: both processed, a choice of which to show
                _upload(page, two)
                text = _run_and_wait(page, "two_faces.png")
                assert "2 faces" in text
                page.wait_for_function("document.querySelectorAll('#faces img').length == 2", timeout=20_000)
                page.locator("#face-choice label", has_text="face 2").click()
                page.locator("#details", has_text="Face 2 of 2").wait_for(timeout=20_000)

                # a video upload goes through the video path: an MP4 per view, its first frames
                page.locator("#views label", has_text="frontal").click()  # back to the default views
                page.locator("#views label", has_text="sweep").click()
                _upload(page, clip)
                text = _run_and_wait(page, "clip.avi")
                assert "(video, 64 x 64 px)" in text and "3 frames at 8 fps -> 15 sharp frames at 40 fps" in text
                page.wait_for_function("document.querySelectorAll('#videos video').length == 2", timeout=20_000)
                srcs = page.eval_on_selector_all("#videos video", "els => els.map(e => e.src || e.currentSrc)")
                assert [unquote(src).rsplit("/", 1)[-1] for src in srcs] == ["video_input_view.mp4", "video_yaw+30.mp4"]
                page.wait_for_function("document.querySelectorAll('#frames img').length == 30", timeout=20_000)

                # picking a built-in example by clicking it makes it the upload (as an aligned crop)
                page.locator("#examples img").nth(1).click()
                _shows_file(page, "example_2.png")
                assert page.is_checked("#aligned input[type=checkbox]")
                text = _run_and_wait(page, "example_2.png")
                assert "1 face" in text
            finally:
                browser.close()
        assert server.proc.poll() is None, "the server stopped"
        assert "request failed: broken.png" in "\n".join(server.lines)
        # nothing was written outside the server's temp folder; the requests' files are inside it
        assert not any(server.cwd.iterdir()) and not any(server.home.iterdir())
        assert len(list((temp_root / "results").iterdir())) == 4
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.lines)
    assert temp_root is not None and not temp_root.exists(), "the temp folder was not removed at exit"
