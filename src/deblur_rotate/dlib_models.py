"""Where dlib's model files are: inside the PyPI package ``face-recognition-models``.

The package is located with ``importlib`` rather than imported, because its ``__init__`` needs
``pkg_resources``, which new setuptools no longer ship.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from deblur_rotate.errors import UserError

__all__ = ["dlib_model_file", "FACE_RECOGNITION", "LANDMARKS_68", "LANDMARKS_5", "CNN_DETECTOR"]

FACE_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"


def dlib_model_file(name: str) -> Path:
    """Path of one of dlib's model files; UserError if the package or the file is missing."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dlib's face models are missing: `pip install face-recognition-models`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.exists():
        raise UserError(f"{path} is missing: reinstall face-recognition-models")
    return path
