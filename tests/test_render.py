"""Tests of the differentiable rasterizer (CPU, small meshes, 32-64 px)."""
from __future__ import annotations

import math

import pytest
import torch

from deblur_rotate.render import interpolate, rasterize, render, sh_shade, vertex_normals
from deblur_rotate.render.camera import euler_to_matrix, intrinsics, project, transform
from deblur_rotate.render.rasterizer import _candidate_hits, _scatter_amin_sorted_

SIZE = 32
FOCAL = 40.0


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def camera(size: int = SIZE, focal: float = FOCAL, dtype=torch.float32) -> torch.Tensor:
    return intrinsics(focal, size).to(dtype)


def lift(uv, z, size: int = SIZE, focal: float = FOCAL, dtype=torch.float64) -> torch.Tensor:
    """Camera-frame points ``[V, 3]`` that project to pixel coordinates ``uv [V, 2]`` at depths ``z [V]``."""
    uv = torch.as_tensor(uv, dtype=dtype)
    z = torch.as_tensor(z, dtype=dtype).expand(uv.shape[0])
    centre = (size - 1) / 2.0
    return torch.stack([(uv[:, 0] - centre) * z / focal, (uv[:, 1] - centre) * z / focal, z], 1)


def screen_barycentrics(uv: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics ``[P, 3]`` of pixel centres ``pixel [P, 2]`` in triangle ``uv [3, 2]``."""
    a, b, c = uv.double().unbind(0)
    p = pixel.double()

    def cross(o, e, q):
        return (e[0] - o[0]) * (q[:, 1] - o[1]) - (e[1] - o[1]) * (q[:, 0] - o[0])

    area = cross(a, b, c[None])
    return torch.stack([cross(b, c, p), cross(c, a, p), cross(a, b, p)], 1) / area


def pixel_grid(size: int = SIZE) -> torch.Tensor:
    """(u, v) of every pixel centre ``[size*size, 2]``, row-major."""
    v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([u.flatten(), v.flatten()], 1)


def hit_counts(vertices_cam, triangles, size: int = SIZE, cull: bool = True, max_candidates: int = 1 << 20):
    """How many triangles cover each pixel centre (before the z-buffer) ``[N*H*W]``."""
    cam = camera(size, dtype=vertices_cam.dtype).expand(vertices_cam.shape[0], 3, 3)
    points = project(vertices_cam, cam)
    hits = _candidate_hits(points, vertices_cam[..., 2], triangles, (size, size),
                           torch.ones(vertices_cam.shape[0]), cull, max_candidates)
    next(hits)
    counts = torch.zeros(vertices_cam.shape[0] * size * size, dtype=torch.int64)
    for pixel, _ in hits:
        counts += torch.bincount(pixel, minlength=counts.numel())
    return counts


def grid_mesh(uv_min: float, uv_max: float, steps: int, z: float, jitter: float = 0.0, seed: int = 0,
              size: int = SIZE):
    """Flat square grid of (steps+1)^2 vertices in pixel space, 2*steps^2 triangles facing the camera
    (alternating diagonals); ``jitter`` moves interior vertices by up to that many pixels."""
    t = torch.linspace(uv_min, uv_max, steps + 1, dtype=torch.float64)
    v, u = torch.meshgrid(t, t, indexing="ij")
    uv = torch.stack([u.flatten(), v.flatten()], 1)
    if jitter:
        gen = torch.Generator().manual_seed(seed)
        interior = ((u > uv_min) & (u < uv_max) & (v > uv_min) & (v < uv_max)).flatten()
        uv[interior] += (torch.rand(int(interior.sum()), 2, generator=gen, dtype=torch.float64) - 0.5) * 2 * jitter
    faces = []
    for i in range(steps):
        for j in range(steps):
            a, b = i * (steps + 1) + j, i * (steps + 1) + j + 1
            c, d = a + steps + 1, b + steps + 1
            # Front-facing means a negative pixel-space signed area (y down): a -> c -> b is such a turn.
            if (i + j) % 2:
                faces += [[a, c, b], [b, c, d]]
            else:
                faces += [[a, c, d], [a, d, b]]
    return lift(uv, z, size), torch.tensor(faces, dtype=torch.int64), uv


def uv_sphere(n_lat: int = 12, n_lon: int = 16, radius: float = 1.0):
    """Closed UV sphere: vertices ``[V, 3]`` (float64), triangles ``[F, 3]`` counter-clockwise from outside."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    phi = torch.arange(n_lon, dtype=torch.float64) * (2 * math.pi / n_lon)
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    ring = torch.stack([st * torch.cos(phi), ct.expand(-1, n_lon), st * torch.sin(phi)], -1).reshape(-1, 3)
    vertices = torch.cat([ring, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)]) * radius
    top, bottom = ring.shape[0], ring.shape[0] + 1
    j = torch.arange(n_lon)
    jn = (j + 1) % n_lon
    faces = [torch.stack([torch.full_like(j, top), jn, j], 1)]
    for i in range(n_lat - 2):
        a, b = i * n_lon + j, i * n_lon + jn
        faces += [torch.stack([a, b, a + n_lon], 1), torch.stack([b, b + n_lon, a + n_lon], 1)]
    last = (n_lat - 2) * n_lon
    faces.append(torch.stack([torch.full_like(j, bottom), last + j, last + jn], 1))
    triangles = torch.cat(faces)
    v0, v1, v2 = vertices[triangles].unbind(1)
    flip = (torch.linalg.cross(v1 - v0, v2 - v0) * (v0 + v1 + v2)).sum(-1) < 0
    triangles[flip] = triangles[flip][:, [0, 2, 1]]
    return vertices, triangles


