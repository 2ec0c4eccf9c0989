"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a PyTorch module.

The identity loss L_id (paper §3) compares face descriptors of a generated and a target face. dlib's
network is the descriptor everybody uses, but it runs in C++ and has no gradient. Here we read dlib's
own serialized file (no dlib code involved) and rebuild the same network from PyTorch ops, so the
loss is differentiable and runs on CPU or CUDA.

The network (dlib ``examples/dnn_face_recognition_ex.cpp``, ``anet_type``), from the input up:

    input 150x150 RGB, x = (pixel - mean_rgb) / 256           pixel in [0, 255]
    con 32 7x7 /2 (no padding) + affine, relu, max_pool 3x3 /2 (no padding)          -> 32 x 35 x 35
    3 x residual(32)                                                                 -> 32 x 35 x 35
    residual_down(64),  3 x residual(64)                                             -> 64 x 17 x 17
    residual_down(128), 2 x residual(128)                                            -> 128 x 8 x 8
    residual_down(256), 2 x residual(256)                                            -> 256 x 4 x 4
    residual_down(256)                                                               -> 256 x 2 x 2
    mean over space, fc 128 (no bias)                                                -> 128

residual(N):      y = affine(con3x3(relu(affine(con3x3(x))))); out = relu(y + x)
residual_down(N): the first con has stride 2 and no padding; the skip is avg_pool 2x2 /2 of x; the two
                  are added the way dlib's ``add_prev`` does it: the output takes the larger size of
                  each dimension and a missing channel/row/column counts as zero (64 channels + 32 zero-
                  padded; at the 8 -> 3 vs 4 step the block's 3x3 output lands in the top-left of 4x4).

dlib stores batch-norm layers frozen into ``affine_`` layers (per-channel scale and shift). We fold each
into the convolution before it, in float64, so the module is plain conv/relu/pool. The descriptor is
*not* L2-normalised (dlib returns the raw fc output; its norm is close to 1 but not exactly 1), and two
faces are "the same person" for dlib when the Euclidean distance of their descriptors is below 0.6.

File format (dlib ``serialize.h``, ``dnn/core.h``, ``dnn/layers.h``, ``dnn/tensor.h``): an integer is a
control byte (bit 7: negative, bits 0-3: byte count) then that many little-endian bytes of |value|; a
float is two such integers, mantissa then exponent (value = mantissa * 2**exponent); a bool is ASCII
'0'/'1'; a string is its length then its bytes; a tensor is version, 4 dims, then raw little-endian
float32 (version 2) or dlib floats (version 1). A network serializes from the outside in: every
``add_layer`` writes its version and recurses into the layer below *before* writing its own details, so
the file holds the loss layer, then the versions of all layers (outermost first), then the input layer,
then each layer's details innermost first.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deblur_rotate.dlib_models import FACE_RECOGNITION, dlib_model_file
from deblur_rotate.errors import UserError

__all__ = [
    "DLIB_MEAN_RGB",
    "CHIP_SIZE",
    "DlibFaceRecognitionNet",
    "load_dlib_face_recognition",
    "dlib_face_chips",
    "dlib_chip_transforms",
    "chip_transforms_from_landmarks",
    "extract_face_chips",
    "descriptor_distance",
]

CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # dlib's default input means; the file carries its own
_MODEL_FILE = FACE_RECOGNITION
_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"

# (in_channels, out_channels, downsample) of the 14 residual blocks, input side first.
_BLOCKS = (
    ((32, 32, False),) * 3
    + ((32, 64, True),) + ((64, 64, False),) * 3
    + ((64, 128, True),) + ((128, 128, False),) * 2
    + ((128, 256, True),) + ((256, 256, False),) * 2
    + ((256, 256, True),)
)


# ---------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------

def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: a + b where the output has the larger of each dimension and the smaller
    tensor is zero-padded at the end of channels, rows and columns. a, b: [N, C, H, W]."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1:] == (c, h, w):
            return t
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _ResBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down`` with the affine layers folded into the convolutions."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        # dlib's con_ pads by kernel//2 only when the stride is 1; a strided con has no padding.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2 if downsample else 1,
                               padding=0 if downsample else 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(_add_prev(y, skip))


class DlibFaceRecognitionNet(nn.Module):
    """dlib's 128-D face descriptor network (ResNet-29 style), differentiable.

    Input: aligned face chips [N, 3, 150, 150], float, RGB, in ``input_range`` (the project's [-1, 1] by
    default), aligned the way ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` aligns them
    (see :func:`dlib_face_chips`). Internally pixel = (x - lo) * 255 / (hi - lo), then dlib's input
    layer computes (pixel - mean_rgb) / 256 per channel.
    Output: [N, 128] descriptors, not normalised (see the module docstring).

    A fresh instance has random weights; use :func:`load_dlib_face_recognition` to get dlib's.
    """

    def __init__(
        self,
        input_range: tuple[float, float] = (-1.0, 1.0),  # value range of the input images: (-1, 1) is the
        # project convention, (0, 255) feeds dlib's 8-bit pixels unchanged, (0, 1) also works
        mean_rgb: tuple[float, float, float] = DLIB_MEAN_RGB,  # per-channel mean (0..255 scale) that dlib's
        # input layer subtracts; the loader replaces it with the values stored in the file
    ):
        super().__init__()
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        self.input_range = (lo, hi)
        self.register_buffer("mean_rgb", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)  # con 32 7x7 /2 + affine, folded
        self.blocks = nn.ModuleList(_ResBlock(i, o, d) for i, o, d in _BLOCKS)
        self.fc = nn.Linear(256, 128, bias=False)  # dlib fc_no_bias<128>

    def to_dlib_input(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in ``input_range`` -> what dlib's input layer feeds the first conv:
        (pixel - mean_rgb) / 256 with pixel in [0, 255]."""
        lo, hi = self.input_range
        pixels = (images - lo) * (255.0 / (hi - lo))
        return (pixels - self.mean_rgb) / 256.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, 150, 150] float RGB in ``input_range`` -> descriptors [N, 128]."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"expected face chips [N, 3, {CHIP_SIZE}, {CHIP_SIZE}], got {tuple(images.shape)}")
        x = self.to_dlib_input(images)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


    def feature_maps(self, images: torch.Tensor, num_blocks: int = 6) -> list[torch.Tensor]:
        """Intermediate activations for a perceptual loss: the stem's output, then the output of each of
        the first ``num_blocks`` residual blocks. images: [N, 3, H, W] in ``input_range``, any size
        >= 32 px (not only chips). Returns a list of [N, C_k, H_k, W_k]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        x = F.max_pool2d(F.relu(self.stem(self.to_dlib_input(images))), 3, 2)
        feats = [x]
        for block in self.blocks[:num_blocks]:
            x = block(x)
            feats.append(x)
        return feats


def descriptor_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of descriptors a, b: [N, 128] -> [N]. dlib calls two faces the same person
    below 0.6. (Differentiable; the sqrt gets a tiny epsilon so identical inputs have a finite gradient.)"""
    return ((a - b).pow(2).sum(dim=-1) + 1e-12).sqrt()


# ---------------------------------------------------------------------------------------------------
# Reading dlib's serialization
# ---------------------------------------------------------------------------------------------------

class _FormatError(Exception):
    """The bytes are not what a dlib anet_type file holds."""


class _Reader:
    """Sequential reader of dlib's serialization primitives."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _FormatError(f"the file ends early (wanted {n} bytes at offset {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _FormatError("the file ends early")
        return self.data[self.pos]

    def int(self) -> int:
        start = self.pos
        control = self.take(1)[0]
        count = control & 0x0F
        if control & 0x70 or count > 8:
            raise _FormatError(f"bad integer control byte 0x{control:02x} at offset {start}")
        value = int.from_bytes(self.take(count), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        # float_details marks the special values with out-of-range exponents.
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in special:
            return special[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise _FormatError(f"float out of range before offset {self.pos}") from None

    def bool(self) -> bool:
        byte = self.take(1)[0]
        if byte not in (0x30, 0x31):
            raise _FormatError(f"bad bool byte 0x{byte:02x} at offset {self.pos - 1}")
        return byte == 0x31

    def string(self) -> str:
        n = self.int()
        if not 0 <= n <= 256:
            raise _FormatError(f"implausible string length {n} before offset {self.pos}")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError:
            raise _FormatError(f"non-ASCII layer name before offset {self.pos}") from None

    def dims(self) -> tuple[int, int, int, int]:
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape) or math.prod(shape) > 1 << 28:
            raise _FormatError(f"implausible tensor shape {shape} before offset {self.pos}")
        return shape

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version not in (1, 2):
            raise _FormatError(f"unknown tensor version {version} before offset {self.pos}")
        shape = self.dims()
        size = math.prod(shape)
        if version == 2:  # raw little-endian float32
            values = np.frombuffer(self.take(4 * size), dtype="<f4").astype(np.float32)
        else:  # one dlib float (mantissa, exponent) per element
            values = np.array([self.float() for _ in range(size)], dtype=np.float32)
        return values.reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise _FormatError(f"unknown alias_tensor version {version} before offset {self.pos}")
        return self.dims()


def _layer_plan() -> list[str]:
    """The serialized layers of dlib's anet_type, input side first: layer-detail names for add_layers,
    '<tag>' / '<skip>' for dlib's tag and skip layers (which write a version and nothing else)."""
    plan = ["con_4", "affine_", "relu_", "max_pool_2"]
    for _, _, down in _BLOCKS:
        plan += ["<tag>", "con_4", "affine_", "relu_", "con_4", "affine_"]
        plan += (["<tag>", "<skip>", "avg_pool_2"] if down else []) + ["add_prev_", "relu_"]
    return plan + ["avg_pool_2", "fc_2"]


def _split_params(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Cut a layer's flat parameter tensor into consecutive blocks of the given shapes."""
    flat = params.reshape(-1)
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != flat.size:
        raise _FormatError(f"parameter tensor has {flat.size} values, its aliases describe {sum(sizes)}")
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def _read_details(r: _Reader, expected: str) -> dict:
    """One layer's details; the name must be the one the architecture expects at this place."""
    at = r.pos
    name = r.string()
    if name != expected:
        raise _FormatError(f"expected a {expected!r} layer at offset {at}, found {name!r}")
    rec: dict = {"name": name}
    if name == "con_4":
        params = r.tensor()
        num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
        filters, biases = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        rec["weight"], rec["bias"] = _split_params(params, filters, biases)
        rec["bias"] = rec["bias"].reshape(-1)
        if filters[0] != num_filters or filters[2:] != (nr, nc):
            raise _FormatError(f"con_ layer at offset {at}: filters {filters} vs {num_filters}x{nr}x{nc}")
        rec.update(kernel=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x))
    elif name == "affine_":
        params = r.tensor()
        gamma, beta = r.alias(), r.alias()
        if (r.peek() & 0x70) == 0:  # newer files add the mode (an int; a bool byte '0'/'1' never matches)
            if r.int() != 0:
                raise _FormatError(f"affine_ layer at offset {at} is in FC mode; expected CONV mode")
        if gamma[0] != 1 or gamma[2:] != (1, 1) or gamma != beta:
            raise _FormatError(f"affine_ layer at offset {at} has per-pixel parameters {gamma}")
        g, b = _split_params(params, gamma, beta)
        rec["gamma"], rec["beta"] = g.reshape(-1), b.reshape(-1)
    elif name in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
        rec.update(window=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x))
    elif name == "fc_2":
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor()
        weights, biases = r.alias(), r.alias()
        bias_mode = r.int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
        for _ in range(4):
            r.float()
        if bias_mode != 1:
            raise _FormatError(f"fc_ layer at offset {at} has a bias; dlib's face network has none")
        if weights[:2] != (num_inputs, num_outputs):
            raise _FormatError(f"fc_ layer at offset {at}: weights {weights} vs {num_inputs}x{num_outputs}")
        (w,) = _split_params(params, weights)
        rec["weight"] = w.reshape(num_inputs, num_outputs)
    elif name not in ("relu_", "add_prev_"):
        raise _FormatError(f"unsupported layer {name!r}")
    return rec


def _read_anet(data: bytes) -> tuple[tuple[float, float, float], list[dict]]:
    """Parse a serialized dlib anet_type -> (input means, layer records input side first)."""
    r = _Reader(data)
    if r.int() != 1:
        raise _FormatError("not a dlib network (the add_loss_layer version is not 1)")
    loss = r.string()
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold
    elif loss != "loss_metric_":
        raise _FormatError(f"expected a loss_metric network, found loss {loss!r}")

    plan = _layer_plan()
    # Versions come outermost first; the innermost (the add_layer on the input layer) comes last.
    versions = {}
    for i in reversed(range(len(plan))):
        at, v = r.pos, r.int()
        token = plan[i]
        ok = (v in (2, 3)) if i == 0 else (v == 1 if token.startswith("<") else v in (1, 2))
        if not ok:
            raise _FormatError(f"layer structure differs from dlib's face network at offset {at} "
                               f"(version {v} where a {token} layer belongs)")
        versions[i] = v

    if r.string() != "input_rgb_image_sized":
        raise _FormatError("expected the input layer input_rgb_image_sized")
    means = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    if size != (CHIP_SIZE, CHIP_SIZE):
        raise _FormatError(f"the network's input is {size}, expected {CHIP_SIZE}x{CHIP_SIZE}")

    records = []
    for i, token in enumerate(plan):
        if token.startswith("<"):
            continue
        records.append(_read_details(r, token))
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output getters disabled
            r.bool()
        n_tensors = 3 if (i == 0 or versions[i] == 2) else 2  # x_grad, cached_output, grad_final/params_grad
        for _ in range(n_tensors):
            r.tensor()
        if i == 0 and versions[0] == 3:
            r.int()  # sample_expansion_factor
    if r.pos != len(data):
        raise _FormatError(f"{len(data) - r.pos} unexpected bytes after the network")
    return means, records


def _fold(conv: dict, affine: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """conv then per-channel affine -> one conv's (weight, bias), computed in float64."""
    g, b = affine["gamma"].astype(np.float64), affine["beta"].astype(np.float64)
    if g.shape[0] != conv["weight"].shape[0]:
        raise _FormatError("affine_ layer size does not match the convolution before it")
    w = conv["weight"].astype(np.float64) * g[:, None, None, None]
    bias = conv["bias"].astype(np.float64) * g + b
    return torch.from_numpy(w).float(), torch.from_numpy(bias).float()


def _fill(net: DlibFaceRecognitionNet, records: list[dict]) -> None:
    """Copy the parsed layers into ``net``, checking each one's hyper-parameters against the module."""
    it = iter(r for r in records if r["name"] not in ("relu_", "add_prev_"))

    def take(name: str) -> dict:
        rec = next(it)
        assert rec["name"] == name  # guaranteed by the plan the parser followed
        return rec

    def load_conv(conv: nn.Conv2d) -> None:
        rec, aff = take("con_4"), take("affine_")
        expect = (tuple(conv.weight.shape), conv.stride, conv.padding)
        found = (rec["weight"].shape, rec["stride"], rec["padding"])
        if expect != found:
            raise _FormatError(f"convolution {found} where dlib's face network has {expect}")
        w, b = _fold(rec, aff)
        conv.weight.copy_(w)
        conv.bias.copy_(b)

    def check_pool(name: str, window, stride) -> None:
        rec = take(name)
        if (rec["window"], rec["stride"], rec["padding"]) != (window, stride, (0, 0)):
            raise _FormatError(f"{name} {rec['window']} /{rec['stride']} pad {rec['padding']} where "
                               f"dlib's face network has {window} /{stride} pad (0, 0)")

    with torch.no_grad():
        load_conv(net.stem)
        check_pool("max_pool_2", (3, 3), (2, 2))
        for block in net.blocks:
            load_conv(block.conv1)
            load_conv(block.conv2)
            if block.downsample:
                check_pool("avg_pool_2", (2, 2), (2, 2))
        check_pool("avg_pool_2", (0, 0), (1, 1))  # avg_pool_everything
        fc = take("fc_2")
        if fc["weight"].shape != (256, 128):
            raise _FormatError(f"fc_ layer is {fc['weight'].shape}, expected 256 -> 128")
        net.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc["weight"].T)))


