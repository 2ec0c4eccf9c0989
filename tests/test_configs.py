"""The stages' settings come from one place: their config dataclasses (train/configs). The CLI's options, their
defaults and --help are generated from them; old spellings still parse; old run folders' config.json load."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs import STAGE_CONFIGS, config_from_args, load_run_config
from deblur_rotate.train.configs.fields import default_text, option_fields
from deblur_rotate.train.options import PARSER_ADDERS

# the options a minimal command line of each stage must give (required ones)
REQUIRED = {
    "generator": ["--data", "D", "-o", "R"],
    "sharp-encoder": ["--data", "D", "-o", "R", "--fresh-generator"],
    "blur-encoder": ["--data", "D", "-o", "R", "--sharp-encoder", "E", "--generator", "G"],
    "face3d": ["--data", "D", "-o", "R"],
    "fusion": ["--data", "D", "-o", "R", "--sharp-encoder", "E"],
    "deblur-baseline": ["--data", "D", "-o", "R"],
}


def stage_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="train")
    stages = root.add_subparsers(dest="stage")
    for add in PARSER_ADDERS:
        add(stages)
    return root


def test_every_stage_has_a_parser_and_a_config():
    parser = stage_parser()
    names = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 (argparse has no public accessor)
    assert names == set(STAGE_CONFIGS) == set(REQUIRED)


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_cli_defaults_are_the_dataclass_defaults(stage):
    """A minimal command line gives the config whose every other field is the dataclass default."""
    cls = STAGE_CONFIGS[stage]
    args = stage_parser().parse_args([stage, *REQUIRED[stage]])
    config = config_from_args(cls, args)
    given = {"data", "out", "sharp_encoder", "generator", "fresh_generator"}
    for f in dataclasses.fields(cls):
        if f.name in given:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert getattr(config, f.name) == default, f"{stage} --{f.name}"
    assert config.steps == 1000  # one default for every stage (issue 16: it was 1000 here, 5000 in three configs)
    assert config.out == "R" and config.data == "D"


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_help_states_each_default_from_the_dataclass(stage, capsys):
    cls = STAGE_CONFIGS[stage]
    with pytest.raises(SystemExit):
        stage_parser().parse_args([stage, "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for f in option_fields(cls):
        flag = (f.metadata["cli"]["flags"] or ("--" + f.name.replace("_", "-"),))[-1]
        assert flag in text, flag
        said = default_text(cls, f)
        if said:
            assert "".join(f"(default: {said})".split()) in text, (flag, said)


def test_old_spellings_still_parse():
    parser = stage_parser()
    cls = STAGE_CONFIGS["sharp-encoder"]
    args = parser.parse_args(["sharp-encoder", "--data", "D", "--out", "R", "--generator", "G", "--no-mirror",
                              "--middle-only", "--ema-kimg", "2.5", "--lr-decay", "0.4", "--no-progress"])
    c = config_from_args(cls, args)
    assert (c.mirror, c.all_frames, c.ema_images, c.lr_decay, c.progress) == (False, False, 2500.0, 0.4, False)
    assert c.generator == "G" and not c.fresh_generator
    # the generator's mirror is off by default and --mirror switches it on; the blur encoder's is on
    g = config_from_args(STAGE_CONFIGS["generator"], parser.parse_args(["generator", "--data", "D", "-o", "R",
                                                                        "--mirror", "--all-frames"]))
    assert g.mirror and g.all_frames
    v = config_from_args(STAGE_CONFIGS["blur-encoder"],
                         parser.parse_args(["blur-encoder", *REQUIRED["blur-encoder"], "--no-mirror", "--jitter"]))
    assert v.mirror is False and v.jitter is True
    with pytest.raises(SystemExit):  # --generator and --fresh-generator exclude each other
        parser.parse_args(["sharp-encoder", "--data", "D", "-o", "R", "--generator", "G", "--fresh-generator"])
    with pytest.raises(SystemExit):  # one of them is required
        parser.parse_args(["sharp-encoder", "--data", "D", "-o", "R"])


def test_a_run_config_loads_back_also_an_older_one(tmp_path):
    cls = STAGE_CONFIGS["blur-encoder"]
    written = {**dataclasses.asdict(cls(data="D", out="R", sharp_encoder="E", generator="G", lr=5e-4)),
               "stage": "blur-encoder", "world_size": 1, "blur_encoder": {"num_ws": 10}}
    del written["image_frames"]  # a field added after this file was written
    written["removed_option"] = 3  # and one since removed
    (tmp_path / "config.json").write_text(json.dumps(written))
    c = load_run_config(tmp_path)
    assert isinstance(c, cls) and c.lr == 5e-4 and c.image_frames == 5
    (tmp_path / "config.json").write_text(json.dumps({"stage": "gan"}))
    with pytest.raises(UserError, match="not one of"):
        load_run_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable run config"):
        load_run_config(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_run_config(tmp_path / "missing")


def test_configs_import_no_torch():
    code = ("import sys; import deblur_rotate.train.configs, deblur_rotate.train.options; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
