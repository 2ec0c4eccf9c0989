"""BFM loader (deblur_rotate.face3d.bfm) on small fabricated files with the real files' structure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.face3d.bfm import load_bfm
from deblur_rotate.render.shading import vertex_normals

FLIP = np.array([1.0, -1.0, -1.0])
K_ID, K_TEX, K_EXP = 199, 199, 79


def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices [V, 3], triangles [F, 3] counter-clockwise seen from outside."""
    t = (1 + math.sqrt(5)) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def midpoint(a: int, b: int, cache: dict = cache) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    v = np.array(verts)
    f = np.array(faces)
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    inward = (normals * v[f].mean(1)).sum(1) < 0
    f[inward] = f[inward][:, [0, 2, 1]]
    return v, f


@dataclass
class Fake:
    """A fabricated BFM 2009 in its own conventions (micrometres, y up, z towards the viewer)."""

    vertices: np.ndarray  # [V, 3] µm
    triangles: np.ndarray  # [F, 3] 0-based
    shape_pc: np.ndarray  # [3V, 199]
    shape_ev: np.ndarray  # [199]
    tex_mu: np.ndarray  # [3V]
    tex_pc: np.ndarray
    tex_ev: np.ndarray
    exp_mu: np.ndarray  # [3V]
    exp_pc: np.ndarray  # [3V, 79]
    exp_std: np.ndarray  # [79]
    landmarks: np.ndarray  # [68] 0-based

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]


def _make_fake() -> Fake:
    rng = np.random.default_rng(0)
    sphere, faces = _icosphere(3)  # 642 vertices
    keep = sphere[:, 2] > -0.25  # the front of the head, facing +z (the viewer) in BFM's frame
    index = np.full(len(sphere), -1)
    index[keep] = np.arange(keep.sum())
    faces = index[faces]
    faces = faces[(faces >= 0).all(1)]
    v = sphere[keep].copy()
    v[:, 2] += 0.35 * np.exp(-(v[:, 0] ** 2 + (v[:, 1] + 0.1) ** 2) / 0.03)  # a nose
    v = v * 8e4 + np.array([2e3, -5e3, 3e4])  # 8 cm radius in micrometres, off-centre like BFM
    n3 = 3 * len(v)
    return Fake(
        vertices=v,
        triangles=faces,
        shape_pc=(rng.standard_normal((n3, K_ID)) / math.sqrt(n3)).astype(np.float32),
        shape_ev=np.linspace(3e4, 1e3, K_ID),
        tex_mu=rng.uniform(60, 220, n3),
        tex_pc=(rng.standard_normal((n3, K_TEX)) / math.sqrt(n3)).astype(np.float32),
        tex_ev=np.linspace(2e3, 50, K_TEX),
        exp_mu=rng.normal(0, 300, n3).astype(np.float32),
        exp_pc=(rng.standard_normal((n3, K_EXP)) / math.sqrt(n3)).astype(np.float32),
        exp_std=np.linspace(2e4, 5e2, K_EXP),
        landmarks=rng.choice(len(v), 68, replace=False),
    )


FAKE = _make_fake()


def _write_bfm2009(folder: Path, fake: Fake = FAKE, triangles: np.ndarray | None = None, **override) -> Path:
    tri = fake.triangles if triangles is None else triangles
    fields = {
        "shapeMU": fake.vertices.reshape(-1, 1), "shapePC": fake.shape_pc, "shapeEV": fake.shape_ev.reshape(-1, 1),
        "texMU": fake.tex_mu.reshape(-1, 1), "texPC": fake.tex_pc, "texEV": fake.tex_ev.reshape(-1, 1),
        "tl": (tri + 1).astype(np.float64), "segbin": np.zeros((fake.num_vertices, 4)),
    }
    fields.update(override)
    fields = {k: v for k, v in fields.items() if v is not None}
    path = folder / "01_MorphableModel.mat"
    scipy.io.savemat(path, fields)
    return path


def _write_exp(folder: Path, exp_mu: np.ndarray, exp_pc: np.ndarray, std: np.ndarray | None) -> Path:
    path = folder / "Exp_Pca.bin"
    with open(path, "wb") as f:
        np.array([exp_pc.shape[1]], dtype="<i4").tofile(f)
        exp_mu.astype("<f4").tofile(f)
        exp_pc.T.astype("<f4").tofile(f)  # mode after mode
    if std is not None:
        np.savetxt(folder / "std_exp.txt", std)
    return path


