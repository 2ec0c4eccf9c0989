"""Model folders are untrusted input: the one validation that ``run``, ``demo``, ``evaluate``, ``serve`` and the
trainers share, and what a folder says about the data its model was trained on.

:func:`validate_model_folder` checks a model folder (``pipeline.json`` + one sub-folder per network, see
:mod:`deblur_rotate.pipeline`) completely before any network is built:

* ``pipeline.json``: every field (kind, format version, roles, resolution, frames, crop, storage dtype, the
  training facts below);
* containment: the folder is read only inside itself. Every file the loaders read (``pipeline.json``, each
  network's ``config.json`` and ``model.safetensors``, E_3D's ``face_model.json``) must resolve, symlinks
  followed, to a regular file inside the folder; only safetensors and JSON are read (no pickles), and a
  ``face_model.json`` that names a file elsewhere (a BFM path) is refused;
* every network's ``config.json`` against the schema of its kind (:func:`deblur_rotate.models.schema.validate_config`:
  types, ranges, power-of-two resolution, a ceiling on parameters and memory), the weights' file size against
  what that config can hold, and the networks' agreement (W+ layout, resolution, frames).

Problems are :class:`~deblur_rotate.errors.UserError` (exit status 2 at the CLI); a bad field reads
``<folder>/<net>/config.json: <field>: <what is wrong>`` (or ``<folder>/pipeline.json: <field>: ...``).
:meth:`deblur_rotate.pipeline.DeblurRotatePipeline.from_pretrained` calls it, so does anything that loads a
model through it; :func:`deblur_rotate.models.io.load_pretrained` (what the trainers load networks with) runs
the same config schema on single network folders.

Training facts (``pipeline.json``, written by :func:`deblur_rotate.pipeline.assemble_model`)::

    "trained_on_synthetic_only": true,                       # only synthetic faces (SynthBMFD) were seen
    "view_range_deg": {"yaw": [-60, 60], "pitch": [-20, 20]}  # views (absolute, degrees) the model saw
    "refine": {"steps": 20, "lr": 0.02, "per_frame": true,   # default blur-consistency refinement (refine.py)
               "max_start_error": 0.15, "precision": "auto", "residual": true}

Folders without them fall back (:func:`training_facts`): the bundled model is synthetic-only with the rig's
yaw of +-60 degrees; a folder whose ``extra.trained_on`` names SynthBMFD likewise; anything else is unknown
(no warnings). :func:`model_warnings` and :func:`view_warnings` word what ``run`` and ``serve`` tell the user.

Imports stay light (no torch): this module runs before any network is built.
"""
from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deblur_rotate.errors import UserError
from deblur_rotate.refine import RefineSettings

__all__ = [
    "BUNDLED_FACTS",
    "FACE_MODEL_FILE",
    "MAX_JSON_BYTES",
    "ModelFolderInfo",
    "NETWORK_KINDS",
    "PIPELINE_FILE",
    "REQUIRED_ROLES",
    "SYNTHETIC_WARNING",
    "TrainingFacts",
    "model_warnings",
    "read_pipeline_json",
    "training_facts",
    "validate_model_folder",
    "validate_pipeline_fields",
    "view_warnings",
]

PIPELINE_FILE = "pipeline.json"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FACE_MODEL_FILE = "face_model.json"  # E_3D's side file (train/face3d.py): which morphable model, which camera
MAX_JSON_BYTES = 1 << 20  # JSON files of a model folder larger than this are refused unread
# role in pipeline.json "networks" -> registered kind (models/io.py)
NETWORK_KINDS: dict[str, str] = {
    "generator": "stylegan2.generator",
    "blur_encoder": "encoders.blur",
    "face3d_encoder": "encoders.face3d",
    "fusion": "fusion",
}
REQUIRED_ROLES = ("generator", "blur_encoder")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
README_REAL_DATA = "Your own data: FFHQ, 300VW, multi-view video, VIDTIMIT"

SYNTHETIC_WARNING = (
    "this model was trained on synthetic faces only (SynthBMFD renders of a procedural head): on a real photo it "
    "returns a synthetic-looking face, not the person's. For real photos, train it on real data: README section "
    f"\"{README_REAL_DATA}\" (deblur-rotate prepare, then the training stages with --preset paper)")


