"""``deblur-rotate evaluate``: the paper's tables on a SynthBMFD split, with baselines, in one command.

    deblur-rotate evaluate [--model FOLDER] --data SYNTHBMFD [--split test] --out REPORT [--fc3 FOLDER]
                           [--baseline RUN/deblur_baseline] [--limit N] [--m 32] [--device cpu|cuda]
                           [--tables 1 2 3 4 5]

Writes REPORT/report.md, REPORT/table<k>.csv, REPORT/report.json, REPORT/figure5.png and
REPORT/error_vs_angle.png (see :mod:`deblur_rotate.evaluate.report`), prints the tables and the wall time.
Tables the model cannot produce (no F, no E_3D) are skipped and report.md says why. Top-level imports stay
light: every ``deblur-rotate`` call imports this module to build its parser.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``deblur-rotate evaluate``."""
    p.add_argument("--model", type=Path, default=None, metavar="FOLDER",
                   help="model folder (pipeline.json + one sub-folder per network); default: the bundled model")
    p.add_argument("--data", required=True, type=Path, metavar="SYNTHBMFD", help="SynthBMFD folder")
    p.add_argument("--split", choices=("train", "test", "all"), default="test", help="split to evaluate (default test)")
    p.add_argument("--out", required=True, type=Path, metavar="REPORT",
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


def run_command(args: argparse.Namespace) -> int:
    """Run the evaluation of parsed ``args`` and write the report; returns the exit status (0)."""
    from deblur_rotate.errors import UserError
    from deblur_rotate.evaluate.report import check_out_folder, quality_lines, table_markdown, write_report
    from deblur_rotate.evaluate.tables import EvaluateOptions, evaluate, plan_tables

    check_out_folder(args.out)  # fail before the (long) evaluation
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    plan_tables(args.tables, _nothing())  # validates the table numbers
    options = EvaluateOptions(data=args.data, model=args.model, split=args.split, fc3=args.fc3,
                              baseline=args.baseline, limit=args.limit, m=args.m, device=args.device,
                              tables=tuple(args.tables), progress=args.progress)
    result = evaluate(options)
    written = write_report(result, args.out)
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
    from deblur_rotate.evaluate.tables import Availability

    return Availability()
