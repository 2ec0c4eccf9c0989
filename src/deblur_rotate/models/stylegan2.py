"""StyleGAN2 (Karras et al., CVPR 2020) in plain PyTorch: generator (mapping + synthesis) and residual discriminator.

No compiled extension: the FIR resampling (``upfirdn2d``), the bias + leaky ReLU and the modulated
convolution are written with ordinary torch ops, so everything runs on CPU and CUDA.

Generator, shapes::

    z [N, z_dim] --mapping--> ws [N, num_ws, w_dim] --synthesis--> img [N, img_channels, R, R] in ~[-1, 1]

    num_ws = 2 * log2(R) - 2   (two convolutions per resolution from 8 px up, one at 4 px, plus the last toRGB;
                                the toRGB of a resolution shares its w with the first conv of the next one)

The synthesis network uses the "skip" architecture: a learned 4x4 constant, then per resolution
``conv0`` (3x3, upsampling x2 with a [1,3,3,1] FIR filter), ``conv1`` (3x3), each a modulated /
demodulated convolution + per-pixel noise with a learned strength + bias + leaky ReLU (gain sqrt 2),
and a ``torgb`` (1x1 modulated conv, no demodulation) whose output is added to the upsampled image.
Every weight uses the equalized learning rate (stored ~N(0, 1), multiplied at run time by
1/sqrt(fan_in)); the mapping layers have a learning-rate multiplier of 0.01.

Discriminator: fromRGB, residual blocks down to 4x4, minibatch standard deviation, 3x3 conv, two
fully connected layers -> one logit per image [N, 1].

Key layout (ours; ``convert.py`` maps the rosinality ``stylegan2-pytorch`` layout onto it)::

    mapping.fc{i}.weight [out, in], .bias [out]          mapping.w_avg [w_dim]
    synthesis.const [C4, 4, 4]
    synthesis.b{res}.conv{0,1}.affine.weight [C_in, w_dim], .affine.bias [C_in]
    synthesis.b{res}.conv{0,1}.weight [C_out, C_in, 3, 3], .bias [C_out], .noise_strength [], .noise_const [res, res]
    synthesis.b{res}.torgb.affine.*, .weight [3, C, 1, 1], .bias [3]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deblur_rotate.models.io import load_pretrained, register, save_pretrained  # noqa: F401  (re-exported)

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2


# ---------------------------------------------------------------------------------------------------------
# Presets


def _preset_table() -> dict[str, dict]:
    return {
        # CPU preset, the bundled model: 64 px, channels 256 (4..16 px), 128 (32 px), 64 (64 px).
        "tiny": dict(z_dim=256, w_dim=256, img_resolution=64, channel_base=4096, channel_max=256, mapping_layers=4),
        # Paper §3.6: 256 px, StyleGAN2 config-f channels (512 up to 64 px, 256 at 128, 128 at 256), 8 mapping layers.
        "paper": dict(z_dim=512, w_dim=512, img_resolution=256, channel_base=32768, channel_max=512, mapping_layers=8),
        # For unit tests of other modules: 32 px, 32 channels at most.
        "micro": dict(z_dim=32, w_dim=32, img_resolution=32, channel_base=256, channel_max=32, mapping_layers=2),
    }


PRESETS = tuple(_preset_table())


def stylegan2_config(preset: str, part: str = "generator", **overrides) -> dict:
    """Constructor arguments of a preset (``tiny``, ``paper``, ``micro``) as a JSON-serialisable dict.

    part: ``"generator"`` (arguments of :class:`Generator`) or ``"discriminator"`` (of :class:`Discriminator`).
    overrides: replace single arguments, e.g. ``img_resolution=32``.
    """
    table = _preset_table()
    if preset not in table:
        raise ValueError(f"unknown StyleGAN2 preset {preset!r}; choose one of {', '.join(table)}")
    p = table[preset]
    if part == "generator":
        cfg = Generator.default_config()
        cfg.update(p)
    elif part == "discriminator":
        cfg = Discriminator.default_config()
        cfg.update({k: p[k] for k in ("img_resolution", "channel_base", "channel_max")})
    else:
        raise ValueError(f"part must be 'generator' or 'discriminator', got {part!r}")
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown {part} argument(s): {', '.join(sorted(unknown))}")
    cfg.update(overrides)
    return cfg


def preset_generator(preset: str, folder: str | Path | None = None) -> "Generator":
    """A fresh :class:`Generator` of ``preset`` shaped like the one saved in ``folder`` (its ``input_mode``,
    the one architecture option a preset leaves open), ready for ``load_pretrained(G, folder)``, which
    then checks every other argument against the preset."""
    input_mode = "const"
    if folder is not None and (Path(folder) / "config.json").is_file():
        try:
            input_mode = json.loads((Path(folder) / "config.json").read_text()).get("input_mode", "const")
        except (OSError, ValueError):
            pass  # load_pretrained reports the damaged file
    if input_mode not in ("const", "dense"):
        input_mode = "const"
    return Generator(**stylegan2_config(preset, "generator"), input_mode=input_mode)


def num_ws_for(img_resolution: int) -> int:
    """W+ entries of a synthesis network at ``img_resolution`` px (a power of two >= 4): 2 log2(R) - 2."""
    return 2 * int(round(math.log2(img_resolution))) - 2


def channels_for(img_resolution: int, channel_base: int, channel_max: int) -> list[int]:
    """Channels per resolution 4, 8, ..., img_resolution: min(channel_base // res, channel_max)."""
    return [min(channel_base // (2 ** i), channel_max) for i in range(2, int(math.log2(img_resolution)) + 1)]


def _named_preset(cls, config: dict) -> str:
    """The preset whose arguments ``config`` has, else a short description of it."""
    for name in PRESETS:
        ref = stylegan2_config(name, "generator" if cls is Generator else "discriminator")
        if all(config.get(k) == v for k, v in ref.items()):
            return name
    res = config.get("img_resolution")
    try:
        chans = config.get("channels") or channels_for(res, config["channel_base"], config["channel_max"])
    except (KeyError, TypeError, ValueError):
        chans = "?"
    return f"custom ({res} px, channels {chans})"


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def check_shape(t: torch.Tensor, shape: Sequence[int | None], what: str) -> None:
    """Raise ValueError unless ``t`` has ``shape`` (None = any size on that axis)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what}: expected a tensor, got {type(t).__name__}")
    ok = t.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{what}: expected shape {want}, got {list(t.shape)}")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2)) along ``dim`` (the "pixel norm" applied to z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_lrelu(x: torch.Tensor, bias: torch.Tensor | None, gain: float = SQRT2) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * gain; bias [C] is added along dim 1."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    return F.leaky_relu(x, LRELU_SLOPE) * gain


def setup_filter(f: Sequence[float]) -> torch.Tensor:
    """Separable 1-D taps -> normalized 2-D FIR filter [k, k] (sum 1)."""
    t = torch.as_tensor(f, dtype=torch.float32)
    t = t[:, None] * t[None, :]
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter, downsample; the reference op of StyleGAN2's resampling.

    x:    [N, C, H, W].
    f:    [kh, kw] FIR filter (true convolution: the filter is flipped).
    pad:  (x0, x1, y0, y1) padding of the upsampled image; negative values crop.
    gain: overall scaling of the filter (4 for x2 upsampling keeps the signal's magnitude).
    Returns [N, C, (H*up + y0 + y1 - kh) // down + 1, (W*up + x0 + x1 - kw) // down + 1].
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    k = (f * gain).to(x.dtype).flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # [C, 1, kh, kw]
    x = F.conv2d(x, k, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 FIR upsampling: [N, C, H, W] -> [N, C, 2H, 2W]."""
    p = f.shape[0] - 2
    return upfirdn2d(x, f, up=2, pad=((p + 1) // 2 + 1, p // 2, (p + 1) // 2 + 1, p // 2), gain=4.0)


def conv2d_up2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Transposed conv (stride 2) then FIR blur: [N, G*I, H, W] -> [N, G*O, 2H, 2W] for w [G*O, I, k, k]."""
    go, i, kh, kw = w.shape
    o = go // groups
    wt = w.reshape(groups, o, i, kh, kw).transpose(1, 2).reshape(groups * i, o, kh, kw)  # [G*I, O, k, k]
    x = F.conv_transpose2d(x, wt, stride=2, groups=groups)                             # [N, G*O, 2H+k-2, ...]
    p = f.shape[0] - 2 - (kh - 1)
    pad0, pad1 = (p + 1) // 2 + 1, p // 2 + 1
    return upfirdn2d(x, f, pad=(pad0, pad1, pad0, pad1), gain=4.0)


def conv2d_down2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """FIR blur then conv (stride 2): [N, I, H, W] -> [N, O, H/2, W/2] for w [O, I, k, k]."""
    p = f.shape[0] - 2 + (w.shape[-1] - 1)
    x = upfirdn2d(x, f, pad=((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=2)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, resample_filter: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """Modulated (and demodulated) convolution.

    x:       [N, I, H, W] input activations.
    weight:  [O, I, k, k] weight, equalized-lr gain already applied.
    styles:  [N, I] per-sample scaling of the input channels.
    up:      1, or 2 for a transposed conv + FIR blur (``resample_filter`` [f, f] needed).
    fused:   True: one grouped convolution with per-sample weights (fast on CUDA);
             False: the reference, scale activations before and after a shared convolution.
             Both compute  y_o = d_o * sum_i w_oi * (s_i x_i),  d_o = 1/sqrt(sum_ik (w_oik s_i)^2 + 1e-8).
    Returns [N, O, H*up, W*up].
    """
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    check_shape(x, [n, i, None, None], "modulated_conv2d x")
    check_shape(styles, [n, i], "modulated_conv2d styles")
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    dcoefs = None
    if demodulate:  # sum_ik (w_oik s_i)^2 = sum_i s_i^2 (sum_k w_oik^2): a [N, I] x [I, O] product
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    if not fused:
        x = x * styles.reshape(n, i, 1, 1)
        x = conv2d_up2(x, weight, resample_filter) if up == 2 else F.conv2d(x, weight, padding=kh // 2)
        if dcoefs is not None:
            x = x * dcoefs.reshape(n, o, 1, 1)
        return x

    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)              # [N, O, I, k, k] per-sample weights
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, *x.shape[2:])                                  # [1, N*I, H, W]
    w = w.reshape(n * o, i, kh, kw)                                        # [N*O, I, k, k]
    if up == 2:
        x = conv2d_up2(x, w, resample_filter, groups=n)
    else:
        x = F.conv2d(x, w, padding=kh // 2, groups=n)
    return x.reshape(n, o, *x.shape[2:])


# ---------------------------------------------------------------------------------------------------------
# Layers


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate: y = act(x @ (W * lr/sqrt(in)).T + b * lr).

    Stored: W ~ N(0, 1) / lr and b = bias_init / lr, so the effective initial values are N(0, 1/in) and bias_init.
    """

    def __init__(self,
                 in_features: int,            # input width
                 out_features: int,           # output width
                 bias: bool = True,           # add a bias (before the activation)
                 bias_init: float = 0.0,      # initial bias value (1 for the style affines: styles start at 1)
                 lr_multiplier: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
                 activation: str = "linear",  # "linear" or "lrelu" (leaky ReLU 0.2, gain sqrt 2)
                 ):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)  # [out, in]
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_lrelu(F.linear(x, w), b)


class EqualConv2d(nn.Module):
    """Conv layer with equalized learning rate, optional x2 FIR downsampling and bias + leaky ReLU."""

    def __init__(self,
                 in_channels: int,                             # input channels
                 out_channels: int,                            # output channels
                 kernel_size: int,                             # square kernel size (1 or 3 here)
                 bias: bool = True,                            # add a bias (before the activation)
                 activation: str = "lrelu",                    # "linear" or "lrelu"
                 down: int = 1,                                # 1, or 2 = blur with the FIR filter then stride 2
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps used when down == 2
                 ):
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        self.activation = activation
        self.down = down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))  # [O, I, k, k]
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H/down, W/down]
        w = self.weight * self.weight_gain
        if self.down == 2:
            x = conv2d_down2(x, w, self.resample_filter)
        else:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if self.activation == "lrelu":
            return bias_lrelu(x, self.bias)
        return x if self.bias is None else x + self.bias.reshape(1, -1, 1, 1)


class MappingNetwork(nn.Module):
    """z [N, z_dim] -> ws [N, num_ws, w_dim]: pixel norm, MLP with leaky ReLU, broadcast, truncation."""

    def __init__(self,
                 z_dim: int,                    # latent Z width
                 w_dim: int,                    # latent W width
                 num_ws: int,                   # number of copies of w handed to the synthesis network
                 num_layers: int = 8,           # fully connected layers (8 in StyleGAN2)
                 lr_multiplier: float = 0.01,   # learning-rate multiplier of every layer
                 w_avg_beta: float = 0.995,     # decay of the tracked mean of W (update_w_avg)
                 ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", EqualLinear(z_dim if idx == 0 else w_dim, w_dim,
                                                  activation="lrelu", lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))  # [w_dim] running mean of W, the truncation centre

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim].

        truncation_psi:    ws <- w_avg + psi * (ws - w_avg); 1 = none, 0 = every sample is w_avg.
        truncation_cutoff: truncate only the first ``cutoff`` of the num_ws entries (None = all).
        update_w_avg:      also move w_avg towards the batch mean of w (training only; see update_w_avg).
        """
        check_shape(z, [None, self.z_dim], "G.mapping z")
        x = normalize_2nd_moment(z.float())
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)                               # [N, w_dim]
        if update_w_avg:
            self.update_w_avg(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)                      # [N, num_ws, w_dim]
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cut], truncation_psi), ws[:, cut:]], dim=1)
        return ws

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor) -> None:
        """w_avg <- beta * w_avg + (1 - beta) * mean(w); w is [N, w_dim] or [N, num_ws, w_dim]."""
        w = w.detach().reshape(-1, self.w_dim)
        self.w_avg.copy_(w.mean(0).lerp(self.w_avg, self.w_avg_beta))

    @torch.no_grad()
    def estimate_w_avg(self, num_samples: int = 10000, seed: int = 0, batch: int = 1000) -> torch.Tensor:
        """Set w_avg to the mean of w over ``num_samples`` random z (for checkpoints without one); returns it."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=self.w_avg.device)
        done = 0
        while done < num_samples:
            b = min(batch, num_samples - done)
            z = torch.randn(b, self.z_dim, generator=g).to(self.w_avg.device)
            total += self.forward(z)[:, 0].double().sum(0)
            done += b
        self.w_avg.copy_((total / num_samples).float())
        return self.w_avg.clone()


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally x2 upsampling) + noise * strength + bias + leaky ReLU."""

    def __init__(self,
                 in_channels: int,                             # input channels
                 out_channels: int,                            # output channels
                 w_dim: int,                                   # latent W width (input of the style affine)
                 resolution: int,                              # output resolution of this layer
                 kernel_size: int = 3,                         # conv kernel size
                 up: int = 1,                                  # 1, or 2 = upsample x2 (transposed conv + FIR)
                 use_noise: bool = True,                       # add per-pixel noise with a learned strength
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for upsampling
                 ):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, out_channels, resolution, up
        self.use_noise = use_noise
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)       # w [N, w_dim] -> styles [N, I]
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))  # [O, I, k, k]
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.bias = nn.Parameter(torch.zeros(out_channels))               # [O]
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))          # [] scalar
            self.register_buffer("noise_const", torch.randn(resolution, resolution))  # [R, R] for noise_mode='const'
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = True) -> torch.Tensor:
        """x [N, I, R/up, R/up], w [N, w_dim] -> [N, O, R, R]."""
        r_in = self.resolution // self.up
        check_shape(x, [None, self.in_channels, r_in, r_in], f"SynthesisLayer({self.resolution} px) x")
        styles = self.affine(w)                                            # [N, I]
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True, up=self.up,
                             resample_filter=self.resample_filter, fused=fused_modconv)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            elif noise_mode == "const":
                noise = self.noise_const.to(x.dtype)
            else:
                raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
            x = x + noise * self.noise_strength
        return bias_lrelu(x, self.bias)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv (no demodulation) + bias: features -> image contribution."""

    def __init__(self,
                 in_channels: int,    # input feature channels
                 out_channels: int,   # image channels (3)
                 w_dim: int,          # latent W width
                 ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))  # [3, C, 1, 1]
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(out_channels))              # [3]

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w)                                            # [N, C]
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=False, fused=fused_modconv)
        return x + self.bias.reshape(1, -1, 1, 1)                         # [N, 3, R, R]