# ------------------------------------------------------------------------------------------- training facts


@dataclass(frozen=True)
class TrainingFacts:
    """What a model folder says about its training data."""

    synthetic_only: bool | None = None       # True: only synthetic faces; False: real data too; None: unknown
    view_range_deg: dict | None = None       # {"yaw": [lo, hi], "pitch": [lo, hi]} absolute degrees; None: unknown
    source: str = "unknown"                  # where the facts come from (pipeline.json, a fallback)


# the bundled tiny model (its pipeline.json predates the fields): SynthBMFD, rig of 8 cameras over 120 degrees,
# heads pitching within about +-20 degrees
BUNDLED_FACTS = TrainingFacts(True, {"yaw": [-60.0, 60.0], "pitch": [-20.0, 20.0]},
                              "the bundled model (SynthBMFD, rig yaw +-60 deg)")


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same existing folder."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def training_facts(meta: dict, folder: str | os.PathLike | None = None) -> TrainingFacts:
    """The training facts of a (validated) ``pipeline.json`` ``meta`` of ``folder``, with the fallbacks of the
    module docstring for folders written before the fields existed."""
    synthetic = meta.get("trained_on_synthetic_only")
    views = meta.get("view_range_deg")
    if views is None:  # serve.py's spelling, top level or under extra: {"yaw_deg": [lo, hi], "pitch_deg": [lo, hi]}
        other = meta.get("view_range") or (meta.get("extra") or {}).get("view_range")
        if isinstance(other, dict):
            converted = {k[:-4]: v for k, v in other.items() if k in ("yaw_deg", "pitch_deg")}
            views = converted if converted and _valid_view_range(converted) else None
    if synthetic is not None or views is not None:
        return TrainingFacts(synthetic, views, f"{PIPELINE_FILE}")
    if folder is not None and _same_folder(Path(folder), Path(__file__).resolve().parent / "assets" / "model"):
        return BUNDLED_FACTS
    trained_on = str((meta.get("extra") or {}).get("trained_on", ""))
    if "synthbmfd" in trained_on.lower():
        return TrainingFacts(True, BUNDLED_FACTS.view_range_deg, f"{PIPELINE_FILE} extra.trained_on {trained_on!r}")
    return TrainingFacts()


def model_warnings(facts: TrainingFacts) -> list[str]:
    """What to tell the user once per run about the model itself (the synthetic-only warning)."""
    return [SYNTHETIC_WARNING] if facts.synthetic_only else []


def _fmt_range(lo: float, hi: float) -> str:
    """``-60..+60``."""
    return f"{lo:+g}..{hi:+g}"


def view_warnings(facts: TrainingFacts, views: Sequence[Sequence[float]], to_frontal: bool = False,
                  sweep_deg: float | None = None) -> list[str]:
    """One warning per requested view outside the range the model was trained on (none when it is unknown).

    views: (dyaw_deg, dpitch_deg) pairs, relative to the input view (``to_frontal``: to the frontal view, so
    absolute); sweep_deg: the amplitude of a ``--sweep`` orbit (yaw +-amplitude)."""
    rng = facts.view_range_deg
    if not rng:
        return []
    (ylo, yhi), (plo, phi) = rng.get("yaw", [-180, 180]), rng.get("pitch", [-90, 90])
    trained = f"yaw {_fmt_range(ylo, yhi)} deg, pitch {_fmt_range(plo, phi)} deg"
    out = []
    for yaw, pitch in views:
        parts = ([f"yaw {yaw:+g}"] if not ylo <= yaw <= yhi else []) + \
                ([f"pitch {pitch:+g}"] if not plo <= pitch <= phi else [])
        if parts:
            what = "from the frontal view" if to_frontal else "from the input view"
            out.append(f"the view {' '.join(parts)} deg ({what}) is outside the views this model was trained on "
                       f"({trained}): the result there is a guess")
    if sweep_deg is not None and not (ylo <= -abs(sweep_deg) and abs(sweep_deg) <= yhi):
        out.append(f"--sweep {sweep_deg:g} turns past the views this model was trained on ({trained}): the ends of "
                   "the orbit are guesses")
    return out