def posed_sphere(angles, translation, n_lat=12, n_lon=16):
    """Sphere (radius 1, slightly squashed so that rotations matter) posed into the camera frame."""
    vertices, triangles = uv_sphere(n_lat, n_lon)
    vertices = vertices * torch.tensor([1.0, 1.25, 0.9], dtype=torch.float64)
    rotation = euler_to_matrix(angles)
    return transform(vertices.expand(angles.shape[0], -1, -1), rotation, translation), triangles


def finite_difference(fn, x: torch.Tensor, index, h: float) -> float:
    """Central difference of scalar ``fn(x)`` w.r.t. ``x[index]``."""
    plus, minus = x.detach().clone(), x.detach().clone()
    plus[index] += h
    minus[index] -= h
    return (float(fn(plus)) - float(fn(minus))) / (2 * h)


# ----------------------------------------------------------------------------------------------------------
# Visibility
# ----------------------------------------------------------------------------------------------------------


def test_single_triangle_coverage_barycentrics_depth():
    # Corners on the 1/256-pixel grid the visibility pass snaps to, so coverage can be predicted exactly;
    # negative signed area in pixel space (y down): front-facing.
    uv = torch.tensor([[3.25, 2.625], [5.125, 28.75], [29.5, 6.375]])
    verts = lift(uv, 2.0).float()[None]
    tris = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, tris, camera(), (SIZE, SIZE))
    grid = pixel_grid()
    expected_bary = screen_barycentrics(uv, grid)  # [H*W, 3]
    assert expected_bary.abs().min() > 0  # no pixel centre exactly on an edge: coverage is unambiguous
    inside = (expected_bary > 0).all(1).view(SIZE, SIZE)
    covered = frags.triangle_id[0] == 0
    assert torch.equal(covered, inside)
    assert torch.equal(frags.triangle_id[0][~inside], torch.full_like(frags.triangle_id[0][~inside], -1))
    assert int(inside.sum()) == 340  # about the area, 339.4 px^2
    bary = frags.barycentric[0].reshape(-1, 3)
    assert torch.allclose(bary.sum(1)[inside.flatten()], torch.ones(int(inside.sum())), atol=1e-6)
    assert torch.allclose(bary[inside.flatten()].double(), expected_bary[inside.flatten()], atol=1e-4)
    assert torch.all(bary[~inside.flatten()] == 0)
    assert torch.allclose(frags.depth[0][inside], torch.full((int(inside.sum()),), 2.0), atol=1e-5)
    assert torch.all(frags.depth[0][~inside] == 0)


