"""Configuration: three dataclasses (model, train, data) in one :class:`RunConfig`.

A config round-trips through JSON (the run directory's ``config.json``) and TOML (recipes in
``configs/``), and takes ``key=value`` overrides from the command line (``model.channels=32,64``,
or a bare key such as ``lr=3e-4`` when only one section has it). Unknown keys and wrong types are
:class:`~convae.errors.ConfigError` naming the key; nothing is silently ignored: a key given on the
command line or in a config file that the chosen ``model.kind`` does not use (``model.wta_spatial``
for the FCAE) is an error too. Old names keep working: ``model.pool`` reads as ``model.downsample``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import logging
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Architecture. ``kind="conv"`` uses the conv fields, ``kind="dense"`` uses ``hidden`` (:data:`KIND_KEYS`).

    The defaults are the recipe that gave the best frozen features on Fashion-MNIST for its training
    compute (configs/scat1-mask.toml, docs/RESULTS.md): a fixed scattering stem (one scale, 8 angles;
    ``stem="auto"`` puts it on images of 16 pixels a side or more, :meth:`stem_for`; ``"none"`` for none), then two stages of 128 channels, two conv -> BatchNorm -> ReLU layers
    each, and a 1x1-conv bottleneck. A run's ``config.json`` written before the stem existed has no
    ``stem`` key and reads as ``stem="none"`` (:data:`ADDED_KEYS`). ``norm="auto"`` is BatchNorm for the ConvAE and none for the FCAE; ``"none"`` (or
    None) is no normalization. The ``ConvAutoencoder`` class keeps the classic plain defaults
    (32/64/128, no normalization, dense bottleneck). ``downsample`` is how each ConvAE stage halves
    its map (max | avg | stride); configs written before it was renamed call it ``pool``, which still reads.
    """

    kind: str = "conv"
    channels: list[int] = field(default_factory=lambda: [128, 128])
    kernel_size: int = 3
    downsample: str = "max"  # max | avg | stride (old name: pool)
    norm: str | None = "auto"
    bottleneck: str = "conv"
    latent_dim: int = 64
    activation: str = "relu"
    upsample: str = "transpose"
    convs_per_stage: int = 2
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    wta_spatial: bool = False  # winner-take-all code during training (conv bottleneck only)
    wta_lifetime: float = 0.0  # fraction of the batch that keeps each latent channel (0 = off)
    stem: str = "auto"  # auto | none | scattering: a fixed first stage of oriented filters under stage1 (convae.models.stem)
    stem_J: int = 1  # the scattering stem's scales (it reduces the map by 2**stem_J)
    stem_L: int = 8  # the scattering stem's angles

    def stem_for(self, in_shape=None) -> str:
        """The stem a ConvAE gets on images of ``in_shape``: ``stem="auto"`` is the scattering stem on images of at
        least :data:`STEM_MIN_SIDE` pixels a side (or when no shape is given) and none on smaller ones (8x8 digits,
        where it would leave the stages a 4x4 map)."""
        if self.stem != "auto":
            return self.stem
        return "scattering" if in_shape is None or min(int(v) for v in tuple(in_shape)[1:]) >= STEM_MIN_SIDE else "none"

    def model_kwargs(self, in_shape=None) -> dict[str, Any]:
        """Constructor arguments of the chosen model class (for images of ``in_shape``, which ``stem="auto"`` needs)."""
        norm = None if self.norm in ("none", None) else self.norm  # TOML has no null: norm = "none"
        if norm == "auto":  # BatchNorm for the ConvAE, none for the FCAE
            norm = "batch" if self.kind == "conv" else None
        if self.kind == "dense":
            return dict(hidden=tuple(self.hidden), latent_dim=self.latent_dim, activation=self.activation, norm=norm)
        kwargs = dict(
            channels=tuple(self.channels), kernel_size=self.kernel_size, downsample=self.downsample, norm=norm,
            bottleneck=self.bottleneck, latent_dim=self.latent_dim, activation=self.activation,
            upsample=self.upsample, convs_per_stage=self.convs_per_stage,
        )
        if self.wta_spatial or self.wta_lifetime:  # only when on: older runs rebuild unchanged
            kwargs.update(wta_spatial=self.wta_spatial, wta_lifetime=self.wta_lifetime)
        stem = self.stem_for(in_shape)
        if stem not in ("none", None):
            kwargs.update(stem=stem, stem_J=self.stem_J, stem_L=self.stem_L)
        return kwargs


