"""Issue 13: untrusted model folders, hostile inputs, and what a new user trips over.

Every fabricated model folder, network folder and input here is built by the tests (micro networks, 32 px)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import micro_networks
from PIL import Image

from deblur_rotate.cli import main
from deblur_rotate.errors import UserError
from deblur_rotate.models.schema import ConfigError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def nets():
    return micro_networks()


@pytest.fixture(scope="module")
def model_dir(nets, tmp_path_factory):
    """A micro model folder that says nothing about its training data (facts unknown: no warnings)."""
    from deblur_rotate.pipeline import assemble_model

    g, ev, e3, f = nets
    return assemble_model(tmp_path_factory.mktemp("m") / "model", generator=g, blur_encoder=ev, face3d_encoder=e3,
                          fusion=f, preset="micro")


@pytest.fixture()
def copy_of(model_dir, tmp_path):
    """A fresh copy of the micro model folder to damage."""
    target = tmp_path / "stranger_model"
    shutil.copytree(model_dir, target)
    return target


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # a real photo, 512 x 512: one face and a mission patch on the suit


@pytest.fixture(scope="module")
def finder():
    from deblur_rotate.faces import FaceFinder

    return FaceFinder()


def _face_like(size: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth colour image that stands for an aligned face crop (--aligned inputs need no detection)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, size=(5, 5, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def _edit_json(path: Path, change: dict) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def _run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------- config.json: the schema

HUGE_G = {"channel_base": 1 << 24, "channel_max": 4096, "w_dim": 4096, "z_dim": 4096}  # ~1e9 parameters


@pytest.mark.parametrize("role, change, field, what", [
    ("generator", {"channels": ["a", "b", "c", "d"]}, "channels[0]", "must be an integer, got 'a'"),
    ("generator", {"img_resolution": 48}, "img_resolution", "48 is not a power of two"),
    ("generator", HUGE_G, "w_dim/z_dim/channel_base/channel_max/channels/mapping_layers", "the limits are"),
    ("generator", {"input_mode": "os.system"}, "input_mode", "must be one of const, dense"),
    ("generator", {"evil": 1}, "evil", "not a field of a stylegan2.generator network"),
    ("blur_encoder", {"layers": [1, 1, 1]}, "layers", "must list 4 values, got 3"),
    ("blur_encoder", {"widths": [8, 8, 16, 10 ** 6]}, "widths[3]", "out of range"),
    ("blur_encoder", {"num_ws": True}, "num_ws", "must be an integer, got True"),
    ("blur_encoder", {"head_grid": -1}, "head_grid", "out of range"),
    ("fusion", {"hidden": 16384, "num_layers": 64}, "w_dim/hidden/num_layers/index_dim", "parameters"),
    ("fusion", {"residual": "yes"}, "residual", "must be true or false"),
    ("face3d_encoder", {"pretrained_backbone": "/etc/shadow"}, "pretrained_backbone",
     "a model folder may not name files to read"),
])
def test_bad_config_fields_are_one_line_errors_before_anything_is_built(copy_of, tmp_path, capsys, role, change,
                                                                        field, what):
    """A stranger's config.json of the wrong type or size: `error: <folder>/<net>/config.json: <field>: ...`,
    exit status 2, nothing built (a huge config answers at once instead of allocating gigabytes)."""
    _edit_json(copy_of / role / "config.json", change)
    photo = tmp_path / "face.png"
    Image.fromarray(_face_like()).save(photo)
    started = time.perf_counter()
    code, _, err = _run_cli(["run", "-i", photo, "-o", tmp_path / "out", "--model", copy_of, "--aligned",
                             "--no-progress", "--yaw", "0"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {copy_of}/{role}/config.json: {field}: "), lines[0]
    assert what in lines[0]
    assert time.perf_counter() - started < 10  # refused from the fields, not after trying to allocate
    assert not (tmp_path / "out").exists()


def test_single_network_folders_get_the_same_schema(nets, tmp_path):
    """The trainers load networks with load_pretrained / load_network: the same field checks apply."""
    from deblur_rotate.models.io import load_pretrained, save_pretrained
    from deblur_rotate.models.stylegan2 import Generator
    from deblur_rotate.train.checkpoint import load_network

    g = save_pretrained(nets[0], tmp_path / "g")
    _edit_json(g / "config.json", {"img_resolution": 40})
    for load in (lambda: load_pretrained("stylegan2.generator", g), lambda: load_network(g, Generator)):
        with pytest.raises(ConfigError, match=rf"^{g}/config.json: img_resolution: 40 is not a power of two"):
            load()
    e3 = save_pretrained(nets[2], tmp_path / "e3")
    _edit_json(e3 / "config.json", {"pretrained_backbone": "/etc/shadow"})
    with pytest.raises(ConfigError, match="pretrained_backbone: a model folder may not name files to read"):
        load_pretrained("encoders.face3d", e3)
    # a config.json far larger than any network's is refused unread
    (e3 / "config.json").write_text(json.dumps({"n_id": 16, "pad": "x" * (2 << 20)}))
    with pytest.raises(UserError, match="too large for a network config"):
        load_pretrained("encoders.face3d", e3)


def test_backbone_weights_still_come_from_the_command_line(tmp_path):
    """What the training commands do with --backbone-weights: the constructor argument (from the user) works."""
    from safetensors.torch import save_file

    from deblur_rotate.models.encoders import ResNetBackbone, SharpEncoder, encoder_config

    cfg = encoder_config("micro", "sharp")
    source = ResNetBackbone(cfg["arch"], cfg["block"], cfg["layers"], cfg["widths"])
    with torch.no_grad():
        source.stem[0].weight.normal_()
    tv_names = {k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace("stages.", "layer"): v
                for k, v in source.state_dict().items()}
    tv_names = {(f"layer{int(k[5]) + 1}{k[6:]}" if k.startswith("layer") else k): v.contiguous()
                for k, v in tv_names.items()}
    path = tmp_path / "backbone.safetensors"
    save_file(tv_names, str(path))
    encoder = SharpEncoder(num_ws=8, w_dim=32, **cfg, pretrained_backbone=str(path))
    assert torch.equal(encoder.backbone.stem[0].weight, source.stem[0].weight)
    assert "pretrained_backbone" not in encoder.config  # never written into a config.json


def test_new_optional_config_keys_are_accepted(tmp_path):
    """G's input_mode and the encoders' head_grid / head_bottleneck (written only when set) pass the schema."""
    from deblur_rotate.models.encoders import BlurEncoder, SharpEncoder, encoder_config
    from deblur_rotate.models.io import load_pretrained, save_pretrained
    from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
    from deblur_rotate.pipeline import DeblurRotatePipeline, assemble_model

    g = Generator(**stylegan2_config("micro"), input_mode="dense")
    ev = BlurEncoder(num_frames=5, num_ws=g.num_ws, w_dim=g.w_dim, **encoder_config("micro", "blur"), head_grid=2,
                     head_bottleneck=8)
    es = SharpEncoder(num_ws=g.num_ws, w_dim=g.w_dim, **encoder_config("micro", "sharp"), head_grid=2)
    assert load_pretrained("encoders.sharp", save_pretrained(es, tmp_path / "es")).config["head_grid"] == 2
    pipe = DeblurRotatePipeline.from_pretrained(assemble_model(tmp_path / "m", generator=g, blur_encoder=ev,
                                                               preset="micro"))
    assert pipe.generator.config["input_mode"] == "dense" and pipe.blur_encoder.config["head_bottleneck"] == 8


@pytest.mark.parametrize("kind, preset", [("stylegan2.generator", "micro"), ("stylegan2.generator", "tiny"),
                                          ("stylegan2.discriminator", "tiny"), ("encoders.blur", "tiny"),
                                          ("encoders.sharp", "tiny"), ("encoders.face3d", "tiny"), ("fusion", "tiny"),
                                          ("baselines.direct_deblur", "tiny")])
def test_implied_size_is_the_built_networks_parameter_count(kind, preset):
    """The ceiling is applied to a count computed from the fields: it must be the network's true size."""
    from deblur_rotate.evaluate.baselines import direct_deblur_config
    from deblur_rotate.models.encoders import encoder_config
    from deblur_rotate.models.fusion import fusion_config
    from deblur_rotate.models.io import _resolve_kind
    from deblur_rotate.models.schema import implied_size, validate_config
    from deblur_rotate.models.stylegan2 import stylegan2_config

    config = {"stylegan2.generator": lambda: stylegan2_config(preset),
              "stylegan2.discriminator": lambda: stylegan2_config(preset, "discriminator"),
              "encoders.blur": lambda: {**encoder_config(preset, "blur"), "head_grid": 2, "head_bottleneck": 64},
              "encoders.sharp": lambda: {**encoder_config(preset, "sharp"), "head_grid": 2},
              "encoders.face3d": lambda: encoder_config(preset, "face3d"),
              "fusion": lambda: fusion_config(preset),
              "baselines.direct_deblur": lambda: direct_deblur_config(preset)}[kind]()
    validate_config(kind, config, "x/config.json")
    built = _resolve_kind(kind)(**config)
    assert implied_size(kind, config)[0] == sum(p.numel() for p in built.parameters())