def test_perspective_correct_barycentrics_and_depth():
    uv = torch.tensor([[2.2, 3.4], [4.1, 29.3], [30.2, 15.7]])
    verts = lift(uv, torch.tensor([1.0, 2.5, 6.0])).float()[None]
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), camera(), (SIZE, SIZE))
    covered = frags.triangle_id[0] >= 0
    assert int(covered.sum()) > 300
    bary = frags.barycentric[0][covered]  # [P, 3]
    point = bary @ verts[0]  # the 3D point the barycentrics describe
    grid = pixel_grid().view(SIZE, SIZE, 2)[covered].float()
    # Perspective-correct barycentrics describe the 3D point seen through the pixel centre.
    assert torch.allclose(project(point[None], camera())[0], grid, atol=2e-3)
    assert torch.allclose(frags.depth[0][covered], point[:, 2], rtol=1e-5)
    # Screen-space (affine) barycentrics would be far off for this tilted triangle.
    assert (bary.double() - screen_barycentrics(uv, grid)).abs().max() > 0.1


@pytest.mark.parametrize("near_first", [True, False])
def test_zbuffer_keeps_the_nearer_triangle(near_first):
    near = lift([[4.3, 4.1], [6.2, 27.4], [27.6, 8.3]], 2.0)
    far = lift([[8.4, 25.7], [27.3, 26.2], [26.8, 3.6]], 3.0)
    pair = [near, far] if near_first else [far, near]
    verts = torch.cat(pair).float()[None]
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, tris, camera(), (SIZE, SIZE))
    near_id = 0 if near_first else 1
    both = (hit_counts(verts, tris).view(SIZE, SIZE) == 2)
    assert int(both.sum()) > 30  # the triangles overlap
    assert torch.all(frags.triangle_id[0][both] == near_id)
    assert torch.allclose(frags.depth[0][both], torch.full((int(both.sum()),), 2.0))
    only_far = (frags.triangle_id[0] == 1 - near_id)
    assert int(only_far.sum()) > 20 and torch.allclose(frags.depth[0][only_far], torch.tensor(3.0))


def test_backfaces_culled_and_kept_on_request():
    uv = [[3.3, 2.6], [5.2, 28.7], [29.6, 6.4]]
    verts = lift(uv, 2.0).float()[None]
    front = torch.tensor([[0, 1, 2]])
    back = torch.tensor([[0, 2, 1]])
    # The definition in camera space: front-facing iff dot(cross(v1 - v0, v2 - v0), centroid) < 0.
    v0, v1, v2 = verts[0][front[0]]
    assert float(torch.dot(torch.linalg.cross(v1 - v0, v2 - v0), (v0 + v1 + v2) / 3)) < 0
    covered_front = (rasterize(verts, front, camera(), (SIZE, SIZE)).triangle_id >= 0).sum()
    assert covered_front > 300
    assert (rasterize(verts, back, camera(), (SIZE, SIZE)).triangle_id >= 0).sum() == 0
    kept = rasterize(verts, back, camera(), (SIZE, SIZE), cull_backfaces=False)
    assert (kept.triangle_id >= 0).sum() == covered_front
    assert torch.allclose(kept.barycentric.sum(-1)[kept.triangle_id >= 0], torch.tensor(1.0))


