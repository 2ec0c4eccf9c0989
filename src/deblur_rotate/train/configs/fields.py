"""Command-line options generated from a stage's config dataclass, so that each setting lives in one place.

A config field declares its option with :func:`option` (help text, option strings, choices); its default is the
dataclass default, and ``--help`` states it (or the preset table's values when the default is ``None`` and the
field is in the class's ``PRESET_DEFAULTS``). :func:`add_config_options` adds one argparse option per field,
:func:`config_from_args` builds the config from the parsed namespace. Torch-free.

Why not a library (tyro, jsonargparse, simple-parsing): each spells options its own way (jsonargparse keeps
underscores, simple-parsing's booleans take a value and negate as ``--noflag``, tyro owns the whole parser),
and this CLI's existing spellings (``--lr-decay``, ``--no-mirror``, ``--middle-only``, ``--ema-kimg`` in
thousands of images, ``-o``) must keep working; the generator below is plain argparse driven by
``dataclasses.fields``.

Booleans are ``--name/--no-name`` (``argparse.BooleanOptionalAction``) everywhere; ``off_flags`` adds other
spellings that switch one off (``--middle-only`` for ``all_frames``).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["add_config_options", "config_from_args", "default_text", "option", "option_fields"]

_META = "cli"  # the key of a field's metadata that holds its option description


def option(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 (argparse's name)
           flags: tuple[str, ...] | None = None,     # option strings; default ("--field-name",)
           off_flags: tuple[str, ...] = (),          # booleans: further strings that set the field False
           required: bool = False,                   # the option must be given
           choices: tuple | None = None,             # allowed values
           path: bool = False,                       # a file or folder: parsed as a Path, stored as str
           nargs: int | str | None = None,           # argparse nargs (e.g. 3 for [n_id, n_tex, n_exp])
           metavar: str | tuple | None = None,       # argparse metavar
           scale: float | None = None,               # config value = command-line value x scale (e.g. kimg -> images)
           default_help: str | None = None,          # the default as --help states it, where the value says too little
           group: str | None = None,                 # name of a mutually exclusive group (the class's CLI_GROUPS)
           cli: bool = True,                         # False: a config field with no command-line option
           default_factory: Any = dataclasses.MISSING,
           ) -> Any:
    """A dataclass field with its command-line option (see the module docstring)."""
    meta = {_META: {"help": help, "flags": flags, "off_flags": tuple(off_flags), "required": required,
                    "choices": choices, "path": path, "nargs": nargs, "metavar": metavar, "scale": scale,
                    "default_help": default_help, "group": group, "cli": cli}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_PLAIN_SPEC = option().metadata[_META]


def _spec(f: dataclasses.Field) -> dict:
    return f.metadata.get(_META) or _PLAIN_SPEC  # a plain field: an option with option()'s defaults


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of config class ``cls`` that have a command-line option, the class's own before inherited ones."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}
    own = set(cls.__dict__.get("__annotations__", {})) - inherited
    fields = [f for f in dataclasses.fields(cls) if _spec(f)["cli"]]
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def _base_type(hint) -> type:
    """int for ``int | None``, etc."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (str,)
        return item
    return hint if isinstance(hint, type) else str


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def default_text(cls, f: dataclasses.Field) -> str:
    """The default of field ``f`` as ``--help`` states it ("" when there is nothing to say)."""
    spec = _spec(f)
    if spec["default_help"] is not None:
        return spec["default_help"]
    presets = getattr(cls, "PRESET_DEFAULTS", {})
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None and presets and all(f.name in row for row in presets.values()):
        def per_preset(value):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            return _fmt(value / spec["scale"] if numeric and spec["scale"] else value)

        return "per preset: " + ", ".join(f"{name} {per_preset(row[f.name])}" for name, row in presets.items())
    if default is None or default == "" or spec["required"]:
        return ""
    if spec["scale"]:
        default = default / spec["scale"]
    return _fmt(default)


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """Add one option per field of config class ``cls`` (those declared with ``cli=True``)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in option_fields(cls):
        spec = _spec(f)
        flags = spec["flags"] or ("--" + f.name.replace("_", "-"),)
        text = default_text(cls, f)
        help_text = spec["help"] + (f" (default: {text})" if text else "")
        target = parser
        if spec["group"]:
            if spec["group"] not in groups:
                required = getattr(cls, "CLI_GROUPS", {}).get(spec["group"], False)
                groups[spec["group"]] = parser.add_mutually_exclusive_group(required=required)
            target = groups[spec["group"]]
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool and spec["group"]:  # one of exclusive choices: only its positive form
            target.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
            continue
        if kind is bool:
            target.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            for off in spec["off_flags"]:
                target.add_argument(off, dest=f.name, action="store_false", help=f"the same as --no-{flags[-1][2:]}")
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "required": spec["required"],
                                  "type": Path if spec["path"] else kind}
        if spec["choices"] is not None:
            kwargs["choices"] = spec["choices"]
        if spec["nargs"] is not None:
            kwargs["nargs"] = spec["nargs"]
        if spec["metavar"] is not None or spec["choices"] is None:  # else argparse lists the choices
            kwargs["metavar"] = spec["metavar"] or flags[-1].lstrip("-").replace("-", "_").upper()
        # argparse runs string defaults through `type` (Path("") is "."): a "" or scaled default is applied
        # by config_from_args instead
        kwargs["default"] = None if (spec["path"] or spec["scale"] or default == "") else default
        target.add_argument(*flags, **kwargs)


def config_from_args(cls, args: argparse.Namespace, **values: Any):
    """An instance of config class ``cls`` from parsed options (fields without one keep their default);
    ``values`` set further fields (options that are not config fields, e.g. a file turned into a dict)."""
    out = dict(values)
    for f in option_fields(cls):
        if f.name in out or not hasattr(args, f.name):
            continue
        spec = _spec(f)
        value = getattr(args, f.name)
        if value is None:
            continue  # not given: the dataclass default
        if isinstance(value, Path):
            value = str(value)
        if spec["scale"]:
            value = value * spec["scale"]
        out[f.name] = value
    return cls(**out)
