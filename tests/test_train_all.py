"""`deblur-rotate train all`: every stage on a tiny SynthBMFD, the model folder, skip/resume, bad input."""
import json

import numpy as np
import pytest
import torch

from conftest import SMALL_MODEL
from deblur_rotate.cli import main
from deblur_rotate.data.synthbmfd import SynthConfig, generate
from deblur_rotate.errors import UserError
from deblur_rotate.pipeline import DeblurRotatePipeline
from deblur_rotate.precision import resolve_precision
from deblur_rotate.train.all_stages import TrainAllPlan, run_all


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth_all") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12,
                         supersample=1, model=dict(SMALL_MODEL), seed=7)
    generate(root, config, progress=False, model=small_model)
    return root


def _plan(synth_root, out, **kw):
    steps = {"generator": 2, "sharp_encoder": 2, "blur_encoder": 2, "face3d": 2, "fusion": 2}
    base = dict(preset="micro", data=str(synth_root), out=str(out), steps=steps, m=4, checkpoint_every=1,
                device="cpu", progress=False, batch={"face3d": 2, "fusion": 2})
    base.update(kw)
    return TrainAllPlan(**base)


def test_train_all_builds_a_working_model_and_skips_finished_stages(tmp_path, synth_root, capsys):
    out = tmp_path / "run"
    model = run_all(_plan(synth_root, out))
    meta = json.loads((model / "pipeline.json").read_text())
    assert set(meta["networks"]) == {"generator", "blur_encoder", "face3d_encoder", "fusion"}
    assert meta["crop"]["method"] == "template"  # the training framing as landmark templates (fractions of the side)
    templates = np.asarray(meta["crop"]["templates"])
    assert templates.ndim == 3 and templates.shape[1:] == (68, 2) and 0 < templates.min() and templates.max() < 1
    log = json.loads((out / "train_all.json").read_text())
    assert set(log["stages"]) == {"generator", "sharp_encoder", "blur_encoder", "face3d", "fusion"}
    assert all(v["steps"] == 2 and v["wall_s_total"] >= 0 for v in log["stages"].values())

    pipe = DeblurRotatePipeline.from_pretrained(model, device="cpu")
    result = pipe(torch.zeros(1, 3, 32, 32), views=[(0, 0), (30, 0)])
    assert result.frames.shape == (1, 2, 5, 3, 32, 32)
    # the model's G is stage 2's fine-tuned generator
    from deblur_rotate.models.io import read_weights

    g_model, g_stage = read_weights(model / "generator"), read_weights(out / "sharp_encoder" / "generator")
    assert g_model.keys() == g_stage.keys() and all(torch.equal(g_model[k], g_stage[k]) for k in g_model)

    capsys.readouterr()
    run_all(_plan(synth_root, out))  # everything done: all five skipped
    assert capsys.readouterr().out.count("skipped") == 5

    # more steps for the last stage only: it resumes from its checkpoint, the others stay skipped
    steps = {"generator": 2, "sharp_encoder": 2, "blur_encoder": 2, "face3d": 2, "fusion": 3}
    run_all(_plan(synth_root, out, steps=steps))
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 4 and "fusion: resuming to 3 steps" in printed


def test_train_all_bad_input(tmp_path, synth_root, capsys):
    with pytest.raises(UserError, match="not a folder"):
        run_all(_plan(tmp_path / "missing", tmp_path / "run"))
    with pytest.raises(UserError, match="unknown stage"):
        run_all(_plan(synth_root, tmp_path / "run", steps={"gan": 3}))
    code = main(["train", "all", "--preset", "micro", "--data", str(synth_root), "--out", str(tmp_path / "r"),
                 "--steps", "generator"])
    assert code == 2 and "STAGE=N" in capsys.readouterr().err


def test_cpu_recipe_skips_the_gan_and_applies_its_settings(tmp_path, synth_root, capsys):
    """--recipe cpu: no generator stage (E_s trains G from random weights), the recipe's fields reach the
    stages' config.json, --set overrides one of them, and the model still assembles."""
    steps = {"sharp_encoder": 2, "blur_encoder": 2, "face3d": 2, "fusion": 2}
    plan = _plan(synth_root, tmp_path / "run", recipe="cpu", steps=steps,
                 overrides={"blur_encoder": {"lambda_image": 0.5}})
    resolved = plan.resolved()
    assert resolved.steps["generator"] == 0  # from the recipe
    assert resolved.overrides["blur_encoder"]["lambda_image"] == 0.5
    assert resolved.overrides["sharp_encoder"]["precision"] == "auto"  # bf16 only where the CPU computes it
    model = run_all(plan)
    printed = capsys.readouterr().out
    assert "generator: skipped" in printed and (model / "pipeline.json").is_file()
    es = json.loads((tmp_path / "run" / "sharp_encoder" / "config.json").read_text())
    assert es["fresh_generator"] is True and es["lambda_id"] == 0.0 and es["precision"] == "auto"
    assert es["precision_used"] == resolve_precision("auto", torch.device("cpu"))
    ev = json.loads((tmp_path / "run" / "blur_encoder" / "config.json").read_text())
    assert ev["lambda_image"] == 0.5
    assert not (tmp_path / "run" / "generator").exists()


def test_set_option_parsing_and_errors(tmp_path, synth_root, capsys):
    from deblur_rotate.train.all_stages import _parse_overrides

    assert _parse_overrides(["sharp_encoder.lr=5e-4", "fusion.pose-source=gt", "blur_encoder.mirror=false"]) == {
        "sharp_encoder": {"lr": 5e-4}, "fusion": {"pose_source": "gt"}, "blur_encoder": {"mirror": False}}
    with pytest.raises(UserError, match="no setting 'speed'"):
        _plan(synth_root, tmp_path / "r", overrides={"sharp_encoder": {"speed": 1}}).resolved()
    with pytest.raises(UserError, match="unknown stage"):
        _plan(synth_root, tmp_path / "r", overrides={"gan": {"lr": 1}}).resolved()
    code = main(["train", "all", "--preset", "micro", "--data", str(synth_root), "--out", str(tmp_path / "r"),
                 "--set", "lr=3"])
    assert code == 2 and "STAGE.FIELD=VALUE" in capsys.readouterr().err
