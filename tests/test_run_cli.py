"""`deblur-rotate run`: every promised file, per-input errors, exit codes, whole-run errors."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import micro_networks
from PIL import Image

from deblur_rotate.cli import main
from deblur_rotate.files import from_uint8, to_uint8
from deblur_rotate.outputs import output_names, view_name
from deblur_rotate.pipeline import DeblurRotatePipeline, assemble_model
from deblur_rotate.run import list_inputs, views_from_angles


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    g, ev, e3, f = micro_networks()
    return assemble_model(tmp_path_factory.mktemp("model") / "micro", generator=g, blur_encoder=ev,
                          face3d_encoder=e3, fusion=f, preset="micro")


@pytest.fixture(scope="module")
def plain_model_dir(tmp_path_factory):
    g, ev, _, _ = micro_networks()
    return assemble_model(tmp_path_factory.mktemp("model") / "plain", generator=g, blur_encoder=ev, preset="micro")


def _face_like(size: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = np.stack([200 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 6)] * 3, -1)
    return (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)


def _mp4_frames(path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_aligned_input_writes_every_promised_file(tmp_path, model_dir, capsys):
    src = tmp_path / "in" / "blurry face.png"
    src.parent.mkdir()
    Image.fromarray(_face_like()).save(src)
    out = tmp_path / "out"
    code = main(["run", "-i", str(src), "-o", str(out), "--model", str(model_dir), "--aligned", "--yaw", "0", "20",
                 "--pitch", "0", "--sweep", "30", "--sweep-steps", "6", "--save-pose", "--save-latents",
                 "--fps", "10", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "done: 1 of 1" in capsys.readouterr().out
    res = out / "blurry face"
    views = ["input_view", "yaw+20"]
    expected = {"input.png", "contact_sheet.png", "pose.json", "latents.npz", "result.json", "sweep.gif",
                "sweep.mp4"}
    for v in views:
        expected |= {f"{v}.gif", f"{v}.mp4"} | {f"frames/{v}/frame_{j}.png" for j in range(1, 6)}
    written = {p.relative_to(res).as_posix() for p in res.rglob("*") if p.is_file()}
    assert written == expected
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left

    # the frames are the pipeline's output for the resized input
    pipe = DeblurRotatePipeline.from_pretrained(model_dir)
    crop = np.array(Image.open(res / "input.png"))
    assert crop.shape == (32, 32, 3)
    result = pipe(from_uint8(crop)[None], views=[(0, 0), (20, 0)])
    for vi, v in enumerate(views):
        for j in range(5):
            saved = np.asarray(Image.open(res / f"frames/{v}/frame_{j + 1}.png")).astype(int)
            assert np.abs(saved - to_uint8(result.frames[0, vi, j]).astype(int)).max() <= 1
        gif = Image.open(res / f"{v}.gif")
        assert gif.n_frames == 5 and gif.size == (32, 32) and gif.info["duration"] == 100
        assert _mp4_frames(res / f"{v}.mp4") == 5
    assert Image.open(res / "sweep.gif").n_frames == 6 and _mp4_frames(res / "sweep.mp4") == 6
    sheet = Image.open(res / "contact_sheet.png")
    assert sheet.size[0] > 6 * 128 and sheet.size[1] >= 2 * 128  # input + 5 frames, 2 view rows, cells >= 128 px

    pose = json.loads((res / "pose.json").read_text())
    np.testing.assert_allclose(pose["radians"], result.pose[0].numpy(), atol=1e-5)
    assert pose["yaw_deg"] == pytest.approx(np.degrees(pose["radians"][1]))
    lat = np.load(res / "latents.npz")
    assert lat["codes"].shape == (5, 8, 32) and lat["view_codes"].shape == (2, 5, 8, 32)
    np.testing.assert_allclose(lat["codes"], result.codes[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(lat["views"], [[0, 0], [20, 0]])
    record = json.loads((res / "result.json").read_text())
    assert [v["name"] for v in record["views"]] == views and len(record["faces"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["done"]) == 1 and summary["failed"] == []


def test_bad_inputs_fail_alone_and_exit_1(tmp_path, model_dir, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(inputs / "astronaut.jpg", quality=90)
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(inputs / "grey.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(inputs / "dot.png")
    jpeg = io.BytesIO()
    Image.fromarray(_face_like(64)).save(jpeg, format="JPEG")
    (inputs / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (inputs / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    code = main(["run", "-i", str(inputs), "-o", str(out), "--model", str(model_dir), "--yaw", "0",
                 "--only-center-face", "--paste-back", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png: not a readable image" in err and "grey.png: no face found" in err
    assert "dot.png: image is 1x1 pixels, too small" in err and "cut.jpg: not a readable image" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "summary.json"]  # failed inputs leave nothing
    summary = json.loads((out / "summary.json").read_text())
    assert [d["input"] for d in summary["done"]] == [str(inputs / "astronaut.jpg")]
    assert len(summary["failed"]) == 4
    pasted = np.asarray(Image.open(out / "astronaut" / "pasted" / "frame_3.png"))
    assert pasted.shape == (512, 512, 3)
    assert (out / "astronaut" / "pasted.gif").is_file()
    assert (out / "astronaut" / "frames/input_view/frame_5.png").is_file()


def test_output_paths_that_are_files(tmp_path, model_dir, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(_face_like()).save(src)
    Image.fromarray(_face_like(seed=1)).save(tmp_path / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("mine")  # where a.png's results would go
    code = main(["run", "-i", str(src), str(tmp_path / "b.png"), "-o", str(out), "--model", str(model_dir),
                 "--aligned", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and f"its output path {out / 'a'} is a file" in err
    assert (out / "a").read_text() == "mine" and (out / "b" / "input_view.gif").is_file()
    # -o itself a file: a one-line error for the whole run
    code = main(["run", "-i", str(src), "-o", str(out / "a"), "--model", str(model_dir), "--aligned"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: output path") and "is a file" in err[0]


def test_whole_run_errors_are_one_line(tmp_path, model_dir, plain_model_dir, capsys, monkeypatch):
    src = tmp_path / "a.png"
    Image.fromarray(_face_like()).save(src)
    out = tmp_path / "out"

    def run(*args):
        code = main(["run", "-i", str(src), "-o", str(out), "--aligned", "--no-progress", *args])
        return code, capsys.readouterr().err.strip().splitlines()

    code, err = run("--model", str(tmp_path / "missing"))
    assert code == 2 and len(err) == 1 and "missing does not exist" in err[0]
    code, err = run("--model", str(model_dir / "fusion"))  # a network folder, not a model folder
    assert code == 2 and "single network folder" in err[0]
    import deblur_rotate.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "bundled_model_dir", lambda: tmp_path / "assets" / "model")
    code, err = run()
    assert code == 2 and "no model is bundled" in err[0] and "--model" in err[0]
    code, err = run("--model", str(plain_model_dir))  # default views need F
    assert code == 2 and len(err) == 1 and "no fusion network" in err[0]
    code, err = run("--model", str(plain_model_dir), "--yaw", "0", "--save-pose")
    assert code == 2 and "no face3d_encoder" in err[0]
    code, err = run("--model", str(model_dir), "--paste-back")
    assert code == 2 and "--paste-back" in err[0]
    main(["run", "-i", str(tmp_path / "nothing*.png"), "-o", str(out), "--model", str(model_dir)])
    assert "no input images found" in capsys.readouterr().err
    assert not out.exists()  # nothing was started
    code, err = run("--model", str(plain_model_dir), "--yaw", "0")  # same-view only works without F and E_3D
    assert code == 0 and (out / "a" / "frames" / "input_view" / "frame_1.png").is_file()


def test_helpers(tmp_path):
    assert views_from_angles([0, -30, 30], [0]) == [(0.0, 0.0), (-30.0, 0.0), (30.0, 0.0)]
    assert len(views_from_angles([0, 10], [0, 5, 0])) == 4  # grid, duplicates dropped
    assert [view_name(v) for v in [(0, 0), (30, 0), (0, -10), (7.5, 5)]] == \
        ["input_view", "yaw+30", "pitch-10", "yaw+7.5_pitch+5"]
    assert view_name((0, 0), to_frontal=True) == "frontal" and view_name((-20, 0), True) == "frontal_yaw-20"
    from pathlib import Path

    assert output_names([Path("x/a.png"), Path("y/a.jpg"), Path("b.png"), Path("z/b.png")]) == \
        ["a_png", "a_jpg", "b_png", "b_png_2"]
    for name in ("img2.png", "img10.png", "img1.jpg", "skip.txt"):
        (tmp_path / name).write_bytes(b"")
    paths, problems = list_inputs([str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "none")])
    assert [p.name for p in paths] == ["img1.jpg", "img2.png", "img10.png"]  # natural order, no duplicates
    assert problems == [(str(tmp_path / "none"), "no such file or folder")]


def test_non_utf8_names_are_reported_on_a_strict_stdout(tmp_path, model_dir, monkeypatch):
    import os
    import sys

    inputs = tmp_path / "in"
    inputs.mkdir()
    good = os.fsdecode(bytes(inputs) + b"/caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    bad = os.fsdecode(bytes(inputs) + b"/bad\xff.png")
    Image.fromarray(_face_like()).save(good, format="PNG")
    with open(bad, "wb") as handle:
        handle.write(b"not an image")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    out = tmp_path / "out"
    code = main(["run", "-i", str(inputs), "-o", str(out), "--model", str(model_dir), "--aligned", "--yaw", "0",
                 "--no-progress"])
    stdout.flush(), stderr.flush()
    printed = stdout.buffer.getvalue().decode("utf-8")
    errors = stderr.buffer.getvalue().decode("utf-8")
    assert code == 1
    assert "done: 1 of 2" in printed and "caf\ufffd.png" in printed
    assert "failed: 1" in errors and "bad\ufffd.png: not a readable image" in errors  # the list is printed
    summary = json.loads((out / "summary.json").read_text())
    assert [d["input"] for d in summary["done"]] == [good]  # the exact name survives in the summary


def test_run_cleans_stale_partials_and_writes_a_fresh_summary(tmp_path, model_dir, monkeypatch, capsys):
    import os
    import subprocess
    import sys

    import deblur_rotate.run as run_module

    for name in ("a", "b"):
        Image.fromarray(_face_like(seed=ord(name))).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = out / f".a.partial-{dead_pid}"  # left by a killed run
    (stale / "frames").mkdir(parents=True)
    (stale / "frames" / "frame_1.png").write_bytes(b"half")
    live = out / f".b.partial-{os.getppid()}"  # another run still at work: not ours to remove
    live.mkdir()
    (out / "summary.json").write_text(json.dumps({"done": [{"input": "old.png"}], "failed": []}))

    real = run_module.process_input

    def killed_at_b(path, *args, **kwargs):
        if path.name == "b.png":
            raise KeyboardInterrupt  # Ctrl-C during the second input
        return real(path, *args, **kwargs)

    monkeypatch.setattr(run_module, "process_input", killed_at_b)
    argv = ["run", "-i", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(model_dir),
            "--aligned", "--yaw", "0", "--no-progress"]
    assert main(argv) == 130
    assert not stale.exists() and live.is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False  # not the old run's, and marked as unfinished
    assert [d["input"] for d in summary["done"]] == [str(tmp_path / "a.png")]
    monkeypatch.setattr(run_module, "process_input", real)
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and len(summary["done"]) == 2 and summary["inputs"] == 2
    capsys.readouterr()


def test_gif_in_a_folder_is_read_by_its_first_frame(tmp_path, model_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    first = _face_like(seed=1)
    second = 255 - first
    Image.fromarray(first).save(inputs / "anim.gif", save_all=True,
                                append_images=[Image.fromarray(second)], duration=100, loop=0)
    Image.fromarray(_face_like(seed=2)).save(inputs / "still.png")
    out = tmp_path / "out"
    code = main(["run", "-i", str(inputs), "-o", str(out), "--model", str(model_dir), "--aligned", "--yaw", "0",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(d["input"]).name for d in summary["done"]) == ["anim.gif", "still.png"]
    seen = np.asarray(Image.open(out / "anim" / "input.png")).astype(float)
    size = seen.shape[0]
    near = [np.abs(seen - np.asarray(Image.fromarray(f).resize((size, size), Image.LANCZOS))).mean()
            for f in (first, second)]
    assert near[0] < near[1] / 3  # the first frame, not the second
    assert [w["input"] for w in summary["warnings"]] == [str(inputs / "anim.gif")]
    assert "first frame" in summary["warnings"][0]["warning"]


def test_face_cut_by_the_edge_is_warned_about(tmp_path, model_dir, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = skimage_data.astronaut()
    Image.fromarray(photo).save(inputs / "whole.png")
    Image.fromarray(np.ascontiguousarray(photo[:, 215:])).save(inputs / "cut.png")  # the left of the face is gone
    out = tmp_path / "out"
    code = main(["run", "-i", str(inputs), "-o", str(out), "--model", str(model_dir), "--yaw", "0",
                 "--only-center-face", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["done"]) == 2
    assert [w["input"] for w in summary["warnings"]] == [str(inputs / "cut.png")]
    assert "cut by the image edge" in summary["warnings"][0]["warning"] and "mirroring" in err
    record = json.loads((out / "cut" / "result.json").read_text())
    assert record["faces"][0]["outside_share"] > 0.05 and record["warnings"]
    assert json.loads((out / "whole" / "result.json").read_text())["warnings"] == []
