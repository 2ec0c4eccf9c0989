"""The ported dlib face-recognition ResNet against dlib itself, on real photos (scikit-image's)."""
import numpy as np
import pytest
import torch

from deblur_rotate.dlib_models import FACE_RECOGNITION as _MODEL_FILE
from deblur_rotate.dlib_models import dlib_model_file
from deblur_rotate.errors import UserError
from deblur_rotate.files import from_uint8
from deblur_rotate.models.identity import (
    DlibFaceRecognitionNet,
    descriptor_distance,
    dlib_chip_transforms,
    dlib_face_chips,
    extract_face_chips,
    load_dlib_face_recognition,
)

dlib = pytest.importorskip("dlib")
skdata = pytest.importorskip("skimage.data")  # scikit-image ships astronaut.png and lfw_subset.npy


@pytest.fixture(scope="module")
def net():
    return load_dlib_face_recognition()


@pytest.fixture(scope="module")
def photo():
    return skdata.astronaut()  # 512 x 512 RGB, one face (upsample=0 avoids a false hit on the patch)


@pytest.fixture(scope="module")
def chips(photo):
    """Aligned 150x150 chips cut by dlib: the astronaut, edited copies of her, and LFW faces."""
    from PIL import Image

    edits = {
        "original": photo,
        "mirrored": photo[:, ::-1],
        "shifted": photo[23:, 31:],
        "brighter": np.clip(photo.astype(np.float32) * 1.3 + 10, 0, 255).astype(np.uint8),
        "darker": (photo.astype(np.float32) * 0.6).astype(np.uint8),
    }
    out = {}
    for name, image in edits.items():
        found = dlib_face_chips(image, upsample=0)
        assert len(found) == 1, name
        out[name] = found[0]
    out["original_68pt"] = dlib_face_chips(photo, upsample=0, landmarks=68)[0]
    # LFW crops are 25x25 grey and too small for the HOG detector: use them, upscaled, as chips.
    for i, face in enumerate(skdata.lfw_subset()[:3]):  # the first 100 of lfw_subset are faces
        grey = np.asarray(Image.fromarray((face * 255).round().astype(np.uint8)).resize((150, 150), Image.BICUBIC))
        out[f"lfw{i}"] = np.repeat(grey[..., None], 3, axis=2)
    return out


def test_matches_dlib_descriptors(net, chips):
    recognizer = dlib.face_recognition_model_v1(str(dlib_model_file(_MODEL_FILE)))
    names = list(chips)
    batch = np.stack([chips[n] for n in names])
    expected = np.array([np.array(recognizer.compute_face_descriptor(c)) for c in batch])
    with torch.no_grad():
        got = net(from_uint8(batch)).numpy()
    assert got.shape == (len(names), 128)
    diff = np.abs(got - expected).max()
    assert diff < 1e-3, f"max |ours - dlib| = {diff}"

    # And the descriptors do their job: the astronaut's edits stay one person (dlib's 0.6 rule),
    # the LFW faces are other people.
    dist = np.linalg.norm(expected[:, None] - expected[None], axis=-1)
    same = [i for i, n in enumerate(names) if not n.startswith("lfw")]
    other = [i for i, n in enumerate(names) if n.startswith("lfw")]
    assert dist[np.ix_(same, same)].max() < 0.6
    assert dist[np.ix_(same, other)].min() > 0.6


def test_input_range_is_only_a_rescaling(chips):
    batch = np.stack([chips["original"], chips["lfw0"]])
    net_pm1 = load_dlib_face_recognition()
    net_255 = load_dlib_face_recognition(input_range=(0, 255))
    with torch.no_grad():
        a = net_pm1(from_uint8(batch))
        b = net_255(torch.from_numpy(batch).permute(0, 3, 1, 2).float())
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError):
        net_pm1(torch.zeros(1, 3, 128, 128))


def test_gradients_reach_the_input(net, chips):
    x = from_uint8(np.stack([chips["original"], chips["darker"]])).requires_grad_(True)
    target = net(from_uint8(chips["mirrored"][None])).detach()
    loss = descriptor_distance(net(x), target.expand(2, -1)).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every sample gets a gradient
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())  # the weights are frozen


def test_differentiable_chips_match_dlib_chips(net, photo):
    reference = dlib_face_chips(photo, upsample=0)
    transforms = dlib_chip_transforms(photo, upsample=0)
    assert transforms.shape == (1, 2, 3)
    image = from_uint8(photo[None]).requires_grad_(True)
    chip = extract_face_chips(image, transforms)
    assert chip.shape == (1, 3, 150, 150)
    ours = ((chip.detach()[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    err = np.abs(ours - reference[0].astype(np.float32))
    assert err.mean() < 1.0 and err.max() < 2.0  # dlib rounds to 8 bits; we do not
    descriptor = net(chip)
    with torch.no_grad():
        expected = net(from_uint8(reference))
    assert descriptor_distance(descriptor, expected).item() < 0.02
    descriptor.sum().backward()  # through the network and the resampling back to the photo
    assert image.grad.abs().sum() > 0


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dlib_face_recognition(tmp_path / "missing.dat")

    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"this is not a dlib network" * 10)
    with pytest.raises(UserError, match="not a valid dlib face-recognition model"):
        load_dlib_face_recognition(garbage)

    real = dlib_model_file(_MODEL_FILE).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(real[: len(real) // 2])
    with pytest.raises(UserError, match="ends early"):
        load_dlib_face_recognition(truncated)

    renamed = tmp_path / "renamed.dat"  # the first convolution's layer name changed
    at = real.index(b"con_4")
    renamed.write_bytes(real[:at] + b"con_9" + real[at + 5:])
    with pytest.raises(UserError, match="con_9"):
        load_dlib_face_recognition(renamed)

    other_model = dlib_model_file("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(UserError, match="not a valid"):
        load_dlib_face_recognition(other_model)


def test_random_init_shapes():
    out = DlibFaceRecognitionNet()(torch.rand(2, 3, 150, 150) * 2 - 1)
    assert out.shape == (2, 128) and torch.isfinite(out).all()
