"""The three image encoders of the paper (§3.2-3.4), on one torchvision-ResNet backbone.

* :class:`SharpEncoder` (E_s): sharp face ``[N, 3, R, R]`` -> W+ codes ``[N, num_ws, w_dim]``.
* :class:`BlurEncoder` (E_v): blurry face ``[N, 3, R, R]`` -> one W+ code per sharp frame
  ``[N, T, num_ws, w_dim]`` (T = 5 by default).
* :class:`FaceCoefficientEncoder` (E_3D): face ``[N, 3, R, R]`` -> 3DMM coefficients ``[N, C]`` in the
  layout of :class:`deblur_rotate.models.coefficients.CoeffLayout` ([id | tex | exp | 27 SH | R (pitch, yaw,
  roll, radians) | t]).

Each is "backbone -> global average pool -> fully connected", as the paper describes. The backbone is
torchvision's ResNet: ``resnet18/34/50`` exactly (the ``paper`` preset uses ResNet-50), or a narrower
ResNet built from torchvision's own ``BasicBlock``/``Bottleneck`` for CPU presets (``widths`` and
``layers`` given). Weights start random; ``pretrained_backbone`` loads a torchvision state dict from a
path the user gives (nothing is downloaded).

Latent heads add their output to ``latent_offset`` (a ``[w_dim]`` buffer; set it to the generator's
tracked mean ``G.mapping.w_avg`` before training, as pSp/e4e start from the average face), and the
last layer starts at zero, so an untrained encoder returns the average face. The coefficient head
returns ``coeff_offset + coeff_scale * linear(features)`` with both ``[C]`` buffers, so each group
starts at a sensible value (e.g. the camera distance) and is learned at a sensible scale.

Presets: :func:`encoder_config(preset, role)` gives the constructor arguments, role one of
``sharp``, ``blur``, ``face3d``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from deblur_rotate.errors import UserError
from deblur_rotate.models.io import register

__all__ = [
    "ENCODER_PRESETS",
    "BlurEncoder",
    "FaceCoefficientEncoder",
    "ResNetBackbone",
    "SharpEncoder",
    "encoder_config",
]

# Backbones per preset and role. "arch" names a torchvision ResNet; "widths"/"layers" a narrower one.
ENCODER_PRESETS: dict[str, dict[str, dict]] = {
    "micro": {  # tests: 32 px, a few thousand parameters
        "sharp": dict(arch="custom", block="basic", layers=[1, 1, 1, 1], widths=[8, 8, 16, 16]),
        "blur": dict(arch="custom", block="basic", layers=[1, 1, 1, 1], widths=[8, 8, 16, 16]),
        "face3d": dict(arch="custom", block="basic", layers=[1, 1, 1, 1], widths=[8, 8, 16, 16]),
    },
    "tiny": {  # CPU, 64 px; E_v and E_3D are bundled with the package (size budget), E_s is not
        "sharp": dict(arch="resnet18"),
        "blur": dict(arch="custom", block="basic", layers=[2, 2, 2, 2], widths=[32, 64, 128, 256]),
        "face3d": dict(arch="custom", block="basic", layers=[1, 1, 1, 1], widths=[16, 32, 64, 128]),
    },
    "paper": {  # §3.6: ResNet-50 everywhere
        "sharp": dict(arch="resnet50"),
        "blur": dict(arch="resnet50"),
        "face3d": dict(arch="resnet50"),
    },
}

_TORCHVISION_ARCHS = {"resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
                      "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
                      "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3])}


def encoder_config(preset: str, role: str, **overrides) -> dict:
    """Backbone arguments (``arch``, ``block``, ``layers``, ``widths``) of ``preset`` for ``role``
    (``sharp``, ``blur``, ``face3d``); add the head's arguments (num_ws, w_dim, ...) yourself."""
    if preset not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder preset {preset!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    if role not in ENCODER_PRESETS[preset]:
        raise ValueError(f"unknown encoder role {role!r}; choose one of sharp, blur, face3d")
    cfg = {"arch": "custom", "block": "basic", "layers": None, "widths": None}
    cfg.update(ENCODER_PRESETS[preset][role])
    cfg.update(overrides)
    return cfg


class ResNetBackbone(nn.Module):
    """torchvision ResNet without its classifier: ``[N, in_channels, H, W]`` -> pooled ``[N, feature_dim]``.

    The stem is torchvision's (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool), then four stages of
    residual blocks at strides 1, 2, 2, 2: 64 px input gives 2x2 features before pooling.
    """

    def __init__(self,
                 arch: str = "resnet18",                 # resnet18 / resnet34 / resnet50, or "custom"
                 block: str = "basic",                   # custom only: "basic" (2 convs) or "bottleneck" (x4)
                 layers: Sequence[int] | None = None,    # custom only: blocks per stage, 4 entries
                 widths: Sequence[int] | None = None,    # custom only: channels per stage, 4 entries
                 in_channels: int = 3,                   # input channels
                 ):
        super().__init__()
        if arch in _TORCHVISION_ARCHS:
            block_cls, layers = _TORCHVISION_ARCHS[arch]
            widths = [64, 128, 256, 512]
        elif arch == "custom":
            if block not in ("basic", "bottleneck"):
                raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
            block_cls = tv_resnet.BasicBlock if block == "basic" else tv_resnet.Bottleneck
            if layers is None or widths is None or len(layers) != 4 or len(widths) != 4:
                raise ValueError("a custom ResNet needs 4 stage depths (layers) and 4 stage widths (widths)")
        else:
            raise ValueError(f"unknown backbone {arch!r}: resnet18, resnet34, resnet50 or custom")
        stem_width = widths[0] if arch == "custom" else 64
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages, inplanes = [], stem_width
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(int(depth)):
                out = width * block_cls.expansion
                down = None
                if j == 0 and (stride != 1 or inplanes != out):
                    down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                blocks.append(block_cls(inplanes, width, stride=stride if j == 0 else 1, downsample=down))
                inplanes = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each residual branch: every block starts as the identity (stable at start)
        for m in self.modules():
            if isinstance(m, tv_resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, tv_resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, C, H, W]`` -> the last stage's features ``[N, feature_dim, H/32, W/32]``."""
        if images.ndim != 4:
            raise ValueError(f"expected images [N, C, H, W], got {tuple(images.shape)}")
        return self.stages(self.stem(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, C, H, W]`` (any range the encoder was trained on) -> ``[N, feature_dim]``."""
        return self.feature_map(images).mean(dim=(2, 3))

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load a torchvision ResNet state dict (e.g. ImageNet weights the user downloaded) into the
        backbone; the classifier (``fc.*``) is ignored. UserError when the file does not fit."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"backbone weights {path} not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure is a bad file
            raise UserError(f"{path}: not a readable state dict ({err})") from None
        renamed = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            key = key.replace("conv1.", "stem.0.", 1) if key.startswith("conv1.") else key
            key = key.replace("bn1.", "stem.1.", 1) if key.startswith("bn1.") else key
            if key.startswith("layer"):
                stage, rest = key[len("layer"):].split(".", 1)
                key = f"stages.{int(stage) - 1}.{rest}"
            renamed[key] = value
        own = self.state_dict()
        bad = sorted(k for k in own if k not in renamed or tuple(renamed[k].shape) != tuple(own[k].shape))
        if bad:
            raise UserError(f"{path} does not fit this backbone (missing or different: {', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''}); give weights of the same ResNet")
        self.load_state_dict({k: renamed[k] for k in own})


def _backbone_config(arch, block, layers, widths) -> dict:
    return dict(arch=arch, block=block, layers=None if layers is None else [int(v) for v in layers],
                widths=None if widths is None else [int(v) for v in widths])


class _LatentEncoder(nn.Module):
    """Backbone -> pool -> Linear -> ``frames * num_ws * w_dim`` values, added to ``latent_offset``.

    ``head_grid`` > 0 replaces the global average pool by an adaptive average pool to a ``head_grid`` x
    ``head_grid`` map that is flattened into the head: the head then sees *where* the features are (a
    global pool is blind to the face's position in the frame). 0: the paper's global pool.
    ``head_bottleneck`` > 0 factors the head into Linear(in, bottleneck) then Linear(bottleneck, out) (a
    low-rank head: the parameter count of a pooled head with a flattened grid's input)."""

    def __init__(self, frames: int, num_ws: int, w_dim: int, arch: str, block: str, layers, widths,
                 pretrained_backbone: str | None, head_grid: int = 0, head_bottleneck: int = 0):
        super().__init__()
        self.frames, self.num_ws, self.w_dim = int(frames), int(num_ws), int(w_dim)
        self.head_grid, self.head_bottleneck = int(head_grid), int(head_bottleneck)
        if self.head_grid < 0 or self.head_bottleneck < 0:
            raise ValueError(f"head_grid and head_bottleneck must be >= 0, got {head_grid}, {head_bottleneck}")
        self.backbone = ResNetBackbone(arch, block, layers, widths)
        if pretrained_backbone:
            self.backbone.load_torchvision_weights(pretrained_backbone)
        head_in = self.backbone.feature_dim * max(1, self.head_grid) ** 2
        if self.head_bottleneck:
            self.head_in = nn.Linear(head_in, self.head_bottleneck)  # [head_in] -> [bottleneck], no activation
            head_in = self.head_bottleneck
        self.head = nn.Linear(head_in, self.frames * self.num_ws * self.w_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("latent_offset", torch.zeros(self.w_dim))  # [w_dim] e.g. G.mapping.w_avg

    def set_latent_offset(self, w_avg: torch.Tensor) -> None:
        """Start from the generator's mean W (``[w_dim]``)."""
        if w_avg.shape != (self.w_dim,):
            raise ValueError(f"expected a [{self.w_dim}] offset, got {tuple(w_avg.shape)}")
        self.latent_offset.copy_(w_avg.detach())

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> the head's input [N, head_bottleneck or feature_dim * max(1, head_grid)^2]."""
        if self.head_grid <= 0:
            x = self.backbone(images)
        else:
            x = nn.functional.adaptive_avg_pool2d(self.backbone.feature_map(images), self.head_grid).flatten(1)
        return self.head_in(x) if self.head_bottleneck else x

    def _codes(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, frames, num_ws, w_dim]."""
        delta = self.head(self._features(images))
        return delta.view(-1, self.frames, self.num_ws, self.w_dim) + self.latent_offset


@register("encoders.sharp")
class SharpEncoder(_LatentEncoder):
    """E_s: sharp face ``[N, 3, R, R]`` in [-1, 1] -> W+ codes ``[N, num_ws, w_dim]`` of the generator."""

    def __init__(self,
                 num_ws: int = 10,                       # W+ entries of the generator (2 log2 R - 2)
                 w_dim: int = 256,                       # width of W
                 arch: str = "resnet18",                 # backbone (see ResNetBackbone)
                 block: str = "basic",                   # custom backbone block
                 layers: Sequence[int] | None = None,    # custom backbone depths
                 widths: Sequence[int] | None = None,    # custom backbone widths
                 pretrained_backbone: str | None = None,  # torchvision state dict to start from (not saved)
                 head_grid: int = 0,                     # 0: global pool (paper); k: k x k pooled map into the head
                 ):
        super().__init__(1, num_ws, w_dim, arch, block, layers, widths, pretrained_backbone, head_grid)
        self.config = dict(num_ws=int(num_ws), w_dim=int(w_dim), **_backbone_config(arch, block, layers, widths))
        if head_grid:  # written only when set: older config.json files stay valid
            self.config["head_grid"] = int(head_grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, 3, R, R]`` in [-1, 1] -> ``[N, num_ws, w_dim]``."""
        return self._codes(images)[:, 0]


@register("encoders.blur")
class BlurEncoder(_LatentEncoder):
    """E_v: blurry face ``[N, 3, R, R]`` in [-1, 1] -> one W+ code per sharp frame ``[N, T, num_ws, w_dim]``.

    The frames are in time order up to the forward/backward ambiguity (train with the min of both)."""

    def __init__(self,
                 num_frames: int = 5,                    # T: sharp frames per blurry image
                 num_ws: int = 10,                       # W+ entries of the generator
                 w_dim: int = 256,                       # width of W
                 arch: str = "custom",                   # backbone (see ResNetBackbone)
                 block: str = "basic",                   # custom backbone block
                 layers: Sequence[int] | None = (2, 2, 2, 2),       # custom backbone depths
                 widths: Sequence[int] | None = (32, 64, 128, 256),  # custom backbone widths
                 pretrained_backbone: str | None = None,  # torchvision state dict to start from (not saved)
                 head_grid: int = 0,                     # 0: global pool (paper); k: k x k pooled map into the head
                 head_bottleneck: int = 0,               # 0: one Linear head; b: Linear(in, b) -> Linear(b, out)
                 ):
        super().__init__(num_frames, num_ws, w_dim, arch, block, layers, widths, pretrained_backbone, head_grid,
                         head_bottleneck)
        self.config = dict(num_frames=int(num_frames), num_ws=int(num_ws), w_dim=int(w_dim),
                           **_backbone_config(arch, block, layers, widths))
        if head_grid:  # written only when set: older config.json files stay valid
            self.config["head_grid"] = int(head_grid)
        if head_bottleneck:
            self.config["head_bottleneck"] = int(head_bottleneck)

    @property
    def num_frames(self) -> int:
        return self.frames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, 3, R, R]`` in [-1, 1] -> ``[N, T, num_ws, w_dim]``."""
        return self._codes(images)


@register("encoders.face3d")
class FaceCoefficientEncoder(nn.Module):
    """E_3D: face ``[N, 3, R, R]`` in [-1, 1] -> 3DMM coefficients ``[N, num_coeffs]``.

    Output = ``coeff_offset + coeff_scale * Linear(features)``; the Linear starts at zero, so an untrained
    encoder predicts ``coeff_offset`` (set it with :meth:`set_coefficient_prior`, e.g. zeros for the
    modes, the ambient light and the training camera's translation).
    """

    def __init__(self,
                 n_id: int = 16,                         # identity modes of the morphable model
                 n_tex: int = 10,                        # albedo modes
                 n_exp: int = 10,                        # expression modes
                 arch: str = "custom",                   # backbone (see ResNetBackbone)
                 block: str = "basic",                   # custom backbone block
                 layers: Sequence[int] | None = (1, 1, 1, 1),       # custom backbone depths
                 widths: Sequence[int] | None = (16, 32, 64, 128),  # custom backbone widths
                 pretrained_backbone: str | None = None,  # torchvision state dict to start from (not saved)
                 ):
        super().__init__()
        from deblur_rotate.models.coefficients import CoeffLayout

        self.layout = CoeffLayout(int(n_id), int(n_tex), int(n_exp))
        self.config = dict(n_id=int(n_id), n_tex=int(n_tex), n_exp=int(n_exp),
                           **_backbone_config(arch, block, layers, widths))
        self.backbone = ResNetBackbone(arch, block, layers, widths)
        if pretrained_backbone:
            self.backbone.load_torchvision_weights(pretrained_backbone)
        self.head = nn.Linear(self.backbone.feature_dim, self.layout.size)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("coeff_offset", torch.zeros(self.layout.size))  # [C] prediction of a zero head
        self.register_buffer("coeff_scale", torch.ones(self.layout.size))    # [C] units of one head output

    @property
    def num_coeffs(self) -> int:
        return self.layout.size

    def set_coefficient_prior(self, offset: torch.Tensor, scale: torch.Tensor) -> None:
        """offset, scale ``[C]``: the coefficients an untrained head predicts, and each one's step size."""
        self.coeff_offset.copy_(torch.as_tensor(offset, dtype=torch.float32).reshape(self.layout.size))
        self.coeff_scale.copy_(torch.as_tensor(scale, dtype=torch.float32).reshape(self.layout.size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, 3, R, R]`` in [-1, 1] -> coefficients ``[N, C]``."""
        return self.coeff_offset + self.coeff_scale * self.head(self.backbone(images))

    def pose(self, images: torch.Tensor) -> torch.Tensor:
        """Just the rotation ``[N, 3]`` = (pitch, yaw, roll) in radians."""
        return self(images)[:, self.layout.slices()["rotation"]]