def _write_landmarks(folder: Path, indices: np.ndarray, name: str = "landmarks.txt") -> Path:
    path = folder / name
    if name.endswith(".npy"):
        np.save(path, indices)
    elif name.endswith(".mat"):
        scipy.io.savemat(path, {"keypoints": indices.reshape(-1, 1).astype(np.float64)})
    else:
        np.savetxt(path, indices, fmt="%d")
    return path


@pytest.fixture
def bfm_files(tmp_path):
    """(model path, expression path, landmarks path) of a complete fabricated BFM 2009 set."""
    model = _write_bfm2009(tmp_path)
    exp = _write_exp(tmp_path, FAKE.exp_mu, FAKE.exp_pc, FAKE.exp_std)
    lms = _write_landmarks(tmp_path, FAKE.landmarks)
    return model, exp, lms


def _expected_vertices(fake: Fake = FAKE) -> np.ndarray:
    cm = fake.vertices * 1e-4 * FLIP
    return cm - cm.mean(0)


# ------------------------------------------------------------------------------------------- BFM 2009

def test_paper_layout_and_shapes(bfm_files):
    model_path, exp_path, lm_path = bfm_files
    model = load_bfm(model_path, exp_path, lm_path, n_id=199, n_tex=199, n_exp=29)
    v = FAKE.num_vertices
    assert model.layout.size == 460
    assert (model.layout.n_id, model.layout.n_tex, model.layout.n_exp) == (199, 199, 29)
    assert model.mean_shape.shape == (v, 3) and model.mean_albedo.shape == (v, 3)
    assert model.id_basis.shape == (v, 3, 199) and model.albedo_basis.shape == (v, 3, 199)
    assert model.exp_basis.shape == (v, 3, 29)
    assert model.triangles.shape == FAKE.triangles.shape
    assert model.landmark_indices.tolist() == FAKE.landmarks.tolist()
    full = load_bfm(model_path, exp_path, lm_path)
    assert full.layout.n_exp == K_EXP and full.name == "bfm2009"


def test_units_axes_and_centring(bfm_files):
    model = load_bfm(*bfm_files, n_id=5, n_tex=5, n_exp=5)
    mean = model.mean_shape.double().numpy()
    assert np.allclose(mean, _expected_vertices(), atol=1e-5)
    assert np.allclose(mean.mean(0), 0, atol=1e-5)
    # a known vertex: the nose tip (largest BFM z, towards the viewer) has the most negative z in our frame
    tip = int(np.argmax(FAKE.vertices[:, 2]))
    assert int(np.argmin(mean[:, 2])) == tip
    offset = (FAKE.vertices[tip] - FAKE.vertices.mean(0)) * 1e-4  # cm, BFM axes
    assert np.allclose(mean[tip], offset * FLIP, atol=1e-5)
    # the top of the head (largest BFM y, up) is the most negative y (ours points down)
    assert int(np.argmin(mean[:, 1])) == int(np.argmax(FAKE.vertices[:, 1]))
    # a head of radius 8 cm is ~16 cm wide
    assert 15.0 < float(np.ptp(mean[:, 0])) <= 16.1


def test_basis_scaling(bfm_files):
    model = load_bfm(*bfm_files)
    v = FAKE.num_vertices
    id_expected = (FAKE.shape_pc * FAKE.shape_ev).reshape(v, 3, K_ID) * 1e-4 * FLIP[None, :, None]
    exp_expected = (FAKE.exp_pc * FAKE.exp_std).reshape(v, 3, K_EXP) * 1e-4 * FLIP[None, :, None]
    tex_expected = (FAKE.tex_pc * FAKE.tex_ev).reshape(v, 3, K_TEX) / 255.0
    assert np.allclose(model.id_basis.numpy(), id_expected, rtol=1e-4, atol=1e-7)
    assert np.allclose(model.exp_basis.numpy(), exp_expected, rtol=1e-4, atol=1e-7)
    assert np.allclose(model.albedo_basis.numpy(), tex_expected, rtol=1e-4, atol=1e-7)
    assert np.allclose(model.mean_albedo.numpy(), FAKE.tex_mu.reshape(v, 3) / 255.0, atol=1e-6)
    # a unit id coefficient moves vertex 0 by shapePC * shapeEV micrometres
    coeff = torch.zeros(1, K_ID)
    coeff[0, 0] = 1.0
    moved = model.shape(coeff, torch.zeros(1, K_EXP))[0, 0] - model.mean_shape[0]
    assert np.allclose(moved.numpy(), FAKE.shape_pc[:3, 0] * FAKE.shape_ev[0] * 1e-4 * FLIP, rtol=1e-4)


