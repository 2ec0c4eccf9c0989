"""What a network's ``config.json`` may hold: a schema per registered kind, checked before anything is built.

A model folder is untrusted input (it may come from anyone), and ``cls(**config)`` with a hostile config
fails late and badly: a list of strings where ints belong ends in ``ValueError: invalid literal for int()``,
a resolution that is no power of two in a shape error, and channel or layer sizes in the millions try to
allocate hundreds of gigabytes before failing. :func:`validate_config` checks every field of a config
against the schema of its kind (type, range, power-of-two resolution, list lengths, the fields' agreement)
and then the size the config implies (parameter count and memory at batch 1, computed from the fields by
:func:`implied_size` without building anything) against :data:`MAX_PARAMETERS` and :data:`MAX_MEMORY_BYTES`.
Every problem is a :class:`ConfigError` (a :class:`~deblur_rotate.errors.UserError`) worded
``<path of config.json>: <field>: <what is wrong>``.

A config may not name files: ``pretrained_backbone`` (a path the encoders' constructors read with
``torch.load``) is refused in a config; the training commands take it from their command line
(``--backbone-weights``), from the user.

This module imports neither torch nor the networks, so it can run before them (and costs nothing at start-up).
The schemas follow the constructors of :mod:`deblur_rotate.models.stylegan2`, :mod:`~deblur_rotate.models.encoders`,
:mod:`~deblur_rotate.models.fusion` and :mod:`deblur_rotate.evaluate.baselines`; a new constructor argument
needs an entry here (an unknown field is refused).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deblur_rotate.errors import UserError

__all__ = ["ConfigError", "MAX_MEMORY_BYTES", "MAX_PARAMETERS", "SCHEMAS", "check_weights_file", "full_config",
           "implied_size", "validate_config"]

# Ceilings on what one network's config may imply. The largest network of the `paper` preset (E_v: ResNet-50
# and a 2048 x (5 x 14 x 512) head) has about 1e8 parameters; these leave room for bigger custom models while
# refusing configs whose construction alone would take gigabytes.
MAX_PARAMETERS = 500_000_000
MAX_MEMORY_BYTES = 4 * 1024 ** 3   # float32 parameters + activations of one image, bytes
DEFAULT_INPUT_RESOLUTION = 256     # encoders' activations are estimated at this input side when none is known
_BYTES = 4                         # float32


class ConfigError(UserError):
    """A ``config.json`` field that is wrong; the message is ``<config path>: <field>: <what is wrong>``."""


# ----------------------------------------------------------------------------------------------- field types


@dataclass(frozen=True)
class Field:
    """One constructor argument: its JSON type and allowed values.

    kind: "int", "float", "bool", "str", "int_list" or "float_list".
    lo, hi: inclusive range of the value (of each entry for lists).
    choices: allowed strings (kind "str").
    nullable: JSON null is allowed (the constructor's None).
    length: (min, max) entries of a list.
    power_of_two: the int must be a power of two.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    length: tuple[int, int] = (0, 0)
    power_of_two: bool = False


def _int(lo: int, hi: int, **kw) -> Field:
    """An integer field in [lo, hi]."""
    return Field("int", lo, hi, **kw)


def _float(lo: float, hi: float, **kw) -> Field:
    """A finite number in [lo, hi] (JSON integers are accepted too)."""
    return Field("float", lo, hi, **kw)


BOOL = Field("bool")
REFUSED = Field("refused")
_ARCHS = ("resnet18", "resnet34", "resnet50", "custom")
_FILTER = Field("float_list", -1e3, 1e3, length=(1, 16))

_BACKBONE = {
    "arch": Field("str", choices=_ARCHS),
    "block": Field("str", choices=("basic", "bottleneck")),
    "layers": Field("int_list", 0, 64, nullable=True, length=(4, 4)),
    "widths": Field("int_list", 1, 4096, nullable=True, length=(4, 4)),
    "pretrained_backbone": REFUSED,
}

SCHEMAS: dict[str, dict[str, Field]] = {
    "stylegan2.generator": {
        "z_dim": _int(1, 4096), "w_dim": _int(1, 4096),
        "img_resolution": _int(4, 1024, power_of_two=True), "img_channels": _int(1, 4),
        "channel_base": _int(1, 1 << 24), "channel_max": _int(1, 4096),
        "channels": Field("int_list", 1, 4096, nullable=True, length=(1, 9)),
        "mapping_layers": _int(1, 32), "mapping_lr_multiplier": _float(1e-6, 100.0),
        "w_avg_beta": _float(0.0, 1.0), "use_noise": BOOL, "resample_filter": _FILTER,
        "input_mode": Field("str", choices=("const", "dense")),
    },
    "stylegan2.discriminator": {
        "img_resolution": _int(8, 1024, power_of_two=True), "img_channels": _int(1, 4),
        "channel_base": _int(1, 1 << 24), "channel_max": _int(1, 4096),
        "channels": Field("int_list", 1, 4096, nullable=True, length=(1, 9)),
        "mbstd_group_size": _int(1, 256), "mbstd_num_channels": _int(1, 64), "resample_filter": _FILTER,
    },
    "encoders.sharp": {
        "num_ws": _int(1, 64), "w_dim": _int(1, 4096), **_BACKBONE, "head_grid": _int(0, 32),
    },
    "encoders.blur": {
        "num_frames": _int(1, 64), "num_ws": _int(1, 64), "w_dim": _int(1, 4096), **_BACKBONE,
        "head_grid": _int(0, 32), "head_bottleneck": _int(0, 65536),
    },
    "encoders.face3d": {
        "n_id": _int(0, 1024), "n_tex": _int(0, 1024), "n_exp": _int(0, 1024), **_BACKBONE,
    },
    "fusion": {
        "num_ws": _int(1, 64), "w_dim": _int(1, 4096), "num_layers": _int(1, 64), "hidden": _int(1, 16384),
        "residual": BOOL, "index_dim": _int(0, 4096),
    },
    "baselines.direct_deblur": {
        "in_channels": _int(1, 4), "num_frames": _int(1, 64), "widths": Field("int_list", 1, 4096, length=(1, 10)),
    },
}

# the constructor defaults a missing field takes (only those the cross-field checks and the size need)
_DEFAULTS: dict[str, dict] = {
    "stylegan2.generator": dict(z_dim=512, w_dim=512, img_resolution=256, img_channels=3, channel_base=32768,
                                channel_max=512, channels=None, mapping_layers=8, use_noise=True,
                                input_mode="const"),
    "stylegan2.discriminator": dict(img_resolution=256, img_channels=3, channel_base=32768, channel_max=512,
                                    channels=None, mbstd_group_size=4, mbstd_num_channels=1),
    "encoders.sharp": dict(num_ws=10, w_dim=256, arch="resnet18", block="basic", layers=None, widths=None,
                           head_grid=0),
    "encoders.blur": dict(num_frames=5, num_ws=10, w_dim=256, arch="custom", block="basic", layers=[2, 2, 2, 2],
                          widths=[32, 64, 128, 256], head_grid=0, head_bottleneck=0),
    "encoders.face3d": dict(n_id=16, n_tex=10, n_exp=10, arch="custom", block="basic", layers=[1, 1, 1, 1],
                            widths=[16, 32, 64, 128]),
    "fusion": dict(num_ws=10, w_dim=256, num_layers=3, hidden=256, residual=True, index_dim=16),
    "baselines.direct_deblur": dict(in_channels=3, num_frames=5, widths=[32, 64, 128, 256]),
}

# fields named when the implied size is over a ceiling
_SIZE_FIELDS = {
    "stylegan2.generator": "w_dim/z_dim/channel_base/channel_max/channels/mapping_layers",
    "stylegan2.discriminator": "channel_base/channel_max/channels",
    "encoders.sharp": "arch/layers/widths/num_ws/w_dim/head_grid",
    "encoders.blur": "arch/layers/widths/num_frames/num_ws/w_dim/head_grid/head_bottleneck",
    "encoders.face3d": "arch/layers/widths/n_id/n_tex/n_exp",
    "fusion": "w_dim/hidden/num_layers/index_dim",
    "baselines.direct_deblur": "widths/num_frames",
}


def _describe(value) -> str:
    """A short rendering of a JSON value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_number(field: Field, value, name: str, where: str) -> None:
    """ConfigError unless ``value`` is a number of ``field``'s kind and range."""
    if field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name}: must be an integer, got {_describe(value)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name}: must be a finite number, got {_describe(value)}")
    if (field.lo is not None and value < field.lo) or (field.hi is not None and value > field.hi):
        raise ConfigError(f"{where}: {name}: {_describe(value)} is out of range (allowed {field.lo:g} to {field.hi:g})")
    if field.power_of_two and value & (value - 1):
        raise ConfigError(f"{where}: {name}: {value} is not a power of two (allowed {int(field.lo)}, "
                          f"{int(field.lo) * 2}, ..., {int(field.hi)})")


