"""The ``deblur-rotate`` command.

Every command prints a one-line ``error: ...`` and exits with status 2 for problems the user can fix
(bad options, unusable folders, damaged files); unexpected failures exit with status 1 after the
traceback, with a last line saying what was being done.

Start-up stays fast: this module and what it imports at the top import neither torch nor dlib nor the
networks. The options of ``run``, ``evaluate``, ``serve``, ``prepare`` and ``train`` are added only when that
command is chosen (:class:`_LazySubcommands`), so ``deblur-rotate --help`` and argument errors of the light
commands answer at once. Every command with an output folder takes ``-o/--out`` (``run`` also ``--output``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from deblur_rotate.errors import UserError

__all__ = ["main", "build_parser"]


class _LazySubcommands(argparse._SubParsersAction):
    """Sub-commands whose options are filled in only when the command is chosen on the command line: the
    modules that define them (and import torch) are imported then, not to list the commands in ``--help``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fillers: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def add_lazy(self, name: str, fill: Callable[[argparse.ArgumentParser], None], **kwargs) -> argparse.ArgumentParser:
        """A sub-command ``name`` (``help=`` shows in the command list) whose options ``fill(parser)`` adds later."""
        parser = self.add_parser(name, **kwargs)
        self._fillers[name] = fill
        return parser

    def fill(self, name: str) -> argparse.ArgumentParser:
        """Add the options of sub-command ``name`` now (once); returns its parser."""
        parser = self._name_parser_map[name]
        filler = self._fillers.pop(name, None)
        if filler is not None:
            filler(parser)
            _accept_short_out(parser)
        return parser

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] in self._fillers:
            self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


