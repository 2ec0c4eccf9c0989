"""Weights and training state on disk, without pickles, written atomically.

Two kinds of files, kept apart (as BasicSR keeps ``.pth`` weights apart from ``.state`` files):

* **Weights** of one network: a folder with ``config.json`` (the constructor's keyword arguments; keys
  starting with ``_`` are metadata such as ``_class_name``) and ``model.safetensors`` (its state_dict:
  parameters + persistent buffers). :func:`save_network` / :func:`load_network` / :func:`load_weights`.
  Written and read by :mod:`deblur_rotate.models.io` (one implementation for both).
* **Training state**: one ``.safetensors`` file holding every tensor (optimizer moments, RNG states,
  EMA weights, ...) plus, in its header metadata, a JSON description of the nested structure (dicts,
  lists, tuples, ints, floats, strings, bools, None) that says where each tensor goes.
  :func:`save_training_state` / :func:`load_training_state`. Reading one never runs code.

A training run keeps its checkpoints as ``<run>/checkpoints/step-XXXXXXXX/`` folders, each complete
(the networks' weight folders + ``training_state.safetensors``). A new one is written under a temporary
name and renamed into place; then ``checkpoints/latest.json`` is replaced atomically to point at it;
only then are the older ones beyond ``keep`` removed. A process killed at any moment therefore leaves
the last complete checkpoint readable (:func:`write_checkpoint`, :func:`latest_checkpoint`).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_bytes, atomic_write_json
from deblur_rotate.models.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_state_dict,
    check_weight_values,
    read_config,
    read_weights,
    write_network,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "STATE_NAME",
    "save_network",
    "load_network",
    "load_weights",
    "check_state_dict",
    "save_training_state",
    "load_training_state",
    "rng_state",
    "set_rng_state",
    "write_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "checkpoint_step",
    "clean_stale",
    "check_name",
    "resumed_config_mismatch",
]

STATE_NAME = "training_state.safetensors"
_STATE_FORMAT = "deblur_rotate.training_state"
_STATE_VERSION = 1
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------------------------- weights


def save_network(module: nn.Module, folder: str | os.PathLike, config: dict) -> Path:
    """Write ``module`` (a DDP wrapper is unwrapped) as ``folder/model.safetensors`` + ``folder/config.json``
    with ``config`` as its constructor arguments (see :func:`deblur_rotate.models.io.write_network`)."""
    from deblur_rotate.train.distributed import unwrap

    return write_network(unwrap(module), folder, config)


def load_weights(module: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Copy the weights of ``folder/model.safetensors`` into the built ``module`` (any device; a DDP
    wrapper is unwrapped). Raises UserError naming missing/unexpected keys and shape mismatches, and tensors
    with NaN/Inf values or an integer dtype where the network's is floating point."""
    from deblur_rotate.train.distributed import unwrap

    folder = Path(folder)
    state = read_weights(folder)
    bare = unwrap(module)
    check_state_dict(bare, state, source=str(folder))
    check_weight_values(bare, state, source=str(folder))
    bare.load_state_dict(state, strict=True)
    return module


def load_network(folder: str | os.PathLike, build: Callable[..., nn.Module],
                 device: str | torch.device = "cpu") -> nn.Module:
    """Build a network from ``folder/config.json`` and load ``folder/model.safetensors`` into it.

    build:  a class or a factory function, called as ``build(**config)`` (metadata keys starting with
            ``_`` left out).
    device: where the returned module lives.
    Returns the module in eval mode (call ``.train()`` to fine-tune it). Raises UserError when the
    folder is incomplete, the config does not fit ``build`` or keys/shapes differ (naming them).
    """
    from deblur_rotate.models.schema import validate_config

    folder = Path(folder)
    meta = read_config(folder)
    kind = meta.get("_kind") or getattr(build, "_kind", None) or ""
    # the same field checks as load_pretrained (a kind without a schema only gets the metadata checks)
    config = validate_config(str(kind), meta, where=str(folder / CONFIG_NAME))
    try:
        module = build(**config)
    except TypeError as e:
        name = getattr(build, "__name__", repr(build))
        raise UserError(f"{folder}/{CONFIG_NAME} does not fit {name}: {e}") from None
    load_weights(module, folder)
    return module.to(device).eval()