def test_truncation_keeps_leading_modes(bfm_files):
    full = load_bfm(*bfm_files)
    small = load_bfm(*bfm_files, n_id=5, n_tex=7, n_exp=3)
    assert (small.layout.n_id, small.layout.n_tex, small.layout.n_exp) == (5, 7, 3)
    assert small.layout.size == 5 + 7 + 3 + 27 + 6
    assert torch.equal(small.id_basis, full.id_basis[..., :5])
    assert torch.equal(small.albedo_basis, full.albedo_basis[..., :7])
    assert torch.equal(small.exp_basis, full.exp_basis[..., :3])
    assert torch.equal(small.mean_shape, full.mean_shape)
    none = load_bfm(*bfm_files, n_id=0, n_tex=0, n_exp=0)
    assert none.layout.size == 33
    with pytest.raises(UserError, match="n_id=200"):
        load_bfm(*bfm_files, n_id=200)
    with pytest.raises(UserError, match="n_exp=80"):
        load_bfm(*bfm_files, n_exp=80)
    with pytest.raises(UserError, match="n_tex"):
        load_bfm(*bfm_files, n_tex=-1)


def _nose_normal_z(model) -> float:
    normals = vertex_normals(model.mean_shape[None], model.triangles)[0]
    tip = int(torch.argmin(model.mean_shape[:, 2]))
    return float(normals[tip, 2])


@pytest.mark.parametrize("reverse", [False, True])
def test_normals_point_outward(tmp_path, reverse):
    tri = FAKE.triangles[:, [0, 2, 1]] if reverse else FAKE.triangles
    model_path = _write_bfm2009(tmp_path, triangles=tri)
    exp = _write_exp(tmp_path, FAKE.exp_mu, FAKE.exp_pc, FAKE.exp_std)
    model = load_bfm(model_path, exp, _write_landmarks(tmp_path, FAKE.landmarks), n_exp=2)
    assert _nose_normal_z(model) < -0.7  # the nose tip's normal looks at the camera (-z)
    normals = vertex_normals(model.mean_shape[None], model.triangles)[0]
    assert float((normals * model.mean_shape).sum(-1).min()) > 0  # every normal points away from the centre
    # kept as they are when outward, re-wound when the file's are inward: both give the outward winding
    assert np.array_equal(model.triangles.numpy(), FAKE.triangles)


def test_model_forward_runs(bfm_files):
    model = load_bfm(*bfm_files, n_id=199, n_tex=199, n_exp=29)
    g = torch.Generator().manual_seed(0)
    parts = model.layout.split(torch.zeros(2, model.layout.size))
    coeffs = model.layout.join(torch.randn(2, 199, generator=g), torch.randn(2, 199, generator=g),
                               torch.randn(2, 29, generator=g), torch.zeros_like(parts["light"]),
                               torch.tensor([[0.0, 0.3, 0.0], [0.1, -0.2, 0.05]]),
                               torch.tensor([[0.0, 0.0, 50.0], [1.0, -1.0, 60.0]]))
    vertices, colors = model(coeffs)
    assert vertices.shape == (2, FAKE.num_vertices, 3) and colors.shape == (2, FAKE.num_vertices, 3)
    assert torch.isfinite(vertices).all() and torch.isfinite(colors).all()
    assert colors.min() >= 0 and colors.max() <= 1
    assert model.landmarks_3d(vertices).shape == (2, 68, 3)
    # identity pose, 50 cm away: the face is in front of the camera and the nose is its nearest point
    frontal = coeffs.clone()
    frontal[:, model.layout.slices()["rotation"]] = 0
    frontal[:, :model.layout.n_id + model.layout.n_tex + model.layout.n_exp] = 0
    vertices, _ = model(frontal)
    assert (vertices[..., 2] > 0).all()
    assert int(vertices[0, :, 2].argmin()) == int(np.argmax(FAKE.vertices[:, 2]))