# ---------------------------------------------------------------------- model folders read only inside

def _symlink_outside(copy_of: Path, tmp_path: Path, rel: str) -> None:
    outside = tmp_path / "elsewhere" / Path(rel).name
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(copy_of / rel, outside)
    (copy_of / rel).unlink()
    (copy_of / rel).symlink_to(outside)


@pytest.mark.parametrize("case", ["weights_symlink", "config_symlink", "subfolder_symlink", "fifo", "bfm_path",
                                  "climbing_role"])
def test_model_folder_reads_only_json_and_safetensors_inside_itself(copy_of, tmp_path, case):
    from deblur_rotate.model_folder import validate_model_folder

    if case == "weights_symlink":
        _symlink_outside(copy_of, tmp_path, "generator/model.safetensors")
        match = "generator model.safetensors .* leads outside the folder"
    elif case == "config_symlink":
        _symlink_outside(copy_of, tmp_path, "fusion/config.json")
        match = "fusion config.json .* leads outside the folder"
    elif case == "subfolder_symlink":
        shutil.move(copy_of / "fusion", tmp_path / "fusion_outside")
        (copy_of / "fusion").symlink_to(tmp_path / "fusion_outside")
        match = "network 'fusion' points outside the folder"
    elif case == "fifo":
        (copy_of / "generator" / "model.safetensors").unlink()
        os.mkfifo(copy_of / "generator" / "model.safetensors")  # reading it would block forever
        match = "model.safetensors is not a regular file"
    elif case == "bfm_path":
        (copy_of / "face3d_encoder" / "face_model.json").write_text(json.dumps(
            {"face_model": {"kind": "bfm", "path": "/etc/shadow"}, "camera_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
        match = r"face_model.json: face_model.path: a model folder may only read files inside itself"
    else:
        _edit_json(copy_of / "pipeline.json", {"networks": {"generator": "../../..", "blur_encoder": "blur_encoder"}})
        match = "network 'generator' points outside the folder"
    with pytest.raises(UserError, match=match):
        validate_model_folder(copy_of)


def test_symlinks_that_stay_inside_the_folder_are_fine(copy_of):
    from deblur_rotate.model_folder import validate_model_folder

    (copy_of / "store").mkdir()
    shutil.move(copy_of / "generator" / "model.safetensors", copy_of / "store" / "g.safetensors")
    (copy_of / "generator" / "model.safetensors").symlink_to("../store/g.safetensors")
    assert set(validate_model_folder(copy_of).networks) == {"generator", "blur_encoder", "face3d_encoder", "fusion"}


@pytest.mark.parametrize("change, match", [
    ({"resolution": 48}, "pipeline.json: resolution: must be a power of two"),
    ({"resolution": 64}, "pipeline.json: resolution: 64, but the generator renders 32 px"),
    ({"num_frames": "5"}, "pipeline.json: num_frames: must be an integer"),
    ({"trained_on_synthetic_only": "yes"}, "pipeline.json: trained_on_synthetic_only: must be true or false"),
    ({"view_range_deg": {"yaw": [60, -60]}}, "pipeline.json: view_range_deg: must be"),
    ({"crop": {"method": "ffhq", "face_side": "big"}}, "pipeline.json: crop.face_side"),
    ({"crop": {"method": "template", "templates": [[0.5, 0.5]]}}, "pipeline.json: crop.templates"),
])
def test_pipeline_json_fields_are_checked(copy_of, change, match):
    from deblur_rotate.model_folder import validate_model_folder

    _edit_json(copy_of / "pipeline.json", change)
    with pytest.raises(UserError, match=match):
        validate_model_folder(copy_of)


def test_networks_that_do_not_fit_together_are_named_by_field(copy_of):
    from deblur_rotate.model_folder import validate_model_folder

    _edit_json(copy_of / "fusion" / "config.json", {"w_dim": 16})
    with pytest.raises(UserError, match=rf"{copy_of}/fusion/config.json: w_dim: 16, but the generator takes codes "
                                        "of w_dim 32"):
        validate_model_folder(copy_of)


def test_run_demo_evaluate_serve_share_the_validation(copy_of, tmp_path, capsys):
    """The same one-line error from every command that takes --model (serve loads with from_pretrained too)."""
    from deblur_rotate.pipeline import DeblurRotatePipeline

    _edit_json(copy_of / "generator" / "config.json", {"img_resolution": 48})
    expected = f"error: {copy_of}/generator/config.json: img_resolution: 48 is not a power of two"
    for args in (["demo", "-o", tmp_path / "demo", "--model", copy_of],
                 ["evaluate", "--quick", "-o", tmp_path / "report", "--model", copy_of, "--no-progress"]):
        code, _, err = _run_cli(args, capsys)
        assert code == 2 and err.strip().startswith(expected), err
    with pytest.raises(ConfigError, match="img_resolution: 48 is not a power of two"):
        DeblurRotatePipeline.from_pretrained(copy_of)  # what serve.py calls


# ------------------------------------------------------------------------ training facts and warnings

def _fake_run(root: Path, name: str, module, data: Path) -> Path:
    """A training run folder as a stage writes it: RUN/config.json (with its data) and RUN/<name>/."""
    from deblur_rotate.models.io import save_pretrained

    run = root / f"run_{name}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(data), "kind": "auto"}))
    return save_pretrained(module, run / name)


def test_assemble_model_records_what_the_model_was_trained_on(nets, tmp_path):
    from deblur_rotate.model_folder import BUNDLED_FACTS, training_facts, validate_model_folder
    from deblur_rotate.pipeline import assemble_model, bundled_model_dir

    g, ev, e3, f = nets
    data = tmp_path / "synth"
    data.mkdir()
    (data / "index.json").write_text(json.dumps({"kind": "synthbmfd", "view_yaws_deg": [-60, -20, 20, 60]}))
    model = assemble_model(tmp_path / "model", generator=g, blur_encoder=_fake_run(tmp_path, "blur_encoder", ev, data),
                           fusion=_fake_run(tmp_path, "fusion", f, data), preset="micro")
    meta = json.loads((model / "pipeline.json").read_text())
    assert meta["trained_on_synthetic_only"] is True
    assert meta["view_range_deg"] == {"yaw": [-60.0, 60.0], "pitch": [-20.0, 20.0]}
    # given explicitly, or from modules (unknown: no fields); old folders fall back
    plain = assemble_model(tmp_path / "plain", generator=g, blur_encoder=ev, preset="micro")
    assert "trained_on_synthetic_only" not in json.loads((plain / "pipeline.json").read_text())
    assert validate_model_folder(plain).facts.synthetic_only is None
    real = assemble_model(tmp_path / "real", generator=g, blur_encoder=ev, preset="micro",
                          trained_on_synthetic_only=False, view_range_deg={"yaw": [-45, 45], "pitch": [-10, 10]})
    assert validate_model_folder(real).facts.view_range_deg == {"yaw": [-45.0, 45.0], "pitch": [-10.0, 10.0]}
    bundled = validate_model_folder(bundled_model_dir()).facts  # from its pipeline.json, or the fallback for old ones
    assert (bundled.synthetic_only, bundled.view_range_deg) == (BUNDLED_FACTS.synthetic_only,
                                                                BUNDLED_FACTS.view_range_deg)
    assert training_facts({"extra": {"trained_on": "SynthBMFD (synth64)"}}).synthetic_only is True
    # serve.py's spelling of the range is read too
    assert training_facts({"extra": {"view_range": {"yaw_deg": [-45, 40]}}}).view_range_deg == {"yaw": [-45, 40]}


def test_run_says_once_that_the_model_knows_only_synthetic_faces(nets, tmp_path, capsys):
    from deblur_rotate.pipeline import assemble_model

    g, ev, e3, f = nets
    synthetic = assemble_model(tmp_path / "synthetic", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                               preset="micro", trained_on_synthetic_only=True,
                               view_range_deg={"yaw": [-60, 60], "pitch": [-20, 20]})
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(2):
        Image.fromarray(_face_like(seed=k)).save(photos / f"p{k}.png")
    code, _, err = _run_cli(["run", "-i", photos, "-o", tmp_path / "out", "--model", synthetic, "--aligned",
                             "--no-progress", "--yaw", "0", "90", "--pitch", "0"], capsys)
    assert code == 0
    synthetic_lines = [ln for ln in err.splitlines() if "trained on synthetic faces only" in ln]
    assert len(synthetic_lines) == 1 and synthetic_lines[0].startswith("warning: ")
    assert "Your own data" in synthetic_lines[0]  # what to do: the README section on real data
    view_lines = [ln for ln in err.splitlines() if "outside the views this model was trained on" in ln]
    assert len(view_lines) == 1 and "yaw +90" in view_lines[0] and "yaw -60..+60" in view_lines[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["model_warnings"]) == 2 and "synthetic faces only" in summary["model_warnings"][0]
    # a model trained on real data, within its range: no warning
    real = assemble_model(tmp_path / "real", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                          preset="micro", trained_on_synthetic_only=False,
                          view_range_deg={"yaw": [-60, 60], "pitch": [-20, 20]})
    code, _, err = _run_cli(["run", "-i", photos, "-o", tmp_path / "out2", "--model", real, "--aligned",
                             "--no-progress"], capsys)
    assert code == 0 and "warning" not in err
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["model_warnings"] == []


# ------------------------------------------------------------------------------------------------- inputs

def test_symlink_loops_and_duplicate_inputs_are_processed_once(tmp_path, monkeypatch):
    from deblur_rotate.run import list_inputs

    root = tmp_path / "shots"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        Image.fromarray(_face_like()).save(root / rel)
    (root / "sub" / "loop").symlink_to("..")            # shots/sub/loop -> shots: a loop
    (root / "sub" / "deeper" / "up").symlink_to("../..")  # a second loop: glob would branch exponentially
    (root / "alias.png").symlink_to("a.png")
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    paths, problems = list_inputs(["shots/**/*.png", "shots/a.png", "./shots/a.png", "shots", str(root / "a.png")])
    assert time.perf_counter() - started < 5
    assert problems == []
    assert sorted(os.path.realpath(p) for p in paths) == sorted(
        os.path.realpath(root / rel) for rel in ("a.png", "sub/b.png", "sub/deeper/c.png"))
    assert paths[0] == Path("shots/a.png")  # the first name it came by


def test_a_full_disk_stops_at_the_first_input_and_leaves_no_partial_output(model_dir, tmp_path, capsys, monkeypatch):
    import deblur_rotate.files as files

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        Image.fromarray(_face_like(seed=k)).save(photos / f"p{k}.png")
    real_write = files.atomic_write_bytes
    writes = {"n": 0}

    def full_after_first_input(path, data):
        if ".partial-" in str(path):
            writes["n"] += 1
            if "p1.partial" in str(path):  # the second input finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", full_after_first_input)
    out = tmp_path / "out"
    code, _, err = _run_cli(["run", "-i", photos, "-o", out, "--model", model_dir, "--aligned", "--no-progress",
                             "--yaw", "0"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on {out}: stopped at {photos / 'p1.png'}"), err
    assert "Traceback" not in err and "Errno 28" not in err
    assert sorted(p.name for p in out.iterdir()) == ["p0", "summary.json"]  # no p1 (partial), p2 never started
    summary = json.loads((out / "summary.json").read_text())
    assert [d["input"] for d in summary["done"]] == [str(photos / "p0.png")]
    assert summary["failed"] == [{"input": str(photos / "p1.png"), "reason": f"no space left on {out}"}]

    # full from the very first input, in an OUT this run creates: nothing is left behind
    monkeypatch.setattr(files, "atomic_write_bytes", lambda path, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")) if ".partial-" in str(path) else real_write(path, data))
    fresh = tmp_path / "fresh_out"
    code, _, err = _run_cli(["run", "-i", photos, "-o", fresh, "--model", model_dir, "--aligned", "--no-progress",
                             "--yaw", "0"], capsys)
    assert code == 2 and f"no space left on {fresh}" in err and not fresh.exists()


def test_false_faces_are_dropped_with_reasons(astronaut, finder):
    kept, dropped = finder.detect(astronaut)
    assert len(kept) == 1 and kept[0].box[1] < 200  # the face at the top, not the patch on the suit (y ~ 335)
    patch = [d for d in dropped if d.box[1] > 300]
    assert patch and "landmarks do not fit a face" in patch[0].reason
    assert kept[0].landmark_disagreement < 0.02 < patch[0].landmark_disagreement
    two = np.ascontiguousarray(np.concatenate([astronaut, astronaut[:, ::-1]], 1))  # two people side by side
    kept, dropped = finder.detect(two)
    assert len(kept) == 2 and all(d.box[1] < 200 for d in kept)
    assert len(dropped) >= 2 and all(d.reason for d in dropped)
    # a face much smaller than the largest one is dropped as well
    small = np.asarray(Image.fromarray(astronaut).resize((96, 96), Image.BILINEAR))
    canvas = np.zeros((512, 768, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[400:496, 640:736] = small
    kept, dropped = finder.detect(canvas)
    assert len(kept) == 1 and all("largest face" in d.reason or "fit" in d.reason for d in dropped)


def test_run_reports_dropped_detections_and_pastes_one_face(astronaut, model_dir, finder, tmp_path, capsys,
                                                            monkeypatch):
    import deblur_rotate.faces as faces_module

    monkeypatch.setattr(faces_module, "FaceFinder", lambda: finder)  # dlib's models loaded once for the module
    Image.fromarray(astronaut).save(tmp_path / "astronaut.jpg", quality=95)
    code, _, _ = _run_cli(["run", "-i", tmp_path / "astronaut.jpg", "-o", tmp_path / "out", "--model", model_dir,
                           "--paste-back", "--no-progress", "--yaw", "0"], capsys)
    assert code == 0
    result = json.loads((tmp_path / "out" / "astronaut" / "result.json").read_text())
    assert len(result["faces"]) == 1 and result["faces"][0]["detection"]["detector"] == "hog"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    dropped = summary["done"][0]["dropped_detections"]
    assert dropped and all("reason" in d and "box" in d and "score" in d for d in dropped)
    assert any(d["box"][1] > 300 for d in dropped)  # the mission patch


# ------------------------------------------------------------------------------------ a new user's path

def test_readme_examples_run_with_the_bundled_model(astronaut, finder, tmp_path, capsys, monkeypatch):
    """The corrected "Running it on photos" examples, as written (no --model: the bundled model)."""
    import deblur_rotate.faces as faces_module
    import deblur_rotate.pipeline as pipeline_module

    monkeypatch.setattr(faces_module, "FaceFinder", lambda: finder)
    monkeypatch.chdir(tmp_path)
    photo = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))
    Image.fromarray(photo).save("photo.jpg")
    Path("photos").mkdir()
    Image.fromarray(photo).save("photos/a.jpg")
    Image.fromarray(photo[:, ::-1].copy()).save("photos/b.png")
    Path("shots").mkdir()
    Image.fromarray(photo).save("shots/one.png")
    example = pipeline_module.bundled_model_dir().parent / "examples" / "example_1" / "blurry.png"
    shutil.copy(example, "face.png")  # an aligned 64 px face crop
    commands = ["run -i photo.jpg -o out --yaw 0",
                "run -i photos/ -o out --yaw -30 0 30",
                "run -i shots/*.png -o out --to-frontal --paste-back",
                "run -i face.png -o out --aligned --sweep"]
    for command in commands:
        code, _, err = _run_cli(command.split() + ["--no-progress"], capsys)
        assert code == 0, (command, err)
        assert sum("trained on synthetic faces only" in ln for ln in err.splitlines()) == 1, err
    photo_out = tmp_path / "out" / "photo"
    assert (photo_out / "input_view.mp4").is_file() and not (photo_out / "yaw+30.mp4").exists()
    assert (tmp_path / "out" / "one" / "pasted.gif").is_file() and (tmp_path / "out" / "face" / "sweep.mp4").is_file()


@pytest.mark.parametrize("argv, dest", [
    (["synth"], "out"), (["demo"], "out"), (["run", "-i", "x"], "output"), (["evaluate", "--quick"], "out"),
    (["prepare", "--kind", "images", "--src", "x"], "out"), (["train", "generator", "--data", "x"], "out"),
    (["train", "sharp-encoder", "--data", "x", "--fresh-generator"], "out"), (["train", "all", "--data", "x"], "out"),
])
def test_out_is_accepted_everywhere(argv, dest):
    from deblur_rotate.cli import build_parser

    spellings = ["-o", "--out"] + (["--output"] if argv[0] in ("run", "demo") else [])
    for spelling in spellings:
        args = build_parser().parse_args([*argv, spelling, "target"])
        assert getattr(args, dest) == Path("target"), spelling


def test_contact_sheets_run_by_increasing_yaw_with_the_input_view_marked():
    from deblur_rotate.outputs import contact_sheet, sheet_order, view_name

    relative = [view_name(v) for v in [(0, 0), (-30, 0), (30, 0)]]
    order, marked = sheet_order(relative)
    assert [relative[i] for i in order] == ["yaw-30", "input_view", "yaw+30"] and relative[marked] == "input_view"
    frontal = [view_name(v, True) for v in [(0, 0), (-30, 0), (30, 0)]]
    order, marked = sheet_order(frontal, input_yaw_deg=0.0)
    assert [frontal[i] for i in order] == ["frontal_yaw-30", "frontal", "frontal_yaw+30"]
    order, marked = sheet_order(frontal, input_yaw_deg=-28.0)  # the face looks 28 degrees away: nearest row marked
    assert frontal[marked] == "frontal_yaw-30"
    # the marked row is framed in yellow: the middle row of three
    frames = np.zeros((3, 2, 8, 8, 3), np.uint8)
    sheet = np.asarray(Image.open(__import__("io").BytesIO(contact_sheet(np.zeros((8, 8, 3), np.uint8), frames,
                                                                         relative))))
    yellow = np.nonzero((sheet[..., 0] > 200) & (sheet[..., 1] > 150) & (sheet[..., 2] < 100))[0]
    height = sheet.shape[0]
    assert yellow.size and height / 3 < np.median(yellow) < 2 * height / 3


def test_grey_and_palette_photos_become_rgb_and_grey_stays_grey(model_dir, tmp_path, capsys):
    from deblur_rotate.images import as_rgb8, is_grey, read_image

    colour = _face_like(64)
    Image.fromarray(colour).convert("L").save(tmp_path / "grey.jpg")
    Image.fromarray(colour).convert("P").save(tmp_path / "palette.png")
    grey = read_image(tmp_path / "grey.jpg")
    assert grey.shape == (64, 64, 3) and is_grey(grey)
    palette = read_image(tmp_path / "palette.png")
    assert palette.shape == (64, 64, 3) and not is_grey(palette)
    assert np.abs(palette.astype(int) - colour.astype(int)).mean() < 20  # the palette's colours, not indices
    assert as_rgb8(np.full((4, 4), 7, np.uint8)).shape == (4, 4, 3)
    assert as_rgb8(np.ones((4, 4, 2), np.float32))[0, 0].tolist() == [255, 255, 255]
    code, _, _ = _run_cli(["run", "-i", tmp_path / "grey.jpg", tmp_path / "palette.png", "-o", tmp_path / "out",
                           "--model", model_dir, "--aligned", "--no-progress"], capsys)
    assert code == 0
    frame = np.asarray(Image.open(tmp_path / "out" / "grey" / "frames" / "yaw+30" / "frame_3.png"))
    assert (frame[..., 0] == frame[..., 1]).all() and (frame[..., 1] == frame[..., 2]).all()
    assert json.loads((tmp_path / "out" / "grey" / "result.json").read_text())["grey_input"] is True
    assert "grey_input" not in json.loads((tmp_path / "out" / "palette" / "result.json").read_text())


@pytest.mark.parametrize("argv", [["--help"], ["synth", "--frobnicate"], ["evaluate", "--help"], ["demo", "--help"],
                                  ["bogus"], ["train", "--help"], ["train", "blur-encoder", "--help"],
                                  ["train", "generator", "--help"], ["train", "face3d", "--kind", "bogus"],
                                  ["train", "fusion", "--help"], ["train", "all", "--help"], ["prepare", "--help"],
                                  ["prepare", "--kind", "bogus"], ["run", "--help"], ["serve", "--help"]])
def test_help_and_argument_errors_import_neither_torch_nor_dlib(argv):
    """What makes `--help` and argument errors answer in well under a second."""
    code = ("import sys\nfrom deblur_rotate.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'dlib', 'kornia', 'deblur_rotate.models.stylegan2') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n" % argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_evaluate_fc3_model_folder_is_validated_too(copy_of, tmp_path):
    """`evaluate --fc3 MODEL_FOLDER` reads that folder's fusion network through the same validation."""
    from deblur_rotate.evaluate.inputs import _load_fusion

    assert _load_fusion(copy_of, torch.device("cpu")).arch_name == "FC3R"
    outside = tmp_path / "outside_fusion"
    shutil.copytree(copy_of / "fusion", outside)
    _edit_json(copy_of / "pipeline.json", {"networks": {"generator": "generator", "blur_encoder": "blur_encoder",
                                                        "fusion": "../outside_fusion"}})
    with pytest.raises(UserError, match="network 'fusion' points outside the folder"):
        _load_fusion(copy_of, torch.device("cpu"))
