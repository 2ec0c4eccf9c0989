"""Speed and memory of the StyleGAN2 generator and discriminator.

* ``synthesis_images_per_s``: G.synthesis(ws) under no_grad, eval mode, noise 'const', default modulated conv
  path (grouped conv on CUDA, reference on CPU); ``synthesis_fused_images_per_s`` / ``synthesis_ref_images_per_s``
  force the grouped-conv / reference path.
* ``train_step_images_per_s``: one G step + one D step per batch, non-saturating logistic loss, no R1,
  Adam; images of the batch per second of (G forward+backward+step, D forward+backward+step).
* ``peak_memory_mb``: CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size.

    python benchmarks/stylegan2_speed.py                             # tiny, CPU, batch 8
    python benchmarks/stylegan2_speed.py --preset paper --device cuda --batch 16

Prints ``name: value`` lines; times are medians over ``--runs`` after ``--warmup`` untimed runs.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from deblur_rotate.models.stylegan2 import Discriminator, Generator, stylegan2_config


def timed(fn, device: torch.device, warmup: int, runs: int) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["micro", "tiny", "paper"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    G = Generator(**stylegan2_config(args.preset)).to(device)
    D = Discriminator(**stylegan2_config(args.preset, "discriminator")).to(device)
    n = args.batch
    print(f"preset: {args.preset}")
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"))
    print(f"batch: {n}")
    print(f"G_params_M: {sum(p.numel() for p in G.parameters()) / 1e6:.2f}")
    print(f"D_params_M: {sum(p.numel() for p in D.parameters()) / 1e6:.2f}")

    G.eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim, device=device))
        for name, fused in (("synthesis_images_per_s", None), ("synthesis_fused_images_per_s", True),
                            ("synthesis_ref_images_per_s", False)):
            t = timed(lambda fused=fused: G.synthesis(ws, noise_mode="const", fused_modconv=fused), device, args.warmup,
                      args.runs)
            print(f"{name}: {n / t:.2f}")

    G.train(), D.train()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = torch.rand(n, 3, G.img_resolution, G.img_resolution, device=device) * 2 - 1

    def step():
        # G: non-saturating loss softplus(-D(G(z)))
        z = torch.randn(n, G.z_dim, device=device)
        ws = G.mapping(z, update_w_avg=True)
        fake = G.synthesis(ws)
        opt_g.zero_grad(set_to_none=True)
        F.softplus(-D(fake)).mean().backward()
        opt_g.step()
        # D: softplus(D(fake)) + softplus(-D(real))
        opt_d.zero_grad(set_to_none=True)
        loss_d = F.softplus(D(fake.detach())).mean() + F.softplus(-D(real)).mean()
        loss_d.backward()
        opt_d.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = timed(step, device, args.warmup, args.runs)
    print(f"train_step_s: {t:.3f}")
    print(f"train_step_images_per_s: {n / t:.2f}")
    if device.type == "cuda":
        print(f"peak_memory_mb: {torch.cuda.max_memory_allocated(device) / 2**20:.0f}")
    else:
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"peak_memory_mb: {rss_kb / 1024:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
