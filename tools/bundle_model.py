"""Maintainers' tool: put a trained `train all` run into the package as the bundled model.

    python tools/bundle_model.py --run runs/tiny/all --data data/synthbmfd [--figures figures.json]
    python tools/bundle_model.py --checksums-only     # after editing MODEL_CARD.md or pipeline.json by hand

Writes (replacing what is there):
  src/deblur_rotate/assets/model/        pipeline.json + one folder per network, fp16 weights
  src/deblur_rotate/assets/examples/     the demo's blurry examples (held-out SynthBMFD subjects + ground truth)
  src/deblur_rotate/assets/model/MODEL_CARD.md   how it was made: commands, seed, data, steps, wall time, machine,
                                                 size, quality figures, checksums
  src/deblur_rotate/assets/model/checksums.json  sha256 of every bundled file (the demo checks them)

Wall time per stage is read from the stage's TensorBoard event files (first to last event of each file,
summed over files, so restarts and pauses between sessions are not counted).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "src" / "deblur_rotate" / "assets"
STAGES = {"generator": "generator", "sharp_encoder": "sharp_encoder", "blur_encoder": "blur_encoder",
          "face3d": "face3d_encoder", "fusion": "fusion"}


def stage_wall_seconds(tb_dir: Path) -> float:
    """Training wall time of a run from its TensorBoard event files, seconds."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = 0.0
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        if len(times) > 1:
            total += max(times) - min(times)
    return total


