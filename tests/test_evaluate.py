"""`deblur-rotate evaluate`: the tables on a tiny SynthBMFD with a random micro model, skipped stages, bad input."""
import contextlib
import csv
import io
import json
import shutil

import pytest
import torch
from conftest import SMALL_MODEL
from PIL import Image

from deblur_rotate.cli import main
from deblur_rotate.errors import UserError
from deblur_rotate.evaluate.inputs import Availability, plan_tables, select_instants

torch.set_num_threads(1)

PAIR_COLUMNS = ["1,4", "2,3", "all"]  # the 4-view rig's mirror pairs
GROUPS = ["middle (3)", "frames 2,4", "frames 1,5", "all"]


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    from deblur_rotate.data.synthbmfd import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth_eval") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12, views=4,
                         supersample=1, model=dict(SMALL_MODEL), seed=5)
    generate(root, config, progress=False, model=small_model)
    return root


def _random_head(net: torch.nn.Module, std: float) -> torch.nn.Module:
    """Fresh encoders return a constant (zero heads, zero last BatchNorm gains): make the output depend on the input."""
    with torch.no_grad():
        net.head.weight.normal_(0.0, std)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    return net


@pytest.fixture(scope="module")
def parts(synth_root, tmp_path_factory):
    """Random micro networks: G, E_v, F (FC3R), FC3, DirectDeblurNet as modules; E_3D as the folder
    `train face3d` writes (config.json + model.safetensors + face_model.json)."""
    from deblur_rotate.evaluate.baselines import DirectDeblurNet, direct_deblur_config
    from deblur_rotate.models.encoders import BlurEncoder, encoder_config
    from deblur_rotate.models.fusion import FusionNetwork, fusion_config
    from deblur_rotate.models.io import save_pretrained
    from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
    from deblur_rotate.train.face3d import Face3DConfig, Face3DStage

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval_parts")
    g = Generator(**stylegan2_config("micro"))
    ev = _random_head(BlurEncoder(num_frames=5, num_ws=g.num_ws, w_dim=g.w_dim, **encoder_config("micro", "blur")), 0.5)
    f3r = FusionNetwork(**fusion_config("micro", "FC3R"))
    f3 = FusionNetwork(**fusion_config("micro", "FC3"))
    with torch.no_grad():
        f3r.mlp[-1].weight.normal_(0, 0.3)
    baseline = DirectDeblurNet(**direct_deblur_config("micro"))
    with torch.no_grad():
        baseline.head.weight.normal_(0, 0.05)
    stage = Face3DStage(Face3DConfig(preset="micro", data=str(synth_root), out=str(root / "e3d_run"), steps=0,
                                     batch=4, m=4, lambda_id=0.0, grid=0, progress=False, device="cpu"))
    _random_head(stage.E, 0.02)  # a trained-looking E_3D: its coefficients depend on the image
    e3d = stage.write_final()
    return {"generator": g, "blur_encoder": ev, "fusion": f3r, "e3d": e3d,
            "fc3": save_pretrained(f3, root / "fc3"), "baseline": save_pretrained(baseline, root / "deblur_baseline")}


def _model(parts, folder, *, face3d: bool, fusion: bool, face_model_json: bool = True):
    from deblur_rotate.pipeline import assemble_model

    out = assemble_model(folder, generator=parts["generator"], blur_encoder=parts["blur_encoder"],
                         face3d_encoder=parts["e3d"] if face3d else None, fusion=parts["fusion"] if fusion else None,
                         preset="micro")
    target = out / "face3d_encoder" / "face_model.json"
    if face3d and face_model_json and not target.exists():
        # assemble_model keeps only config.json + model.safetensors; a trained model carries E_3D's face_model.json
        shutil.copy(parts["e3d"] / "face_model.json", target)
    if face3d and not face_model_json:
        target.unlink(missing_ok=True)  # a model folder written without it
    return out