# The default length of training (``TrainConfig(epochs=None)``): 1,099 steps of 128 images of the default ConvAE are
# 50 TFLOP on 28x28 images (355.3 MFLOP per image, the stem included), issue 15's budget; at most 10 epochs on small datasets.
DEFAULT_STEPS = 1099
STEM_MIN_SIDE = 16  # ``model.stem="auto"``: the scattering stem on images of at least this many pixels a side
DEFAULT_EPOCHS = 10


def resolve_length(cfg: "RunConfig") -> "RunConfig":
    """The FCAE's default length is :data:`DEFAULT_EPOCHS` epochs: its 5.8 MFLOP per image make 1,099 steps (the
    ConvAE's 50 TFLOP) a fraction of its usual training. Sets ``train.epochs`` on such a config, so config.json
    says what ran; every other config is returned as it is."""
    t = cfg.train
    if cfg.model.kind == "dense" and t.epochs is None and t.max_steps is None and t.time_budget is None:
        t.epochs = DEFAULT_EPOCHS
    return cfg


def resolve_stem(cfg: "RunConfig", in_shape) -> "RunConfig":
    """Sets ``model.stem="auto"`` to the stem it means on images of ``in_shape`` (:meth:`ModelConfig.stem_for`), so
    config.json says what ran; every other config is returned as it is."""
    if cfg.model.stem == "auto":  # an FCAE has no stem: "none", as its records saved before the stem read
        cfg.model.stem = cfg.model.stem_for(in_shape) if cfg.model.kind == "conv" else "none"
    return cfg