@pytest.mark.parametrize("jitter", [0.0, 0.45])
def test_no_cracks_or_double_hits_on_shared_edges(jitter):
    # A grid with vertices on pixel centres puts many pixel centres exactly on edges and vertices.
    verts, tris, uv = grid_mesh(2.0, 29.0, 9 if jitter == 0 else 27, 2.0, jitter=jitter)
    counts = hit_counts(verts.float()[None], tris).view(SIZE, SIZE)
    grid = pixel_grid().view(SIZE, SIZE, 2)
    interior = ((grid > 2) & (grid < 29)).all(-1)
    border = ((grid >= 2) & (grid <= 29)).all(-1) & ~interior
    assert torch.all(counts[interior] == 1)
    assert torch.all(counts[border] <= 1) and torch.all(counts[~interior & ~border] == 0)
    frags = rasterize(verts.float()[None], tris, camera(), (SIZE, SIZE))
    assert torch.all(frags.triangle_id[0][interior] >= 0)


def test_no_cracks_in_a_fan_around_a_pixel_centre():
    # Eight triangles around a vertex sitting exactly on pixel centre (16, 16), rim through pixel centres.
    rim = [(16 + 12 * math.cos(a), 16 + 12 * math.sin(a)) for a in torch.arange(8).double() * math.pi / 4]
    rim = [(round(u), round(v)) for u, v in rim]
    uv = torch.tensor([(16.0, 16.0)] + rim, dtype=torch.float64)
    tris = torch.tensor([[0, 1 + (k + 1) % 8, 1 + k] for k in range(8)])  # negative area: front-facing
    verts = lift(uv, 2.0).float()[None]
    counts = hit_counts(verts, tris).view(SIZE, SIZE)
    assert counts[16, 16] == 1
    assert counts[16, 10:23].eq(1).all() and counts[10:23, 16].eq(1).all()
    assert counts.max() == 1


def test_large_triangles_chunking_and_offscreen_vertices():
    # A close-up quad whose corners are far outside the image covers every pixel exactly once.
    uv = torch.tensor([[-300.0, -250.0], [-280.0, 400.0], [350.0, 380.0], [420.0, -310.0]])
    verts = lift(uv, 1.5).float()[None]
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert torch.all(hit_counts(verts, tris) == 1)
    frags = rasterize(verts, tris, camera(), (SIZE, SIZE))
    small = rasterize(verts, tris, camera(), (SIZE, SIZE), max_candidates=100)  # many chunks
    assert torch.all(frags.triangle_id >= 0)
    assert torch.equal(frags.triangle_id, small.triangle_id)
    assert torch.equal(frags.barycentric, small.barycentric)
    # A triangle with a vertex behind the camera is dropped (no near-plane clipping).
    behind = verts.clone()
    behind[0, 0, 2] = -1.0
    assert torch.all(rasterize(behind, tris[:1], camera(), (SIZE, SIZE)).triangle_id == -1)


def test_sorted_scatter_min_fallback_matches_scatter_reduce():
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 50, (400,), generator=gen)
    values = torch.randint(0, 1 << 62, (400,), generator=gen)
    start = torch.randint(0, 1 << 62, (60,), generator=gen)
    expected = start.clone().scatter_reduce_(0, index, values, "amin", include_self=True)
    assert torch.equal(_scatter_amin_sorted_(start.clone(), index, values), expected)


def test_sliver_triangles_give_finite_values_and_gradients():
    # Needles one fixed-point step (1/256 px) thick lying on a row of pixel centres, in front of a normal
    # triangle: the exact visibility pass keeps them, floating point sees almost no area.
    eps = 1.0 / 256
    uv = torch.tensor([[3.25, 2.625], [5.125, 28.75], [29.5, 6.375],
                       [2.0, 10.0], [30.0, 10.0], [16.0, 10.0 - eps], [16.0, 10.0 + eps]])
    verts = lift(uv, torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.5, 1.5])).float()[None].requires_grad_()
    tris = torch.tensor([[0, 1, 2], [3, 4, 5], [3, 6, 4]])
    out = render(verts, tris, torch.rand(1, 7, 3), camera(), (SIZE, SIZE))
    on_needles = out.fragments.triangle_id[0, 10]
    assert int((on_needles >= 1).sum()) >= 20
    (out.image.sum() + out.mask.sum()).backward()
    assert torch.isfinite(out.image).all() and torch.isfinite(out.fragments.depth).all()
    assert torch.isfinite(verts.grad).all()


