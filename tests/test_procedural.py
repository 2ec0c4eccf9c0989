import math
from collections import Counter

import numpy as np
import torch

from deblur_rotate.face3d.procedural import EXPRESSION_NAMES, IDENTITY_NAMES, build_procedural_model
from deblur_rotate.render.shading import vertex_normals


def _edges(tris):
    edges = Counter()
    for a, b, c in tris.tolist():
        for e in ((a, b), (b, c), (c, a)):
            edges[tuple(sorted(e))] += 1
    return edges


def test_default_size_is_large_enough():
    # The vertex count is a pure function of the grid: (n_lat - 1) * n_lon + 2 + two eyeballs.
    from deblur_rotate.face3d.procedural import GridSpec

    spec = GridSpec()
    eyeball = (spec.eye_lat - 1) * spec.eye_lon + 2
    assert (spec.n_lat - 1) * spec.n_lon + 2 + 2 * eyeball >= 5000


def test_mesh_is_closed_and_outward(small_model):
    tris = small_model.triangles
    assert all(count == 2 for count in _edges(tris).values()), "every edge must join exactly two triangles"
    v = small_model.mean_shape
    n = vertex_normals(v[None], tris)[0]
    # The head part: normals point away from the head centre almost everywhere.
    n_head = v.shape[0] - 2 * ((small_model.num_vertices - (48 - 1) * 56 - 2) // 2)
    out = ((v[:n_head] - torch.tensor([0.0, 2.0, 0.5])) * n[:n_head]).sum(-1) > 0
    assert out.float().mean() > 0.97
    # The nose tip is the most forward head point and faces the camera.
    tip = int(v[:n_head, 2].argmin())
    assert n[tip, 2] < -0.5 and abs(float(v[tip, 0])) < 0.5


def test_layout_and_modes(small_model):
    layout = small_model.layout
    assert (layout.n_id, layout.n_exp, layout.n_tex) == (16, 10, 10)
    assert layout.size == 16 + 10 + 10 + 27 + 6
    # Every mode moves something; anatomical identity modes stay local-ish, expressions are sizable.
    for basis in (small_model.id_basis, small_model.exp_basis, small_model.albedo_basis):
        assert (basis.norm(dim=(0, 1)) > 0).all()
    assert len(EXPRESSION_NAMES) >= 8 and len(IDENTITY_NAMES) >= 10


def test_expressions_do_what_they_say(small_model):
    lm = small_model.landmark_indices
    base = small_model.mean_shape
    def shape(name, amount=1.0):
        exp = torch.zeros(1, small_model.layout.n_exp)
        exp[0, EXPRESSION_NAMES.index(name)] = amount
        return small_model.shape(torch.zeros(1, small_model.layout.n_id), exp)[0]
    jaw = shape("jaw_open")
    # Chin (landmark 8) moves down; the inner-lip gap (66 - 62) opens.
    assert jaw[lm[8], 1] - base[lm[8], 1] > 1.0
    gap0 = base[lm[66], 1] - base[lm[62], 1]
    assert jaw[lm[66], 1] - jaw[lm[62], 1] > gap0 + 0.8
    smile = shape("smile")
    assert smile[lm[48], 1] < base[lm[48], 1] - 0.2 and smile[lm[54], 1] < base[lm[54], 1] - 0.2
    brow = shape("brow_raise")
    assert brow[lm[19], 1] < base[lm[19], 1] - 0.3
    blink = shape("blink")
    # The upper lid comes down to the lower lid.
    assert blink[lm[37], 1] - base[lm[37], 1] > 0.3


def test_landmarks_are_bilateral_and_ordered(small_model):
    p = small_model.mean_shape[small_model.landmark_indices].numpy()
    from deblur_rotate.data.blur import IBUG68_MIRROR

    mirrored = p[list(IBUG68_MIRROR)] * np.array([-1, 1, 1])
    assert np.abs(mirrored - p).max() < 0.35  # symmetric to within the grid spacing
    assert p[36, 0] < p[39, 0] < 0 < p[42, 0] < p[45, 0]  # eye corners left to right
    assert p[27, 1] < p[30, 1] < p[33, 1] < p[51, 1] < p[57, 1] < p[8, 1]  # top to bottom
    assert p[30, 2] < p[27, 2]  # the nose tip sticks out


def test_model_forward_and_determinism(small_model):
    again = build_procedural_model(n_id=16, n_exp=10, n_tex=10, n_lat=48, n_lon=56)
    assert torch.equal(again.mean_shape, small_model.mean_shape)
    coeffs = torch.zeros(2, small_model.num_coeffs)
    coeffs[:, -1] = 100.0
    coeffs[1, small_model.layout.slices()["rotation"]] = torch.tensor([0.0, math.radians(30), 0.0])
    verts, colors = small_model(coeffs)
    assert verts.shape == (2, small_model.num_vertices, 3) and colors.shape == verts.shape
    assert (verts[..., 2] > 80).all() and 0 <= float(colors.min()) and float(colors.max()) <= 1
    assert not torch.allclose(verts[0], verts[1])


def test_forward_views_matches_forward(small_model):
    g = torch.Generator().manual_seed(0)
    layout = small_model.layout
    frames = torch.randn(3, layout.size, generator=g) * 0.5
    frames[:, -1] = 100.0
    coeffs = frames.expand(4, -1, -1).clone()  # 4 views x 3 frames sharing id/tex/exp
    s = layout.slices()
    coeffs[..., s["rotation"]] = torch.randn(4, 3, 3, generator=g) * 0.3
    coeffs[..., s["light"]] = torch.randn(4, 3, 27, generator=g) * 0.2
    verts, colors = small_model.forward_views(coeffs)
    ref_v, ref_c = small_model(coeffs.reshape(12, -1))
    assert torch.allclose(verts, ref_v, atol=1e-4) and torch.allclose(colors, ref_c, atol=1e-4)