@dataclass
class TrainConfig:
    """Optimisation. ``precision="auto"`` picks bf16 autocast where the GPU supports it or where the CPU measured it faster than fp32 (``convae.runtime.cpu_has_fast_bf16``).

    The defaults are the feature recipe of :class:`ModelConfig`: AdamW (weight decay 1e-4) with a
    cosine schedule, and a masked-reconstruction objective (half of the 4x4 input patches zeroed,
    the whole image reconstructed).

    ``epochs=None`` is the default length: :data:`DEFAULT_STEPS` optimizer steps or :data:`DEFAULT_EPOCHS`
    epochs, whichever ends first (on Fashion-MNIST 1,099 steps, 2.6 epochs, 50 TFLOP: the best recipe measured
    within issue 15's budget, docs/RESULTS.md, "Accuracy per compute"). Any ``epochs`` given trains that many
    epochs, cut only by ``max_steps`` and a time budget when those are given; ``max_steps`` or a time budget
    given without ``epochs`` replaces the 1,099 steps (still at most 10 epochs).
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adam | adamw
    loss: str = "mse"  # mse | bce
    schedule: str = "cosine"  # none | cosine
    noise: float = 0.0  # std of Gaussian noise added to inputs (denoising AE)
    mask_ratio: float = 0.5  # fraction of 4x4 input patches zeroed (masked AE)
    flip: bool = False  # augmentation: mirror half of the images left-right (input and target alike)
    shift: int = 0  # augmentation: translate each image by up to this many pixels, zero-filled
    val_fraction: float = 0.1
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda | mps
    compile: bool = False
    num_workers: int = 0
    grad_clip: float | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    time_budget: float | str | None = None  # wall time for training: seconds or "5m", "90s", "1h30m" (training/budget.py)
    planned_steps: int | None = None  # the steps a time budget planned on the machine that ran it; kept so reruns repeat it

    @property
    def n_epochs(self) -> int:
        """The epochs the run may take: ``epochs``, or :data:`DEFAULT_EPOCHS` when it is None."""
        return DEFAULT_EPOCHS if self.epochs is None else self.epochs

    @property
    def step_cap(self) -> int | None:
        """The most optimizer steps: ``max_steps``, or :data:`DEFAULT_STEPS` for the default length (``epochs=None``,
        no time budget: a budget given alone replaces the default length, as ``max_steps`` does)."""
        if self.max_steps is not None:
            return self.max_steps
        return DEFAULT_STEPS if self.epochs is None and self.time_budget is None else None

    def describe_length(self) -> str:
        """How long the run is set to train, in words, for logs and errors."""
        if self.epochs is None:
            if self.max_steps is None and self.time_budget is None:
                return f"the default length ({DEFAULT_STEPS} steps or {DEFAULT_EPOCHS} epochs, whichever ends first)"
            cap = f"train.max_steps={self.max_steps}" if self.max_steps is not None else "the time budget"
            return f"{cap} (at most {DEFAULT_EPOCHS} epochs)"
        length = f"train.epochs={self.epochs}"
        return length + (f", train.max_steps={self.max_steps}" if self.max_steps is not None else "")


@dataclass
class DataConfig:
    """Where the images come from; ``spec`` is a dataset spec such as ``fashion-mnist``."""

    spec: str = "fashion-mnist"
    image_size: list[int] | None = None  # [H, W]
    channels: int | None = None
    on_bad_image: str = "error"  # error | skip
    limit: int | None = None  # use only the first N training images


CHOICES = {
    ("model", "kind"): ("conv", "dense"),
    ("model", "downsample"): ("max", "avg", "stride"),  # convae.models.conv.DOWNSAMPLES
    ("model", "stem"): ("auto", "none", "scattering"),  # convae.models.stem.STEMS, and auto (ModelConfig.stem_for)
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "loss"): ("mse", "bce"),
    ("train", "schedule"): ("none", "cosine"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("train", "device"): ("auto", "cpu", "cuda", "mps"),
    ("data", "on_bad_image"): ("error", "skip"),
}
SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
ALIASES = {"model.pool": "model.downsample"}  # old name -> the one name; both read, only the new one is written
# Keys added after runs were first saved, with the value a saved record (a run's config.json) lacking them ran with.
ADDED_KEYS = {"model.stem": "none", "model.stem_J": 1, "model.stem_L": 8}
# The [model] keys each kind uses (besides ``kind``): the constructor arguments of ConvAutoencoder and
# DenseAutoencoder (tests/test_models.py checks). Any other model key given for that kind is an error.
KIND_KEYS = {
    "conv": ("channels", "kernel_size", "downsample", "norm", "bottleneck", "latent_dim", "activation", "upsample",
             "convs_per_stage", "wta_spatial", "wta_lifetime", "stem", "stem_J", "stem_L"),
    "dense": ("hidden", "latent_dim", "activation", "norm"),
}
KIND_NAMES = {"conv": "the ConvAE", "dense": "the FCAE"}


@dataclass
class RunConfig:
    """The three sections. Besides its fields, a RunConfig remembers which keys were given explicitly
    (by :func:`apply_overrides`, a config file read by :func:`load_config`, or a scikit-learn estimator's
    parameters) and under which name, so that :func:`validate` can refuse a key the chosen
    ``model.kind`` would ignore and name it as the user wrote it. Equality and ``to_dict`` see the
    fields only."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        self._given: dict[str, tuple[str, str]] = {}  # "section.name" -> (the name as given, where it was given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config", explicit: bool = False) -> "RunConfig":
        """A config from its sections. ``explicit=True`` (a config file the user wrote) records every key as
        given, so that :func:`validate` refuses one that ``model.kind`` does not use; the default (a run
        directory's ``config.json``, which holds every key of both kinds) records none."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a table of sections {list(SECTIONS)}, got {type(d).__name__}")
        extra = set(d) - set(SECTIONS) - {"format_version", "versions", "in_shape"}
        if extra:
            raise ConfigError(f"{source}: unknown section(s) {sorted(extra)}; valid sections: {', '.join(SECTIONS)}")
        cfg = cls()
        if _is_complete_record(d):  # a saved record (config.json, an exported encoder's header): a key it lacks had not been added yet when it ran
            for key, value in ADDED_KEYS.items():
                section, name = key.split(".")
                if isinstance(d.get(section), dict) and name not in d[section]:
                    setattr(getattr(cfg, section), name, value)
        for section, values in d.items():
            if section not in SECTIONS:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{section}] must be a table, got {type(values).__name__}")
            for old, new in ALIASES.items():
                if old.startswith(section + ".") and {old.split(".", 1)[1], new.split(".", 1)[1]} <= set(values):
                    raise ConfigError(f"{source}: [{section}] has both {old} and {new}; {old} is the old name of {new}, keep only {new}")
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value, source=source, given=explicit)
        validate(cfg, source=source)
        return cfg


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the field's type hint, converting only lossless cases."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{source}: {key} must be {name}, got {value!r} ({type(value).__name__})")


def resolve_key(key: str, *, source: str = "config") -> tuple[str, str]:
    """``"train.lr"`` or a bare ``"lr"`` -> ``("train", "lr")``; an old name (:data:`ALIASES`, ``model.pool``
    or ``pool``) -> the current one; unknown or ambiguous -> ConfigError."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r} in key {key!r}; valid: {', '.join(SECTIONS)}")
        if key in ALIASES:
            return tuple(ALIASES[key].split(".", 1))  # type: ignore[return-value]
        if name not in _fields(section):
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys in [{section}]: {', '.join(_fields(section))}")
        return section, name
    owners = [s for s in SECTIONS if key in _fields(s) or f"{s}.{key}" in ALIASES]
    if not owners:
        raise ConfigError(f"{source}: unknown key {key!r}; valid keys: " + ", ".join(f"{s}.{f}" for s in SECTIONS for f in _fields(s)))
    if len(owners) > 1:
        raise ConfigError(f"{source}: key {key!r} is in several sections; write one of: " + ", ".join(f"{s}.{key}" for s in owners))
    return resolve_key(f"{owners[0]}.{key}", source=source)


