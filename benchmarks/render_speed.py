"""Speed and memory of the differentiable renderer: forward and forward+backward time per image.

The loss of the backward pass is ``mean(image^2) + mean(mask)`` with gradients to vertex positions and
colours. ``ms_per_image`` is forward+backward, ``forward_ms_per_image`` forward only under no_grad.

    python benchmarks/render_speed.py                    # ~20k-triangle ellipsoid, 128 px, batch 8, CPU
    python benchmarks/render_speed.py --mesh face --device cuda

Prints ``name: value`` lines (times are medians over ``--runs`` after ``--warmup`` untimed runs).
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time

import torch

from deblur_rotate.render import render
from deblur_rotate.render.camera import euler_to_matrix, intrinsics, transform


def uv_ellipsoid(n_lat: int, n_lon: int, radii: tuple[float, float, float]):
    """Closed UV ellipsoid centred at the origin: vertices ``[V, 3]``, triangles ``[F, 3]`` int64,
    counter-clockwise seen from outside; F = 2 * n_lon * (n_lat - 1)."""
    theta = torch.linspace(0, math.pi, n_lat + 1)[1:-1]  # polar angle of the rings (poles excluded)
    phi = torch.arange(n_lon) * (2 * math.pi / n_lon)
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    ring = torch.stack([st * torch.cos(phi), ct.expand(-1, n_lon), st * torch.sin(phi)], -1).reshape(-1, 3)
    poles = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    vertices = torch.cat([ring, poles]) * torch.tensor(radii)
    top, bottom = ring.shape[0], ring.shape[0] + 1
    faces = []
    j = torch.arange(n_lon)
    jn = (j + 1) % n_lon
    faces.append(torch.stack([torch.full_like(j, top), jn, j], 1))  # ring 0 is at +y
    for i in range(n_lat - 2):
        a, b = i * n_lon + j, i * n_lon + jn
        c, d = a + n_lon, b + n_lon
        faces += [torch.stack([a, b, c], 1), torch.stack([b, d, c], 1)]
    last = (n_lat - 2) * n_lon
    faces.append(torch.stack([torch.full_like(j, bottom), last + j, last + jn], 1))
    triangles = torch.cat(faces)
    # Make the winding counter-clockwise seen from outside (normals point away from the centre).
    v0, v1, v2 = vertices[triangles].unbind(1)
    normal = torch.linalg.cross(v1 - v0, v2 - v0)
    flip = (normal * (v0 + v1 + v2)).sum(-1) < 0
    triangles[flip] = triangles[flip][:, [0, 2, 1]]
    return vertices, triangles


def build_mesh(kind: str):
    """(model-frame vertices [V, 3] in cm, triangles [F, 3], distance of the camera in cm, focal factor)."""
    if kind == "ellipsoid":
        vertices, triangles = uv_ellipsoid(72, 140, (8.0, 10.0, 8.0))  # 19,880 triangles
        return vertices, triangles, None
    try:
        from deblur_rotate.face3d.procedural import build_procedural_model
    except ImportError as error:
        sys.exit(f"--mesh face needs deblur_rotate.face3d.procedural.build_procedural_model ({error}); "
                 "use --mesh ellipsoid until that module exists")
    model = build_procedural_model()
    return model.mean_shape.clone(), model.triangles.clone(), model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", choices=["ellipsoid", "face"], default="ellipsoid")
    parser.add_argument("--size", type=int, default=128, help="image size (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    vertices, triangles, model = build_mesh(args.mesh)
    vertices, triangles = vertices.to(device), triangles.to(device)
    # Centre the mesh and place the camera so that it fills ~85% of the frame.
    centre = (vertices.amax(0) + vertices.amin(0)) / 2
    vertices = vertices - centre
    extent = float((vertices.amax(0) - vertices.amin(0))[:2].max())
    distance = 4.0 * extent
    focal = 0.85 * args.size * distance / extent
    camera = intrinsics(focal, args.size).to(device)
    generator = torch.Generator().manual_seed(0)
    angles = (torch.rand(args.batch, 3, generator=generator) - 0.5) * torch.tensor([0.3, 0.8, 0.2])
    rotation = euler_to_matrix(angles).to(device)
    translation = torch.tensor([0.0, 0.0, distance], device=device).expand(args.batch, 3)
    base_vertices = transform(vertices.expand(args.batch, -1, -1), rotation, translation).contiguous()
    base_colors = torch.rand(args.batch, vertices.shape[0], 3, generator=generator).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(backward: bool) -> float:
        verts = base_vertices.clone().requires_grad_(backward)
        colors = base_colors.clone().requires_grad_(backward)
        sync()
        start = time.perf_counter()
        if backward:
            out = render(verts, triangles, colors, camera, (args.size, args.size), supersample=args.supersample)
            (out.image.square().mean() + out.mask.mean()).backward()
        else:
            with torch.no_grad():
                out = render(verts, triangles, colors, camera, (args.size, args.size),
                             supersample=args.supersample)
        sync()
        return time.perf_counter() - start

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(True)
        step(False)
    full_runs = [step(True) for _ in range(args.runs)]
    forward_runs = [step(False) for _ in range(args.runs)]
    full, forward = statistics.median(full_runs), statistics.median(forward_runs)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print(f"mesh: {args.mesh}")
    print(f"num_triangles: {triangles.shape[0]}")
    print(f"image_size: {args.size}")
    print(f"batch: {args.batch}")
    print(f"supersample: {args.supersample}")
    print(f"device: {device.type}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"ms_per_image: {1000 * full / args.batch:.2f}")
    print(f"forward_ms_per_image: {1000 * forward / args.batch:.2f}")
    print(f"min_ms_per_image: {1000 * min(full_runs) / args.batch:.2f}")
    print(f"min_forward_ms_per_image: {1000 * min(forward_runs) / args.batch:.2f}")
    print(f"peak_memory_mb: {peak_mb:.1f}")
    if device.type == "cpu":
        print(f"rss_before_rendering_mb: {baseline_mb:.1f}")  # torch itself; the renderer's share is the rest


if __name__ == "__main__":
    main()