def test_landmark_file_formats(tmp_path, bfm_files):
    model_path, exp_path, _ = bfm_files
    lm = FAKE.landmarks
    cases = [
        (_write_landmarks(tmp_path, lm, "a.npy"), None),
        (_write_landmarks(tmp_path, lm + 1, "b.txt"), True),
        (_write_landmarks(tmp_path, lm + 1, "c.mat"), None),  # .mat defaults to 1-based (MATLAB)
        (_write_landmarks(tmp_path, lm, "d.mat"), False),
        # 3DDFA's keypoints_sim.npy: x, y, z coordinate indices of each landmark
        (_write_landmarks(tmp_path, np.stack([3 * lm, 3 * lm + 1, 3 * lm + 2], 1).reshape(-1), "e.npy"), None),
    ]
    comma = tmp_path / "f.csv"
    comma.write_text(",".join(str(i) for i in lm))
    cases.append((comma, False))
    for path, one_based in cases:
        model = load_bfm(model_path, exp_path, path, n_id=1, n_tex=1, n_exp=1, landmarks_one_based=one_based)
        assert model.landmark_indices.tolist() == lm.tolist(), path.name


def test_expression_mean_option(bfm_files):
    plain = load_bfm(*bfm_files, n_exp=1)
    shifted = load_bfm(*bfm_files, n_exp=1, add_expression_mean=True)
    offset = FAKE.exp_mu.reshape(-1, 3).astype(np.float64) * 1e-4 * FLIP
    assert np.allclose((shifted.mean_shape - plain.mean_shape).numpy(), offset - offset.mean(0), atol=1e-5)


def test_expression_basis_on_trimmed_mesh(tmp_path):
    # The expression basis covers a subset of the BFM vertices (as Exp_Pca.bin's 53215 of BFM's 53490).
    bfm_dir, exp_dir = tmp_path / "bfm", tmp_path / "exp"
    bfm_dir.mkdir()
    exp_dir.mkdir()
    model_path = _write_bfm2009(bfm_dir)
    v = FAKE.num_vertices
    keep = np.sort(np.random.default_rng(1).choice(v, v - 25, replace=False))
    coords = (3 * keep[:, None] + np.arange(3)).reshape(-1)
    exp_path = _write_exp(exp_dir, FAKE.exp_mu[coords], FAKE.exp_pc[coords], FAKE.exp_std)
    # Without the trim index the loader cannot match the meshes.
    lm_trimmed = np.arange(68) * 3
    lm_path = _write_landmarks(tmp_path, lm_trimmed)
    with pytest.raises(UserError, match="trim_index_path"):
        load_bfm(model_path, exp_path, lm_path)
    # BFM_exp_idx.mat (1-based trimIndex) beside the expression basis is found on its own.
    scipy.io.savemat(exp_dir / "BFM_exp_idx.mat", {"trimIndex": (keep + 1).reshape(-1, 1).astype(np.float64)})
    model = load_bfm(model_path, exp_path, lm_path, n_exp=4)
    assert model.num_vertices == v - 25
    assert np.allclose(model.mean_shape.double().numpy(),
                       (FAKE.vertices[keep] * 1e-4 * FLIP) - (FAKE.vertices[keep] * 1e-4 * FLIP).mean(0), atol=1e-5)
    assert np.allclose(model.exp_basis.numpy(),
                       (FAKE.exp_pc[coords, :4] * FAKE.exp_std[:4]).reshape(-1, 3, 4) * 1e-4 * FLIP[None, :, None],
                       rtol=1e-4, atol=1e-7)
    assert np.allclose(model.id_basis[:, :, 0].numpy(),
                       (FAKE.shape_pc[coords, 0] * FAKE.shape_ev[0]).reshape(-1, 3) * 1e-4 * FLIP, rtol=1e-4)
    # triangles: exactly those whose three vertices survive, renumbered
    new_index = np.full(v, -1)
    new_index[keep] = np.arange(keep.size)
    expected = new_index[FAKE.triangles]
    expected = expected[(expected >= 0).all(1)]
    assert np.array_equal(model.triangles.numpy(), expected)
    assert model.landmark_indices.tolist() == lm_trimmed.tolist()
    # an explicit trim index of the wrong length is refused
    bad = tmp_path / "bad_idx.npy"
    np.save(bad, keep[:-1])
    with pytest.raises(UserError, match="selects"):
        load_bfm(model_path, exp_path, lm_path, trim_index_path=bad)


