import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import SMALL_MODEL
from deblur_rotate.data.synthbmfd import SynthBMFD, SynthBMFDMultiView, SynthConfig, generate, view_yaws
from deblur_rotate.errors import UserError
from deblur_rotate.files import load_png


def _config(**kw):
    base = dict(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12, supersample=1,
                model=dict(SMALL_MODEL), seed=3)
    base.update(kw)
    return SynthConfig(**base)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate(root, _config(), progress=False, model=small_model)
    return root


def test_layout_index_and_metadata(dataset_root):
    index = json.loads((dataset_root / "index.json").read_text())
    assert [s["split"] for s in index["subjects"]] == ["train", "train", "test"]
    assert index["views"] == list(range(1, 9)) and index["mirror_pairs"] == [[1, 8], [2, 7], [3, 6], [4, 5]]
    perf = dataset_root / "subject_000" / "perf_00"
    frames = sorted((perf / "view_1").glob("frame_*.png"))
    assert len(frames) == 13 and load_png(frames[0]).shape == (32, 32, 3)
    meta = np.load(perf / "meta.npz")
    assert meta["coeffs"].shape[:2] == (8, 13) and meta["landmarks"].shape == (8, 13, 68, 2)
    # Views 4 and 5 are the nearest to frontal and mirror each other.
    yaws = np.asarray(view_yaws(_config()))
    assert np.argsort(np.abs(yaws))[:2].tolist() in ([3, 4], [4, 3]) and np.allclose(yaws, -yaws[::-1])
    # Per-view pose differs by the rig angle (same head, different cameras).
    dyaw = np.degrees(meta["pose"][7, :, 1] - meta["pose"][0, :, 1])
    assert np.allclose(dyaw, yaws[7] - yaws[0], atol=2.0)
    # Black background: the corners are dark.
    img = load_png(frames[0])
    assert img[0, 0].max() < 10 and img.max() > 100


def test_reader_blur_is_mean_of_window(dataset_root):
    ds = SynthBMFD(dataset_root, split="train", m=4)
    assert len(ds) == 2 * 8 * (13 - 8)  # 2 train subjects x 8 views x valid centres
    sample = ds[0]
    subject, perf, view, center = ds.items[0]
    frames = ds.load_frames(subject, perf, view, list(range(center - 4, center + 5)))
    assert torch.allclose(sample["blurry"], frames.mean(0), atol=1e-6)
    assert torch.allclose(sample["targets"], frames[[0, 2, 4, 6, 8]])
    assert sample["targets"].shape == (5, 3, 32, 32) and sample["coeffs"].shape == (16 + 10 + 10 + 33,)
    assert sample["landmarks"].shape == (68, 2)
    # Resizing scales the landmarks with the image (pixel centres at integers).
    big = SynthBMFD(dataset_root, split="train", m=4, size=64)[0]
    assert big["blurry"].shape == (3, 64, 64)
    assert torch.allclose(big["landmarks"], (sample["landmarks"] + 0.5) * 2 - 0.5, atol=1e-5)
    test = SynthBMFD(dataset_root, split="test", m=4)
    assert {s for s, *_ in test.items} == {"subject_002"}


def test_multiview_same_instant(dataset_root):
    pairs = SynthBMFDMultiView(SynthBMFD(dataset_root, split="train", m=4), seed=1)
    item = pairs[3]
    assert item["blurry"].shape == (2, 3, 32, 32) and item["view"][0] != item["view"][1]
    # Same instant, same identity/expression coefficients, different pose.
    c = item["coeffs"]
    assert torch.allclose(c[0, :36], c[1, :36]) and not torch.allclose(c[0, -6:], c[1, -6:])


def test_deterministic_and_resumable(tmp_path, small_model, dataset_root):
    root = tmp_path / "again"
    config = _config()
    # Simulate an interruption: a partial subject left behind, one subject complete, no index.
    generate(root, config, progress=False, model=small_model)
    full = _digest(root)
    assert full == _digest(dataset_root)
    import shutil

    shutil.rmtree(root / "subject_001")
    (root / "index.json").unlink()
    (root / ".partial" / "subject_001" / "perf_00").mkdir(parents=True)
    (root / ".partial" / "subject_001" / "perf_00" / "junk.png").write_bytes(b"half")
    with pytest.raises(UserError, match="no index.json"):
        SynthBMFD(root)
    generate(root, config, progress=False, model=small_model)
    assert _digest(root) == full and not (root / ".partial").exists()


