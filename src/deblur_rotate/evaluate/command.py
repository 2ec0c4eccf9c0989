"""``deblur-rotate evaluate``: the paper's tables on a SynthBMFD split, with baselines, in one command.

    deblur-rotate evaluate [--model FOLDER] --data SYNTHBMFD [--split test] -o/--out REPORT [--fc3 FOLDER]
                           [--baseline RUN/deblur_baseline] [--limit N] [--m 32] [--device cpu|cuda]
                           [--tables 1 2 3 4 5]
    deblur-rotate evaluate --quick -o REPORT [--model FOLDER] [--data KEEP_HERE] ...

``--quick`` needs no SynthBMFD folder: it renders a small held-out set itself (:func:`quick_config`: 3 subjects
never trained on, a seed of their own, about 0.7 s of 112 fps video from the 8-camera rig at the model's
resolution; about a minute on one CPU core) into a temporary folder (or into ``--data``, kept and reused),
and runs every table on :data:`QUICK_LIMIT` instants of it.

Writes REPORT/report.md, REPORT/table<k>.csv, REPORT/report.json, REPORT/figure5.png and
REPORT/error_vs_angle.png (see :mod:`deblur_rotate.evaluate.report`), prints the tables and the wall time.
Tables the model cannot produce (no F, no E_3D) are skipped and report.md says why. Top-level imports stay
light: every ``deblur-rotate`` call imports this module to build its parser.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["QUICK_LIMIT", "QUICK_SEED", "QUICK_SUBJECTS", "add_arguments", "quick_config", "run_command"]

QUICK_SUBJECTS = 3       # subjects of the --quick set, all held out (test split)
QUICK_SEED = 90210       # their identities: a seed no training set of ours uses (SynthBMFD's default is 0)
QUICK_EXTRA_FRAMES = 16  # frames beyond the 2m + 1 one blurry image averages: 17 instants per performance
QUICK_LIMIT = 12         # instants evaluated by --quick unless --limit says otherwise


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``deblur-rotate evaluate``."""
    p.add_argument("--model", type=Path, default=None, metavar="FOLDER",
                   help="model folder (pipeline.json + one sub-folder per network); default: the bundled model")
    p.add_argument("--data", type=Path, default=None, metavar="SYNTHBMFD",
                   help="SynthBMFD folder (required without --quick; with --quick: where to keep the rendered set)")
    p.add_argument("--quick", action="store_true",
                   help=f"render a small held-out SynthBMFD set first ({QUICK_SUBJECTS} subjects, under a second of "
                        f"video, about a minute) and evaluate {QUICK_LIMIT} instants of it: no data folder needed")
    p.add_argument("--split", choices=("train", "test", "all"), default="test", help="split to evaluate (default test)")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="REPORT",
                   help="report folder (report.md, table<k>.csv, report.json, figure5.png, error_vs_angle.png)")
    p.add_argument("--fc3", type=Path, default=None, metavar="FOLDER",
                   help="a second fusion network for the FC3 rows of Tables 2 and 3: a network folder, a fusion run "
                        "folder or a model folder")
    p.add_argument("--baseline", type=Path, default=None, metavar="FOLDER",
                   help="DirectDeblurNet (RUN/deblur_baseline of `train deblur-baseline`) for Table 5's cascade")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate at most N instants, evenly spread over the split (default: all)")
    p.add_argument("--m", type=int, default=32, help="blur half-window in frames: 2m+1 frames averaged (default 32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--tables", type=int, nargs="+", default=[1, 2, 3, 4, 5], metavar="K",
                   help="tables to compute (default 1 2 3 4 5)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from deblur_rotate.refine import add_refine_argument

    add_refine_argument(p)


def quick_config(resolution: int, m: int):
    """The SynthConfig of the ``--quick`` set: :data:`QUICK_SUBJECTS` held-out subjects (all in the test split,
    identities from :data:`QUICK_SEED`), one performance of 2m + 1 + :data:`QUICK_EXTRA_FRAMES` frames at 112 fps,
    the default 8-camera rig, rendered at ``resolution`` px."""
    from deblur_rotate.data.synthbmfd import SynthConfig

    fps = 112.0
    return SynthConfig(subjects=QUICK_SUBJECTS, test_subjects=QUICK_SUBJECTS, performances=1, size=int(resolution),
                       fps=fps, seconds=(2 * m + 1 + QUICK_EXTRA_FRAMES) / fps, seed=QUICK_SEED)


def _quick_data(args: argparse.Namespace, folder: Path, temporary: bool) -> dict:
    """Render (or resume, ``generate`` is resumable) the --quick set for the model of ``args`` into ``folder``;
    returns its SynthConfig as a dict (for the report)."""
    from deblur_rotate.data.synthbmfd import generate
    from deblur_rotate.model_folder import validate_model_folder
    from deblur_rotate.pipeline import bundled_model_dir

    model = args.model if args.model is not None else bundled_model_dir()
    resolution = int(validate_model_folder(model).meta.get("resolution") or 64)
    config = quick_config(resolution, args.m)
    print(f"--quick: rendering {config.subjects} held-out SynthBMFD subjects ({config.num_frames} frames x "
          f"{config.views} views at {config.size} px, seed {config.seed}) into "
          f"{'a temporary folder' if temporary else folder}")
    generate(folder, config, progress=args.progress)
    return config.to_dict()


def run_command(args: argparse.Namespace) -> int:
    """Run the evaluation of parsed ``args`` and write the report; returns the exit status (0)."""
    import shutil
    import tempfile

    from deblur_rotate.errors import UserError
    from deblur_rotate.evaluate.inputs import EvaluateOptions, plan_tables
    from deblur_rotate.evaluate.report import check_out_folder, quality_lines, table_markdown, write_report
    from deblur_rotate.evaluate.tables import evaluate

    check_out_folder(args.out)  # fail before the (long) evaluation
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.data is None and not args.quick:
        raise UserError("--data is required: a SynthBMFD folder (`deblur-rotate synth -o DIR`, about 20 minutes), "
                        "or pass --quick to render a small held-out set on the spot")
    if args.quick and args.split != "test":
        raise UserError("--quick renders held-out (test) subjects only; drop --split")
    if args.m < 1:
        raise UserError(f"--m must be at least 1 (got {args.m})")
    plan_tables(args.tables, _nothing())  # validates the table numbers
    temporary = None
    data = args.data
    quick = None
    try:
        if args.quick:
            if data is None:
                temporary = Path(tempfile.mkdtemp(prefix="deblur-rotate-quick-"))
                data = temporary / "synthbmfd"
            quick = _quick_data(args, data, temporary is not None)
        limit = args.limit if args.limit is not None or not args.quick else QUICK_LIMIT
        options = EvaluateOptions(data=data, model=args.model, split=args.split, fc3=args.fc3,
                                  baseline=args.baseline, limit=limit, m=args.m, device=args.device,
                                  tables=tuple(args.tables), progress=args.progress,
                                  refine_steps=args.refine_steps, refine_residual=args.refine_residual)
        result = evaluate(options)
        if quick is not None:  # the report says what the (maybe temporary) data was
            result.settings["quick"] = quick
            if temporary is not None:
                result.settings["data"] = (f"--quick set (rendered into a temporary folder, removed after; seed "
                                           f"{quick['seed']})")
        written = write_report(result, args.out)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    for table in result.tables:
        print(table_markdown(table))
    for number, reason in sorted(result.skipped.items()):
        print(f"Table {number} skipped: {reason}")
    for line in quality_lines(result.quality):
        print(line)
    print(f"report written to {args.out} ({', '.join(p.name for p in written)})")
    print(f"wall time: {result.wall_s:.1f} s for {result.settings['instants']} instants")
    return 0


def _nothing():
    from deblur_rotate.evaluate.inputs import Availability

    return Availability()