class SynthesisBlock(nn.Module):
    """One resolution: (4 px) const -> conv1, or (8 px and up) conv0 (up x2) -> conv1; then torgb + upsampled skip."""

    def __init__(self,
                 in_channels: int,                             # channels of the previous block, 0 = first (4 px) block
                 out_channels: int,                            # channels of this block
                 w_dim: int,                                   # latent W width
                 resolution: int,                              # resolution of this block
                 img_channels: int = 3,                        # image channels
                 use_noise: bool = True,                       # noise inputs in the convs
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for upsampling
                 input_mode: str = "const",                    # first block: "const" or "dense" (see SynthesisNetwork)
                 ):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.img_channels = (
            in_channels, out_channels, resolution, img_channels)
        self.input_mode = input_mode
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))  # [C, 4, 4] learned input
            if input_mode == "dense":  # + a layout from the first code, starting at zero (= the const input)
                self.dense = EqualLinear(w_dim, out_channels * resolution * resolution)
                nn.init.zeros_(self.dense.weight)
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, use_noise=use_noise,
                                        resample_filter=resample_filter)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, use_noise=use_noise,
                                    resample_filter=resample_filter)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim)
        self.num_conv = 1 if in_channels == 0 else 2
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "random", fused_modconv: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """ws [N, num_conv + 1, w_dim]; x [N, C_in, R/2, R/2] (None at 4 px); img [N, 3, R/2, R/2] or None.
        Returns x [N, C_out, R, R], img [N, 3, R, R]."""
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)   # [N, C, 4, 4]
            if self.input_mode == "dense":
                x = x + self.dense(ws[:, 0]).view_as(x)
            x = self.conv1(x, ws[:, 0], noise_mode, fused_modconv)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, fused_modconv)
            x = self.conv1(x, ws[:, 1], noise_mode, fused_modconv)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] ("skip" architecture)."""

    def __init__(self,
                 w_dim: int,                                   # latent W width
                 img_resolution: int,                          # output resolution, a power of two >= 4
                 channels: Sequence[int],                      # channels at 4, 8, ..., img_resolution px
                 img_channels: int = 3,                        # image channels
                 use_noise: bool = True,                       # noise inputs
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for upsampling
                 input_mode: str = "const",                    # 4 px input: "const" (StyleGAN2) or "dense"
                 ):
        """input_mode "dense" adds to the learned constant a 4 x 4 layout computed from the first W+ code
        (a linear layer, zero at the start), as ProGAN's input layer did: the image's coarse layout (pose,
        position) then comes from the code directly instead of through the styles alone. An option of the
        CPU preset (it learns an unaligned, multi-pose autoencoder faster); StyleGAN2's is "const"."""
        super().__init__()
        if input_mode not in ("const", "dense"):
            raise ValueError(f"input_mode must be 'const' or 'dense', got {input_mode!r}")
        log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        if len(channels) != log2 - 1:
            raise ValueError(f"channels must list {log2 - 1} values (4..{img_resolution} px), got {len(channels)}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.num_ws = num_ws_for(img_resolution)
        for k, res in enumerate(self.block_resolutions):
            setattr(self, f"b{res}", SynthesisBlock(channels[k - 1] if k > 0 else 0, channels[k], w_dim, res,
                                                    img_channels, use_noise, resample_filter, input_mode))

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R].

        noise_mode:    'random' (fresh noise each call), 'const' (the registered noise buffers: deterministic),
                       'none' (no noise).
        fused_modconv: grouped-conv path or the reference path (same math). Default: grouped conv when
                       not training and on CUDA; on CPU the reference path is faster (grouped convs are slow there).
        """
        check_shape(ws, [None, self.num_ws, self.w_dim], "G.synthesis ws")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        if fused_modconv is None:
            fused_modconv = not self.training and ws.is_cuda
        ws = ws.float()
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, w_idx: w_idx + block.num_conv + 1], noise_mode, fused_modconv)
            w_idx += block.num_conv
        return img


@register("stylegan2.generator")
class Generator(nn.Module):
    """StyleGAN2 generator: ``G.mapping(z) -> ws``, ``G.synthesis(ws) -> img``, ``G(z)`` both.

    Attributes: z_dim, w_dim, num_ws, img_resolution, img_channels, config (the constructor arguments).
    """

    def __init__(self,
                 z_dim: int = 512,                             # latent Z width
                 w_dim: int = 512,                             # latent W width
                 img_resolution: int = 256,                    # output resolution (power of two >= 4)
                 img_channels: int = 3,                        # image channels
                 channel_base: int = 32768,                    # channels at r px: min(channel_base // r, channel_max)
                 channel_max: int = 512,                       # cap on the channels
                 channels: Sequence[int] | None = None,        # explicit channels for 4..img_resolution px (wins)
                 mapping_layers: int = 8,                      # fully connected layers of the mapping network
                 mapping_lr_multiplier: float = 0.01,          # learning-rate multiplier of the mapping network
                 w_avg_beta: float = 0.995,                    # decay of the tracked mean of W
                 use_noise: bool = True,                       # noise inputs in the synthesis convs
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for x2 upsampling
                 input_mode: str = "const",                    # 4 px input: "const" or "dense" (SynthesisNetwork)
                 ):
        super().__init__()
        self.config = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                           channel_base=channel_base, channel_max=channel_max,
                           channels=None if channels is None else [int(c) for c in channels],
                           mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
                           w_avg_beta=w_avg_beta, use_noise=use_noise,
                           resample_filter=[float(v) for v in resample_filter])
        if input_mode != "const":  # written only when not the default: older config.json files stay the same
            self.config["input_mode"] = input_mode
        if channels is None:
            if img_resolution < 4 or img_resolution & (img_resolution - 1):
                raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
            channels = channels_for(img_resolution, channel_base, channel_max)
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, img_resolution, img_channels
        self.channels = list(channels)
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, channels, img_channels, use_noise, resample_filter,
                                          input_mode)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta)

    @staticmethod
    def default_config() -> dict:
        return dict(z_dim=512, w_dim=512, img_resolution=256, img_channels=3, channel_base=32768, channel_max=512,
                    channels=None, mapping_layers=8, mapping_lr_multiplier=0.01, w_avg_beta=0.995, use_noise=True,
                    resample_filter=[1.0, 3.0, 3.0, 1.0])

    @classmethod
    def config_name(cls, config: dict) -> str:
        return _named_preset(cls, config)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", fused_modconv: bool | None = None) -> torch.Tensor:
        """z [N, z_dim] -> img [N, img_channels, R, R] (mapping then synthesis)."""
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    def update_w_avg(self, ws: torch.Tensor) -> None:
        """Move mapping.w_avg towards the batch mean of ``ws`` ([N, w_dim] or [N, num_ws, w_dim])."""
        self.mapping.update_w_avg(ws)


# ---------------------------------------------------------------------------------------------------------
# Discriminator


class MinibatchStd(nn.Module):
    """Append the mean standard deviation over groups of samples as extra feature map(s)."""

    def __init__(self,
                 group_size: int = 4,     # samples per group (min(group_size, N) is used; N must be divisible by it)
                 num_channels: int = 1,   # extra feature maps (the channels are split into this many groups)
                 ):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C + num_channels, H, W]
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        f = self.num_channels
        if n % g:
            raise ValueError(f"minibatch-stddev: batch size {n} is not divisible by the group size {g}")
        y = x.reshape(g, n // g, f, c // f, h, w)                    # [G, n, F, c, H, W]
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()             # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(n // g, f, 1, 1)            # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)                                     # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: (conv0 3x3 -> conv1 3x3 down x2) + skip (1x1 down x2, no bias), sum / sqrt 2."""

    def __init__(self,
                 in_channels: int,                             # input channels (= channels at this resolution)
                 out_channels: int,                            # output channels (= channels at half resolution)
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for downsampling
                 ):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, resample_filter=resample_filter)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=2, resample_filter=resample_filter)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation="linear", down=2,
                                resample_filter=resample_filter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, I, R, R] -> [N, O, R/2, R/2]
        return (self.conv1(self.conv0(x)) + self.skip(x)) / SQRT2


