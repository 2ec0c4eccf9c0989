"""The options of ``deblur-rotate prepare``, in a module that imports neither torch nor dlib, so that
``prepare --help`` and argument errors answer at once; :mod:`deblur_rotate.data.prepare` does the work."""
from __future__ import annotations

from pathlib import Path

__all__ = ["EXPECTED", "PREPARE_HELP", "add_prepare_parser", "configure_prepare_parser"]

# what --src holds, per --kind
EXPECTED = {
    "images": "image files (.png, .jpg, ...) at any depth",
    "300vw": "300VW clips NNN/vid.avi with NNN/annot/000001.pts ..., other video files, or folders of frames",
    "multiview": "the BMFD layout SUBJECT/PERFORMANCE/view_K/frame_XXXXX.png",
    "vidtimit": "VIDTIMIT sequences SUBJECT/video/head*/001 002 ...",
}


PREPARE_HELP = "detect, align and crop the faces of a dataset; cache landmarks; write an index"


def add_prepare_parser(subparsers) -> None:
    """Register ``deblur-rotate prepare`` on an argparse subparsers object (sets ``func``)."""
    configure_prepare_parser(subparsers.add_parser("prepare", help=PREPARE_HELP))


def configure_prepare_parser(p) -> None:
    """The description, options and ``func`` of the ``prepare`` parser ``p`` (the CLI adds them only when the
    command is chosen)."""
    p.description = ("Prepare FFHQ-like images, 300VW-like video, BMFD-layout multi-view video or VIDTIMIT for "
                     "training/evaluation: faces are detected and aligned with dlib (FFHQ-style crop), landmarks "
                     "cached, an index written. Resumable: rerun the same command after an interruption.")
    p.add_argument("--kind", required=True, choices=list(EXPECTED), help="layout of --src")
    p.add_argument("--src", required=True, type=Path, help="the dataset folder")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (new, empty, or an unfinished run)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256, the paper's)")
    p.add_argument("--detector", choices=["hog", "cnn"], default="hog",
                   help="dlib face detector: hog (fast, default) or cnn (slower, finds more poses)")
    p.add_argument("--segment", type=int, default=None,
                   help="video frames per fixed crop (default 90 for 300vw, 224 for multiview, whole for vidtimit)")
    p.add_argument("--detect-every", type=int, default=5, help="run the face detector every N video frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    """``func`` of the parser: imports the worker (torch, dlib) only when the command runs."""
    import importlib

    return importlib.import_module("deblur_rotate.data.prepare").run_prepare(args)