def _written(key: str) -> str:
    """How messages name a key as the user wrote it: dotted, old names kept (``pool`` -> ``model.pool``)."""
    if "." in key:
        return key
    for old in ALIASES:
        if old.split(".", 1)[1] == key:
            return old
    return key


def set_value(cfg: RunConfig, key: str, value: Any, *, source: str = "config", given: bool = False,
              label: str | None = None) -> None:
    """Set ``key`` (dotted, bare or an old name) to ``value``, checked against the field's type.

    ``given=True`` records the key as given explicitly (see :func:`validate`). Messages name the key as
    ``label`` (default: ``section.name``, or the old name when one was used)."""
    section, name = resolve_key(key, source=source)
    canonical = f"{section}.{name}"
    if label is None:
        written = _written(key)
        label = written if written in ALIASES else canonical
    hints = typing.get_type_hints(SECTIONS[section])
    setattr(getattr(cfg, section), name, _coerce(value, hints[name], label, source))
    if given:
        cfg._given = {**getattr(cfg, "_given", {}), canonical: (label, source)}


def parse_value(text: str, hint: Any) -> Any:
    """Parse a command-line value: JSON where it parses, ``none``/``null`` as None (as the word for a
    key that takes only strings, like ``schedule``), ``a,b`` as a list."""
    t = text.strip()
    if t.lower() in ("none", "null"):
        return t.lower() if hint is str else None  # schedule=none is the word, not the absence
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    value = _json_or_text(t)
    wants_list = typing.get_origin(hint) is list or any(typing.get_origin(a) is list for a in typing.get_args(hint))
    if wants_list and isinstance(value, (int, float)):
        value = [value]
    elif wants_list and isinstance(value, str):
        # "32,64", or "37x53" for sizes: an x only between digits separates (a stray x is an error)
        parts = re.sub(r"(?<=\d)\s*[x×]\s*(?=\d)", ",", value).split(",")
        value = [_json_or_text(p.strip()) for p in parts if p.strip()]
    return value


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an int of over 4300 digits, or nested too deep
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | None, *, source: str = "--set") -> RunConfig:
    """Apply ``key=value`` strings in order (each recorded as given), then validate the whole config."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, text = item.split("=", 1)
        section, name = resolve_key(key.strip(), source=source)
        hint = typing.get_type_hints(SECTIONS[section])[name]
        set_value(cfg, key.strip(), parse_value(text, hint), source=source, given=True)
    validate(cfg, source=source)
    return cfg


def _check_kind_keys(cfg: RunConfig) -> None:
    """A [model] key given explicitly that ``model.kind`` does not use is an error, never ignored."""
    kind = cfg.model.kind
    for key, (label, where) in getattr(cfg, "_given", {}).items():
        section, name = key.split(".", 1)
        if section != "model" or name == "kind" or name in KIND_KEYS[kind]:
            continue
        owners = [k for k, names in KIND_KEYS.items() if name in names]
        uses = ", ".join(f"model.{n}" for n in KIND_KEYS[kind])
        raise ConfigError(
            f"{where}: {label} does not apply to model.kind={kind!r} ({KIND_NAMES[kind]}), which would ignore it; "
            f"it is a setting of model.kind={owners[0]!r} ({KIND_NAMES[owners[0]]}). Remove {label} or set model.kind={owners[0]}; "
            f"model.kind={kind!r} uses {uses}")


def validate(cfg: RunConfig, *, source: str = "config") -> None:
    """Value checks that types alone cannot express; every message names the key (as it was given).

    Also refuses a [model] key given explicitly (:func:`apply_overrides`, a config file, an estimator
    parameter) that ``model.kind`` does not use (:data:`KIND_KEYS`)."""
    given = getattr(cfg, "_given", {})

    def name(key: str) -> str:
        return given[key][0] if key in given else key

    def choice(section: str, key: str) -> None:
        value, choices = getattr(getattr(cfg, section), key), CHOICES[section, key]
        if value not in choices:
            raise ConfigError(f"{source}: {name(f'{section}.{key}')}={value!r} is not one of {', '.join(choices)}")

    choice("model", "kind")
    _check_kind_keys(cfg)
    for section, key in CHOICES:
        choice(section, key)
    t, m, d = cfg.train, cfg.model, cfg.data
    positive = {"train.epochs": t.n_epochs, "train.batch_size": t.batch_size, "model.latent_dim": m.latent_dim, "model.kernel_size": m.kernel_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {name(key)} must be >= 1, got {value}")
    if not t.lr > 0:
        raise ConfigError(f"{source}: {name('train.lr')} must be > 0, got {t.lr}")
    if not 0 <= t.val_fraction < 1:
        raise ConfigError(f"{source}: {name('train.val_fraction')} must be in [0, 1), got {t.val_fraction}")
    if not 0 <= t.mask_ratio < 1:
        raise ConfigError(f"{source}: {name('train.mask_ratio')} must be in [0, 1), got {t.mask_ratio}")
    if t.noise < 0:
        raise ConfigError(f"{source}: {name('train.noise')} must be >= 0, got {t.noise}")
    if t.shift < 0:
        raise ConfigError(f"{source}: {name('train.shift')} must be >= 0 pixels, got {t.shift}")
    if t.weight_decay < 0:
        raise ConfigError(f"{source}: {name('train.weight_decay')} must be >= 0, got {t.weight_decay}")
    if t.num_workers < 0:
        raise ConfigError(f"{source}: {name('train.num_workers')} must be >= 0, got {t.num_workers}")
    if t.grad_clip is not None and not t.grad_clip > 0:
        raise ConfigError(f"{source}: {name('train.grad_clip')} must be > 0 or none, got {t.grad_clip}")
    if m.kind == "conv" and (not m.channels or min(m.channels) < 1):
        raise ConfigError(f"{source}: {name('model.channels')} must be a non-empty list of positive ints, got {m.channels}")
    if m.kind == "dense" and any(h < 1 for h in m.hidden):
        raise ConfigError(f"{source}: {name('model.hidden')} must hold positive ints, got {m.hidden}")
    if d.image_size is not None and (len(d.image_size) != 2 or min(d.image_size) < 1):
        raise ConfigError(f"{source}: {name('data.image_size')} must be [height, width], got {d.image_size}")
    if d.channels not in (None, 1, 3):
        raise ConfigError(f"{source}: {name('data.channels')} must be 1 or 3, got {d.channels}")
    if t.time_budget is not None:
        try:
            parse_duration(t.time_budget)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    for key, value in {"train.threads": t.threads, "data.limit": d.limit, "train.max_steps": t.max_steps,
                       "train.planned_steps": t.planned_steps}.items():
        if value is not None and value < 1:
            raise ConfigError(f"{source}: {name(key)} must be >= 1 or none, got {value}")


def _is_complete_record(data: dict) -> bool:
    """A run directory's ``config.json`` (it has a format_version) or a whole ``RunConfig.to_dict()``: these
    hold every [model] key, those of both kinds (but the :data:`ADDED_KEYS` of a record saved before them), so
    their keys are not choices the user made."""
    if "format_version" in data:
        return True
    model = data.get("model")
    if not isinstance(model, dict):
        return False
    present = {ALIASES.get(f"model.{k}", f"model.{k}").split(".", 1)[1] for k in model}
    added = {key.split(".", 1)[1] for key in ADDED_KEYS if key.startswith("model.")}
    return set(_fields("model")) - added <= present


def parse_duration(value) -> float | None:
    """``"5m"``, ``"90s"``, ``"1h30m"``, ``"2.5m"``, ``300`` (seconds) -> seconds; None stays None."""
    if value is None:
        return None
    bad = ConfigError(f"train.time_budget={value!r} is not a duration; write e.g. 5m, 90s or 1h30m (a bare number is seconds)")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)?", text)
        if not text or "".join(n + (u or "") for n, u in parts) != text:
            raise bad
        scale = {"h": 3600, "min": 60, "m": 60, "sec": 1, "s": 1, "": 1}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"train.time_budget={value!r} must be a positive duration")
    return seconds


def load_config(path: str | Path) -> RunConfig:
    """Read a ``.toml`` or ``.json`` config file; errors name the file and the key.

    Every key the file holds counts as given (:func:`validate` refuses one that ``model.kind`` does not
    use), except in a whole record such as a run's ``config.json``. A recipe's ``[probe]`` table
    (configs/*.toml) is read by bench/recipes.py, not here: it is left out with a warning."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); config files are TOML or JSON") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, RecursionError) as e:  # decode errors; also an int of over 4300 digits, or nesting too deep
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {reason}") from None
    if isinstance(data, dict) and isinstance(data.get("probe"), dict):
        logger.warning("%s: the [probe] table is read by bench/recipes.py (the recipe benchmark), not by training; "
                       "training uses [model], [train] and [data] only", path)
        data = {k: v for k, v in data.items() if k != "probe"}
    explicit = isinstance(data, dict) and not _is_complete_record(data)
    return RunConfig.from_dict(data, source=str(path), explicit=explicit)


def to_toml(cfg: RunConfig) -> str:
    """A TOML rendering of ``cfg`` that :func:`load_config` reads back. None values are left out (they
    are the defaults' absence), and so are the [model] keys that ``model.kind`` does not use."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if section == "model" and key != "kind" and key not in KIND_KEYS.get(cfg.model.kind, ()):
                continue
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


# --- presets ------------------------------------------------------------------------------------------


# Epochs of `convae compare` per dataset when none are given, and the most `convae demo` trains.
# cifar10: two epochs of the default ConvAE on 45,000 32x32x3 images are 526.3 MFLOP x 90,000 = 47.4 TFLOP, within the
# 50 TFLOP budget of the accuracy-per-compute issue (three would be 71); configs/cifar10.toml is the same recipe.
DEMO_EPOCHS = {"fashion-mnist": 3, "mnist": 3, "digits": 30, "cifar10": 2}
# What `convae demo` gives each model's training, on any machine: with the probe and the report the demo
# ends within about 5 minutes; a faster machine trains more steps in the same time (training/budget.py).
DEMO_BUDGETS = {"conv": "60s", "dense": "20s"}
DEMO_BUDGETS_SMALL = {"conv": "40s", "dense": "15s"}  # 8x8 digits: the probe and report take seconds


def demo_configs(data: str, epochs: int, limit: int | None = None, in_shape=None,
                 budgets: dict[str, str] | None = None) -> dict[str, RunConfig]:
    """The ConvAE and FCAE configs that ``convae demo`` and ``convae compare`` train on ``data`` (defaults, sized for
    tiny images); ``budgets`` (``{"conv": "60s", ...}``) adds each model's ``train.time_budget``.

    Images of 16 pixels or more a side, grey or colour (Fashion-MNIST, CIFAR-10's 32x32x3, ``--image-size``), keep
    the defaults: the ConvAE is fully convolutional, so its stem and two stages end on a 4x4 map at 32x32 (8x8 at 64x64)
    and 4x4 masked patches are 1/64 of a 32x32 image; only its cost grows, with H x W (docs/RESULTS.md, CIFAR-10)."""
    common = [f"data.spec={data}", f"train.epochs={epochs}"] + ([f"data.limit={limit}"] if limit else [])
    conv = ["model.kind=conv"]
    if in_shape is not None and min(in_shape[1:]) < 16:
        # Tiny images (8x8 digits): no stem (model.stem="auto"), and two stages keep a 2x2 map before the bottleneck. Masking 4x4 patches would hide a quarter of the image per patch: train on whole images.
        conv += ["model.channels=32,64", "train.lr=3e-3", "train.mask_ratio=0"]
    budget = {kind: [f"train.time_budget={budgets[kind]}"] if budgets and kind in budgets else [] for kind in ("conv", "dense")}
    return {"conv": apply_overrides(RunConfig(), conv + common + budget["conv"]),
            "dense": apply_overrides(RunConfig(), ["model.kind=dense"] + common + budget["dense"])}