@register("stylegan2.discriminator")
class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: img [N, img_channels, R, R] -> logits [N, 1]."""

    def __init__(self,
                 img_resolution: int = 256,                    # input resolution (power of two >= 8)
                 img_channels: int = 3,                        # image channels
                 channel_base: int = 32768,                    # channels at r: min(channel_base // r, channel_max)
                 channel_max: int = 512,                       # cap on the channels
                 channels: Sequence[int] | None = None,        # explicit channels for 4..img_resolution px
                 mbstd_group_size: int = 4,                    # minibatch-stddev group size
                 mbstd_num_channels: int = 1,                  # minibatch-stddev features
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for downsampling
                 ):
        super().__init__()
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
                           channel_max=channel_max, channels=None if channels is None else [int(c) for c in channels],
                           mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
                           resample_filter=[float(v) for v in resample_filter])
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        if channels is None:
            channels = channels_for(img_resolution, channel_base, channel_max)
        log2 = int(math.log2(img_resolution))
        if len(channels) != log2 - 1:
            raise ValueError(f"channels must list {log2 - 1} values (4..{img_resolution} px), got {len(channels)}")
        ch = {2 ** (i + 2): c for i, c in enumerate(channels)}
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]     # R, R/2, ..., 8
        self.fromrgb = EqualConv2d(img_channels, ch[img_resolution], 1)
        for res in self.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(ch[res], ch[res // 2], resample_filter))
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels)
        self.conv = EqualConv2d(ch[4] + mbstd_num_channels, ch[4], 3)
        self.fc = EqualLinear(ch[4] * 16, ch[4], activation="lrelu")
        self.out = EqualLinear(ch[4], 1)

    @staticmethod
    def default_config() -> dict:
        return dict(img_resolution=256, img_channels=3, channel_base=32768, channel_max=512, channels=None,
                    mbstd_group_size=4, mbstd_num_channels=1, resample_filter=[1.0, 3.0, 3.0, 1.0])

    @classmethod
    def config_name(cls, config: dict) -> str:
        return _named_preset(cls, config)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, img_channels, R, R] in [-1, 1] -> logits [N, 1] (real > 0)."""
        r = self.img_resolution
        check_shape(img, [None, self.img_channels, r, r], "D img")
        x = self.fromrgb(img.float())
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        x = self.conv(self.mbstd(x))                                       # [N, C4, 4, 4]
        return self.out(self.fc(x.flatten(1)))                            # [N, 1]