def stage_steps(run: Path) -> int:
    latest = run / "checkpoints" / "latest.json"
    if latest.is_file():
        return int(json.loads(latest.read_text()).get("step", 0))
    return 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    import sys

    if sys.argv[1:] == ["--checksums-only"]:  # after a hand edit of MODEL_CARD.md or pipeline.json
        write_checksums(ASSETS / "model", ASSETS / "examples")
        print(f"checksums: {ASSETS / 'model' / 'checksums.json'}")
        return
    from deblur_rotate.demo import write_examples
    from deblur_rotate.pipeline import assemble_model
    from deblur_rotate.train.all_stages import training_crop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="the `train all` run folder (one sub-folder per stage)")
    ap.add_argument("--data", required=True, type=Path, help="the SynthBMFD folder it was trained on")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--figures", type=Path, default=None, help="JSON {name: value} of measured quality figures")
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--commands", type=Path, default=None, help="text file with the exact training commands")
    ap.add_argument("--refine-steps", type=int, default=0,
                    help="the model's default blur-consistency refinement steps (pipeline.json refine; 0: none)")
    ap.add_argument("--refine-lr", type=float, default=0.02, help="its Adam learning rate (default 0.02)")
    ap.add_argument("--refine-residual", action=argparse.BooleanOptionalAction, default=True,
                    help="with --refine-steps: also add the refinement's residual to the input view (default on)")
    ap.add_argument("--notes", type=Path, default=None,
                    help="markdown inserted after the stage table (the recipe: what was tried, what each gave)")
    args = ap.parse_args()

    run = args.run
    model_dir, examples_dir = ASSETS / "model", ASSETS / "examples"
    crop = training_crop(str(args.data), 64 if args.preset == "tiny" else 256, None)
    from deblur_rotate.refine import RefineSettings

    refine = RefineSettings(steps=args.refine_steps, lr=args.refine_lr, residual=args.refine_residual) \
        if args.refine_steps else None
    # the training facts from --data itself (the runs' config.json hold their data path relative to where they
    # were started, which need not be this tool's working folder)
    data_index = json.loads((args.data / "index.json").read_text())
    yaws = data_index.get("view_yaws_deg") or [-60.0, 60.0]
    view_range = {"yaw": [float(min(yaws)), float(max(yaws))], "pitch": [-20.0, 20.0]}
    tmp = ASSETS / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    assemble_model(tmp, generator=run / "sharp_encoder" / "generator",
                   blur_encoder=run / "blur_encoder" / "blur_encoder",
                   face3d_encoder=run / "face3d" / "face3d_encoder", fusion=run / "fusion" / "fusion",
                   preset=args.preset, crop=crop, dtype=torch.float16, refine=refine,
                   trained_on_synthetic_only=data_index.get("kind") == "synthbmfd", view_range_deg=view_range,
                   extra={"trained_on": f"SynthBMFD ({args.data.name})", "card": "MODEL_CARD.md"})
    if examples_dir.exists():
        shutil.rmtree(examples_dir)
    write_examples(args.data, examples_dir, count=args.examples)

    index = json.loads((args.data / "index.json").read_text())
    n_train = sum(s["split"] == "train" for s in index["subjects"])
    stages = {}
    for stage in STAGES:
        folder = run / stage
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        stages[stage] = {"steps": stage_steps(folder), "batch": config.get("batch"), "seed": config.get("seed"),
                         "lr": config.get("lr"), "wall_minutes": round(stage_wall_seconds(folder / "tb") / 60, 1)}
    size_bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    figures = json.loads(args.figures.read_text()) if args.figures else {}
    commands = args.commands.read_text().strip() if args.commands else "(see README: Training)"

    lines = [
        "# Model card: deblur-rotate `tiny` (bundled)",
        "",
        "**Knows only synthetic faces.** Trained on SynthBMFD, faces rendered from the project's procedural "
        "morphable model; it has never seen a real photo. For real photos train the `paper` preset on real data "
        "(README: Training).",
        "",
        f"- Preset: `{args.preset}` (64 px, W+ 10 x 256). Networks: G (fine-tuned by the E_s stage), E_v, E_3D, "
        "F (FC3R). Stored as fp16 safetensors; loads as fp32.",
        f"- Data: `{args.data.name}`: {len(index['subjects'])} subjects ({n_train} train, "
        f"{len(index['subjects']) - n_train} held out), {index.get('fps', 112)} fps, 8 views, m = 32.",
        f"- Size on disk: {size_bytes / 1e6:.2f} MB (limit 25 MB).",
        f"- Machine: {platform.platform()}, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}.",
        "",
        "## Stages",
        "",
        "| stage | steps | batch | lr | seed | training wall time (min) |",
        "|---|---|---|---|---|---|",
    ]
    for stage, s in stages.items():
        lines.append(f"| {stage} | {s['steps']} | {s['batch']} | {s['lr']} | {s['seed']} | {s['wall_minutes']} |")
    if args.notes:
        lines += ["", args.notes.read_text().strip()]
    lines += ["", "## Commands", "", "```bash", commands, "```", ""]
    if figures:
        lines += ["## Quality (held-out SynthBMFD subjects)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in figures.items()]
        lines.append("")
    card = "\n".join(lines)
    (tmp / "MODEL_CARD.md").write_text(card + "\n## Checksums\n\nSee `checksums.json` (sha256 of every file).\n")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)
    write_checksums(model_dir, examples_dir)
    total = sum(p.stat().st_size for p in [*model_dir.rglob("*"), *examples_dir.rglob("*")] if p.is_file())
    print(f"bundled_model_mb: {size_bytes / 1e6:.2f}")
    print(f"bundled_total_mb: {total / 1e6:.2f}")
    print(f"model: {model_dir}")


def write_checksums(model_dir: Path, examples_dir: Path) -> None:
    """model_dir/checksums.json: the sha256 of every file of the bundled model and its demo examples (the demo
    checks them)."""
    files = sorted(p for p in [*model_dir.rglob("*"), *examples_dir.rglob("*")]
                   if p.is_file() and p.name != "checksums.json")
    sums = {p.relative_to(model_dir).as_posix() if model_dir in p.parents else
            "../examples/" + p.relative_to(examples_dir).as_posix(): sha256(p) for p in files}
    (model_dir / "checksums.json").write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