# -------------------------------------------------------------------------------------------- file checks


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (resolved) lies inside the resolved folder ``root``."""
    return path == root or root in path.parents


def _regular_file_inside(root: Path, path: Path, what: str, folder: Path) -> Path:
    """``path`` resolved; UserError unless it is a regular file inside ``root`` (no FIFO, device or folder, no
    symlink leading out)."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise UserError(f"model folder {folder}: {what} {path} is missing") from None
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop on older Pythons
        raise UserError(f"model folder {folder}: {what} {path} cannot be resolved ({err})") from None
    if not _inside(root, real):
        raise UserError(f"model folder {folder}: {what} {path} leads outside the folder (to {real}); a model folder "
                        "may only read files inside itself")
    mode = real.stat().st_mode
    if not stat.S_ISREG(mode):
        raise UserError(f"model folder {folder}: {what} {path} is not a regular file")
    return real


def _read_json(path: Path, shown: Path) -> object:
    """The JSON in ``path`` (at most MAX_JSON_BYTES); UserError naming ``shown`` when it is not readable JSON."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise UserError(f"{shown}: {size} bytes, too large for this file (at most {MAX_JSON_BYTES})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as err:
        raise UserError(f"{shown}: not readable JSON ({err})") from None


def _is_number(value) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_pipeline_fields(meta: object, where: str) -> dict:
    """Check the fields of a ``pipeline.json`` (``where`` names the file in messages); returns ``meta``.
    UserError ``<where>: <field>: <what is wrong>`` on the first bad field."""
    if not isinstance(meta, dict) or meta.get("kind") != "deblur-rotate":
        raise UserError(f"{where}: not a deblur-rotate pipeline description (\"kind\" must be \"deblur-rotate\")")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise UserError(f"{where}: format_version {version!r} is not supported (this version reads up to "
                        f"{FORMAT_VERSION}); update deblur-rotate")
    networks = meta.get("networks")
    if not isinstance(networks, dict):
        raise UserError(f"{where}: \"networks\" must map roles ({', '.join(NETWORK_KINDS)}) to sub-folders")
    unknown = sorted(set(networks) - set(NETWORK_KINDS))
    if unknown:
        raise UserError(f"{where}: unknown network role(s) {', '.join(map(str, unknown))}; known: "
                        f"{', '.join(NETWORK_KINDS)}")
    for role, sub in networks.items():
        if sub is not None and not isinstance(sub, str):
            raise UserError(f"{where}: networks.{role}: must be a sub-folder name, got {sub!r}")
    for role in REQUIRED_ROLES:
        if not networks.get(role):
            raise UserError(f"{where}: no {role} listed under \"networks\"; a model needs at least "
                            f"{' and '.join(REQUIRED_ROLES)}")
    checks = {
        "preset": (lambda v: isinstance(v, str) and 0 < len(v) <= 100, "must be a short name such as \"tiny\""),
        "resolution": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 4 <= v <= 1024 and not v & (v - 1),
                       "must be a power of two from 4 to 1024"),
        "num_frames": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64,
                       "must be an integer from 1 to 64"),
        "storage_dtype": (lambda v: v in STORAGE_DTYPES, f"must be one of {', '.join(STORAGE_DTYPES)}"),
        "extra": (lambda v: isinstance(v, dict), "must be a JSON object"),
        "trained_on_synthetic_only": (lambda v: isinstance(v, bool), "must be true or false"),
        "view_range_deg": (_valid_view_range, "must be {\"yaw\": [lo, hi], \"pitch\": [lo, hi]} in degrees, "
                                              "lo <= hi, within -180..180"),
    }
    for name, (ok, what) in checks.items():
        if meta.get(name) is not None and not ok(meta[name]):
            raise UserError(f"{where}: {name}: {what}; got {json.dumps(meta[name])[:60]}")
    try:
        RefineSettings.from_json(meta.get("refine"))
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: refine: {err}") from None
    if meta.get("crop") is not None:
        from deblur_rotate.faces import check_crop

        try:
            check_crop(meta["crop"])
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return meta


def _valid_view_range(value) -> bool:
    """A ``view_range_deg`` entry: yaw and/or pitch as [lo, hi] with -180 <= lo <= hi <= 180."""
    if not isinstance(value, dict) or not value or set(value) - {"yaw", "pitch"}:
        return False
    for pair in value.values():
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) and -180 <= v <= 180 for v in pair)
                and pair[0] <= pair[1]):
            return False
    return True


def read_pipeline_json(folder: str | os.PathLike) -> dict:
    """The checked ``pipeline.json`` of a model folder (UserError naming the folder and the problem)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"model path {folder} is a file; give the model folder (the one holding {PIPELINE_FILE})")
    path = folder / PIPELINE_FILE
    if not path.exists():
        hint = (" (it looks like a single network folder; a model folder holds pipeline.json and one sub-folder "
                "per network: build one with deblur_rotate.pipeline.assemble_model)"
                if (folder / CONFIG_NAME).exists() else
                " (not a deblur-rotate model folder; build one with deblur_rotate.pipeline.assemble_model)")
        raise UserError(f"model folder {folder} has no {PIPELINE_FILE}{hint}")
    real = _regular_file_inside(folder.resolve(), path, PIPELINE_FILE, folder)
    return validate_pipeline_fields(_read_json(real, path), str(path))


