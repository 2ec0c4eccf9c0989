"""`deblur-rotate demo` on a model: built-in-style examples, outputs per view, PSNR, checksums, fallback."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_MODEL
from deblur_rotate.cli import main
from deblur_rotate.data.synthbmfd import SynthConfig, generate
from deblur_rotate.demo import load_examples, run_model_demo, verify_checksums, write_examples
from deblur_rotate.errors import UserError
from deblur_rotate.pipeline import assemble_model
from conftest import micro_networks


@pytest.fixture(scope="module")
def examples(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth_demo") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12,
                         supersample=1, model=dict(SMALL_MODEL), seed=11)
    generate(root, config, progress=False, model=small_model)
    out = tmp_path_factory.mktemp("examples")
    written = write_examples(root, out, count=2, m=4)
    assert len(written) == 2
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    g, ev, e3, f = micro_networks(seed=3)
    return assemble_model(tmp_path_factory.mktemp("m") / "model", generator=g, blur_encoder=ev, face3d_encoder=e3,
                          fusion=f, preset="micro")


def test_examples_round_trip(examples):
    items = load_examples(examples)
    assert [it["name"] for it in items] == ["example_1", "example_2"]
    assert items[0]["blurry"].shape == (3, 32, 32) and items[0]["sharp"].shape == (5, 3, 32, 32)
    assert items[0]["meta"]["view"] in (4, 5) and "held-out" in items[0]["meta"]["source"]
    # the blurry image is the mean of the window: it differs from every sharp frame
    assert all((items[0]["blurry"] - s).abs().mean() > 0 for s in items[0]["sharp"])


def test_model_demo_writes_views_and_reports_psnr(tmp_path, examples, model, capsys):
    out = tmp_path / "demo"
    summary = run_model_demo(out, model=model, examples=examples)
    assert summary["views"] == ["yaw-30", "input_view", "yaw+30"]
    for name in ("example_1", "example_2"):
        for view in summary["views"]:
            assert (out / name / f"{view}.gif").is_file() and (out / name / f"{view}.mp4").is_file()
            assert len(list((out / name / "frames" / view).glob("frame_*.png"))) == 5
        assert (out / name / "contact_sheet.png").is_file()
    assert Image.open(out / "contact_sheet.png").size[1] > 6 * 32
    saved = json.loads((out / "demo.json").read_text())
    e = saved["examples"][0]
    assert np.isfinite(e["same_view_psnr_db"]) and np.isfinite(e["blurry_psnr_db"])
    # the blurry PSNR is a direct computation against the example's ground truth
    item = load_examples(examples)[0]
    mse = ((item["blurry"][None] - item["sharp"]) / 2).square().flatten(1).mean(1)
    assert e["blurry_psnr_db"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), abs=1e-2)
    printed = capsys.readouterr().out
    assert "same-view PSNR" in printed and "blurry input" in printed
    # the demo's output folder can be rewritten by the demo, not over other content
    run_model_demo(out, model=model, examples=examples)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not empty"):
        run_model_demo(other, model=model, examples=examples)


def test_damaged_bundle_is_reported(tmp_path, model):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(model, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    (copy / "checksums.json").write_text(json.dumps(
        {p.relative_to(copy).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}))
    verify_checksums(copy)  # intact
    weights = copy / "generator" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(UserError, match="damaged.*reinstall"):
        verify_checksums(copy)


def test_cli_demo_with_model_and_missing_examples(tmp_path, model, capsys):
    empty = tmp_path / "no_examples"
    empty.mkdir()
    assert main(["demo", "-o", str(tmp_path / "d"), "--model", str(model), "--examples", str(empty)]) == 2
    assert "no demo examples" in capsys.readouterr().err
