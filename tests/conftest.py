import os

import pytest
import torch

# Keep the procedural model's build cache inside the test session, not in the user's home.
os.environ.setdefault("DEBLUR_ROTATE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "models"))
# One thread: micro ops gain nothing from more, and OpenMP threads spin badly when the cores are shared.
torch.set_num_threads(1)

# A coarse grid keeps the model build to a second or two.
SMALL_MODEL = {"n_id": 16, "n_exp": 10, "n_tex": 10, "n_lat": 48, "n_lon": 56}


@pytest.fixture(scope="session")
def small_model():
    from deblur_rotate.face3d.procedural import build_procedural_model

    return build_procedural_model(**SMALL_MODEL)


def write_video(path, frames, fps=30):
    """Write uint8 frames [T, H, W, 3] as a lossless PNG-codec video (decoded frames equal the written ones)."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    stream = container.add_stream("png", rate=fps)  # lossless, so decoded frames equal the written ones
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def micro_networks(seed: int = 0):
    """Random micro G, E_v, E_3D, F (tests/test_pipeline.py's recipe). The heads start at zero (an untrained
    encoder returns one constant), so they get random weights here: codes and poses then depend on the input."""
    from deblur_rotate.models.encoders import BlurEncoder, FaceCoefficientEncoder, encoder_config
    from deblur_rotate.models.fusion import FusionNetwork, fusion_config
    from deblur_rotate.models.stylegan2 import Generator, stylegan2_config

    torch.manual_seed(seed)
    g = Generator(**stylegan2_config("micro"))
    ev = BlurEncoder(num_frames=5, num_ws=g.num_ws, w_dim=g.w_dim, **encoder_config("micro", "blur"))
    e3 = FaceCoefficientEncoder(**encoder_config("micro", "face3d"))
    f = FusionNetwork(**fusion_config("micro"))
    with torch.no_grad():
        ev.head.weight.normal_(0, 0.5)
        e3.head.weight.normal_(0, 0.5)
        f.mlp[-1].weight.normal_(0, 0.3)
    return g, ev, e3, f
