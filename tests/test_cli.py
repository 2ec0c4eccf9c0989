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


def test_ctrl_c_advice_names_the_command_that_resumes(tmp_path, capsys, monkeypatch):
    """After Ctrl-C a training stage refuses the same command (its checkpoints exist): the advice must be the
    command with --resume, and that command must finish the run."""
    import shlex
    import types

    import torch

    import deblur_rotate.train.gan as gan
    from deblur_rotate.train.loop import Trainer

    class FakeStage:
        """The generator stage's interface around a real Trainer on a toy problem; Ctrl-C at step 5 once."""

        interrupted = False

        def __init__(self, config):
            self.config = config
            self.info = types.SimpleNamespace(rank=0)

        def run(self):
            torch.manual_seed(0)
            net = torch.nn.Linear(2, 1)
            opt = torch.optim.SGD(net.parameters(), lr=0.1)

            def step_fn(batch, step):
                if step == 5 and not FakeStage.interrupted:
                    FakeStage.interrupted = True
                    raise KeyboardInterrupt
                loss = (net(batch) - 1).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                return {"l2": loss}

            def data(start):
                while True:
                    yield torch.ones(4, 2)

            trainer = Trainer(run_dir=self.config.out, networks={"net": net}, network_configs={"net": {}},
                              optimizers={"net": opt}, step_fn=step_fn, data=data, total_steps=self.config.steps,
                              checkpoint_every=2, progress=False)
            if self.config.resume:
                trainer.resume()
            return trainer.train()

    monkeypatch.setattr(gan, "GeneratorStage", FakeStage)
    data = tmp_path / "data"
    data.mkdir()
    argv = ["train", "generator", "--preset", "micro", "--data", str(data), "--out", str(tmp_path / "run"),
            "--steps", "8", "--no-progress"]
    assert main(argv) == 130
    advice = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume" in advice and "deblur-rotate train generator" in advice, advice
    command = shlex.split(advice[advice.index("deblur-rotate"):])
    assert main(argv) == 2  # what the old advice said: refused
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(command[1:]) == 0  # the advised command finishes the run
    assert "trained 8 steps" in capsys.readouterr().out


def test_train_option_choices_match_the_stage_tables():
    """train/options.py holds the CLI's choice tuples without torch; they must agree with the tables they mirror."""
    from deblur_rotate.losses import LATENT_LOSSES
    from deblur_rotate.models.stylegan2 import PRESETS
    from deblur_rotate.train import face3d, fusion, options

    assert tuple(options.LATENT_LOSSES) == tuple(LATENT_LOSSES)
    assert set(options.PRESET_NAMES) == set(PRESETS) == set(face3d.PRESET_DEFAULTS) == set(fusion.PRESET_DEFAULTS)
    assert face3d.DATA_KINDS is options.DATA_KINDS


def test_train_stage_runs_through_its_module(tmp_path, capsys):
    """The lazily bound `func` of a stage imports the stage module and runs it: a missing dataset is a clear error."""
    from deblur_rotate.cli import main

    rc = main(["train", "blur-encoder", "--data", str(tmp_path / "nowhere"), "--sharp-encoder", str(tmp_path / "e"),
               "--generator", str(tmp_path / "g"), "-o", str(tmp_path / "run"), "--preset", "micro"])
    assert rc == 2
    assert "generator folder" in capsys.readouterr().err  # the stage module checked its inputs