def _cli(args, capsys):
    code = main(["evaluate", "--no-progress", "--device", "cpu", "--m", "4", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def full_run(parts, synth_root, tmp_path_factory):
    model = _model(parts, tmp_path_factory.mktemp("full") / "model", face3d=True, fusion=True)
    out = tmp_path_factory.mktemp("full_report") / "report"
    buffer = io.StringIO()  # module fixtures cannot take capsys: capture by hand
    with contextlib.redirect_stdout(buffer):
        code = main(["evaluate", "--no-progress", "--device", "cpu", "--m", "4", "--model", str(model),
                     "--data", str(synth_root), "--out", str(out), "--fc3", str(parts["fc3"]),
                     "--baseline", str(parts["baseline"]), "--limit", "2"])
    return {"code": code, "out": out, "stdout": buffer.getvalue(), "model": model}


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------- pure parts

def test_plan_tables_skips_what_the_model_lacks():
    full = Availability(fusion=True, fc3=True, face3d=True, face3d_model=True, baseline=True)
    run, skipped, partial = plan_tables([5, 1, 2, 3, 4, 1], full)
    assert run == [1, 2, 3, 4, 5] and skipped == {} and partial == {}
    run, skipped, partial = plan_tables([1, 2, 3, 4, 5], Availability())
    assert run == [1] and set(skipped) == {2, 3, 4, 5}
    assert all("fusion network" in skipped[t] for t in (2, 3, 5)) and "face3d_encoder" not in skipped[2]
    run, skipped, partial = plan_tables([1, 2, 3, 4, 5], Availability(fusion=True))
    assert run == [1, 2, 3, 5] and "face3d_encoder" in skipped[4]
    assert any("--fc3" in n for n in partial[2]) and any("E_3D" in n for n in partial[3])
    assert any("--baseline" in n for n in partial[5])
    _, _, partial = plan_tables([5], Availability(fusion=True, face3d=True, baseline=True))
    assert any("morphable model" in n for n in partial[5])
    with pytest.raises(UserError, match="--tables"):
        plan_tables([0, 6], full)


def test_select_instants_spreads_evenly():
    assert select_instants(10, None) == list(range(10)) and select_instants(3, 5) == [0, 1, 2]
    assert select_instants(10, 2) == [0, 9] and select_instants(9, 3) == [0, 4, 8]
    with pytest.raises(UserError, match="--limit"):
        select_instants(10, 0)


# ------------------------------------------------------------------------------------------------- full run

def test_full_run_writes_every_file(full_run):
    out = full_run["out"]
    assert full_run["code"] == 0
    tables = [f"table{k}.csv" for k in range(1, 6)]
    for name in ["report.md", "report.json", "figure5.png", "error_vs_angle.png", *tables]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    text = (out / "report.md").read_text()
    from deblur_rotate.evaluate.metrics import PROTOCOL

    assert text.index("## Protocol") < text.index("### Table 1")
    assert PROTOCOL in text and "Crop and resolution" in text and "Forward/backward" in text
    for k in range(1, 6):
        assert f"### Table {k}:" in text
    assert "wall time" in full_run["stdout"] and "### Table 5" in full_run["stdout"]
    for name in ("figure5.png", "error_vs_angle.png"):
        with Image.open(out / name) as image:
            assert image.width > 200 and image.height > 100
    fig = Image.open(out / "figure5.png").convert("RGB")
    assert len(set(fig.get_flattened_data())) > 50  # real image content, not an empty canvas


def test_tables_have_the_promised_rows_and_columns(full_run):
    out = full_run["out"]
    t1 = _csv(out / "table1.csv")
    assert list(t1[0])[:3] == ["comparison", "unit", "frames"]
    assert [c for c in t1[0] if c not in ("comparison", "unit", "frames")] == [
        f"{c}{s}" for c in PAIR_COLUMNS for s in ("", " n", " missing")]
    assert {r["comparison"] for r in t1} == {"ours vs projected ground truth", "ours vs dlib on ground truth",
                                             "dlib on ground truth vs projected (detector's own error)"}
    assert [r["frames"] for r in t1[:4]] == GROUPS and {r["unit"] for r in t1} == {"px", "% width"} and len(t1) == 24
    # every generated frame is counted, found or not: 2 instants x 4 views x 5 frames
    all_rows = [r for r in t1 if r["frames"] == "all"]
    assert all(int(r["all n"]) + int(r["all missing"]) == 40 for r in all_rows)

    t2 = _csv(out / "table2.csv")
    assert [c for c in t2[0] if not c.endswith((" n", " missing"))][3:] == ["-60°", "-45°", "-30°", "+30°", "+45°",
                                                                            "+60°", "all"]
    names = {r["reconstruction"] for r in t2}
    assert names == {"ours FC3R (model F)", "ours FC3 (--fc3)", "ground truth, nearest views (classifier sensitivity)"}
    assert {r["accuracy"] for r in t2} == {"top-1 (%)", "top-5 (%)"}
    for r in t2:
        assert int(r["all n"]) + int(r["all missing"]) == 2 * 6  # 2 instants x 6 angles
        if int(r["all n"]) and int(r["all missing"]) == 0:
            assert 0.0 <= float(r["all"]) <= 100.0

    t3 = _csv(out / "table3.csv")
    assert {r["reconstruction"] for r in t3} == {"ours FC3R (model F)", "ours FC3 (--fc3)",
                                                 "ours FC3R (model F), Δp from E_3D"}
    assert len(t3) == 3 * 2 * 4
    # input view 2 (nearest frontal of 4): targets 1, 3, 4; column 1,4 has 2 views, 2,3 has one
    row = next(r for r in t3 if r["frames"] == "all" and r["unit"] == "px")
    assert int(row["1,4 n"]) + int(row["1,4 missing"]) == 2 * 2 * 5
    assert int(row["2,3 n"]) + int(row["2,3 missing"]) == 2 * 1 * 5

    t4 = _csv(out / "table4.csv")
    assert {r["method"] for r in t4} == {"texture warp of the sharp input (E_3D fit on it)",
                                         "ours from the blurry input (middle frame)",
                                         "E_3D on the sharp ground truth of view k (reference)"}
    pose_rows = [r for r in t4 if "pose error" in r["measure"]]
    assert len(pose_rows) == 3 and all(0.0 <= float(r["all"]) <= 180.0 for r in pose_rows)  # E_3D always measures
    assert len({r["all"] for r in pose_rows}) == 3  # three different images were measured

    t5 = _csv(out / "table5.csv")
    assert [c for c in t5[0] if not c.endswith((" n", " missing"))][3:] == [
        "frame 1", "frame 2", "frame 3", "frame 4", "frame 5", "all frames", "1,4", "2,3"]
    methods = {r["method"] for r in t5}
    assert methods == {"ours", "blurry input (trivial)", "ours without rotation",
                       "cascade (DirectDeblurNet + texture warp)"}
    assert {r["time order"] for r in t5} == {"as ordered", "best of both orders"} and len(t5) == 2 * 4 * 2
    for r in t5:  # the better order can only raise a sequence's mean
        if r["time order"] == "best of both orders":
            twin = next(x for x in t5 if x["metric"] == r["metric"] and x["method"] == r["method"]
                        and x["time order"] == "as ordered")
            assert float(r["all frames"]) >= float(twin["all frames"]) - 1e-9
    # report.json holds the same numbers as the CSVs
    data = json.loads((out / "report.json").read_text())
    cell = data["tables"]["table5"]["rows"][0]["cells"]["all frames"]
    assert cell["mean"] == pytest.approx(float(t5[0]["all frames"]))
    assert data["skipped"] == {} and data["settings"]["input_view"] == 2


def test_psnr_values_equal_a_direct_computation(full_run, synth_root):
    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.evaluate.metrics import psnr, ssim
    from deblur_rotate.evaluate.tables import quantize
    from deblur_rotate.pipeline import DeblurRotatePipeline

    ds = SynthBMFD(synth_root, split="test", m=4, size=32)
    instants = [ds.instants[i] for i in select_instants(len(ds.instants), 2)]
    pipe = DeblurRotatePipeline.from_pretrained(full_run["model"])
    trivial, norot, norot_ssim = [], [], []
    for subject, perf, center in instants:
        blurry = ds.load(subject, perf, 2, center)["blurry"]        # input view 2
        target = ds.load(subject, perf, 3, center)["targets"]       # view 3: the only target in column "2,3"
        trivial.append(psnr(quantize(blurry), target[2]))
        frames = quantize(pipe.synthesize(pipe.encode(blurry[None])[0]))[0]  # [5, 3, R, R]
        norot.append(psnr(frames[0], target[0]))
        norot_ssim.append(ssim(frames[0], target[0]))
    rows = _csv(full_run["out"] / "table5.csv")

    def value(metric, method, order, column):
        row = next(r for r in rows if r["metric"] == metric and r["method"] == method and r["time order"] == order)
        return float(row[column])

    # column "2,3" pools all frames of view 3; frame 3 of the trivial baseline is checked via the single-frame mean
    assert value("PSNR (dB)", "blurry input (trivial)", "as ordered", "frame 3") == pytest.approx(
        float(torch.stack([psnr(quantize(ds.load(s, p, 2, c)["blurry"]).expand(3, -1, -1, -1),
                                torch.stack([ds.load(s, p, v, c)["targets"][2] for v in (1, 3, 4)])).mean()
                           for s, p, c in instants]).mean()), rel=1e-5)
    trivial_23 = [float(psnr(quantize(ds.load(s, p, 2, c)["blurry"]).expand(5, -1, -1, -1),
                             ds.load(s, p, 3, c)["targets"]).mean()) for s, p, c in instants]
    assert value("PSNR (dB)", "blurry input (trivial)", "as ordered", "2,3") == pytest.approx(
        sum(trivial_23) / len(trivial_23), rel=1e-5)
    assert value("PSNR (dB)", "blurry input (trivial)", "best of both orders", "2,3") == pytest.approx(
        sum(trivial_23) / len(trivial_23), rel=1e-5)  # one image: both orders are the same
    assert trivial[0] < 60  # a real comparison (blurry vs sharp differ)
    # ours without rotation, frame 1, as ordered: all target views of both instants
    expected = []
    for subject, perf, center in instants:
        blurry = ds.load(subject, perf, 2, center)["blurry"]
        frames = quantize(pipe.synthesize(pipe.encode(blurry[None])[0]))[0]
        expected += [float(psnr(frames[0], ds.load(subject, perf, v, center)["targets"][0])) for v in (1, 3, 4)]
    assert value("PSNR (dB)", "ours without rotation", "as ordered", "frame 1") == pytest.approx(
        sum(expected) / len(expected), rel=1e-5)
    assert norot[0] == pytest.approx(expected[1], rel=1e-6) and torch.isfinite(norot_ssim[0])


def test_landmark_values_equal_a_direct_computation(full_run, synth_root):
    """Table 1's detector row (dlib on the sharp frames vs the projection): random generators give no faces, but
    the synthetic ground truth does, so this cell has numbers to check."""
    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.evaluate.metrics import detect_landmarks, landmark_error

    ds = SynthBMFD(synth_root, split="test", m=4, size=32)
    errors = []
    for subject, perf, center in [ds.instants[i] for i in select_instants(len(ds.instants), 2)]:
        for view in (2, 3):
            sample = ds.load(subject, perf, view, center)
            found = detect_landmarks(sample["targets"]).landmarks
            errors.append(landmark_error(found, sample["target_landmarks"], 32).pixels)
    errors = torch.cat(errors)
    measured = errors[~errors.isnan()]
    assert len(measured) > 0  # the test means something only when dlib finds the synthetic faces
    row = next(r for r in _csv(full_run["out"] / "table1.csv") if r["comparison"].startswith("dlib on ground truth")
               and r["unit"] == "px" and r["frames"] == "all")
    assert float(row["2,3"]) == pytest.approx(float(measured.mean()), rel=1e-5)
    assert int(row["2,3 n"]) == len(measured) and int(row["2,3 missing"]) == len(errors) - len(measured)
    pct = next(r for r in _csv(full_run["out"] / "table1.csv") if r["comparison"] == row["comparison"]
               and r["unit"] == "% width" and r["frames"] == "all")
    assert float(pct["2,3"]) == pytest.approx(float(measured.mean()) * 100 / 32, rel=1e-5)


# ------------------------------------------------------------------------------------------------- partial models

def test_missing_stages_are_skipped_with_a_note(parts, synth_root, tmp_path, capsys):
    model = _model(parts, tmp_path / "bare", face3d=False, fusion=False)
    out = tmp_path / "report"
    (out).mkdir()
    (out / "table3.csv").write_text("stale")  # from an earlier run: must not survive
    code, stdout, _ = _cli(["--model", model, "--data", synth_root, "--out", out, "--limit", "1"], capsys)
    assert code == 0
    assert (out / "table1.csv").is_file() and not any((out / f"table{k}.csv").exists() for k in (2, 3, 4, 5))
    for name in ("report.md", "report.json", "figure5.png", "error_vs_angle.png"):
        assert (out / name).is_file()
    text = (out / "report.md").read_text()
    assert "### Table 1:" in text and "### Table 2:" not in text
    for k in (2, 3, 4, 5):
        assert f"- Table {k} (" in text
    assert "no fusion network (F)" in text
    data = json.loads((out / "report.json").read_text())
    assert set(data["skipped"]) == {"table2", "table3", "table4", "table5"} and list(data["tables"]) == ["table1"]
    assert "Table 4 skipped" in stdout


def test_face_model_json_fallback_and_partial_rows(parts, synth_root, tmp_path, capsys):
    """E_3D without face_model.json (assemble_model does not copy it): the dataset's morphable model and camera
    are used and said so; no --fc3 / --baseline: those rows are left out with a note."""
    model = _model(parts, tmp_path / "nofm", face3d=True, fusion=True, face_model_json=False)
    out = tmp_path / "report"
    code, _, _ = _cli(["--model", model, "--data", synth_root, "--out", out, "--limit", "1", "--tables", "4", "5"],
                      capsys)
    assert code == 0 and sorted(p.name for p in out.glob("*.csv")) == ["table4.csv", "table5.csv"]
    text = (out / "report.md").read_text()
    assert "has no face_model.json: the dataset's procedural model" in text
    assert "cascade rows (DirectDeblurNet + texture warp) skipped: no --baseline" in text
    assert "cascade" not in {r["method"] for r in _csv(out / "table5.csv")}


# ------------------------------------------------------------------------------------------------- bad input

def test_bad_input_is_a_user_error(parts, synth_root, tmp_path, capsys, full_run):
    model = full_run["model"]
    file_out = tmp_path / "report.txt"
    file_out.write_text("x")
    code, _, err = _cli(["--model", model, "--data", synth_root, "--out", file_out], capsys)
    assert code == 2 and "is a file" in err and err.startswith("error: ")

    empty = tmp_path / "empty"
    shutil.copytree(synth_root, empty)
    index = json.loads((empty / "index.json").read_text())
    for s in index["subjects"]:
        s["split"] = "train"
    (empty / "index.json").write_text(json.dumps(index))
    code, _, err = _cli(["--model", model, "--data", empty, "--out", tmp_path / "r1"], capsys)
    assert code == 2 and "no subjects in the 'test' split" in err

    holed = tmp_path / "holed"
    shutil.copytree(synth_root, holed)
    test_subject = next(s["name"] for s in index["subjects"][::-1])
    shutil.rmtree(holed / test_subject / "perf_00" / "view_3")
    code, _, err = _cli(["--model", model, "--data", holed, "--out", tmp_path / "r2"], capsys)
    assert code == 2 and "lacks view(s) [3]" in err

    for args, message in ((["--tables", "6"], "--tables"), (["--limit", "0"], "--limit"),
                          (["--fc3", tmp_path / "nope"], "no such folder")):
        code, _, err = _cli(["--model", model, "--data", synth_root, "--out", tmp_path / "r3", *args], capsys)
        assert code == 2 and message in err, (args, err)
    code, _, err = _cli(["--model", tmp_path / "nomodel", "--data", synth_root, "--out", tmp_path / "r4"], capsys)
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()  # nothing written on errors


def test_quality_targets_equal_a_direct_computation(full_run, synth_root):
    """report.json's quality targets: same-view PSNR (better order per sequence, every view) and the blurry
    reference recomputed by hand; goals and met flags follow the bar; stdout carries `name: value` lines."""
    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.evaluate.metrics import psnr
    from deblur_rotate.evaluate.tables import quantize
    from deblur_rotate.pipeline import DeblurRotatePipeline

    report = json.loads((full_run["out"] / "report.json").read_text())
    quality = {q["name"]: q for q in report["quality_targets"]}
    assert set(quality) == {"same_view_psnr_db", "same_view_landmark_error_pct", "novel_view_psnr_db_30deg",
                            "novel_view_landmark_error_pct_30deg"}
    ds = SynthBMFD(synth_root, split="test", m=4, size=32)
    pipe = DeblurRotatePipeline.from_pretrained(full_run["model"])
    ours, blurry_ref = [], []
    for subject, perf, center in [ds.instants[i] for i in select_instants(len(ds.instants), 2)]:
        for view in (1, 2, 3, 4):
            s = ds.load(subject, perf, view, center)
            frames = quantize(pipe.synthesize(pipe.encode(s["blurry"][None])[0]))[0]   # [5, 3, R, R]
            fwd, bwd = psnr(frames, s["targets"]), psnr(frames.flip(0), s["targets"])
            ours.append(max(float(fwd.mean()), float(bwd.mean())))
            blurry_ref.append(float(psnr(quantize(s["blurry"]).expand(5, -1, -1, -1), s["targets"]).mean()))
    same = quality["same_view_psnr_db"]
    assert same["value"] == pytest.approx(sum(ours) / len(ours), rel=1e-5)
    assert same["reference"] == pytest.approx(sum(blurry_ref) / len(blurry_ref), rel=1e-5)
    assert same["goal"] == pytest.approx(same["reference"] + 3.0)
    assert same["met"] == (same["value"] >= same["goal"])
    novel = quality["novel_view_psnr_db_30deg"]
    assert novel["reference"] is not None and novel["goal"] == pytest.approx(novel["reference"] + 1.0)
    assert quality["same_view_landmark_error_pct"]["goal"] == 2.5
    assert quality["novel_view_landmark_error_pct_30deg"]["goal"] == 4.0
    assert f"same_view_psnr_db: {same['value']!r}" in full_run["stdout"]
    assert "## Quality targets" in (full_run["out"] / "report.md").read_text()


def test_quick_renders_its_own_held_out_set_and_runs_every_table(parts, tmp_path, capsys, monkeypatch):
    """`evaluate --quick`: no SynthBMFD folder needed; a small held-out set is rendered (here shrunk further:
    4 views, the coarse test model) into a temporary folder that is removed after, and every table runs."""
    import tempfile

    import deblur_rotate.evaluate.command as command
    from deblur_rotate.data.synthbmfd import SynthConfig

    real_quick_config = command.quick_config
    full = real_quick_config(64, 32)  # what the bundled model gets: 3 held-out subjects, 81 frames, 8 views
    assert (full.subjects, full.num_test, full.views, full.size, full.num_frames) == (3, 3, 8, 64, 81)
    assert full.seed == command.QUICK_SEED != SynthConfig().seed  # identities no training set of ours has

    def small(resolution, m):
        base = real_quick_config(resolution, m)
        return SynthConfig(subjects=2, test_subjects=2, performances=1, size=base.size, fps=base.fps,
                           seconds=(2 * m + 3) / base.fps, views=4, supersample=1, model=dict(SMALL_MODEL),
                           seed=base.seed)

    monkeypatch.setattr(command, "quick_config", small)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model = _model(parts, tmp_path / "model", face3d=True, fusion=True)
    out = tmp_path / "report"
    code, stdout, _ = _cli(["--quick", "--model", model, "--out", out, "--fc3", parts["fc3"],
                            "--baseline", parts["baseline"], "--limit", "2"], capsys)
    assert code == 0
    assert "--quick: rendering 2 held-out SynthBMFD subjects" in stdout
    data = json.loads((out / "report.json").read_text())
    assert list(data["tables"]) == [f"table{k}" for k in range(1, 6)] and not data["skipped"]
    assert data["settings"]["quick"]["seed"] == command.QUICK_SEED
    assert list((tmp_path / "tmp").iterdir()) == []  # the rendered set is gone
    # with --data the set is kept (and reused by the next run)
    keep = tmp_path / "kept"
    code, _, _ = _cli(["--quick", "--model", model, "--data", keep, "--out", tmp_path / "report2", "--limit", "1",
                       "--tables", "1"], capsys)
    assert code == 0
    index = json.loads((keep / "index.json").read_text())
    assert [s["split"] for s in index["subjects"]] == ["test", "test"]
    # without either, a clear error
    code, _, err = _cli(["--model", model, "--out", tmp_path / "report3"], capsys)
    assert code == 2 and "--data is required" in err and "--quick" in err