# ----------------------------------------------------------------------------------------------- the check


@dataclass
class ModelFolderInfo:
    """A validated model folder: what :func:`validate_model_folder` found (nothing is built yet)."""

    folder: Path                                          # the folder as given
    meta: dict                                            # pipeline.json
    networks: dict[str, Path] = field(default_factory=dict)   # role -> its sub-folder (resolved, inside)
    configs: dict[str, dict] = field(default_factory=dict)    # role -> constructor arguments (validated)
    facts: TrainingFacts = field(default_factory=TrainingFacts)  # training data facts (with fallbacks)


def _check_face_model(path: Path, shown: Path) -> None:
    """E_3D's ``face_model.json``: JSON naming no file (a BFM path would make the folder read outside itself)."""
    info = _read_json(path, shown)
    spec = info.get("face_model") if isinstance(info, dict) else None
    if not isinstance(spec, dict):
        raise UserError(f"{shown}: face_model: must be a JSON object describing the morphable model")
    for key, value in spec.items():
        if key.endswith("path") and value is not None:
            raise UserError(f"{shown}: face_model.{key}: a model folder may only read files inside itself, and only "
                            f"safetensors/JSON; this names {value!r} (a BFM file): remove {FACE_MODEL_FILE} from the "
                            "folder (evaluation then uses the dataset's procedural model)")


def validate_model_folder(folder: str | os.PathLike) -> ModelFolderInfo:
    """Check a model folder completely (module docstring) before anything is built; returns what it holds.

    The one validation shared by ``run``, ``demo``, ``evaluate`` and ``serve`` (through
    ``DeblurRotatePipeline.from_pretrained``, which calls it). UserError naming the file and field on any problem.
    """
    from deblur_rotate.models.schema import ConfigError, check_weights_file, validate_config

    folder = Path(folder)
    meta = read_pipeline_json(folder)
    root = folder.resolve()
    info = ModelFolderInfo(folder=folder, meta=meta)
    resolution = meta.get("resolution")
    for role, kind in NETWORK_KINDS.items():
        sub = meta["networks"].get(role)
        if not sub:
            continue
        path = (folder / sub).resolve()
        if not _inside(root, path) or path == root:
            raise UserError(f"model folder {folder}: network {role!r} points outside the folder ({sub!r})")
        if not path.is_dir():
            raise UserError(f"model folder {folder}: the {role} sub-folder {sub!r} is missing")
        shown = folder / sub / CONFIG_NAME
        config_file = _regular_file_inside(root, folder / sub / CONFIG_NAME, f"{role} {CONFIG_NAME}", folder)
        weights_file = _regular_file_inside(root, folder / sub / WEIGHTS_NAME, f"{role} {WEIGHTS_NAME}", folder)
        config = _read_json(config_file, shown)
        if not isinstance(config, dict):
            raise ConfigError(f"{shown}: (top level): expected a JSON object of constructor arguments")
        got = config.get("_kind")
        if got is not None and got != kind:
            raise ConfigError(f"{shown}: _kind: {PIPELINE_FILE} lists this folder as the {role} (a {kind!r}), but it "
                              f"holds a {got!r}")
        args = validate_config(kind, config, str(shown), resolution=resolution)
        check_weights_file(weights_file, kind, args, shown=folder / sub / WEIGHTS_NAME)
        side = folder / sub / FACE_MODEL_FILE
        if role == "face3d_encoder" and (side.exists() or side.is_symlink()):
            _check_face_model(_regular_file_inside(root, side, FACE_MODEL_FILE, folder), side)
        info.networks[role], info.configs[role] = path, args
    _check_agreement(info)
    info.facts = training_facts(meta, folder)
    return info