# ------------------------------------------------------------------------------------ BFM_model_front

def _write_front(folder: Path, keypoints: bool = True) -> Path:
    v = FAKE.num_vertices
    fields = {
        "meanshape": (FAKE.vertices.reshape(1, -1) / 1e5),  # decimetres
        "idBase": (FAKE.shape_pc[:, :80] * FAKE.shape_ev[:80] / 1e5),
        "exBase": (FAKE.exp_pc[:, :64] * FAKE.exp_std[:64] / 1e5),
        "meantex": FAKE.tex_mu.reshape(1, -1),
        "texBase": FAKE.tex_pc[:, :80] * FAKE.tex_ev[:80],
        "tri": (FAKE.triangles + 1).astype(np.float64),
        "point_buf": np.ones((v, 8)),
        "frontmask2_idx": np.arange(1, 11).reshape(-1, 1),
        "skinmask": np.ones((1, v)),
    }
    if keypoints:
        fields["keypoints"] = (FAKE.landmarks + 1).reshape(-1, 1).astype(np.float64)
    path = folder / "BFM_model_front.mat"
    scipy.io.savemat(path, fields)
    return path


def test_front_format(tmp_path):
    path = _write_front(tmp_path)
    model = load_bfm(path)
    v = FAKE.num_vertices
    assert model.name == "bfm-front"
    assert (model.layout.n_id, model.layout.n_tex, model.layout.n_exp) == (80, 80, 64)
    assert model.landmark_indices.tolist() == FAKE.landmarks.tolist()  # 1-based keypoints -> 0-based
    assert np.allclose(model.mean_shape.double().numpy(), _expected_vertices(), atol=1e-5)
    assert np.allclose(model.id_basis.numpy(),
                       (FAKE.shape_pc[:, :80] * FAKE.shape_ev[:80]).reshape(v, 3, 80) * 1e-4 * FLIP[None, :, None],
                       rtol=1e-4, atol=1e-7)
    assert np.allclose(model.mean_albedo.numpy(), FAKE.tex_mu.reshape(v, 3) / 255, atol=1e-6)
    assert _nose_normal_z(model) < -0.7
    small = load_bfm(path, n_id=10, n_tex=20, n_exp=5)
    assert small.layout.size == 10 + 20 + 5 + 33
    model(torch.zeros(1, model.layout.size) + torch.tensor([0.0] * 251 + [0, 0, 0, 0, 0, 40.0]))
    with pytest.raises(UserError, match="n_id=199"):
        load_bfm(path, n_id=199)
    with pytest.raises(UserError, match="expression_path"):
        load_bfm(path, expression_path=tmp_path / "Exp_Pca.bin")
    # landmarks_path overrides the keypoints; without keypoints it is required
    other = _write_landmarks(tmp_path, np.arange(68))
    assert load_bfm(path, landmarks_path=other).landmark_indices.tolist() == list(range(68))
    no_kp = tmp_path / "nokp"
    no_kp.mkdir()
    with pytest.raises(UserError, match="landmarks_path"):
        load_bfm(_write_front(no_kp, keypoints=False))


# ------------------------------------------------------------------------------------------- errors

def test_missing_and_unreadable_files(tmp_path, bfm_files):
    model_path, exp_path, lm_path = bfm_files
    with pytest.raises(UserError, match="does not exist"):
        load_bfm(tmp_path / "nope.mat")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is not a MATLAB file" * 10)
    with pytest.raises(UserError, match="garbage.mat"):
        load_bfm(garbage)
    with pytest.raises(UserError, match="does not exist"):
        load_bfm(model_path, tmp_path / "Exp_missing.bin", lm_path)
    with pytest.raises(UserError, match="does not exist"):
        load_bfm(model_path, exp_path, tmp_path / "missing_landmarks.txt")
    with pytest.raises(UserError, match="expression_path"):
        load_bfm(model_path, None, lm_path)
    assert load_bfm(model_path, None, lm_path, n_exp=0).layout.n_exp == 0
    with pytest.raises(UserError, match="landmarks_path"):
        load_bfm(model_path, exp_path)


def test_error_messages_are_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        load_bfm(tmp_path / "nope.mat")
    assert "\n" not in str(info.value) and "nope.mat" in str(info.value)


