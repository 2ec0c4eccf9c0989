import numpy as np
import pytest
import torch

from deblur_rotate.files import from_uint8
from deblur_rotate.skin import SkinWeights, skin_probability, skin_weights


def test_colours_typical_of_skin_and_not():
    colours = np.array([[[224, 172, 150], [120, 80, 60], [30, 90, 200], [250, 250, 250], [10, 10, 10], [40, 160, 40]]],
                       np.uint8)
    p = skin_probability(from_uint8(colours)[None])[0, 0, 0]
    assert p[0] > 0.6 and p[1] > 0.6  # light and dark skin tones
    assert (p[2:] < 0.3).all()  # blue, white, black, green


def test_astronaut_face_is_skin_and_helmet_is_not():
    skdata = pytest.importorskip("skimage.data")
    image = from_uint8(skdata.astronaut())[None]
    p = skin_probability(image)[0, 0]
    face = p[60:140, 180:250].mean()  # her face
    helmet = p[380:480, 320:460].mean()  # the dark helmet on the right
    backdrop = p[20:120, 300:380].mean()  # the grey backdrop
    assert face > 0.6 and helmet < 0.1 and backdrop < 0.3
    w = skin_weights(image)
    assert set(torch.unique(w).tolist()) <= {1.0, 2.0}
    assert SkinWeights()(image[:, :, :8, :8]).shape == (1, 1, 8, 8)


def test_readers_compute_skin_maps_once_per_sample(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from deblur_rotate.data.readers import StillImages

    Image.fromarray(skdata.astronaut()[40:200, 150:310]).save(tmp_path / "face.png")
    sample = StillImages(tmp_path, size=32, skin_model=SkinWeights())[0]
    assert sample["skin"].shape == (5, 1, 32, 32)
    assert sample["skin"].max() == 2.0 and sample["skin"].min() == 1.0
