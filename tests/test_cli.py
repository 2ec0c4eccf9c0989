import subprocess
import sys

import pytest

from deblur_rotate.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "deblur_rotate.cli", *args], capture_output=True, text=True)


def test_unknown_option_is_one_line_error():
    result = _run("synth", "--out", "x", "--frobnicate")
    assert result.returncode == 2 and "unrecognized arguments: --frobnicate" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--subjects", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --subjects must be at least 1")
    assert not (tmp_path / "a").exists()
    target = tmp_path / "file.txt"
    target.write_text("mine")
    assert main(["synth", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["demo", "-o", str(target)]) == 2
    assert target.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["demo", "-o", str(other)]) == 2
    assert "not empty" in capsys.readouterr().err and (other / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_render_demo_writes_sheet_and_gif(tmp_path):
    """The model-free fallback of `demo` (an install without the bundled model)."""
    from PIL import Image

    from deblur_rotate.demo import run_render_demo

    written = run_render_demo(tmp_path / "demo", subjects=1, size=32, progress=False)
    assert {p.name for p in written} == {"contact_sheet.png", "blur_vs_sharp.gif", "demo.json"}
    sheet = Image.open(tmp_path / "demo" / "contact_sheet.png")
    assert sheet.size[0] > 8 * 32
    gif = Image.open(tmp_path / "demo" / "blur_vs_sharp.gif")
    assert gif.n_frames == 17


def test_train_generator_bad_data_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "generator", "--preset", "micro", "--data", str(empty), "--out", str(tmp_path / "run"),
                 "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(empty) in err[0]
    assert main(["train", "generator", "--preset", "micro", "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "run2"), "--steps", "1"]) == 2
    assert "missing" in capsys.readouterr().err