def _check_field(field: Field, value, name: str, where: str) -> None:
    """ConfigError unless ``value`` fits ``field``."""
    if field.kind == "refused":
        if value is None:
            return
        raise ConfigError(f"{where}: {name}: a model folder may not name files to read (got {_describe(value)}); "
                          "backbone weights are given to the training commands on their command line "
                          "(--backbone-weights)")
    if value is None:
        if field.nullable:
            return
        raise ConfigError(f"{where}: {name}: must not be null")
    if field.kind in ("int", "float"):
        _check_number(field, value, name, where)
    elif field.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name}: must be true or false, got {_describe(value)}")
    elif field.kind == "str":
        if not isinstance(value, str) or value not in field.choices:
            raise ConfigError(f"{where}: {name}: must be one of {', '.join(field.choices)}; got {_describe(value)}")
    else:  # lists
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name}: must be a list, got {_describe(value)}")
        lo, hi = field.length
        if not lo <= len(value) <= hi:
            count = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ConfigError(f"{where}: {name}: must list {count} values, got {len(value)}")
        entry = Field("int" if field.kind == "int_list" else "float", field.lo, field.hi)
        for i, item in enumerate(value):
            _check_number(entry, item, f"{name}[{i}]", where)


# ------------------------------------------------------------------------------------------ cross-field rules


