"""Seconds per training iteration of the E_s + G and E_v stages, fp32 against bf16 autocast.

Protocol: the stage's networks at ``--preset`` (default tiny), random inputs at the preset's resolution,
batch ``--batch`` per process, ``--threads`` torch threads, one full iteration (encoder forward, G
synthesis, L1 + Sobel-edge loss, backward, Adam step) timed ``--iters`` times after ``--warmup``
iterations; the median is printed, with ``bf16_native`` (whether this CPU computes bf16 natively) and
``auto_precision`` (what ``--precision auto`` picks here). E_v is timed with its image term (all 5 decoded frames through the
frozen G), which is what the CPU recipe trains with. Prints ``name: value`` lines::

    python benchmarks/train_step_speed.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                    help="what to time (default both; emulated bf16 on a CPU without AVX-512 BF16 takes minutes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deblur_rotate.losses import edge_loss, l1_loss
    from deblur_rotate.models.encoders import BlurEncoder, SharpEncoder, encoder_config
    from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
    from deblur_rotate.precision import bf16_is_native, resolve_precision
    from deblur_rotate.train.loop import MixedPrecision

    torch.manual_seed(0)
    G = Generator(**stylegan2_config(args.preset))
    res, num_ws, w_dim = G.img_resolution, G.num_ws, G.w_dim
    E_s = SharpEncoder(num_ws=num_ws, w_dim=w_dim, **encoder_config(args.preset, "sharp"))
    E_v = BlurEncoder(num_frames=5, num_ws=num_ws, w_dim=w_dim, **encoder_config(args.preset, "blur"))
    images = torch.rand(args.batch, 3, res, res) * 2 - 1
    videos = torch.rand(args.batch, 5, 3, res, res) * 2 - 1
    opt_es = torch.optim.Adam(list(E_s.parameters()) + list(G.synthesis.parameters()), lr=1e-4)
    opt_ev = torch.optim.Adam(E_v.parameters(), lr=1e-4)
    print(f"preset: {args.preset}")
    print(f"batch: {args.batch}")
    print(f"threads: {args.threads}")
    print(f"bf16_native: {bf16_is_native(torch.device('cpu'))}")  # AVX-512 BF16 / AMX; else bf16 is emulated
    print(f"auto_precision: {resolve_precision('auto', torch.device('cpu'))}")
    for precision in args.precisions:
        amp = MixedPrecision.from_precision(precision, "cpu")

        def es_step():
            opt_es.zero_grad(set_to_none=True)
            with amp.autocast():
                recon = G.synthesis(E_s(images), noise_mode="const").float()
            loss = l1_loss(recon, images) + 0.2 * edge_loss(recon, images)
            loss.backward()
            opt_es.step()

        def ev_step():
            opt_ev.zero_grad(set_to_none=True)
            with amp.autocast():
                codes = E_v(images)  # [B, 5, num_ws, w_dim]
                frames = G.synthesis(codes.flatten(0, 1), noise_mode="const").float()
            loss = l1_loss(frames, videos.flatten(0, 1)) + codes.float().abs().mean()
            loss.backward()
            opt_ev.step()

        es = _time(es_step, args.warmup, args.iters)
        print(f"sharp_encoder_step_s_{precision}: {es:.3f}")
        print(f"sharp_encoder_images_per_s_{precision}: {args.batch / es:.2f}")
        ev = _time(ev_step, args.warmup, args.iters)
        print(f"blur_encoder_image_term_step_s_{precision}: {ev:.3f}")
        print(f"blur_encoder_samples_per_s_{precision}: {args.batch / ev:.2f}")


if __name__ == "__main__":
    main()
