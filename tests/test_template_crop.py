"""The ``template`` crop: landmark templates of the training framing, and alignment onto them."""
import numpy as np
import pytest

from deblur_rotate.errors import UserError
from deblur_rotate.faces import (
    alignment_matrix,
    check_crop,
    describe_crop,
    similarity_fits,
    template_crop_from_landmarks,
)


def _shapes(count: int, seed: int = 0) -> np.ndarray:
    """``[count, 68, 2]`` point sets: two base shapes, jittered and moved a little, in 64 px images."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(16, 48, size=(2, 68, 2))
    picks = rng.integers(0, 2, count)
    return base[picks] + rng.normal(0, 0.3, (count, 68, 2)) + rng.normal(0, 1.0, (count, 1, 2))


def test_similarity_fits_recovers_a_known_similarity():
    src = np.random.default_rng(1).uniform(0, 64, (68, 2))
    angle, scale, shift = 0.3, 1.4, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fits, residual = similarity_fits(src, (src @ rot.T + shift)[None])
    assert np.allclose(fits[0, :, :2], rot, atol=1e-9) and np.allclose(fits[0, :, 2], shift, atol=1e-9)
    assert residual[0] < 1e-9


def test_template_alignment_frames_a_moved_face_as_the_training_faces():
    shapes = _shapes(200)
    crop = template_crop_from_landmarks(shapes, 64, count=4)
    check_crop(crop)
    assert crop["method"] == "template" and len(crop["templates"]) == 4
    # a training face scaled by 1.3 and shifted by 10 px is mapped back next to where training faces sit
    face = shapes[0] * 1.3 + 10.0
    a = alignment_matrix(face, 64, crop)
    back = face @ a[:, :2].T + a[:, 2]
    assert np.abs(back - shapes[0]).mean() < 1.5
    assert np.abs(face - shapes[0]).mean() > 10
    # reports name a template crop by its count and source, not its 4 x 68 x 2 numbers
    said = describe_crop(crop)
    assert said.startswith("template: 4 landmark templates") and len(said) < 200
    assert '"face_side": 0.8' in describe_crop({"method": "ffhq", "face_side": 0.8, "face_center": [0.5, 0.4]})


def test_bad_template_crop_is_a_user_error():
    with pytest.raises(UserError, match="templates"):
        check_crop({"method": "template", "templates": [[0.5, 0.5]]})