def _log2(resolution: int) -> int:
    """log2 of a power of two."""
    return int(resolution).bit_length() - 1


def _style_channels(c: dict) -> list[int]:
    """Channels at 4, 8, ..., img_resolution px of a generator / discriminator config."""
    if c.get("channels") is not None:
        return list(c["channels"])
    return [min(c["channel_base"] // (2 ** i), c["channel_max"]) for i in range(2, _log2(c["img_resolution"]) + 1)]


def _check_generator(c: dict, where: str) -> None:
    """Channels list length and zero channels."""
    n = _log2(c["img_resolution"]) - 1
    if c.get("channels") is not None and len(c["channels"]) != n:
        raise ConfigError(f"{where}: channels: must list {n} values (4 .. {c['img_resolution']} px), "
                          f"got {len(c['channels'])}")
    if min(_style_channels(c)) < 1:
        raise ConfigError(f"{where}: channel_base: {c['channel_base']} gives no channels at {c['img_resolution']} px "
                          f"(channels there are channel_base // resolution)")


def _check_discriminator(c: dict, where: str) -> None:
    """As the generator's, plus the minibatch-stddev split of the 4 px channels."""
    _check_generator(c, where)
    ch4 = _style_channels(c)[0]
    if ch4 % c["mbstd_num_channels"]:
        raise ConfigError(f"{where}: mbstd_num_channels: {c['mbstd_num_channels']} does not divide the {ch4} "
                          "channels at 4 px")


def _check_backbone(c: dict, where: str) -> None:
    """A custom backbone needs its 4 depths and widths."""
    if c["arch"] == "custom":
        for name in ("layers", "widths"):
            if c.get(name) is None:
                raise ConfigError(f"{where}: {name}: a custom backbone (arch \"custom\") needs 4 values")


_CROSS_CHECKS: dict[str, Callable[[dict, str], None]] = {
    "stylegan2.generator": _check_generator,
    "stylegan2.discriminator": _check_discriminator,
    "encoders.sharp": _check_backbone,
    "encoders.blur": _check_backbone,
    "encoders.face3d": _check_backbone,
}


# ---------------------------------------------------------------------------------------------- implied size


def _linear(a: int, b: int, bias: bool = True) -> int:
    """Parameters of a dense layer a -> b."""
    return a * b + (b if bias else 0)


def _generator_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values at batch 1) of a StyleGAN2 generator config."""
    w, z, rgb = c["w_dim"], c["z_dim"], c["img_channels"]
    noise = 1 if c["use_noise"] else 0
    params = _linear(z, w) + (c["mapping_layers"] - 1) * _linear(w, w)
    acts = 0
    prev = 0
    for k, ch in enumerate(_style_channels(c)):
        res = 4 * 2 ** k

        def layer(cin: int, cout: int) -> int:
            return _linear(w, cin) + cout * cin * 9 + cout + noise

        if k == 0:
            params += ch * 16 + (_linear(w, ch * 16) if c["input_mode"] == "dense" else 0) + layer(ch, ch)
        else:
            params += layer(prev, ch) + layer(ch, ch)
            acts += ch * prev * 9 * 2  # the per-sample modulated weights of the two convs
        params += _linear(w, ch) + rgb * ch + rgb  # torgb
        acts += 6 * ch * res * res + rgb * res * res
        prev = ch
    return params, acts


def _discriminator_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values at batch 1) of a StyleGAN2 discriminator config."""
    chans = _style_channels(c)
    res_top = c["img_resolution"]
    ch = {4 * 2 ** k: v for k, v in enumerate(chans)}
    params = _linear(c["img_channels"], ch[res_top])
    acts = 0
    res = res_top
    while res > 4:
        a, b = ch[res], ch[res // 2]
        params += _linear(a * 9, a) + _linear(a * 9, b) + a * b
        acts += 4 * a * res * res
        res //= 2
    c4 = ch[4]
    params += _linear((c4 + c["mbstd_num_channels"]) * 9, c4) + _linear(c4 * 16, c4) + _linear(c4, 1)
    return params, acts


_TV = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
       "resnet50": ("bottleneck", [3, 4, 6, 3])}


def _backbone_size(c: dict, resolution: int) -> tuple[int, int, int]:
    """(parameters, activation values, feature_dim) of the encoders' ResNet backbone at input side ``resolution``."""
    if c["arch"] in _TV:
        block, layers = _TV[c["arch"]]
        widths, stem = [64, 128, 256, 512], 64
    else:
        block, layers, widths, stem = c["block"], c["layers"], c["widths"], c["widths"][0]
    expansion = 4 if block == "bottleneck" else 1
    params = 3 * stem * 49 + 2 * stem
    side = max(1, resolution // 2)
    acts = 4 * stem * side * side
    side = max(1, side // 2)
    inplanes = stem
    for i, (depth, width) in enumerate(zip(layers, widths)):
        if i:
            side = max(1, (side + 1) // 2)
        for j in range(depth):
            out = width * expansion
            if j == 0 and (i > 0 or inplanes != out):
                params += inplanes * out + 2 * out
            if block == "bottleneck":
                params += inplanes * width + width * width * 9 + width * out + 2 * (2 * width + out)
            else:
                params += inplanes * width * 9 + width * width * 9 + 4 * width
            acts += 6 * out * side * side
            inplanes = out
    return params, acts, inplanes


def _latent_encoder_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values at batch 1) of E_s / E_v."""
    params, acts, feat = _backbone_size(c, resolution or DEFAULT_INPUT_RESOLUTION)
    head_in = feat * max(1, c.get("head_grid", 0)) ** 2
    out = c.get("num_frames", 1) * c["num_ws"] * c["w_dim"]
    if c.get("head_bottleneck", 0):
        params += _linear(head_in, c["head_bottleneck"])
        head_in = c["head_bottleneck"]
    return params + _linear(head_in, out), acts + out


def _face3d_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values at batch 1) of E_3D."""
    params, acts, feat = _backbone_size(c, resolution or DEFAULT_INPUT_RESOLUTION)
    coeffs = c["n_id"] + c["n_tex"] + c["n_exp"] + 27 + 6
    return params + _linear(feat, coeffs), acts + coeffs


def _fusion_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values for one W+ code) of F."""
    widths = [c["w_dim"] + 3 + c["index_dim"]] + [c["hidden"]] * (c["num_layers"] - 1) + [c["w_dim"]]
    params = c["num_ws"] * c["index_dim"] + sum(_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    return params, c["num_ws"] * sum(widths)


def _direct_deblur_size(c: dict, resolution: int | None) -> tuple[int, int]:
    """(parameters, activation values at batch 1) of the cascade baseline's U-Net."""
    widths, cin = c["widths"], c["in_channels"]

    def double(a: int, b: int) -> int:
        return _linear(a * 9, b) + _linear(b * 9, b)

    params = double(cin, widths[0])
    for a, b in zip(widths[:-1], widths[1:]):
        params += _linear(a * 9, b) + double(b, b) + double(a + b, a)
    params += _linear(widths[0] * 9, c["num_frames"] * cin)
    side = resolution or DEFAULT_INPUT_RESOLUTION
    acts = sum(6 * w * (side // 2 ** k) ** 2 for k, w in enumerate(widths))
    return params, acts


_SIZES: dict[str, Callable[[dict, int | None], tuple[int, int]]] = {
    "stylegan2.generator": _generator_size,
    "stylegan2.discriminator": _discriminator_size,
    "encoders.sharp": _latent_encoder_size,
    "encoders.blur": _latent_encoder_size,
    "encoders.face3d": _face3d_size,
    "fusion": _fusion_size,
    "baselines.direct_deblur": _direct_deblur_size,
}


def full_config(kind: str, config: dict) -> dict:
    """A *validated* config of ``kind`` with the constructor defaults filled in for missing fields (metadata
    left out)."""
    return {**_DEFAULTS[kind], **{k: v for k, v in config.items() if not k.startswith("_")}}


def implied_size(kind: str, config: dict, resolution: int | None = None) -> tuple[int, int]:
    """(parameter count, bytes of float32 parameters + activations of one image) that a *validated* config of
    ``kind`` implies, computed from its fields alone (nothing is built). ``resolution``: the input side the
    encoders work at (default 256; generators and discriminators use their own)."""
    params, acts = _SIZES[kind](full_config(kind, config), resolution)
    return int(params), int(_BYTES * (params + acts))


def check_weights_file(path: str | os.PathLike, kind: str, config: dict,
                       shown: str | os.PathLike | None = None) -> None:
    """UserError when the weights file ``path`` is larger than any float64 copy of the network that the
    (validated) ``config`` of ``kind`` describes could be, so that reading it cannot claim more memory than the
    network itself. ``shown``: how the message names the file (default ``path``). Kinds without a schema and
    missing files pass (the loader reports those)."""
    path = Path(path)
    if kind not in SCHEMAS or not path.is_file():
        return
    params, memory = implied_size(kind, config)
    limit = 8 * params + 2 * memory + (64 << 20)  # fp64 parameters, generous room for buffers and the header
    size = path.stat().st_size
    if size > limit:
        raise UserError(f"{shown or path}: {size / 2 ** 20:.1f} MiB, far more than the {params:.3g}-parameter "
                        "network of its config.json can hold; refusing to read it (a damaged or foreign file?)")


# ---------------------------------------------------------------------------------------------------- entry


def validate_config(kind: str, config: dict, where: str, resolution: int | None = None) -> dict:
    """Check a network config (``config.json`` contents, ``_``-prefixed metadata allowed) of registered ``kind``.

    where:      how the messages name the file (``<folder>/config.json``).
    resolution: the input side the network will see, for the memory estimate of encoders (optional).
    Returns the constructor arguments (metadata left out). Raises :class:`ConfigError`
    (``<where>: <field>: <what is wrong>``) on an unknown field, a value of the wrong type or range, fields
    that disagree, or a size over :data:`MAX_PARAMETERS` / :data:`MAX_MEMORY_BYTES`. A kind without a schema
    (a class registered outside this package) only gets the metadata checks.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: (top level): expected a JSON object of constructor arguments")
    for meta in ("_kind", "_class_name"):
        if meta in config and not isinstance(config[meta], str):
            raise ConfigError(f"{where}: {meta}: must be a string, got {_describe(config[meta])}")
    args = {k: v for k, v in config.items() if not (isinstance(k, str) and k.startswith("_"))}
    schema = SCHEMAS.get(kind)
    if schema is None:
        return args
    for name, value in args.items():
        if name not in schema:
            raise ConfigError(f"{where}: {name}: not a field of a {kind} network (known: {', '.join(schema)})")
        _check_field(schema[name], value, name, where)
    full = {**_DEFAULTS[kind], **args}
    check = _CROSS_CHECKS.get(kind)
    if check is not None:
        check(full, where)
    params, memory = implied_size(kind, args, resolution)
    if params > MAX_PARAMETERS or memory > MAX_MEMORY_BYTES:
        raise ConfigError(f"{where}: {_SIZE_FIELDS[kind]}: the config implies a network of {params:.3g} parameters "
                          f"and {memory / 1024 ** 3:.3g} GiB at batch 1; "
                          f"the limits are {MAX_PARAMETERS:.3g} parameters "
                          f"and {MAX_MEMORY_BYTES / 1024 ** 3:g} GiB (a damaged or hostile config.json?)")
    return args
