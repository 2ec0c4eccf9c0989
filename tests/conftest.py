import os

import pytest
import torch

# Keep the procedural model's build cache inside the test session, not in the user's home.
os.environ.setdefault("DEBLUR_ROTATE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "models"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A coarse grid keeps the model build to a second or two.
SMALL_MODEL = {"n_id": 16, "n_exp": 10, "n_tex": 10, "n_lat": 48, "n_lon": 56}


@pytest.fixture(scope="session")
def small_model():
    from deblur_rotate.face3d.procedural import build_procedural_model

    return build_procedural_model(**SMALL_MODEL)