# -------------------------------------------------------------------------------------- training state


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Nested python/tensor structure -> JSON-able structure; tensors go to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{len(tensors):06d}{path}"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"t": key}
    if isinstance(obj, np.ndarray):
        key = f"{len(tensors):06d}{path}"
        raw = np.ascontiguousarray(obj)
        tensors[key] = torch.from_numpy(raw.view(np.uint8).reshape(-1).copy())
        return {"n": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"training state: key {k!r} at {path or '/'} is not a str/int/float/bool")
            items.append([k, _encode(v, tensors, f"{path}/{k}")])
        return {"d": items}
    if isinstance(obj, list):
        return {"l": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, tuple):
        return {"u": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    raise TypeError(f"training state: {type(obj).__name__} at {path or '/'} cannot be stored without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(obj, dict):
        return obj
    if "t" in obj:
        return tensors[obj["t"]]
    if "n" in obj:
        data = tensors[obj["n"]].numpy().tobytes()
        return np.frombuffer(data, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "d" in obj:
        return {k: _decode(v, tensors) for k, v in obj["d"]}
    if "l" in obj:
        return [_decode(v, tensors) for v in obj["l"]]
    if "u" in obj:
        return tuple(_decode(v, tensors) for v in obj["u"])
    raise ValueError(f"unknown entry {obj!r}")


def save_training_state(path: str | os.PathLike, state: dict) -> None:
    """Atomically write ``state`` (nested dicts/lists/tuples of tensors, numpy arrays, ints, floats,
    strings, bools, None, e.g. optimizer ``state_dict()``s, the step, RNG states, EMA weights, the
    GradScaler state) to one safetensors file. Tensors are stored as CPU copies; floats keep every bit
    (JSON round-trips Python floats exactly, NaN/inf included). Raises TypeError on anything else."""
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "")
    header = {"format": _STATE_FORMAT, "version": str(_STATE_VERSION), "tree": json.dumps(tree)}
    atomic_write_bytes(path, st_save(tensors, metadata=header))


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`save_training_state`; tensors come back on CPU (an optimizer's
    ``load_state_dict`` moves them to its parameters' device). Raises UserError if it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such training-state file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _STATE_FORMAT:
                raise UserError(f"{path}: not a deblur-rotate training-state file")
            if int(meta.get("version", "0")) > _STATE_VERSION:
                raise UserError(f"{path}: training-state version {meta['version']} is newer than this program's")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            return _decode(json.loads(meta["tree"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """This process's random states: python ``random``, numpy's legacy global generator, torch CPU,
    and torch CUDA (this process's current device only) when CUDA is initialised. For :func:`set_rng_state`."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    """Restore states taken by :func:`rng_state` (the CUDA part, where CUDA is available, goes to the
    current device)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


# -------------------------------------------------------------------------------- checkpoint folders

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The step number in a ``step-XXXXXXXX`` checkpoint folder's name."""
    m = _STEP_DIR.match(Path(folder).name)
    if m is None:
        raise UserError(f"{folder}: not a checkpoint folder (expected a name like step-00001000)")
    return int(m.group(1))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder ``root/latest.json`` points at (or, if that file is missing, the newest complete
    ``step-*`` folder); None when there is no checkpoint."""
    root = Path(root)
    pointer = root / "latest.json"
    if pointer.is_file():
        try:
            target = root / json.loads(pointer.read_text())["folder"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            target = None
        if target is not None and (target / STATE_NAME).is_file():
            return target
    found = [p for p in list_checkpoints(root) if (p / STATE_NAME).is_file()]
    return found[-1] if found else None


def resumed_config_mismatch(run_dir: str | os.PathLike, name: str,
                            expected: dict) -> tuple[Path, dict, list[str]] | None:
    """Whether the newest checkpoint of ``run_dir`` holds network ``name`` built otherwise than ``expected`` (its
    constructor config): ``(checkpoint folder, saved config, differing keys)``, or None when it matches or there
    is no such checkpoint. Each stage words its own UserError from it."""
    folder = latest_checkpoint(Path(run_dir) / "checkpoints")
    if folder is None or not (folder / name).is_dir():
        return None
    saved = {k: v for k, v in read_config(folder / name).items() if not k.startswith("_")}
    if saved == expected:
        return None
    return folder, saved, sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))


def _remove_tree(path: Path) -> None:
    """Rename out of the way first (atomic), then delete: a kill mid-delete never leaves a partial
    ``step-*`` folder that looks complete."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale(root: str | os.PathLike) -> None:
    """Delete leftovers (``.tmp-*``, ``.trash-*``) of a process killed while writing or pruning."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_checkpoint(root: str | os.PathLike, step: int, write: Callable[[Path], None], keep: int = 2) -> Path:
    """Write checkpoint ``step`` as ``root/step-XXXXXXXX`` and point ``root/latest.json`` at it.

    write: fills the given (empty, temporary) folder; if it raises, the temporary folder is removed,
           the previous checkpoints stay as they were, and the exception propagates.
    keep:  how many checkpoints to keep (>= 1; 2 keeps ``latest`` and the one before it).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    name = f"step-{int(step):08d}"
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        final = root / name
        if final.exists():  # the same step written again (e.g. after a resume): replace it
            _remove_tree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / "latest.json", {"folder": name, "step": int(step)})
    for old in list_checkpoints(root)[: -max(1, keep)]:
        if old.name != name:
            _remove_tree(old)
    return final


def check_name(name: str) -> str:
    """A network/optimizer name usable as a folder name (letters, digits, ``_ . -``)."""
    if not isinstance(name, str) or not _NAME_OK.match(name) or name.endswith(".safetensors"):
        raise ValueError(f"name {name!r} must be letters, digits, '_', '.', '-' (and not end in .safetensors)")
    return name