# ---------------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------------

def load_dlib_face_recognition(
    path: str | Path | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device = "cpu",
) -> DlibFaceRecognitionNet:
    """Read dlib's serialized face-recognition network and return it as a frozen module in eval mode.

    path: a ``dlib_face_recognition_resnet_model_v1.dat`` file (default: the packaged one).
    input_range: value range of the chips the module will be given (see :class:`DlibFaceRecognitionNet`).
    Returns a :class:`DlibFaceRecognitionNet` whose parameters have ``requires_grad=False`` (gradients
    still flow to the input). Raises :class:`UserError` if the file is missing or is not this network.
    """
    path = Path(path) if path is not None else dlib_model_file(_MODEL_FILE)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"dlib face-recognition model not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read the dlib face-recognition model {path}: {exc.strerror or exc}") from None
    net = DlibFaceRecognitionNet(input_range=input_range)
    try:
        means, records = _read_anet(data)
        _fill(net, records)
    except _FormatError as exc:
        raise UserError(f"{path} is not a valid dlib face-recognition model "
                        f"(dlib_face_recognition_resnet_model_v1.dat): {exc}") from None
    net.mean_rgb.copy_(torch.tensor(means, dtype=torch.float32).view(1, 3, 1, 1))
    net.requires_grad_(False)
    return net.eval().to(device)


