"""Evaluation instruments: PSNR/SSIM, the forward/backward order choice, landmarks, identity, summaries."""
import math

import numpy as np
import pytest
import torch

from deblur_rotate.evaluate.metrics import (
    FRAME_GROUPS,
    PROTOCOL,
    apply_order,
    best_order,
    detect_landmarks,
    face_descriptors,
    frame_group_summary,
    identity_topk,
    landmark_error,
    psnr,
    reverse_frames,
    ssim,
    video_metric,
    view_pair_summary,
)
from deblur_rotate.files import from_uint8


def _images(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 1.6 - 0.8  # inside [-1, 1] with room for offsets


# -------------------------------------------------------------------------------------------- PSNR/SSIM

def test_psnr_identical_and_constant_offset():
    x = _images(3, 3, 32, 32)
    assert torch.isinf(psnr(x, x)).all() and psnr(x, x).shape == (3,)
    # offset 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE = 0.0025, PSNR = 10 log10(1 / 0.0025)
    expected = 10 * math.log10(1 / 0.05 ** 2)
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((3,), expected), rtol=0, atol=1e-4)
    # offset on one image only; videos keep their [N, T] axes
    v = _images(2, 5, 3, 32, 32)
    w = v.clone()
    w[1, 3] += 0.2
    out = psnr(w, v)
    assert out.shape == (2, 5) and torch.isinf(out[0]).all()
    assert out[1, 3].item() == pytest.approx(10 * math.log10(1 / 0.1 ** 2), abs=1e-4)


def test_ssim_identical_noise_and_skimage():
    skmetrics = pytest.importorskip("skimage.metrics")
    x = _images(2, 3, 32, 32)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    s = ssim(noisy, x)
    assert (s < 0.95).all() and (s > 0).all()
    assert ssim(x + 0.5 * (noisy - x), x).min() > s.max()  # less noise, more similar
    for i in range(2):  # the settings of PROTOCOL are skimage's gaussian SSIM
        ref = skmetrics.structural_similarity(
            ((noisy[i] + 1) / 2).permute(1, 2, 0).double().numpy(), ((x[i] + 1) / 2).permute(1, 2, 0).double().numpy(),
            data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert s[i].item() == pytest.approx(ref, abs=1e-5)
    assert "11x11" in PROTOCOL and "sigma 1.5" in PROTOCOL
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[:1])


# ------------------------------------------------------------------------------------------------ order

def test_best_order_picks_reversed_prediction():
    target = _images(3, 5, 3, 16, 16, seed=2)
    pred = target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    pred[1] = reverse_frames(pred[1:2])[0]  # sequence 1 predicted backwards in time
    choice = video_metric(psnr, pred, target)
    assert choice.reversed.tolist() == [False, True, False]
    assert choice.per_frame.shape == (3, 5)
    # after the choice every frame of every sequence matches its target: high PSNR everywhere
    assert (choice.per_frame > 25).all()
    naive = psnr(pred, target)
    assert naive[1, 0] < 20 and naive[1, 2] > 25  # the middle frame is the same either way
    # errors: lower is better
    err_fwd = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    err_bwd = torch.tensor([[2.0, 2.0], [1.0, 3.0]])
    lower = best_order(err_fwd, err_bwd, higher_is_better=False)
    assert lower.reversed.tolist() == [False, True]
    torch.testing.assert_close(lower.per_frame, torch.tensor([[1.0, 1.0], [1.0, 3.0]]))
    # a choice made by one metric applied to another
    torch.testing.assert_close(apply_order(err_fwd, err_bwd, torch.tensor([True, False])), torch.tensor(
        [[2.0, 2.0], [5.0, 5.0]]))


# -------------------------------------------------------------------------------------------- landmarks

def test_landmark_error_of_shifted_points():
    g = torch.Generator().manual_seed(4)
    gt = torch.rand(2, 68, 2, generator=g) * 64
    pred = gt + torch.tensor([3.0, 4.0])  # every point 5 px away
    err = landmark_error(pred, gt, image_width=64)
    torch.testing.assert_close(err.pixels, torch.full((2,), 5.0))
    torch.testing.assert_close(err.percent_width, torch.full((2,), 500.0 / 64))
    pred[1, :34] = gt[1, :34]  # half the points exact: mean 2.5 px
    pred[0] = float("nan")  # no face found
    err = landmark_error(pred, gt, image_width=64)
    assert math.isnan(err.pixels[0]) and err.pixels[1].item() == pytest.approx(2.5)


@pytest.fixture(scope="module")
def astronaut():
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    return skdata.astronaut()  # 512 x 512, one face at about x 175-265, y 75-170


def test_detect_landmarks_on_a_photo_and_a_blank(astronaut):
    from PIL import Image

    full = detect_landmarks(from_uint8(astronaut)[None])
    assert full.found.tolist() == [True] and full.missed == 0
    lm = full.landmarks[0]
    assert lm.shape == (68, 2)
    # the face of the photo: inside its box, eyes (36-47) above the mouth (48-67), chin (8) lowest
    assert (lm[:, 0] > 165).all() and (lm[:, 0] < 285).all() and (lm[:, 1] > 70).all() and (lm[:, 1] < 190).all()
    assert lm[36:48, 1].mean() < lm[48:68, 1].mean() < lm[8, 1]
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # image-left eye first (iBUG order)
    # a 64 px crop around the face (2.5x smaller) is upscaled for detection; landmarks come back in its pixels
    crop = np.asarray(Image.fromarray(astronaut[40:200, 140:300]).resize((64, 64), Image.BICUBIC))
    small = detect_landmarks(from_uint8(np.stack([crop, np.zeros_like(crop)])))
    assert small.found.tolist() == [True, False] and small.missed == 1
    assert torch.isnan(small.landmarks[1]).all()
    expected = (lm - torch.tensor([140.0, 40.0]) + 0.5) / 2.5 - 0.5
    assert landmark_error(small.landmarks[0], expected, 64).pixels.item() < 1.0