def test_nothing_visible_gives_background_and_zero_gradients():
    verts = lift([[3.0, 3.0], [5.0, 28.0], [29.0, 6.0]], 2.0).float()[None].requires_grad_()
    colors = torch.rand(1, 3, 3, requires_grad=True)
    out = render(verts, torch.tensor([[0, 2, 1]]), colors, camera(), (SIZE, SIZE), background=0.25)
    assert torch.all(out.image == 0.25) and torch.all(out.mask == 0)
    (out.image.sum() + out.mask.sum()).backward()
    for grad in (verts.grad, colors.grad):
        assert grad is None or torch.all(grad == 0)


def test_batched_cameras_match_single_renders():
    verts, tris = posed_sphere(torch.tensor([[0.2, -0.3, 0.1], [-0.1, 0.5, 0.0]], dtype=torch.float64),
                               torch.tensor([[0.1, 0.0, 4.0], [-0.2, 0.1, 5.0]], dtype=torch.float64))
    verts = verts.float()
    cams = torch.stack([camera(), camera(focal=50.0)])
    colors = torch.rand(2, verts.shape[1], 3)
    both = render(verts, tris, colors, cams, (SIZE, SIZE))
    for i in range(2):
        one = render(verts[i:i + 1], tris, colors[i:i + 1], cams[i], (SIZE, SIZE))
        assert torch.equal(both.fragments.triangle_id[i], one.fragments.triangle_id[0])
        assert torch.allclose(both.image[i], one.image[0], atol=1e-6)
        assert torch.allclose(both.mask[i], one.mask[0], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Shading, silhouette, landmarks, supersampling
# ----------------------------------------------------------------------------------------------------------


def test_interpolate_matches_render_and_is_zero_on_background():
    verts, tris = posed_sphere(torch.tensor([[0.3, 0.4, 0.0]], dtype=torch.float64),
                               torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64))
    verts = verts.float()
    attrs = torch.rand(1, verts.shape[1], 5)
    frags = rasterize(verts, tris, camera(), (SIZE, SIZE))
    values = interpolate(attrs, tris, frags)  # [1, H, W, 5]
    covered = frags.triangle_id >= 0
    assert values.shape == (1, SIZE, SIZE, 5)
    assert torch.all(values[~covered] == 0)
    assert values[covered].min() >= 0 and values[covered].max() <= 1  # convex combinations
    out = render(verts, tris, attrs, camera(), (SIZE, SIZE), background=-1.0)
    assert torch.allclose(out.image.permute(0, 2, 3, 1)[covered], values[covered], atol=1e-6)
    assert torch.all(out.mask[:, 0][covered] == 1)


def test_soft_silhouette_coverage():
    verts, tris = posed_sphere(torch.zeros(1, 3, dtype=torch.float64),
                               torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64))
    out = render(verts.float(), tris, torch.ones(1, verts.shape[1], 3), camera(), (SIZE, SIZE),
                 background=0.0, edge_softness_px=0.7)
    covered = out.fragments.triangle_id[0] >= 0
    mask = out.mask[0, 0]
    soft = (~covered) & (mask > 0)
    assert int(soft.sum()) > 40  # a band of partially covered pixels around the silhouette
    assert mask.min() >= 0 and mask.max() <= 1
    # With a white shape on black, the composited colour equals the coverage.
    assert torch.allclose(out.image[0, 0], mask, atol=1e-6)
    # Coverage falls off with the distance to the silhouette: dilate the covered set ring by ring.
    ring1 = torch.nn.functional.max_pool2d(covered[None, None].float(), 3, 1, 1)[0, 0].bool() & ~covered
    ring2 = torch.nn.functional.max_pool2d(covered[None, None].float(), 5, 1, 2)[0, 0].bool() & ~covered & ~ring1
    assert mask[ring1].mean() > 0.2 and mask[ring1].mean() > 5 * mask[ring2].mean()
    hard = render(verts.float(), tris, torch.ones(1, verts.shape[1], 3), camera(), (SIZE, SIZE),
                  edge_softness_px=0.0)
    assert torch.equal(hard.mask[0, 0], covered.float())


