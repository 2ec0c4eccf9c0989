"""Blur synthesis and mirroring (deblur_rotate.data.blur)."""
import math

import pytest
import torch

from deblur_rotate.data.blur import (
    IBUG68_MIRROR,
    apply_kernels,
    blur_from_frames,
    blur_sample,
    linear_to_srgb,
    mirror_images,
    mirror_landmarks,
    mirror_pose,
    mirror_view,
    random_motion_kernel,
    random_motion_kernels,
    srgb_to_linear,
    target_indices,
    valid_centers,
    window_indices,
)


def _index_video(num_frames: int, n: int = 2, size: int = 4) -> torch.Tensor:
    """[n, T, 3, size, size] video whose frame t holds the value t everywhere (sample s adds 1000 s)."""
    t = torch.arange(num_frames, dtype=torch.float64).view(1, -1, 1, 1, 1)
    s = 1000.0 * torch.arange(n, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    return (t + s).expand(n, num_frames, 3, size, size).clone()


# ------------------------------------------------------------------------------------------------ windows

def test_window_and_targets():
    assert window_indices(10, 4) == list(range(6, 15))
    assert len(window_indices(32, 32)) == 65
    assert target_indices(10, 4) == [6, 8, 10, 12, 14]
    assert target_indices(32, 32) == [0, 16, 32, 48, 64]
    t = target_indices(40, 8)
    assert t[0] == window_indices(40, 8)[0] and t[-1] == window_indices(40, 8)[-1]


def test_valid_centers():
    assert valid_centers(9, 4) == range(4, 5)
    assert valid_centers(100, 32) == range(32, 68)
    for c in valid_centers(20, 2):
        w = window_indices(c, 2)
        assert w[0] >= 0 and w[-1] < 20


@pytest.mark.parametrize("m", [0, 1, 3, -2, 2.0, True])
def test_target_indices_rejects_bad_m(m):
    with pytest.raises(ValueError, match="m"):
        target_indices(10, m)


def test_window_errors():
    with pytest.raises(ValueError, match="starts at frame"):
        window_indices(3, 4)
    with pytest.raises(ValueError, match="at least 65 frames"):
        valid_centers(40, 32)
    with pytest.raises(ValueError):
        window_indices(5, 0)


def test_blur_is_mean_of_exactly_the_window():
    video = _index_video(30)
    center, m = 12, 4
    frames = video[:, window_indices(center, m)]
    blurry = blur_from_frames(frames)
    assert blurry.shape == (2, 3, 4, 4)
    # mean of frames 8..16 is 12; a window shifted by one frame would give 11 or 13
    assert torch.allclose(blurry[0], torch.full((3, 4, 4), 12.0, dtype=torch.float64))
    assert torch.allclose(blurry[1], torch.full((3, 4, 4), 1012.0, dtype=torch.float64))
    # Frames whose values are powers of two make the sum identify the exact set of frames.
    video = (2.0 ** torch.arange(20, dtype=torch.float64)).view(1, 20, 1, 1, 1).expand(1, 20, 3, 2, 2)
    blurry, targets = blur_sample(video, center=9, m=2)
    expected = sum(2.0**k for k in (7, 8, 9, 10, 11)) / 5
    assert torch.allclose(blurry, torch.full_like(blurry, expected))
    assert targets.shape == (1, 5, 3, 2, 2)
    assert targets[0, :, 0, 0, 0].tolist() == [2.0**k for k in (7, 8, 9, 10, 11)]


def test_blur_sample_checks_centre():
    video = _index_video(9, n=1)
    blur_sample(video, 4, 4)
    with pytest.raises(ValueError, match="outside the valid centres"):
        blur_sample(video, 5, 4)


def test_blur_linearize():
    frames = torch.stack([torch.full((1, 3, 2, 2), -1.0), torch.full((1, 3, 2, 2), 1.0)], 1)  # black, white
    assert torch.allclose(blur_from_frames(frames), torch.zeros(1, 3, 2, 2))
    lin = blur_from_frames(frames, linearize=True)
    # half the light is sRGB ~0.735, i.e. ~0.47 in [-1, 1]: brighter than the naive mean
    assert torch.allclose(lin, torch.full_like(lin, 2 * float(linear_to_srgb(torch.tensor(0.5))) - 1), atol=1e-6)
    assert float(lin.mean()) > 0.4
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    with pytest.raises(ValueError):
        blur_from_frames(torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------------------ kernels

def test_kernel_properties():
    g = torch.Generator().manual_seed(0)
    k = random_motion_kernels(32, g)
    assert k.shape == (32, 9, 9) and k.dtype == torch.float32
    assert (k >= 0).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(32), atol=1e-5)
    # not all identical, and not all deltas
    assert (k - k[:1]).abs().amax() > 1e-3
    assert (k.amax((1, 2)) < 0.9).all()
    single = random_motion_kernel(torch.Generator().manual_seed(5), size=7)
    assert single.shape == (7, 7) and abs(float(single.sum()) - 1) < 1e-5


def test_kernels_deterministic_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_motion_kernels(8, torch.Generator().manual_seed(7))
    after = torch.rand(1)
    b = random_motion_kernels(8, torch.Generator().manual_seed(7))
    c = random_motion_kernels(8, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(before, after)


@pytest.mark.parametrize("linear_prob", [0.0, 1.0])
def test_kernel_families(linear_prob):
    k = random_motion_kernels(16, torch.Generator().manual_seed(1), linear_prob=linear_prob)
    assert (k >= 0).all() and torch.allclose(k.sum((1, 2)), torch.ones(16), atol=1e-5)
    if linear_prob == 0.0:
        # trajectories are centred on their centroid: centre of mass at the middle pixel (within splatting)
        ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
        cy, cx = (k * ys).sum((1, 2)), (k * xs).sum((1, 2))
        assert torch.allclose(cy, torch.full_like(cy, 4.0), atol=0.6)
        assert torch.allclose(cx, torch.full_like(cx, 4.0), atol=0.6)


def test_kernel_argument_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="odd"):
        random_motion_kernels(2, g, size=8)
    with pytest.raises(ValueError):
        random_motion_kernels(2, g, linear_prob=1.5)
    assert random_motion_kernels(0, g).shape == (0, 9, 9)


def test_delta_reproduces_kernel_convolution():
    k = random_motion_kernels(2, torch.Generator().manual_seed(3))
    images = torch.zeros(2, 3, 21, 23)
    r, c = 10, 8
    images[:, :, r, c] = 1.0
    out = apply_kernels(images, k)
    assert out.shape == images.shape
    # PSF semantics (true convolution): the bright pixel is painted as the kernel itself, not flipped
    for n in range(2):
        for ch in range(3):
            assert torch.allclose(out[n, ch, r - 4:r + 5, c - 4:c + 5], k[n], atol=1e-6)
    assert torch.allclose(out.sum((2, 3)), torch.ones(2, 3), atol=1e-5)
    # an asymmetric kernel: single tap right of centre moves the dot one pixel right
    shift = torch.zeros(3, 3)
    shift[1, 2] = 1.0
    moved = apply_kernels(images[:1], shift)
    assert moved[0, 0, r, c + 1] == 1.0 and moved[0, 0, r, c] == 0.0


def test_apply_kernels_shared_and_range():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    k = random_motion_kernel(g)
    a = apply_kernels(images, k)
    b = apply_kernels(images, k.expand(3, 9, 9))
    assert torch.allclose(a, b)
    assert a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6
    with pytest.raises(ValueError):
        apply_kernels(images, torch.ones(2, 9, 9) / 81)
    with pytest.raises(ValueError):
        apply_kernels(images, torch.ones(4, 4) / 16)


# ---------------------------------------------------------------------------------------------- mirroring

def test_mirror_permutation_pairs():
    perm = IBUG68_MIRROR
    assert sorted(perm) == list(range(68))
    assert all(perm[perm[k]] == k for k in range(68))
    expected_pairs = {0: 16, 1: 15, 7: 9, 17: 26, 21: 22, 31: 35, 32: 34, 36: 45, 37: 44, 38: 43, 39: 42,
                      40: 47, 41: 46, 48: 54, 49: 53, 50: 52, 55: 59, 56: 58, 60: 64, 61: 63, 65: 67}
    for a, b in expected_pairs.items():
        assert perm[a] == b and perm[b] == a
    for fixed in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert perm[fixed] == fixed


def test_mirror_landmarks():
    g = torch.Generator().manual_seed(0)
    width = 64
    lm = torch.rand(2, 68, 2, generator=g) * 63
    mirrored = mirror_landmarks(lm, width)
    assert mirrored.shape == lm.shape
    assert torch.allclose(mirror_landmarks(mirrored, width), lm)
    # point 36 of the mirror is the flipped point 45 of the original, and v is kept
    assert torch.allclose(mirrored[:, 36, 0], width - 1 - lm[:, 45, 0])
    assert torch.allclose(mirrored[:, 36, 1], lm[:, 45, 1])
    # videos [N, T, 68, 2] work too
    video_lm = lm.unsqueeze(1).expand(2, 3, 68, 2)
    assert torch.allclose(mirror_landmarks(video_lm, width)[:, 1], mirrored)
    with pytest.raises(ValueError):
        mirror_landmarks(torch.zeros(2, 5, 2), width)


def test_mirror_landmarks_follow_mirrored_image():
    # A bright pixel at each landmark: after flipping the image, the pixel sits under the mirrored landmark.
    width, height = 32, 24
    g = torch.Generator().manual_seed(2)
    lm = torch.stack([torch.randint(0, width, (68,), generator=g), torch.randint(0, height, (68,), generator=g)],
                     -1).float().unsqueeze(0)
    image = torch.zeros(1, 3, height, width)
    u, v = lm[0, 40].long().tolist()
    image[0, :, v, u] = 1.0
    flipped = mirror_images(image)
    mu, mv = mirror_landmarks(lm, width)[0, IBUG68_MIRROR[40]].long().tolist()
    assert flipped[0, 0, mv, mu] == 1.0


def test_mirror_images_and_videos():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    m = mirror_images(x)
    assert torch.equal(m[..., 0], x[..., 3]) and torch.equal(mirror_images(m), x)
    video = torch.rand(1, 5, 3, 4, 6)
    assert torch.equal(mirror_images(video)[:, 2], mirror_images(video[:, 2]))


def test_mirror_pose_matches_flipped_rotation():
    from deblur_rotate.render.camera import euler_to_matrix

    pose = torch.tensor([[0.2, -0.5, 0.3], [-0.1, 0.7, -0.2]])
    mirrored = mirror_pose(pose)
    assert torch.allclose(mirrored, pose * torch.tensor([1.0, -1.0, -1.0]))
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.allclose(euler_to_matrix(mirrored), flip @ euler_to_matrix(pose) @ flip, atol=1e-6)
    assert torch.allclose(mirror_pose((0.1, 0.2, 0.3)), torch.tensor([0.1, -0.2, -0.3]))
    with pytest.raises(ValueError):
        mirror_pose(torch.zeros(2, 2))
    assert math.isclose(float(mirror_pose(mirror_pose(pose))[1, 1]), 0.7, rel_tol=1e-6)


def test_mirror_view():
    assert [mirror_view(v) for v in range(1, 9)] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert torch.equal(mirror_view(torch.tensor([1, 4, 5])), torch.tensor([8, 5, 4]))
    for bad in (0, 9, 2.0):
        with pytest.raises(ValueError):
            mirror_view(bad)
    with pytest.raises(ValueError):
        mirror_view(torch.tensor([0, 3]))