# --------------------------------------------------------------------------------------------- identity

def test_identity_topk_on_constructed_descriptors():
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(6, 128, generator=g)  # 6 identities
    gallery = torch.cat([centres + 0.05 * torch.randn(6, 128, generator=g) for _ in range(2)])
    gallery_labels = [f"id{i}" for i in range(6)] * 2
    query = centres[[0, 1, 2, 3]].clone()
    query[3] = centres[4] * 0.9 + centres[3] * 0.1  # labelled 3 but nearest to 4
    query_labels = ["id0", "id1", "id2", "id3"]
    out = identity_topk(query, query_labels, gallery, gallery_labels, k=(1, 5))
    assert out["top1"] == pytest.approx(3 / 4) and out["top5"] == pytest.approx(1.0)
    assert out["n"] == 4 and out["missing"] == 0
    # a query without a face counts as wrong
    query[0] = float("nan")
    out = identity_topk(query, query_labels, gallery, gallery_labels, k=(1, 6))
    assert out["top1"] == pytest.approx(2 / 4) and out["top6"] == pytest.approx(3 / 4) and out["missing"] == 1
    with pytest.raises(ValueError, match="not in the gallery"):
        identity_topk(centres[:1], ["stranger"], gallery, gallery_labels)


def test_face_descriptors_of_a_moved_face_agree(astronaut):
    from deblur_rotate.models.identity import descriptor_distance

    photo = from_uint8(astronaut)[None]
    lm = detect_landmarks(photo).landmarks
    shifted = torch.roll(photo, shifts=(9, -7), dims=(2, 3))  # the same face moved: landmarks moved with it
    desc = face_descriptors(torch.cat([photo, shifted, photo]),
                            torch.cat([lm, lm + torch.tensor([-7.0, 9.0]), torch.full_like(lm, float("nan"))]))
    assert desc.shape == (3, 128) and torch.isnan(desc[2]).all() and torch.isfinite(desc[:2]).all()
    assert descriptor_distance(desc[:1], desc[1:2]).item() < 0.1  # dlib's same-person threshold is 0.6


# -------------------------------------------------------------------------------------------- summaries

def test_frame_group_and_view_pair_summaries():
    per_frame = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, float("nan"), 2.0, 1.0]])
    s = frame_group_summary(per_frame)
    assert set(s) == set(FRAME_GROUPS)
    assert s["middle (3)"] == {"mean": 3.0, "n": 1, "missing": 1}
    assert s["frames 2,4"]["mean"] == pytest.approx(3.0) and s["frames 1,5"]["mean"] == pytest.approx(3.0)
    assert s["all"]["n"] == 9 and s["all"]["mean"] == pytest.approx(27 / 9)
    values = torch.tensor([1.0, 8.0, 2.0, 7.0, 4.0, 5.0, float("nan")])
    views = [1, 8, 2, 7, 4, 5, 3]
    v = view_pair_summary(values, views)
    assert v["1,8"]["mean"] == pytest.approx(4.5) and v["2,7"]["mean"] == pytest.approx(4.5)
    assert v["3,6"] == {"mean": v["3,6"]["mean"], "n": 0, "missing": 1} and math.isnan(v["3,6"]["mean"])
    assert v["all"]["n"] == 6 and v["all"]["mean"] == pytest.approx(27 / 6)


def test_motion_ratio_of_still_true_and_doubled_motion():
    from deblur_rotate.evaluate.metrics import motion_energy, motion_ratio

    t = torch.linspace(-0.5, 0.5, 5).view(1, 5, 1, 1, 1)
    truth = (t * torch.ones(2, 5, 3, 8, 8)).clone()  # a brightness ramp over time
    still = truth[:, 2:3].expand_as(truth)
    assert torch.allclose(motion_energy(truth), torch.full((2,), 0.25))
    assert torch.allclose(motion_ratio(truth, truth), torch.ones(2))
    assert torch.allclose(motion_ratio(reverse_frames(truth), truth), torch.ones(2))  # order-free
    assert torch.allclose(motion_ratio(still, truth), torch.zeros(2))
    assert torch.allclose(motion_ratio(2 * truth, truth), torch.full((2,), 2.0))
    with pytest.raises(ValueError):
        motion_energy(truth[:, :1])


def test_sharpness_falls_with_blur_and_the_ratio_is_one_against_itself():
    from deblur_rotate.evaluate.metrics import sharpness, sharpness_ratio

    torch.manual_seed(0)
    sharp = torch.rand(2, 5, 3, 32, 32) * 2 - 1                                        # [N, T, 3, H, W]
    blurred = torch.nn.functional.avg_pool2d(sharp.flatten(0, 1), 5, stride=1, padding=2,
                                             count_include_pad=False).view_as(sharp)
    assert sharpness(sharp).shape == (2, 5)
    assert (sharpness(blurred) < 0.5 * sharpness(sharp)).all()
    torch.testing.assert_close(sharpness_ratio(sharp, sharp), torch.ones(2))
    assert (sharpness_ratio(blurred, sharp) < 0.5).all()
    assert sharpness(torch.zeros(1, 3, 8, 8)).item() == 0.0                           # a flat image: no detail
    with pytest.raises(ValueError):
        sharpness_ratio(sharp, sharp[:, :4])