def test_soft_coverage_is_a_gaussian_of_the_distance_to_the_edge():
    # A big square whose left edge is at u = 10.3: on the middle rows, only the triangle along that edge
    # is near, so coverage = exp(-d^2 / sigma^2) with d the horizontal distance to the edge.
    uv = torch.tensor([[10.3, -5.0], [10.3, 40.0], [50.0, 40.0], [50.0, -5.0]])
    verts = lift(uv, 2.0).float()[None]
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    out = render(verts, tris, torch.ones(1, 4, 3), camera(), (SIZE, SIZE), edge_softness_px=0.7)
    row = out.mask[0, 0, 12:20]  # [8, W]
    expected = torch.tensor([math.exp(-(10.3 - u) ** 2 / 0.49) for u in (9, 10)])
    assert torch.allclose(row[:, 9:11], expected.expand(8, 2), atol=1e-5)
    assert torch.all(row[:, :8] == 0) and torch.all(row[:, 11:] == 1)


def test_landmarks_are_projected_vertices():
    verts, tris = posed_sphere(torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64),
                               torch.tensor([[0.0, 0.1, 4.0]], dtype=torch.float64))
    verts = verts.float()
    index = torch.tensor([0, 5, 17, 30])
    for factor in (1, 2):
        out = render(verts, tris, torch.rand(1, verts.shape[1], 3), camera(), (SIZE, SIZE),
                     landmark_indices=index, supersample=factor)
        assert torch.allclose(out.landmarks, project(verts[:, index], camera()), atol=1e-5)
    assert render(verts, tris, torch.rand(1, verts.shape[1], 3), camera(), (SIZE, SIZE)).landmarks is None


def test_supersampling_antialiases_in_output_pixels():
    # A square whose left edge is at u = 10.0, the middle of pixel column 10 (which spans [9.5, 10.5]).
    uv = torch.tensor([[10.0, -5.0], [10.0, 40.0], [50.0, 40.0], [50.0, -5.0]])
    verts = lift(uv, 2.0).float()[None]
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    colors = torch.ones(1, 4, 3)
    out = render(verts, tris, colors, camera(), (SIZE, SIZE), supersample=4, edge_softness_px=0.0)
    assert out.image.shape == (1, 3, SIZE, SIZE) and out.mask.shape == (1, 1, SIZE, SIZE)
    assert out.fragments.triangle_id.shape == (1, 4 * SIZE, 4 * SIZE)
    row = out.mask[0, 0, 16]
    assert torch.all(row[:10] == 0) and torch.allclose(row[10], torch.tensor(0.5)) and torch.all(row[11:] == 1)


# ----------------------------------------------------------------------------------------------------------
# Gradients against finite differences (float64, so that honest code agrees to many digits)
# ----------------------------------------------------------------------------------------------------------


