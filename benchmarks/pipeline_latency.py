"""Latency and memory of the inference pipeline: one blurry face -> T sharp frames x V views.

One timed call is ``pipe(x, views=...)`` for a batch of one aligned face: E_v and E_3D, F for every view
other than (0, 0), then G.synthesis for the T x V frames (no face detection, no file writing). Networks are
the preset's with random weights (speed does not depend on the weights; the encoder heads get random
values so the codes are not all the mean code) unless ``--model`` gives a model folder.

* ``latency_s_per_input``: median seconds per call over ``--runs`` after ``--warmup`` untimed calls.
* ``encode_s`` / ``synthesis_s``: medians of the E_v + E_3D part and of the G part alone.
* ``peak_memory_mb``: CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size.

    python benchmarks/pipeline_latency.py                        # tiny, CPU, 5 frames x 3 views
    python benchmarks/pipeline_latency.py --model MODEL --device cuda --runs 20

Prints ``name: value`` lines.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from deblur_rotate.models.encoders import BlurEncoder, FaceCoefficientEncoder, encoder_config
from deblur_rotate.models.fusion import FusionNetwork, fusion_config
from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
from deblur_rotate.pipeline import DeblurRotatePipeline, resolve_device


def timed(fn, device: torch.device, warmup: int, runs: int) -> float:
    """Median seconds of ``fn()`` (CUDA synchronised around each run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_pipeline(preset: str, device: torch.device) -> DeblurRotatePipeline:
    """The preset's four networks with random weights."""
    torch.manual_seed(0)
    g = Generator(**stylegan2_config(preset))
    ev = BlurEncoder(num_frames=5, num_ws=g.num_ws, w_dim=g.w_dim, **encoder_config(preset, "blur"))
    e3 = FaceCoefficientEncoder(**encoder_config(preset, "face3d"))
    f = FusionNetwork(**fusion_config(preset))
    with torch.no_grad():
        ev.head.weight.normal_(0, 0.01)
        e3.head.weight.normal_(0, 0.01)
    return DeblurRotatePipeline(g.to(device), ev.to(device), e3.to(device), f.to(device), config={"preset": preset})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["micro", "tiny", "paper"], help="random networks' size")
    ap.add_argument("--model", default=None, help="a model folder instead of random networks")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--yaw", type=float, nargs="+", default=[0.0, -30.0, 30.0], help="views (default 0 -30 30)")
    ap.add_argument("--num-frames", type=int, default=None, help="frames per view (default: the model's, 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--refine-steps", type=int, default=None,
                    help="blur-consistency refinement steps (default: the model's pipeline.json; random networks: 0); "
                         "timed on the random input whatever its start error (max_start_error lifted)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pipe = (DeblurRotatePipeline.from_pretrained(args.model, device) if args.model
            else random_pipeline(args.preset, device))
    import dataclasses

    steps = pipe.refine.steps if args.refine_steps is None else args.refine_steps
    pipe.refine = dataclasses.replace(pipe.refine, steps=steps, max_start_error=2.0)  # time it on any input
    views = [(y, 0.0) for y in args.yaw]
    r = pipe.resolution
    x = (torch.rand(1, 3, r, r, device=device) * 2 - 1).clamp(-1, 1)
    frames = args.num_frames or pipe.num_frames

    print(f"model: {args.model or 'random ' + args.preset}")
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"))
    print(f"resolution: {r}")
    print(f"refine_steps: {pipe.refine.steps}")
    print(f"frames_x_views: {frames} x {len(views)}")
    for name, net in (("generator", pipe.generator), ("blur_encoder", pipe.blur_encoder),
                      ("face3d_encoder", pipe.face3d_encoder), ("fusion", pipe.fusion)):
        if net is not None:
            print(f"{name}_params_M: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t = timed(lambda: pipe(x, views=views, num_frames=frames), device, args.warmup, args.runs)
    codes, _ = pipe.encode(x)
    t_enc = timed(lambda: pipe.encode(x), device, 1, args.runs)
    view_codes = pipe.rotate(pipe.resample_frames(codes, frames), None, views) if pipe.can_rotate else codes[:, None]
    t_syn = timed(lambda: pipe.synthesize(view_codes), device, 1, args.runs)
    print(f"latency_s_per_input: {t:.3f}")
    print(f"encode_s: {t_enc:.3f}")
    print(f"synthesis_s: {t_syn:.3f}")
    print(f"frames_per_s: {frames * len(views) / t:.1f}")
    if device.type == "cuda":
        print(f"peak_memory_mb: {torch.cuda.max_memory_allocated(device) / 2**20:.0f}")
    else:
        print(f"peak_memory_mb: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