# ---------------------------------------------------------------------------------------------------
# dlib's face chips (not differentiable: detection and landmarks come from dlib)
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _dlib_predictor(name: str):
    import dlib

    path = dlib_model_file(name)
    if not path.exists():
        raise UserError(f"dlib landmark model not found: {path}")
    return dlib.shape_predictor(str(path))


def _dlib_shapes(image: np.ndarray, upsample: int, landmarks: int) -> list:
    """dlib HOG detections of ``image`` (uint8 [H, W, 3]) with their 5 or 68 landmarks."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
    if landmarks not in (5, 68):
        raise ValueError(f"landmarks must be 5 or 68, got {landmarks}")
    predictor = _dlib_predictor(_PREDICTOR_5 if landmarks == 5 else _PREDICTOR_68)
    return [predictor(image, box) for box in _dlib_detector()(image, upsample)]


def dlib_face_chips(
    image: np.ndarray,
    upsample: int = 1,
    landmarks: int = 5,
    size: int = CHIP_SIZE,
    padding: float = 0.25,
) -> np.ndarray:
    """Detect faces with dlib's HOG detector and cut dlib's aligned chips, exactly as dlib's face
    recognition example does (``dlib.get_face_chip(img, shape, size, padding)``). Not differentiable.

    image: uint8 [H, W, 3] RGB. upsample: detector upsampling (finds faces about 2x smaller per step;
    more upsampling also finds more false faces). landmarks: 5 (dlib's recognition example) or 68
    (iBUG 300-W predictor) points for the alignment.
    Returns uint8 [K, size, size, 3] chips, K faces in detector order (K may be 0). Feed them to
    :class:`DlibFaceRecognitionNet` with ``deblur_rotate.files.from_uint8`` ([-1, 1], [K, 3, H, W]).
    """
    import dlib

    image = np.ascontiguousarray(image)
    chips = [dlib.get_face_chip(image, shape, size=size, padding=padding)
             for shape in _dlib_shapes(image, upsample, landmarks)]
    return np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)


def dlib_chip_transforms(
    image: np.ndarray,
    upsample: int = 1,
    landmarks: int = 5,
    size: int = CHIP_SIZE,
    padding: float = 0.25,
) -> np.ndarray:
    """The geometry of dlib's face chips, for :func:`extract_face_chips`.

    image: uint8 [H, W, 3] RGB (arguments as in :func:`dlib_face_chips`).
    Returns float64 [K, 2, 3]: affine maps from chip pixel (x, y, 1) to image pixel (u, v), pixel
    centres at integer coordinates. dlib's chip is the box ``get_face_chip_details(...).rect`` rotated by
    ``angle`` about its centre, its corners mapped onto the chip's corner pixels.
    """
    import dlib

    image = np.ascontiguousarray(image)
    out = [_chip_affine(dlib.get_face_chip_details(shape, size, padding))
           for shape in _dlib_shapes(image, upsample, landmarks)]
    return np.stack(out) if out else np.zeros((0, 2, 3))


def _chip_affine(details) -> np.ndarray:
    """dlib ``chip_details`` -> float64 [2, 3] map chip pixel (x, y, 1) -> image pixel."""
    r = details.rect
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    c, s = math.cos(details.angle), math.sin(details.angle)
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]]) - centre
    corners = corners @ np.array([[c, s], [-s, c]]) + centre  # rotate by +angle about the centre
    chip = np.array([[0, 0, 1], [details.cols - 1, 0, 1], [details.cols - 1, details.rows - 1, 1]],
                    dtype=np.float64)
    return np.linalg.solve(chip, corners).T


def chip_transforms_from_landmarks(
    landmarks: np.ndarray | torch.Tensor,
    size: int = CHIP_SIZE,
    padding: float = 0.25,
    subpixel: float = 16.0,
) -> np.ndarray:
    """dlib's face-chip geometry from given 68-point (iBUG) landmarks, no detection needed.

    landmarks: [N, 68, 2] pixel coordinates (x, y) — e.g. a dataset's ground truth or dlib's predictor.
    subpixel: dlib takes integer points, so the landmarks are scaled by this factor first and the
              transform scaled back (16: 1/16-pixel precision, which matters on 64 px faces).
    Returns float64 [N, 2, 3] chip pixel -> image pixel maps for :func:`extract_face_chips`, the same as
    ``dlib.get_face_chip_details(shape, size, padding)`` on those points.
    """
    import dlib

    points = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks,
                        dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected landmarks [N, 68, 2], got {points.shape}")
    out = []
    for pts in points * subpixel:
        parts = [dlib.point(int(round(x)), int(round(y))) for x, y in pts]
        lo, hi = pts.min(0), pts.max(0)
        box = dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
        a = _chip_affine(dlib.get_face_chip_details(dlib.full_object_detection(box, parts), size, padding))
        out.append(a / subpixel)
    return np.stack(out) if out else np.zeros((0, 2, 3))


def extract_face_chips(
    images: torch.Tensor,
    chip_to_image: torch.Tensor,
    size: int = CHIP_SIZE,
    fill: float = -1.0,
) -> torch.Tensor:
    """Differentiable face chips: bilinear resampling of ``images`` along dlib-style chip geometry.

    images: [N, 3, H, W] float (any range). chip_to_image: [N, 2, 3] affine maps chip pixel (x, y, 1)
    -> image pixel (u, v), e.g. from :func:`dlib_chip_transforms` (numpy is accepted).
    fill: value outside the image (-1 is black in the project's [-1, 1] range, as dlib fills 0).
    Returns [N, 3, size, size]. Gradients flow to ``images`` (and to ``chip_to_image``).

    On the astronaut photo this matches ``dlib.get_face_chip`` within one 8-bit level (dlib rounds).
    dlib first shrinks the image with a pyramid when the face box is more than about twice the chip
    size; plain bilinear sampling then aliases, so resize such images before cutting chips.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got {tuple(images.shape)}")
    a = torch.as_tensor(chip_to_image, dtype=images.dtype, device=images.device)
    if a.shape != (images.shape[0], 2, 3):
        raise ValueError(f"expected chip_to_image [{images.shape[0]}, 2, 3], got {tuple(a.shape)}")
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=images.dtype, device=images.device),
                            torch.arange(size, dtype=images.dtype, device=images.device), indexing="ij")
    chip = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # [S, S, 3]
    uv = torch.einsum("sti,nji->nstj", chip, a)  # [N, S, S, 2] image pixel coordinates
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=images.dtype, device=images.device)
    grid = uv * scale - 1.0  # align_corners=True: pixel centre 0 -> -1, W-1 -> +1
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out + fill