def _weights(seed: int, *shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gradient_wrt_colors():
    verts, tris = posed_sphere(torch.tensor([[0.2, 0.3, 0.0]], dtype=torch.float64),
                               torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64))
    colors = _weights(1, 1, verts.shape[1], 3).requires_grad_()
    weight = _weights(2, 1, 3, SIZE, SIZE)
    cam = camera(dtype=torch.float64)

    def loss(c):
        return (render(verts, tris, c, cam, (SIZE, SIZE), background=0.3).image * weight).sum()

    loss(colors).backward()
    visible = torch.nonzero(colors.grad[0].abs().sum(1) > 0).squeeze(1)
    assert visible.numel() > 20
    for v in visible[:: max(1, visible.numel() // 6)].tolist():
        for c in range(3):
            fd = finite_difference(loss, colors, (0, v, c), 1e-4)
            assert abs(float(colors.grad[0, v, c]) - fd) < 1e-7 * max(1.0, abs(fd))


def test_gradient_wrt_vertex_positions():
    # A jittered grid, seen tilted: interior shading depends on every vertex position.
    base, tris, _ = grid_mesh(4.3, 27.6, 6, 2.0, jitter=0.8, seed=3)
    base = base.clone()
    base[:, 2] += 0.05 * base[:, 0] + 0.03 * base[:, 1] ** 2
    colors = _weights(4, 1, base.shape[0], 3)
    weight = _weights(5, 1, 3, SIZE, SIZE)
    mask_weight = _weights(6, 1, 1, SIZE, SIZE)
    cam = camera(dtype=torch.float64)

    def loss(v):
        out = render(v, tris, colors, cam, (SIZE, SIZE), background=0.5)
        return (out.image * weight).sum() + (out.mask * mask_weight).sum()

    verts = base[None].clone().requires_grad_()
    loss(verts).backward()
    ids = rasterize(verts.detach(), tris, cam, (SIZE, SIZE)).triangle_id
    checked = 0
    for v in [8, 10, 16, 24, 0, 6]:  # interior vertices and two corners (silhouette)
        for c in range(3):
            h = 1e-6
            for sign in (1, -1):  # the hard visibility must not change within the step
                moved = verts.detach().clone()
                moved[0, v, c] += sign * h
                assert torch.equal(rasterize(moved, tris, cam, (SIZE, SIZE)).triangle_id, ids)
            fd = finite_difference(loss, verts, (0, v, c), h)
            grad = float(verts.grad[0, v, c])
            assert abs(grad - fd) <= 1e-5 * max(1.0, abs(fd)), (v, c, grad, fd)
            checked += abs(fd) > 1e-3
    assert checked >= 12  # the gradients are not trivially zero


def test_gradient_wrt_sh_lighting():
    verts, tris = posed_sphere(torch.tensor([[0.1, -0.4, 0.2]], dtype=torch.float64),
                               torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64))
    albedo = 0.3 + 0.5 * _weights(7, 1, verts.shape[1], 3)
    normals = vertex_normals(verts, tris)
    weight = _weights(8, 1, 3, SIZE, SIZE)
    cam = camera(dtype=torch.float64)

    def loss(gamma):
        colors = sh_shade(albedo, normals, gamma)
        return (render(verts, tris, colors, cam, (SIZE, SIZE)).image * weight).sum()

    gamma = (0.2 * (_weights(9, 1, 27) - 0.5)).requires_grad_()
    loss(gamma).backward()
    fd = torch.tensor([finite_difference(loss, gamma, (0, k), 1e-5) for k in range(27)], dtype=torch.float64)
    assert fd.abs().min() > 1e-3
    assert torch.allclose(gamma.grad[0], fd, rtol=1e-6, atol=1e-7)


def test_gradient_wrt_pose_matches_small_step_finite_differences():
    tris = posed_sphere(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))[1]
    colors = _weights(10, 1, uv_sphere()[0].shape[0], 3)
    weight = _weights(11, 1, 3, SIZE, SIZE)
    mask_weight = _weights(12, 1, 1, SIZE, SIZE)
    cam = camera(dtype=torch.float64)

    def loss(pose):
        verts, _ = posed_sphere(pose[:, :3], pose[:, 3:])
        out = render(verts, tris, colors, cam, (SIZE, SIZE), background=0.2)
        return (out.image * weight).sum() + (out.mask * mask_weight).sum()

    pose = torch.tensor([[0.15, -0.35, 0.1, 0.05, -0.1, 4.0]], dtype=torch.float64, requires_grad=True)
    loss(pose).backward()
    for k in range(6):
        fd = finite_difference(loss, pose, (0, k), 1e-6)
        assert abs(float(pose.grad[0, k]) - fd) <= 1e-5 * max(1.0, abs(fd)), (k, float(pose.grad[0, k]), fd)
        assert abs(fd) > 1e-2


