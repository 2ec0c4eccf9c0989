"""Saving and loading networks as ``config.json`` + ``model.safetensors`` folders (no pickles).

A network class that wants to be saved this way

* keeps its constructor arguments, JSON-serialisable, in ``self.config`` (a dict), and
* is registered under a kind name with :func:`register` (e.g. ``"stylegan2.generator"``).

``save_pretrained(module, folder)`` writes::

    folder/config.json        {"_kind": "stylegan2.generator", "_class_name": "Generator", <constructor args>}
    folder/model.safetensors  the module's state_dict (parameters + persistent buffers)

``load_pretrained(cls_or_kind, folder, device)`` checks ``config.json`` against its kind's schema
(:func:`deblur_rotate.models.schema.validate_config`: a folder is untrusted input), builds the module and loads
the weights; ``cls_or_kind`` may also be an already built module, whose weights are then replaced (this is
where a checkpoint of another configuration is caught). Every key or shape mismatch raises
:class:`deblur_rotate.errors.UserError` naming the missing / unexpected keys and the differing shapes, and
so do damaged values (:func:`check_weight_values`: NaN or Inf in a tensor, an integer tensor where the
network's is floating point), naming the folder and the tensor.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # config.json files larger than this are refused unread

# kind name -> class; filled by @register. A kind "a.b" not yet registered is looked up by importing
# deblur_rotate.models.a (so load_pretrained("stylegan2.generator", ...) works without an import first).
_REGISTRY: dict[str, type] = {}


def register(kind: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` loadable by :func:`load_pretrained` under the name ``kind``."""

    def deco(cls: type) -> type:
        _REGISTRY[kind] = cls
        cls._kind = kind
        return cls

    return deco


def _resolve_kind(kind: str) -> type:
    if kind not in _REGISTRY:  # the defining module is imported on demand: models.<prefix>, evaluate.<prefix>
        for package in ("models", "evaluate"):
            try:
                importlib.import_module(f"deblur_rotate.{package}.{kind.split('.')[0]}")
            except ImportError:
                continue
            if kind in _REGISTRY:
                break
    if kind not in _REGISTRY:
        raise UserError(f"unknown network kind {kind!r}; known: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[kind]


def _kind_of(obj: Any) -> str | None:
    return getattr(obj, "_kind", None)


def _dedup_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous copies of ``state`` fit for safetensors: tied entries (the same storage, offset,
    shape and strides) are stored once and listed as aliases {alias: stored_key}; any other memory
    sharing is broken by copying."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, value in state.items():
        value = value.detach()
        ident = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 value.stride(), value.dtype)
        if value.numel() > 0 and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.to("cpu", copy=True).contiguous()
    return tensors, aliases


def write_network(module: nn.Module, folder: str | os.PathLike, config: dict) -> Path:
    """Write ``module`` (a bare module, not a DDP wrapper) as ``folder/model.safetensors`` +
    ``folder/config.json``; returns the folder.

    config: the constructor's keyword arguments, JSON-serialisable, so that ``cls(**config)`` rebuilds
            the same architecture. ``_class_name`` (and ``_kind`` if the class has one) is added.
    Tensors are moved to CPU and made contiguous; tied tensors are stored once and restored on load.
    Each file is written atomically (weights first, then the config).
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    meta = dict(config)
    meta.setdefault("_class_name", type(module).__name__)
    if _kind_of(module) is not None:
        meta.setdefault("_kind", _kind_of(module))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"  # fail on a non-JSON config before writing
    tensors, aliases = _dedup_tensors(module.state_dict())
    header = {"format": "pt"}
    if _kind_of(module) is not None:
        header["kind"] = _kind_of(module)
    if aliases:
        header["aliases"] = json.dumps(aliases)
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(tensors, metadata=header))
    atomic_write_bytes(folder / CONFIG_NAME, text.encode())
    return folder


def save_pretrained(module: nn.Module, folder: str | os.PathLike) -> Path:
    """Write a registered network (its ``.config`` holds the constructor arguments) as
    ``folder/config.json`` + ``folder/model.safetensors``; returns the folder."""
    config = getattr(module, "config", None)
    if _kind_of(module) is None or not isinstance(config, dict):
        raise TypeError(f"{type(module).__name__} is not registered with models.io.register or has no .config dict")
    return write_network(module, folder, config)


def read_config(folder: str | os.PathLike) -> dict:
    """The ``config.json`` of a saved network (with its ``_kind`` / ``_class_name`` entries)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_NAME} (a saved network is a folder with {CONFIG_NAME} + {WEIGHTS_NAME})")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:  # a network's constructor arguments are a few hundred bytes
        raise UserError(f"{path}: {size} bytes, too large for a network config (at most {MAX_CONFIG_BYTES})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of constructor arguments")
    return config


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``folder/model.safetensors`` (CPU), tied entries restored."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {WEIGHTS_NAME} "
                        f"(a saved network is a folder with {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    for alias, key in aliases.items():
        if key in state:
            state[alias] = state[key]
    return state