def test_bad_inputs(tmp_path, dataset_root, small_model):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        generate(foreign, _config(), progress=False, model=small_model)
    with pytest.raises(UserError, match="other settings"):
        generate(dataset_root, _config(seed=4), progress=False, model=small_model)
    with pytest.raises(UserError, match="at least 1"):
        generate(tmp_path / "zero", _config(subjects=0), progress=False)
    assert not (tmp_path / "zero").exists()
    with pytest.raises(UserError, match="m <= 6"):
        SynthBMFD(dataset_root, m=32)
    with pytest.raises(UserError, match="does not exist"):
        SynthBMFD(tmp_path / "missing")
    with pytest.raises(UserError, match="no subjects in the 'test' split"):
        SynthBMFD(_empty_split(tmp_path, dataset_root), split="test", m=4)


def _empty_split(tmp_path, dataset_root):
    import shutil

    root = tmp_path / "nosplit"
    shutil.copytree(dataset_root, root)
    index = json.loads((root / "index.json").read_text())
    for s in index["subjects"]:
        s["split"] = "train"
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_load_target_reads_one_frame_equal_to_the_full_sample(dataset_root):
    ds = SynthBMFD(dataset_root, split="train", m=4)
    sample = ds[1]
    for k in range(5):
        one = ds.load_target(1, k)
        assert torch.equal(one["image"], sample["targets"][k])
        assert torch.equal(one["landmarks"], sample["target_landmarks"][k])


def test_identity_scale_changes_faces_and_old_folders_still_resume(tmp_path, small_model, dataset_root):
    import dataclasses
    import json

    from deblur_rotate.data.synthbmfd import performance_coefficients

    config = _config()
    wide = dataclasses.replace(config, identity_scale=1.6)
    base_id = performance_coefficients(small_model, config, 0, 0)[0][0, 0, :small_model.layout.n_id]
    wide_id = performance_coefficients(small_model, wide, 0, 0)[0][0, 0, :small_model.layout.n_id]
    assert torch.allclose(wide_id, 1.6 * base_id)
    with pytest.raises(UserError, match="identity-scale"):
        dataclasses.replace(config, identity_scale=0).validate()
    # a folder written before identity_scale existed (marker without the key) resumes with the default
    root = tmp_path / "old"
    generate(root, config, progress=False, model=small_model)
    marker = next(p for p in root.iterdir() if p.name.endswith(".json") and p.name != "index.json")
    stored = json.loads(marker.read_text())
    stored.pop("identity_scale")
    marker.write_text(json.dumps(stored))
    generate(root, config, progress=False, model=small_model)  # no "other settings" error
    with pytest.raises(UserError, match="identity_scale"):
        generate(root, wide, progress=False, model=small_model)


def _process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _worker_pids(parent: int) -> list[int]:
    """The multiprocessing workers (spawn_main) whose parent is ``parent``."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """`synth --workers N` killed (SIGKILL, no clean-up) must not leave its workers rendering."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    root = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import sys
        from deblur_rotate.data.synthbmfd import SynthConfig, generate
        config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=6.0,
                             supersample=1, model={dict(SMALL_MODEL)!r}, seed=3)
        generate(sys.argv[1], config, workers=2, progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", script, str(root)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not any((root / ".partial").glob("subject_*/perf_00/view_1/frame_*.png")):  # rendering started
            assert parent.poll() is None, parent.stderr.read().decode()
            assert time.monotonic() < deadline, "the workers never started rendering"
            time.sleep(0.2)
        workers = _worker_pids(parent.pid)
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while not all(_process_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_process_gone(pid) for pid in workers), "workers still alive 15 s after the parent died"
        assert not (root / "index.json").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # a failed run must not leave them rendering either
            if not _process_gone(pid):
                os.kill(pid, signal.SIGKILL)
