"""Import pretrained StyleGAN2 weights from the rosinality ``stylegan2-pytorch`` layout.

That layout (``model.py`` of rosinality/stylegan2-pytorch) is what pSp, e4e, GFPGAN's training code
and many others ship. A checkpoint is one of

* the training checkpoint ``{"g": ..., "d": ..., "g_ema": ..., "g_optim": ..., "d_optim": ..., "args": ...}``,
* a pSp / e4e checkpoint ``{"state_dict": {"decoder.<generator key>": ..., "encoder...": ...}, "latent_avg": ...}``,
* a bare generator (or discriminator) state dict.

It is read with ``torch.load(..., weights_only=True)``: no code from the file runs (``argparse.Namespace``,
the type of rosinality's ``args`` entry, is the one class allowed besides tensors and containers).

Their generator keys -> ours (R = 2^log_size, k = 0 .. log_size - 3, r_k = 2^(k+3)):

    style.{i}.weight [w, w], .bias [w]  (i = 1..n_mlp)     -> mapping.fc{i-1}.weight / .bias
    input.input [1, C4, 4, 4]                              -> synthesis.b4.const [C4, 4, 4]
    conv1.conv.weight [1, O, I, 3, 3]                      -> synthesis.b4.conv1.weight [O, I, 3, 3]
    conv1.conv.modulation.weight [I, w], .bias [I]         -> synthesis.b4.conv1.affine.weight / .bias
    conv1.noise.weight [1]                                 -> synthesis.b4.conv1.noise_strength []
    conv1.activate.bias [O]                                -> synthesis.b4.conv1.bias
    to_rgb1.conv.weight [1, 3, C, 1, 1], .conv.modulation.*, .bias [1, 3, 1, 1]  -> synthesis.b4.torgb.*
    convs.{2k} / convs.{2k+1} (same sub-keys as conv1)     -> synthesis.b{r_k}.conv0 / .conv1
    to_rgbs.{k}                                            -> synthesis.b{r_k}.torgb
    noises.noise_0 / noise_{2k+1} / noise_{2k+2} [1,1,r,r] -> synthesis.b4.conv1 / b{r_k}.conv0 / b{r_k}.conv1
                                                              .noise_const [r, r]
    latent_avg (top level, pSp/e4e) [w] or [1, w] or [num_ws, w]  -> mapping.w_avg [w]
    convs.{2k}.conv.blur.kernel, to_rgbs.{k}.upsample.kernel (constant FIR filters) -> checked, not stored

The scale conventions are the same on both sides (weights stored ~N(0,1)/lr_mul, multiplied at run
time by lr_mul/sqrt(fan_in); biases multiplied by lr_mul; modulated conv weight times 1/sqrt(I k^2)),
so tensors are copied unchanged, only reshaped. The mapping's lr_mul (``lr_mlp``, 0.01 by default in
their code) is not stored in the file: pass ``mapping_lr_multiplier`` if the checkpoint used another.

Their discriminator keys -> ours (``which="d"``):

    convs.0.0.weight, convs.0.1.bias                       -> fromrgb.weight / .bias
    convs.{j}.conv1.0.weight, .conv1.1.bias (j >= 1, res R/2^(j-1)) -> b{res}.conv0.weight / .bias
    convs.{j}.conv2.1.weight, .conv2.2.bias                -> b{res}.conv1.weight / .bias
    convs.{j}.skip.1.weight                                -> b{res}.skip.weight
    final_conv.0.weight, final_conv.1.bias                 -> conv.weight / .bias
    final_linear.0.*, final_linear.1.*                     -> fc.*, out.*
    convs.{j}.conv2.0.kernel, convs.{j}.skip.0.kernel (blur filters) -> checked, not stored
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deblur_rotate.errors import UserError
from deblur_rotate.models.stylegan2 import Discriminator, Generator, channels_for, setup_filter


@dataclass
class ConversionReport:
    """What an import did. ``ok`` is True when every tensor of the source was used and every one of ours filled."""

    source: str                                            # file name or "<dict>", plus the sub-dict used
    which: str                                             # "g_ema", "g" or "d"
    config: dict                                           # constructor arguments of the built network
    loaded: list[str] = field(default_factory=list)        # our keys filled from the checkpoint
    constants: list[str] = field(default_factory=list)     # their constant buffers (blur kernels), checked, not stored
    unused: list[str] = field(default_factory=list)        # their keys that were not consumed
    missing: list[str] = field(default_factory=list)       # our keys with no source tensor (left at init)
    w_avg_source: str = "n/a"                              # where mapping.w_avg came from
    ignored_top_level: list[str] = field(default_factory=list)  # other top-level entries (optimizers, args, encoder)

    @property
    def ok(self) -> bool:
        return not self.unused and not self.missing

    def __str__(self) -> str:
        lines = [f"source: {self.source} ({self.which})",
                 f"loaded: {len(self.loaded)} tensors, constants checked: {len(self.constants)}",
                 f"w_avg: {self.w_avg_source}"]
        if self.unused:
            lines.append(f"unused: {', '.join(self.unused)}")
        if self.missing:
            lines.append(f"missing: {', '.join(self.missing)}")
        if self.ignored_top_level:
            lines.append(f"ignored top-level entries: {', '.join(self.ignored_top_level)}")
        return "\n".join(lines)


def _load_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({first}); "
                        "files that need arbitrary code to load (e.g. NVlabs .pkl) are refused") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _pick_state(obj: dict, which: str) -> tuple[dict, str, list[str], torch.Tensor | None]:
    """(state dict of the wanted network, where it came from, other top-level keys, latent_avg or None)."""
    latent_avg = obj.get("latent_avg") if isinstance(obj.get("latent_avg"), torch.Tensor) else None
    if which == "g_ema" and "g_ema" not in obj and isinstance(obj.get("g"), dict):
        which = "g"                                                         # no EMA copy: the raw generator
    if which in obj and isinstance(obj[which], dict):
        others = sorted(k for k in obj if k not in (which, "latent_avg"))
        return dict(obj[which]), which, others, latent_avg
    if which != "d" and isinstance(obj.get("state_dict"), dict):           # pSp / e4e
        sd = obj["state_dict"]
        dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
        if dec:
            others = sorted(k for k in obj if k not in ("state_dict", "latent_avg"))
            others += sorted({k.split(".")[0] for k in sd if not k.startswith("decoder.")})
            return dec, "state_dict['decoder.*']", others, latent_avg
    if all(isinstance(v, torch.Tensor) for k, v in obj.items() if k != "latent_avg"):
        return {k: v for k, v in obj.items() if k != "latent_avg"}, "top level", [], latent_avg
    subs = [k for k, v in obj.items() if isinstance(v, dict)]
    top = ", ".join(map(str, list(obj)[:12]))
    raise UserError(f"checkpoint has no {which!r} entry and is not a bare state dict "
                    f"(top-level keys: {top}; sub-dicts: {', '.join(map(str, subs)) or 'none'})")


def _taps_from_kernel(k2d: torch.Tensor, gain: float) -> list[float]:
    """Separable taps t with setup_filter(t) * gain == k2d (raises UserError when not separable)."""
    t = k2d.float().sum(dim=0)
    t = t / t.max()
    if not torch.allclose(setup_filter(t) * gain, k2d.float(), atol=1e-5):
        raise UserError(f"blur kernel {k2d.tolist()} is not a separable FIR filter we can rebuild")
    return [round(float(v), 6) for v in t]


def _base_max(channels: list[int], resolution: int) -> dict:
    """channel_base / channel_max reproducing ``channels``, or an explicit ``channels`` list."""
    cmax = max(channels)
    for base in (channels[-1] * resolution, cmax * 4):
        if channels_for(resolution, base, cmax) == channels:
            return dict(channel_base=base, channel_max=cmax)
    return dict(channels=channels)


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"not a rosinality StyleGAN2 {what} state dict: no {key!r} "
                        f"(keys found: {', '.join(sorted(sd)[:15])}{' ...' if len(sd) > 15 else ''})")
    return sd[key]


def _generator_mapping(sd: dict, mapping_lr_multiplier: float) -> tuple[dict, dict[str, str], dict[str, torch.Tensor]]:
    """(config, our key -> their key, their constant buffers -> expected value)."""
    w = _need(sd, "style.1.weight", "generator")
    n_mlp = max(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    n_rgbs = 1 + max([int(m.group(1)) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.bias", k))], default=-1)
    log_size = n_rgbs + 2
    resolution = 2 ** log_size
    channels = [int(_need(sd, "input.input", "generator").shape[1])]
    for k in range(n_rgbs):
        channels.append(int(_need(sd, f"convs.{2 * k}.conv.weight", "generator").shape[1]))
    taps = [1.0, 3.0, 3.0, 1.0]
    if "convs.0.conv.blur.kernel" in sd:
        taps = _taps_from_kernel(sd["convs.0.conv.blur.kernel"], 4.0)
    config = Generator.default_config()
    config.update(z_dim=int(w.shape[1]), w_dim=int(w.shape[0]), img_resolution=resolution, channel_base=None,
                  channel_max=None, mapping_layers=n_mlp, mapping_lr_multiplier=mapping_lr_multiplier,
                  resample_filter=taps, use_noise="conv1.noise.weight" in sd)
    config.update(_base_max(channels, resolution))
    config = {k: v for k, v in config.items() if v is not None}

    names: dict[str, str] = {}
    for i in range(1, n_mlp + 1):
        names[f"mapping.fc{i - 1}.weight"] = f"style.{i}.weight"
        names[f"mapping.fc{i - 1}.bias"] = f"style.{i}.bias"
    names["synthesis.b4.const"] = "input.input"

    def styled(ours: str, theirs: str, noise_idx: int) -> None:
        names[f"{ours}.weight"] = f"{theirs}.conv.weight"
        names[f"{ours}.affine.weight"] = f"{theirs}.conv.modulation.weight"
        names[f"{ours}.affine.bias"] = f"{theirs}.conv.modulation.bias"
        names[f"{ours}.bias"] = f"{theirs}.activate.bias"
        if config["use_noise"]:
            names[f"{ours}.noise_strength"] = f"{theirs}.noise.weight"
            names[f"{ours}.noise_const"] = f"noises.noise_{noise_idx}"

    def torgb(ours: str, theirs: str) -> None:
        names[f"{ours}.weight"] = f"{theirs}.conv.weight"
        names[f"{ours}.affine.weight"] = f"{theirs}.conv.modulation.weight"
        names[f"{ours}.affine.bias"] = f"{theirs}.conv.modulation.bias"
        names[f"{ours}.bias"] = f"{theirs}.bias"

    styled("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    constants: dict[str, torch.Tensor] = {}
    up_kernel = setup_filter(taps) * 4.0
    for k in range(n_rgbs):
        r = 2 ** (k + 3)
        styled(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1)
        styled(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}")
        constants[f"convs.{2 * k}.conv.blur.kernel"] = up_kernel
        constants[f"to_rgbs.{k}.upsample.kernel"] = up_kernel
    return config, names, constants


def _discriminator_mapping(sd: dict) -> tuple[dict, dict[str, str], dict[str, torch.Tensor]]:
    w0 = _need(sd, "convs.0.0.weight", "discriminator")
    n_blocks = max([int(m.group(1)) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv1\.0\.weight", k))],
                   default=0)
    log_size = n_blocks + 2
    resolution = 2 ** log_size
    ch = {resolution: int(w0.shape[0])}
    for j in range(1, n_blocks + 1):
        res = resolution // 2 ** (j - 1)
        ch[res // 2] = int(_need(sd, f"convs.{j}.conv2.1.weight", "discriminator").shape[0])
    channels = [ch[2 ** i] for i in range(2, log_size + 1)]
    taps = [1.0, 3.0, 3.0, 1.0]
    if "convs.1.conv2.0.kernel" in sd:
        taps = _taps_from_kernel(sd["convs.1.conv2.0.kernel"], 1.0)
    config = Discriminator.default_config()
    config.update(img_resolution=resolution, img_channels=int(w0.shape[1]), channel_base=None, channel_max=None,
                  resample_filter=taps)
    config.update(_base_max(channels, resolution))
    config = {k: v for k, v in config.items() if v is not None}
    names = {"fromrgb.weight": "convs.0.0.weight", "fromrgb.bias": "convs.0.1.bias",
             "conv.weight": "final_conv.0.weight", "conv.bias": "final_conv.1.bias",
             "fc.weight": "final_linear.0.weight", "fc.bias": "final_linear.0.bias",
             "out.weight": "final_linear.1.weight", "out.bias": "final_linear.1.bias"}
    constants: dict[str, torch.Tensor] = {}
    down_kernel = setup_filter(taps)
    for j in range(1, n_blocks + 1):
        res = resolution // 2 ** (j - 1)
        names.update({f"b{res}.conv0.weight": f"convs.{j}.conv1.0.weight",
                      f"b{res}.conv0.bias": f"convs.{j}.conv1.1.bias",
                      f"b{res}.conv1.weight": f"convs.{j}.conv2.1.weight",
                      f"b{res}.conv1.bias": f"convs.{j}.conv2.2.bias",
                      f"b{res}.skip.weight": f"convs.{j}.skip.1.weight"})
        constants[f"convs.{j}.conv2.0.kernel"] = down_kernel
        constants[f"convs.{j}.skip.0.kernel"] = down_kernel
    return config, names, constants


def load_rosinality_state_dict(path_or_dict: str | os.PathLike | dict, which: str = "g_ema",
                               mapping_lr_multiplier: float = 0.01, strict: bool = True,
                               device: str | torch.device = "cpu"):
    """Build our Generator (``which`` = "g_ema" or "g") or Discriminator ("d") from a rosinality checkpoint.

    path_or_dict:          a ``.pt`` file (read weights-only) or the already loaded dict.
    which:                 the network to import; a bare state dict or a pSp/e4e ``decoder.*`` works for G.
    mapping_lr_multiplier: their ``lr_mlp`` (not stored in the file; 0.01 unless trained otherwise).
    strict:                raise UserError when a tensor of theirs is left over or one of ours is not filled.
    Returns (network in eval mode on ``device``, ConversionReport).
    """
    if which not in ("g_ema", "g", "d"):
        raise ValueError(f"which must be 'g_ema', 'g' or 'd', got {which!r}")
    if isinstance(path_or_dict, dict):
        obj, src = path_or_dict, "<dict>"
    else:
        obj, src = _load_file(path_or_dict), str(path_or_dict)
    sd, where, others, latent_avg = _pick_state(obj, which)
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}

    if which == "d":
        config, names, constants = _discriminator_mapping(sd)
        net = Discriminator(**config)
    else:
        config, names, constants = _generator_mapping(sd, mapping_lr_multiplier)
        net = Generator(**config)
    report = ConversionReport(source=f"{src} [{where}]", which=which, config=config, ignored_top_level=others)

    own = net.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    shape_errors: list[str] = []
    for ours, theirs in names.items():
        if theirs not in sd:
            continue
        t = sd[theirs]
        if t.numel() != own[ours].numel():
            shape_errors.append(f"{theirs} {list(t.shape)} -> {ours} {list(own[ours].shape)}")
            continue
        new_state[ours] = t.detach().float().reshape(own[ours].shape).clone()
        used.add(theirs)
    for theirs, expected in constants.items():
        if theirs in sd:
            if not torch.allclose(sd[theirs].float(), expected, atol=1e-5):
                shape_errors.append(f"{theirs}: filter {sd[theirs].tolist()} differs from the one of convs.0")
            used.add(theirs)
            report.constants.append(theirs)

    if which != "d":
        if latent_avg is not None:
            la = latent_avg.detach().float()
            if la.ndim == 2 and la.shape[0] > 1 and not torch.allclose(la, la[:1].expand_as(la), atol=1e-5):
                report.w_avg_source = f"latent_avg {list(la.shape)} (rows differ: their mean)"
            else:
                report.w_avg_source = f"latent_avg {list(la.shape)}"
            la = la.reshape(-1, net.w_dim).mean(0)
            new_state["mapping.w_avg"] = la
        else:
            new_state["mapping.w_avg"] = own["mapping.w_avg"]
            report.w_avg_source = "not in checkpoint (zeros): call G.mapping.estimate_w_avg() before truncating"

    report.loaded = sorted(k for k in new_state if k != "mapping.w_avg" or latent_avg is not None)
    report.unused = sorted(set(sd) - used)
    report.missing = sorted(set(own) - set(new_state))
    if shape_errors:
        raise UserError(f"{report.source}: tensors of the wrong size: {'; '.join(shape_errors[:10])}")
    if strict and not report.ok:
        parts = []
        if report.unused:
            parts.append(f"keys of the checkpoint not matched: {', '.join(report.unused[:20])}"
                         f"{' ...' if len(report.unused) > 20 else ''}")
        if report.missing:
            parts.append(f"our keys not filled: {', '.join(report.missing[:20])}"
                         f"{' ...' if len(report.missing) > 20 else ''}")
        net_name = "discriminator" if which == "d" else "generator"
        raise UserError(f"{report.source}: not a complete rosinality StyleGAN2 {net_name} ({'; '.join(parts)})")
    for k, v in own.items():
        new_state.setdefault(k, v)
    net.load_state_dict(new_state, strict=True)
    return net.to(device).eval(), report


def rosinality_config(size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2) -> dict:
    """Our Generator arguments for rosinality's ``Generator(size, style_dim, n_mlp, channel_multiplier)``."""
    log2 = int(math.log2(size))
    channels = [16384 * channel_multiplier // 2 ** i if 2 ** i >= 64 else 512 for i in range(2, log2 + 1)]
    cfg = Generator.default_config()
    cfg.update(z_dim=style_dim, w_dim=style_dim, img_resolution=size, mapping_layers=n_mlp)
    cfg.update(_base_max(channels, size))
    return cfg