def load_pretrained(cls_or_kind: type | str | nn.Module, folder: str | os.PathLike,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Load a network saved by :func:`save_pretrained`.

    cls_or_kind: a registered class, its kind name (``"stylegan2.generator"``), or a built module whose
                 weights are to be replaced by the checkpoint's (its configuration must match).
    folder:      the folder holding ``config.json`` + ``model.safetensors``.
    device:      where the returned module lives.
    Returns the module in eval mode. Raises UserError on a kind, key or shape mismatch.
    """
    folder = Path(folder)
    meta = read_config(folder)
    ckpt_kind = meta.get("_kind")
    config = {k: v for k, v in meta.items() if not k.startswith("_")}

    if isinstance(cls_or_kind, nn.Module):
        module = cls_or_kind
        want_kind = _kind_of(module)
    else:
        cls = _resolve_kind(cls_or_kind) if isinstance(cls_or_kind, str) else cls_or_kind
        want_kind = _kind_of(cls)
        module = None
    if ckpt_kind is not None and want_kind is not None and ckpt_kind != want_kind:
        raise UserError(f"{folder}: checkpoint holds a {ckpt_kind!r}, expected a {want_kind!r}")

    if module is None:
        from deblur_rotate.models.schema import check_weights_file, validate_config

        # every field checked (types, ranges, implied size) before anything is built: the folder is untrusted
        validate_config(want_kind or ckpt_kind or "", meta, where=str(folder / CONFIG_NAME))
        check_weights_file(folder / WEIGHTS_NAME, want_kind or ckpt_kind or "", config)
        try:
            module = cls(**config)
        except TypeError as e:
            raise UserError(f"{folder}/{CONFIG_NAME} does not fit {cls.__name__}: {e}") from None

    state = read_weights(folder)
    check_state_dict(module, state, source=str(folder), source_config=config)
    check_weight_values(module, state, source=str(folder))
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


def check_weight_values(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise UserError when ``state`` (keys already checked by :func:`check_state_dict`) holds damaged values:
    a floating-point tensor with NaN or Inf entries (a model with them runs and writes black frames), or an
    integer / bool tensor where ``module``'s is floating point (``load_state_dict`` would cast it silently).
    The message names ``source`` and the tensors (at most 5)."""
    own = module.state_dict()
    wrong_dtype, non_finite = [], []
    for key, value in state.items():
        ref = own.get(key)
        if ref is not None and ref.is_floating_point() and not (value.is_floating_point() or value.is_complex()):
            wrong_dtype.append(f"{key} ({str(value.dtype).replace('torch.', '')}, the network's is "
                               f"{str(ref.dtype).replace('torch.', '')})")
        elif value.is_floating_point() and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                nan = int(torch.isnan(value).sum())
                what = "NaN" if nan == bad else "Inf" if nan == 0 else "NaN and Inf"
                non_finite.append(f"{key} ({bad} of {value.numel()} values {what})")

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = []
    if non_finite:
        parts.append(f"non-finite weights in tensor {few(non_finite)}")
    if wrong_dtype:
        parts.append(f"integer weights where floating point belongs: tensor {few(wrong_dtype)}")
    if parts:
        raise UserError(f"{source}: damaged weights, refusing to load them: " + "; ".join(parts) +
                        " (a diverged training run or a corrupted file: retrain, or restore the folder)")


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                     source_config: dict | None = None) -> None:
    """Raise UserError unless ``state`` has exactly the keys and shapes of ``module.state_dict()``.

    The message names missing keys, unexpected keys and differing shapes (at most 10 of each), and
    when both sides have a config, the differing constructor arguments and, if the class can name
    them (``cls.config_name(config)``), the presets ("checkpoint is preset tiny, model is preset paper").
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return

    def few(keys: list[str], fmt: Callable[[str], str] = str) -> str:
        more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
        return ", ".join(fmt(k) for k in keys[:10]) + more

    parts = []
    own_config = getattr(module, "config", None)
    if source_config is not None and isinstance(own_config, dict):
        namer = getattr(type(module), "config_name", None)
        if namer is not None:
            a, b = namer(source_config), namer(own_config)
            if a != b:
                parts.append(f"checkpoint is preset {a}, model is preset {b}")
        diff = sorted(k for k in set(own_config) | set(source_config) if own_config.get(k) != source_config.get(k))
        if diff:
            parts.append("config differs: " + few(diff, lambda k: f"{k} (checkpoint {source_config.get(k)!r}, "
                                                            f"model {own_config.get(k)!r})"))
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append("shape mismatch: " + few(shapes, lambda k: f"{k} (checkpoint {list(state[k].shape)}, "
                                                               f"model {list(own[k].shape)})"))
    raise UserError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))


def check_codes_match(network: nn.Module, num_ws: int, w_dim: int, what: str, wanted_by: str, remedy: str) -> None:
    """UserError when ``network`` (a code encoder or F) works on W+ codes of another shape than
    ``[num_ws, w_dim]``, the shape ``wanted_by`` (the generator, a preset) takes; ``what`` names the network
    (e.g. its option and folder), ``remedy`` says what to give instead."""
    if (network.num_ws, network.w_dim) != (num_ws, w_dim):
        raise UserError(f"{what} gives codes [num_ws {network.num_ws}, w_dim {network.w_dim}] but {wanted_by} "
                        f"needs {num_ws} x {w_dim} (num_ws x w_dim); {remedy}")