def _accept_short_out(parser: argparse.ArgumentParser) -> None:
    """Give every ``--out`` option of ``parser`` and of its sub-commands the short spelling ``-o`` where it has
    none (the stages defined in modules of their own), so ``-o/--out`` works everywhere."""
    action = parser._option_string_actions.get("--out")
    if action is not None and "-o" not in parser._option_string_actions:
        action.option_strings.insert(0, "-o")
        parser._option_string_actions["-o"] = action
    for sub in parser._actions:
        if isinstance(sub, argparse._SubParsersAction):
            for child in set(sub.choices.values()):
                _accept_short_out(child)


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a SynthBMFD dataset (multi-view 112 fps face video)",
                       description="Render SynthBMFD: subjects x performances x 8 views of the procedural face model. "
                                   "Resumable: rerun the same command after an interruption.")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (new, empty, or an unfinished run)")
    p.add_argument("--subjects", type=int, default=52, help="number of identities (default 52, as in BMFD)")
    p.add_argument("--test-subjects", type=int, default=None,
                   help="subjects held out for testing (default 12/52 of --subjects: the paper's 40/12 split)")
    p.add_argument("--performances", type=int, default=2, help="performances per subject (default 2)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64, the tiny preset)")
    p.add_argument("--fps", type=float, default=112.0, help="frame rate (default 112, as BMFD)")
    p.add_argument("--seconds", type=float, default=1.0, help="length of each performance (default 1.0)")
    p.add_argument("--views", type=int, default=8, help="cameras on the rig (default 8)")
    p.add_argument("--rig-span", type=float, default=120.0, help="degrees between the outermost cameras")
    p.add_argument("--supersample", type=int, default=2, help="antialiasing factor (default 2)")
    p.add_argument("--identity-scale", type=float, default=1.0,
                   help="spread of the face-shape (identity) coefficients, 1 = the model's own; >1 gives other "
                        "face proportions, e.g. to test a model on faces unlike its training set (default 1)")
    p.add_argument("--focal-factor", type=float, default=3.5,
                   help="framing: focal length in units of the image side; smaller shows the head smaller "
                        "(default 3.5: the image spans about 29 cm at the head)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from deblur_rotate.data.synthbmfd import SynthConfig, generate

    config = SynthConfig(subjects=args.subjects, test_subjects=args.test_subjects, performances=args.performances,
                         size=args.size, fps=args.fps, seconds=args.seconds, views=args.views,
                         rig_span_deg=args.rig_span, supersample=args.supersample, seed=args.seed,
                         identity_scale=args.identity_scale, focal_factor=args.focal_factor)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    index = generate(args.out, config, workers=args.workers)
    n_train = sum(s["split"] == "train" for s in index["subjects"])
    print(f"SynthBMFD written to {args.out}: {len(index['subjects'])} subjects ({n_train} train, "
          f"{len(index['subjects']) - n_train} test), {config.performances} performances x {config.views} views x "
          f"{config.num_frames} frames at {config.size} px")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: deblur and rotate built-in blurry faces with the bundled model",
                       description="Run the bundled model (or --model FOLDER) on the built-in blurry examples "
                                   "(held-out SynthBMFD subjects): 5 sharp frames at yaw -30, the input view and "
                                   "+30, as PNG frames, GIFs, MP4s and contact sheets, with PSNR against the "
                                   "ground truth. Without any model, renders a SynthBMFD sample instead.")
    p.add_argument("-o", "--out", "--output", dest="out", type=Path, default=Path("demo_out"),
                   help="output folder (default demo_out)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    p.add_argument("--examples", type=Path, default=None, help="folder of examples (default: the built-in ones)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    from deblur_rotate.refine import add_refine_argument

    add_refine_argument(p)
    p.add_argument("--subjects", type=int, default=3, help="model-free fallback: subjects to render (default 3)")
    p.add_argument("--size", type=int, default=96, help="model-free fallback: image side (default 96)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from deblur_rotate.demo import run_demo

    written = run_demo(args.out, model=args.model, examples=args.examples, device=args.device,
                       refine_steps=args.refine_steps,
                       refine_residual=args.refine_residual, subjects=args.subjects, size=args.size, seed=args.seed)
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_run(sub) -> None:
    sub.add_lazy("run", _fill_run, help="deblur and rotate the faces of photos with a trained model")


def _fill_run(p: argparse.ArgumentParser) -> None:
    """The options of ``run`` (deblur_rotate.run; video input adds its own)."""
    from deblur_rotate.run import add_arguments

    p.description = ("From each motion-blurred face photo, render sharp frames (the moment the shutter was open) "
                     "from the original and new viewpoints; writes OUT/<stem>/ per input (frames, GIF/MP4 per view, "
                     "contact sheet) and OUT/summary.json. Exit status 1 when some inputs failed (each is listed "
                     "with the reason). Without --model it uses the model bundled with the package.")
    add_arguments(p)
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    from deblur_rotate.run import run_command

    return run_command(args)


def _add_evaluate(sub) -> None:
    sub.add_lazy("evaluate", _fill_evaluate, help="the paper's tables on a SynthBMFD split, with baselines")


def _fill_evaluate(p: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` (deblur_rotate.evaluate.command)."""
    from deblur_rotate.evaluate.command import add_arguments

    p.description = ("Landmark, identity, pose, PSNR and SSIM tables (paper §4, Tables 1-5) of a model folder on a "
                     "SynthBMFD split, with the texture-warp, cascade and blurry-input baselines; writes "
                     "REPORT/report.md, table<k>.csv, report.json, figure5.png and error_vs_angle.png. Tables the "
                     "model cannot produce are skipped with a note. --quick renders a small held-out set itself.")
    add_arguments(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from deblur_rotate.evaluate.command import run_command

    return run_command(args)


# --- serve (deblur_rotate/serve.py): the web page; Gradio is imported only when the command runs -----------


def _add_serve(sub) -> None:
    sub.add_lazy("serve", _fill_serve,
                 help="the main job as a local web page (Gradio): upload a photo, get the videos")


def _fill_serve(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (deblur_rotate.serve)."""
    from deblur_rotate.serve import add_arguments

    p.description = ("Serve a web page on which a blurry face photo (or a built-in example) is deblurred and "
                     "rotated by one model loaded once: views, GIF/MP4 per view, frames, contact sheet, detected "
                     "faces, pose, downloads. Binds to 127.0.0.1 (this machine only) unless --host says otherwise.")
    add_arguments(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from deblur_rotate.serve import serve_command

    return serve_command(args)


# --- end serve -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from deblur_rotate import __version__

    parser = argparse.ArgumentParser(prog="deblur-rotate", description="Deblur and rotate motion-blurred faces.")
    parser.add_argument("--version", action="version", version=f"deblur-rotate {__version__}")
    parser.register("action", "lazy_parsers", _LazySubcommands)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action="lazy_parsers")
    _add_synth(sub)
    _add_demo(sub)
    _add_run(sub)
    _add_evaluate(sub)
    _add_serve(sub)
    sub.add_lazy("prepare", _fill_prepare,
                 help="detect, align and crop the faces of a dataset; cache landmarks; write an index")
    sub.add_lazy("train", _fill_train, help="train one stage of the model")
    _accept_short_out(parser)
    return parser


def _fill_prepare(p: argparse.ArgumentParser) -> None:
    """The options of ``prepare`` (deblur_rotate.data.prepare)."""
    from deblur_rotate.data.prepare_options import configure_prepare_parser

    configure_prepare_parser(p)


def _fill_train(p: argparse.ArgumentParser) -> None:
    """The stages of ``train`` (deblur_rotate.train.commands and one module per stage)."""
    from deblur_rotate.train.commands import configure_train_parser

    configure_train_parser(p)


def _interrupted_advice(args, argv: list[str]) -> str:
    """What to tell the user after Ctrl-C: the command that continues the work.

    A training stage (``train STAGE``, which has ``--resume``) refuses to start again over its own
    checkpoints, so once one was written the advice is the same command with ``--resume``; everything else
    (``train all``, ``prepare``, ``synth``) picks up where it stopped when rerun as it was."""
    import shlex

    out = getattr(args, "out", None)
    if getattr(args, "command", None) == "train" and hasattr(args, "resume") and out is not None:
        from deblur_rotate.train.checkpoint import latest_checkpoint

        if args.resume:
            return "interrupted: the checkpoints are kept; rerun the same command to continue"
        if latest_checkpoint(Path(out) / "checkpoints") is None:
            return "interrupted before the first checkpoint: rerun the same command to start again"
        command = shlex.join(["deblur-rotate", *argv, "--resume"])
        return f"interrupted: the checkpoints in {out} are kept; continue the run with --resume: {command}"
    return "interrupted: finished work is kept; rerun the same command to resume"


def main(argv: list[str] | None = None) -> int:
    """Run the ``deblur-rotate`` command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_advice(args, argv), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