def test_silhouette_gradient_wrt_translation_matches_large_step_finite_differences():
    # The soft mask moves with the shape: d/dx of sum(mask * ramp) must match a finite difference over
    # about a pixel of motion (the hard mask alone would give zero gradient).
    tris = uv_sphere(16, 24)[1]
    ramp = torch.arange(SIZE, dtype=torch.float32).view(1, 1, 1, SIZE).expand(1, 1, SIZE, SIZE) / SIZE
    colors = torch.ones(1, uv_sphere(16, 24)[0].shape[0], 3)

    def mask_loss(tx, softness=0.7):
        pose = torch.cat([torch.tensor([0.2, 0.3, 0.1]), tx.reshape(1), torch.tensor([0.05, 4.0])])[None]
        verts, _ = posed_sphere(pose[:, :3].double(), pose[:, 3:].double(), 16, 24)
        out = render(verts.float(), tris, colors, camera(), (SIZE, SIZE), edge_softness_px=softness)
        return (out.mask * ramp).sum()

    tx = torch.tensor(0.0, requires_grad=True)
    mask_loss(tx).backward()
    step = 4.0 / FOCAL  # one pixel of image motion at depth 4
    fd = (float(mask_loss(torch.tensor(step))) - float(mask_loss(torch.tensor(-step)))) / (2 * step)
    assert fd > 0 and tx.grad > 0
    assert 0.8 < float(tx.grad) / fd < 1.25, (float(tx.grad), fd)
    # Depth: moving the shape away shrinks it.
    tz = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    translation = torch.stack([torch.zeros_like(tz), torch.zeros_like(tz), tz])[None]
    verts, tris2 = posed_sphere(torch.zeros(1, 3, dtype=torch.float64), translation)
    render(verts.float(), tris2, torch.ones(1, verts.shape[1], 3), camera(), (SIZE, SIZE)).mask.sum().backward()
    assert tz.grad < 0
    # Without the soft silhouette the mask carries no gradient at all.
    assert not mask_loss(torch.tensor(0.0, requires_grad=True), softness=0.0).requires_grad


# ----------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    verts, tris = posed_sphere(torch.tensor([[0.2, -0.3, 0.1], [-0.1, 0.5, 0.0]], dtype=torch.float64),
                               torch.tensor([[0.1, 0.0, 4.0], [-0.2, 0.1, 5.0]], dtype=torch.float64), 24, 32)
    verts = verts.float()
    colors = torch.rand(2, verts.shape[1], 3, generator=torch.Generator().manual_seed(0))
    weight = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    results = {}
    for device in ("cpu", "cuda"):
        v = verts.to(device).requires_grad_()
        c = colors.to(device).requires_grad_()
        out = render(v, tris.to(device), c, camera(48).to(device), (48, 48), background=0.1,
                     landmark_indices=[0, 3, 9])
        ((out.image * weight.to(device)).sum() + out.mask.sum()).backward()
        results[device] = [t.detach().cpu() for t in (out.image, out.mask, out.landmarks,
                                                       out.fragments.triangle_id, v.grad, c.grad)]
    cpu, cuda = results["cpu"], results["cuda"]
    assert torch.equal(cpu[3], cuda[3])
    for a, b in zip(cpu[:3] + cpu[4:], cuda[:3] + cuda[4:]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    ss = render(verts.cuda(), tris.cuda(), colors.cuda(), camera(48).cuda(), (48, 48), supersample=2)
    ss_cpu = render(verts, tris, colors, camera(48), (48, 48), supersample=2)
    assert torch.allclose(ss.image.cpu(), ss_cpu.image, atol=1e-4)
