"""Video quality of ``deblur-rotate run`` on video input (issue 14): blurry low-rate video in, 5x sharp video out.

Protocol. A SynthBMFD performance is a 112 fps (the folder's ``fps``) sharp video per camera view. From it we
build the video a camera with a long exposure would record at a low rate: input frame k is the mean of the
2m+1 sharp frames ``s[k(2m+1)] .. s[k(2m+1) + 2m]`` (one exposure every 2m+1 frames, the shutter open all the
time), quantised to 8 bits, so the input runs at ``fps / (2m+1)`` (112 / 65 = 1.72 fps for the model's
m = 32). The truth for its K = 5 output frames is the exposure's 5 targets, the frames the model was trained
to produce: ``s[k(2m+1) + j m/2]``, j = 0..4 (for ``--factor 3``: j = 0, 2, 4). Truth frames are resized to
the model's resolution as the SynthBMFD reader does (area filter).

Each clip (one subject, performance and view) is written as a folder of PNG frames and run through the
real video path, :func:`deblur_rotate.video.process_video`, with ``aligned=True`` (SynthBMFD frames already
are framed as the model's training faces, so no detection or tracking), the input view only, the default
smoothing, and ``save_frames=True``; the output is read back from its PNG frames (lossless) and the chosen
orders from ``track.jsonl``. Unlike the single-image benchmarks, **no per-frame best order** is taken: the
order the video path chose is what is scored. Printed ``name: value``:

  clips, input_frames, output_frames
  video_psnr_db            mean over all output frames of PSNR (peak 1 on [0, 1] images) against the truth
  repeat_psnr_db           the same for the blurry input frame repeated K times (the frame-rate-only baseline)
  video_psnr_best_order_db the same with each input frame's order set to the better one by an oracle (what
                           a perfect order choice would give)
  order_flips              input frames whose chosen order disagrees with the truth's direction (the reversed
                           order scores a higher mean PSNR against the truth); order_flip_rate: their share
  temporal_jitter          mean absolute frame-to-frame change of the output video (mean over pixels and over
                           consecutive output frames, images in [0, 1]) minus the truth's: > 0 flickers or
                           jumps more than the real motion, < 0 moves less
  boundary_jump            the same, only across input-frame boundaries (last frame of one exposure to the
                           first of the next, where a wrong order shows)
  video_fps_in, video_fps_out   input and output frame rates, frames/s
  seconds_per_input_frame  wall time of process_video per input frame (decode, E_v, G, order, H.264 and PNG
                           writing; after one untimed warm-up run), with --threads torch threads
  cpu_seconds_per_input_frame   the process's CPU time (all threads) for the same: what the work costs when
                           other jobs share the cores and the wall time is mostly waiting

Figures of a short-trained model on CPU are noisy: use ``--limit 0`` (every clip) for the quoted ones.

    python benchmarks/video_quality.py --data /work/data/seed99 --split all --limit 0
    python benchmarks/video_quality.py --model runs/tiny/model --data data/synthbmfd --split test --limit 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VIEW_ORDER = (4, 5, 3, 6, 2, 7, 1, 8)  # nearest-frontal views first, so a short --limit sees the easy ones


def truth_offsets(m: int, num_frames: int, factor: int) -> list[int]:
    """Frame offsets (from the exposure's first frame, at the source rate) of the truth of the ``factor``
    output frames: the model's ``num_frames`` targets sit at ``j m / 2`` (j = 0..T-1 for T = 5, m even); a
    factor K < T keeps targets ``linspace(0, T - 1, K)`` (K = 1: the middle one)."""
    step = 2 * m / (num_frames - 1)
    if factor == 1:
        return [m]
    return [round(float(p) * step) for p in np.linspace(0, num_frames - 1, factor)]


def clip_list(ds, views: list[int]) -> list[tuple[str, str, int, int]]:
    """(subject, performance, view, num_frames) of every clip of the split, views in VIEW_ORDER first."""
    subjects = [s for s in ds.index["subjects"] if s["name"] in {i[0] for i in ds.instants}]
    order = [v for v in VIEW_ORDER if v in views] + [v for v in views if v not in VIEW_ORDER]
    return [(s["name"], p["name"], v, int(p["num_frames"])) for v in order for s in subjects
            for p in s["performances"]]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per image [...] of [..., 3, H, W] images in [0, 1], dB (peak 1)."""
    mse = (a.double() - b.double()).square().flatten(-3).mean(-1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def _change(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive frames of [N, 3, H, W] in [0, 1] -> [N - 1]."""
    return (video[1:] - video[:-1]).abs().flatten(1).mean(1).double()


def evaluate(model: Path | None, data: Path, split: str = "all", m: int = 32, factor: int = 5,
             limit: float = 0.0, views: list[int] | None = None, threads: int = 2) -> dict[str, float]:
    """The figures of the module docstring, as a dict (``limit``: seconds of input video, 0 = all clips)."""
    from deblur_rotate.data.synthbmfd import SynthBMFD, _resize
    from deblur_rotate.files import load_png, save_png, to_uint8
    from deblur_rotate.pipeline import DeblurRotatePipeline
    from deblur_rotate.video import VideoOptions, process_video

    if threads > 0:
        torch.set_num_threads(threads)
    pipe = DeblurRotatePipeline.from_pretrained(model)
    r, t_model = pipe.resolution, pipe.num_frames
    ds = SynthBMFD(data, split=split, m=m)
    window = 2 * m + 1
    fps_src = float(ds.index["fps"])
    fps_in = fps_src / window
    offsets = truth_offsets(m, t_model, factor)
    psnr_out, psnr_rep, psnr_best = [], [], []
    flips = changes_out = changes_true = 0.0
    pairs = boundary_pairs = 0
    jumps_out = jumps_true = 0.0
    inputs = clips = 0
    seconds = cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="video_quality_") as tmp:
        tmp = Path(tmp)
        for subject, perf, view, num in clip_list(ds, views or ds.views):
            if limit > 0 and inputs / fps_in >= limit:
                break
            k_in = num // window
            if k_in < 1:
                continue
            frames = ds.load_frames(subject, perf, view, list(range(k_in * window)))   # [k_in * W, 3, S, S]
            blurry = frames.reshape(k_in, window, *frames.shape[1:]).mean(1)            # [k_in, 3, S, S]
            idx = [k * window + o for k in range(k_in) for o in offsets]
            truth = (_resize(frames[idx], r).clamp(-1, 1) + 1) / 2                       # [k_in * K, 3, R, R]
            folder = tmp / f"{subject}_{perf}_v{view}"
            folder.mkdir()
            for k, image in enumerate(to_uint8(blurry)):
                save_png(folder / f"frame_{k + 1:04d}.png", image)
            options = VideoOptions(views=[(0.0, 0.0)], factor=factor, fps=fps_in, aligned=True, save_frames=True,
                                   progress=False)
            if clips == 0:  # untimed warm-up (lazy imports, first kernel calls)
                process_video(folder, tmp / "warm-up", pipe, options)
            start, start_cpu = time.perf_counter(), time.process_time()
            process_video(folder, tmp / "out", pipe, options)
            seconds += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            out_dir = tmp / "out" / "frames" / "input_view"
            files = sorted(out_dir.glob("frame_*.png"))
            out = torch.from_numpy(np.stack([load_png(f) for f in files])).permute(0, 3, 1, 2).double() / 255.0
            rep = torch.from_numpy(to_uint8(_resize(blurry, r))).permute(0, 3, 1, 2).double() / 255.0
            rep = rep.repeat_interleave(factor, 0)                                       # [k_in * K, 3, R, R]
            if out.shape != truth.shape:
                raise RuntimeError(f"{folder}: {tuple(out.shape)} output frames for a truth of {tuple(truth.shape)}")
            per = _psnr(out, truth).reshape(k_in, factor)
            rev = _psnr(out.reshape(k_in, factor, *out.shape[1:]).flip(1),
                        truth.reshape(k_in, factor, *truth.shape[1:])).reshape(k_in, factor)
            psnr_out.append(per.flatten())
            psnr_rep.append(_psnr(rep, truth.double()))
            psnr_best.append(torch.where(rev.mean(1, keepdim=True) > per.mean(1, keepdim=True), rev, per).flatten())
            flips += float((rev.mean(1) > per.mean(1)).sum())
            c_out, c_true = _change(out), _change(truth.double())
            changes_out += float(c_out.sum())
            changes_true += float(c_true.sum())
            pairs += c_out.numel()
            at = torch.arange(factor - 1, k_in * factor - 1, factor)                     # last frame of exposure k
            jumps_out += float(c_out[at].sum())
            jumps_true += float(c_true[at].sum())
            boundary_pairs += at.numel()
            with open(tmp / "out" / "track.jsonl") as handle:
                assert sum(1 for _ in handle) == k_in
            inputs += k_in
            clips += 1
            json.loads((tmp / "out" / "result.json").read_text())  # written and complete
    if not inputs:
        from deblur_rotate.errors import UserError

        raise UserError(f"{data}: no clip has a whole exposure of {window} frames (m = {m})")
    nan = float("nan")
    return {
        "clips": clips,
        "input_frames": inputs,
        "output_frames": inputs * factor,
        "video_psnr_db": float(torch.cat(psnr_out).mean()),
        "repeat_psnr_db": float(torch.cat(psnr_rep).mean()),
        "video_psnr_best_order_db": float(torch.cat(psnr_best).mean()),
        "order_flips": int(flips),
        "order_flip_rate": flips / inputs,
        "temporal_jitter": (changes_out - changes_true) / pairs if pairs else nan,
        "boundary_jump": (jumps_out - jumps_true) / boundary_pairs if boundary_pairs else nan,
        "video_fps_in": fps_in,
        "video_fps_out": fps_in * factor,
        "seconds_per_input_frame": seconds / inputs,
        "cpu_seconds_per_input_frame": cpu / inputs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: the bundled model, src/deblur_rotate/assets/model)")
    parser.add_argument("--data", required=True, type=Path, help="a SynthBMFD folder (e.g. /work/data/seed99)")
    parser.add_argument("--split", default="all", choices=("train", "test", "all"), help="default all")
    parser.add_argument("--m", type=int, default=32,
                        help="exposure half-window: 2m+1 source frames per input frame (default 32, the model's)")
    parser.add_argument("--factor", type=int, default=5, help="output frames per input frame (default 5)")
    parser.add_argument("--views", type=int, nargs="+", default=None, help="camera views to use (default all)")
    parser.add_argument("--limit", type=float, default=0.0,
                        help="seconds of input video: clips are added until their length reaches it (0: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    from deblur_rotate.errors import UserError

    try:
        figures = evaluate(args.model, args.data, args.split, args.m, args.factor, args.limit, args.views,
                           args.threads)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, value in figures.items():
        print(f"{name}: {value}" if isinstance(value, int) else f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