def test_wrong_fields(tmp_path):
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"foo": np.zeros(3)})
    with pytest.raises(UserError, match="neither the fields"):
        load_bfm(other)
    partial = tmp_path / "partial"
    partial.mkdir()
    path = _write_bfm2009(partial, texPC=None)
    with pytest.raises(UserError, match="lacks texPC"):
        load_bfm(path)
    bad_rows = tmp_path / "badrows"
    bad_rows.mkdir()
    path = _write_bfm2009(bad_rows, shapePC=FAKE.shape_pc[:-3])
    with pytest.raises(UserError, match="shapePC"):
        load_bfm(path, n_exp=0, landmarks_path=_write_landmarks(tmp_path, FAKE.landmarks))
    bad_tri = tmp_path / "badtri"
    bad_tri.mkdir()
    path = _write_bfm2009(bad_tri, tl=(FAKE.triangles + 1).astype(float) * 10)
    with pytest.raises(UserError, match="1-based"):
        load_bfm(path, n_exp=0, landmarks_path=_write_landmarks(tmp_path, FAKE.landmarks))


def test_wrong_landmarks(tmp_path, bfm_files):
    model_path, exp_path, _ = bfm_files
    short = _write_landmarks(tmp_path, FAKE.landmarks[:67], "short.txt")
    with pytest.raises(UserError, match="holds 67 indices, expected 68.*0-based"):
        load_bfm(model_path, exp_path, short)
    # a 1-based file read as 0-based, with the last vertex in it: the message says so and suggests the flag
    one_based = FAKE.landmarks.copy()
    one_based[0] = FAKE.num_vertices - 1
    path = _write_landmarks(tmp_path, one_based + 1, "one_based.txt")
    with pytest.raises(UserError, match="0-based.*landmarks_one_based=True"):
        load_bfm(model_path, exp_path, path)
    assert load_bfm(model_path, exp_path, path, n_exp=1, landmarks_one_based=True).landmark_indices[0] == \
        FAKE.num_vertices - 1
    zero = _write_landmarks(tmp_path, np.arange(68), "zero.txt")
    with pytest.raises(UserError, match="1-based"):
        load_bfm(model_path, exp_path, zero, landmarks_one_based=True)
    text = tmp_path / "words.txt"
    text.write_text("nose eye " * 34)
    with pytest.raises(UserError, match="words.txt"):
        load_bfm(model_path, exp_path, text)
    fractional = tmp_path / "frac.txt"
    fractional.write_text(" ".join(["1.5"] * 68))
    with pytest.raises(UserError, match="whole numbers"):
        load_bfm(model_path, exp_path, fractional)


def test_wrong_expression_files(tmp_path):
    model_path = _write_bfm2009(tmp_path)
    lm = _write_landmarks(tmp_path, FAKE.landmarks)
    # expression basis of the wrong vertex count, and no trim index anywhere
    exp_path = _write_exp(tmp_path, FAKE.exp_mu[:-6], FAKE.exp_pc[:-6], FAKE.exp_std)
    with pytest.raises(UserError, match=rf"has {FAKE.num_vertices - 2} vertices but .* has {FAKE.num_vertices}"):
        load_bfm(model_path, exp_path, lm)
    # missing std_exp.txt
    (tmp_path / "std_exp.txt").unlink()
    exp_path = _write_exp(tmp_path, FAKE.exp_mu, FAKE.exp_pc, None)
    with pytest.raises(UserError, match="std_exp.txt"):
        load_bfm(model_path, exp_path, lm)
    # std of the wrong length
    np.savetxt(tmp_path / "std_exp.txt", FAKE.exp_std[:10])
    with pytest.raises(UserError, match="hold 10 values, expected 79"):
        load_bfm(model_path, exp_path, lm)
    np.savetxt(tmp_path / "std_exp.txt", FAKE.exp_std)
    # truncated binary
    data = exp_path.read_bytes()
    exp_path.write_bytes(data[:-8])
    with pytest.raises(UserError, match="bytes"):
        load_bfm(model_path, exp_path, lm)
    exp_path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_bfm(model_path, exp_path, lm)
    exp_path.write_bytes(np.array([-3], "<i4").tobytes() + data[4:])
    with pytest.raises(UserError, match="mode count"):
        load_bfm(model_path, exp_path, lm)