def _check_agreement(info: ModelFolderInfo) -> None:
    """The networks' configs fit together and fit pipeline.json (W+ layout, resolution, frames)."""
    from deblur_rotate.models.schema import full_config

    def full(role: str) -> dict:
        return full_config(NETWORK_KINDS[role], info.configs[role])

    def where(role: str) -> str:
        return str(info.folder / info.meta["networks"][role] / CONFIG_NAME)

    g = full("generator")
    num_ws, w_dim, res = 2 * (g["img_resolution"].bit_length() - 1) - 2, g["w_dim"], g["img_resolution"]
    if info.meta.get("resolution") is not None and info.meta["resolution"] != res:
        raise UserError(f"{info.folder / PIPELINE_FILE}: resolution: {info.meta['resolution']}, but the generator "
                        f"renders {res} px ({where('generator')})")
    for role in ("blur_encoder", "fusion"):
        if role not in info.configs:
            continue
        c = full(role)
        for name, want in (("num_ws", num_ws), ("w_dim", w_dim)):
            if c[name] != want:
                raise UserError(f"{where(role)}: {name}: {c[name]}, but the generator takes codes of {name} {want} "
                                "(the networks come from different presets)")
    frames = full("blur_encoder")["num_frames"]
    if info.meta.get("num_frames") is not None and info.meta["num_frames"] != frames:
        raise UserError(f"{info.folder / PIPELINE_FILE}: num_frames: {info.meta['num_frames']}, but the blur encoder "
                        f"predicts {frames} ({where('blur_encoder')})")


# ------------------------------------------------------------------------------------ facts of a training run


def _data_of_run(network_folder: Path) -> dict | None:
    """The dataset ``index.json`` a network folder was trained on, found through its training run's
    ``config.json`` (``RUN/config.json`` beside ``RUN/<network>/``, with a ``data`` entry); None when unknown."""
    try:
        run_config = json.loads((network_folder.parent / CONFIG_NAME).read_text())
        index = json.loads((Path(run_config["data"]) / "index.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return index if isinstance(index, dict) else None


def infer_training_facts(blur_encoder: object, fusion: object = None) -> TrainingFacts:
    """The training facts of networks given as folders of training runs (what ``assemble_model`` writes when it
    is not told): synthetic-only when every known dataset is a SynthBMFD (its ``index.json`` kind), False when
    one is real data; the view range from the fusion network's SynthBMFD rig (``view_yaws_deg``), pitch within
    +-20 degrees (its heads' motion). Networks given as modules, or runs whose data is gone, leave facts unknown."""
    kinds = []
    indexes = {}
    for role, source in (("blur_encoder", blur_encoder), ("fusion", fusion)):
        if isinstance(source, (str, os.PathLike)):
            index = _data_of_run(Path(source))
            if index is not None:
                indexes[role] = index
                kinds.append(index.get("kind"))
    synthetic = None if not kinds else all(k == "synthbmfd" for k in kinds)
    views = None
    yaws = (indexes.get("fusion") or {}).get("view_yaws_deg")
    if isinstance(yaws, list) and yaws and all(_is_number(y) for y in yaws):
        views = {"yaw": [float(min(yaws)), float(max(yaws))], "pitch": [-20.0, 20.0]}
    return TrainingFacts(synthetic, views, "the training runs' data")
