"""What `wm train` runs with: `TrainConfig`, the presets, and the one way every source of options
(a preset, a `--config` YAML file, `--set KEY=VALUE`, the flags, a checkpoint) becomes a config.

Every option has one flat key (`tile`, `tau_growth`, ...); `option_homes` says which settings
class holds it. `validate_config` turns a configuration that cannot run into one clean error
before anything is read or trained.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..constrained.methods import MethodSettings
from ..errors import BadInputError
from ..model.device import DEVICE_CHOICES
from ..model.networks import NetworkConfig
from ..payload import PayloadCodec
from .data import FRAME_VIEWS

# Training aims a little above the user's floor so that held-out images clear it without the
# guard having to act; the guard still enforces the floor itself on every written file.
DEFAULT_MARGIN_DB = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Everything `wm train` runs with. The network's and the constraint method's settings are
    their own classes (`network`, `constraint`); presets, `--config` YAML, `--set` and the flags
    name every setting by one flat key (`tile`, `tau_growth`, ...: `option_homes`)."""

    preset: str = "quick"
    psnr_min: float = 40.0
    psnr_margin: float = DEFAULT_MARGIN_DB
    crop: int = 64
    batch_size: int = 32
    epochs: int = 16
    steps_per_epoch: int = 50
    # The training set: this many fixed crops of the training files (see TrainingSamples).
    train_samples: int = 4096
    learning_rate: float = 2e-3
    # Cosine decay to this rate over the run (None: constant). A calm end lets the decoder
    # settle after the last growths of tau.
    learning_rate_final: float | None = None
    attacks: tuple[str, ...] = ("identity", "noise", "quantise8", "blur")
    rescale_min: float = 1.0  # random rescale of training crops (anatomy at many pixel scales)
    rescale_max: float = 1.0
    # How frames become training images (training.data.FRAME_VIEWS): "reader" shows every frame in
    # every view the floor holds in, the view's peak as 1; "nominal" divides by 2^BitsStored − 1.
    frame_views: str = "nominal"
    # Start from this model's weights (a model folder with the same architecture), not at random.
    init_from: str | None = None
    held_out_fraction: float = 0.1
    validation_crops: int = 64
    validation_crop: int = 128
    seed: int = 0
    device: str = "auto"
    # bf16 autocast for the networks on a GPU (ignored on a CPU); PSNRs stay in float32.
    mixed_precision: bool = True
    # The carrier tiles and networks (n_bits, tile, widths, carrier smoothing).
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # The constraint method: sequential penalty (tau grows by `tau_growth` every `tau_period`
    # steps, for one global tau or one per sample; closed loop grows it only while violations do
    # not fall by `tau_required_decrease`), or a baseline: a fixed weight, Lagrange multipliers.
    constraint: MethodSettings = field(default_factory=MethodSettings)

    @property
    def n_bits(self) -> int:
        return self.network.n_bits

    @property
    def tile(self) -> int:
        return self.network.tile

    @property
    def method(self) -> str:
        return self.constraint.method


#: The sections of TrainConfig that are settings classes of their own.
_SECTIONS = {"network": NetworkConfig, "constraint": MethodSettings}
#: Flat keys whose name differs from the field they set.
_RENAMED = {"penalty_shape": ("constraint", "shape")}


def option_homes() -> dict[str, tuple[str | None, str]]:
    """Every training option's flat key → (section or None for TrainConfig itself, field)."""
    homes: dict[str, tuple[str | None, str]] = {f.name: (None, f.name) for f in fields(TrainConfig)
                                                 if f.name not in _SECTIONS}
    for section, settings in _SECTIONS.items():
        for f in fields(settings):
            homes[f.name] = (section, f.name)
    for key, home in _RENAMED.items():
        del homes[home[1]]
        homes[key] = home
    return homes


PRESETS: dict[str, dict] = {
    # Minutes on two CPU cores: enough for demos, tests and a usable model.
    "quick": {},
    # The shipped model: longer, wider attacks.
    "standard": {
        "epochs": 40,
        "steps_per_epoch": 100,
        "train_samples": 16384,
        "tau_period": 150,
        "learning_rate_final": 2e-4,
        "rescale_min": 0.5,
        "rescale_max": 1.5,
        "carrier_smoothing": 1.0,
        # 64-px carrier tiles: 16 px² per bit instead of 4 lets the carriers live at lower
        # frequencies, which JPEG's 8×8 quantisation keeps (q50 on radiographs: 0 % → 100 %).
        # A crop must hold several tiles, so crops are 128² and batches 16.
        "tile": 64,
        "crop": 128,
        "batch_size": 16,
        # Listed twice = drawn twice as often: JPEG exports are the hardest attack to learn.
        "attacks": ("identity", "noise", "quantise8", "blur", "brightness_contrast", "window8", "jpeg", "jpeg",
                    "resize"),
    },
    # The paper's configuration (arXiv 2601.16812), for comparison.
    "paper": {
        "n_bits": 200,
        "crop": 224,
        "batch_size": 32,
        "epochs": 200,
        "steps_per_epoch": 100,
        "learning_rate": 1e-4,
        "tau_initial": 0.1,
        "tau_growth": 1.1,
        "tau_max": 500.0,
        "attacks": ("identity",),
        "psnr_margin": 0.0,
    },
}

# ---- configuration from presets, a YAML file, --set KEY=VALUE and flags -----------------------

_CONFIG_FIELDS = set(option_homes())


def config_for_preset(preset: str, **overrides) -> TrainConfig:
    """The preset's values, then every override that is not None, each checked and converted."""
    if preset not in PRESETS:
        raise BadInputError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    values = dict(PRESETS[preset])
    if preset == "paper":
        # The paper grows tau every 10 epochs.
        values["tau_period"] = 10 * values["steps_per_epoch"]
    unknown = {k for k in overrides if k not in _CONFIG_FIELDS or k == "preset"}
    if unknown:
        raise BadInputError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    values.update({k: coerce_option(k, v) for k, v in overrides.items() if v is not None})
    homes = option_homes()
    own: dict = {}
    sections: dict[str, dict] = {section: {} for section in _SECTIONS}
    for key, value in values.items():
        section, name = homes[key]
        (own if section is None else sections[section])[name] = value
    return TrainConfig(preset=preset, **own, **{section: _SECTIONS[section](**given) for section, given in sections.items()})


def config_options(config: TrainConfig) -> dict:
    """The configuration by flat key, as `--set` and `--config` name it (lists for tuples): what
    checkpoints and cards record, and what `config_for_preset` takes back."""
    options = {"preset": config.preset}
    for key, (section, name) in option_homes().items():
        value = getattr(config if section is None else getattr(config, section), name)
        options[key] = list(value) if isinstance(value, tuple) else value
    return options


def coerce_option(name: str, value):
    """`value` as the type its settings class declares for the option `name` (text as from
    --set is parsed)."""
    section, field_name = option_homes()[name]
    hint = typing.get_type_hints(TrainConfig if section is None else _SECTIONS[section])[field_name]
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise BadInputError(f"training option {name} needs a value")
    try:
        if base is bool:
            if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.strip().lower() in ("true", "yes", "on", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typing.get_origin(base) is tuple:
            items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
            if not items or not all(isinstance(v, str) and v for v in items):
                raise ValueError
            return tuple(items)
    except (TypeError, ValueError):
        pass
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(base, "a list of names")
    raise BadInputError(f"training option {name} must be {kind}{' or null' if optional else ''}, got {value!r}")


@dataclass
class ConfigFile:
    """What a `--config run.yaml` holds: training options, and optionally data, out and preset."""

    options: dict
    data: list[Path] | None = None
    out: Path | None = None
    preset: str | None = None


def read_config_file(path: Path) -> ConfigFile:
    """Read a YAML mapping of TrainConfig fields (dashes or underscores) plus `data`, `out` and
    `preset`. Relative paths in it are relative to the file's own folder."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"cannot read config file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise BadInputError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise BadInputError(f"config file {path} must hold a mapping of option: value")
    base = Path(path).parent
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    data = values.pop("data", None)
    out = values.pop("out", None)
    preset = values.pop("preset", None)
    unknown = sorted(k for k in values if k not in _CONFIG_FIELDS)
    if unknown:
        raise BadInputError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    if data is not None:
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise BadInputError(f"config file {path}: data must be a path or a list of paths")
        data = [base / item for item in items]
    if out is not None:
        if not isinstance(out, str):
            raise BadInputError(f"config file {path}: out must be a path")
        out = base / out
    if preset is not None and not isinstance(preset, str):
        raise BadInputError(f"config file {path}: preset must be a name")
    return ConfigFile({k: coerce_option(k, v) for k, v in values.items()}, data, out, preset)


def parse_assignments(assignments: list[str]) -> dict:
    """`--set key=value` pairs (repeatable) as training options."""
    options = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise BadInputError(f"--set takes KEY=VALUE, got {assignment!r}")
        if key not in _CONFIG_FIELDS or key == "preset":
            raise BadInputError(f"--set: unknown training option {key!r}")
        options[key] = coerce_option(key, value)
    return options


def validate_config(config: TrainConfig) -> None:
    """One clean error for a configuration that cannot run, before any file is read."""
    from ..attacks.layers import CROP_SMALLEST_SIDE, TRAINING_ATTACKS  # torch

    if config.n_bits < 8 or config.n_bits % 8:
        raise BadInputError("--bits must be a positive multiple of 8")
    PayloadCodec(config.n_bits)  # a payload with no room for an authenticated message fails here
    if config.crop < config.tile or config.crop % config.tile:
        raise BadInputError(f"crop size must be a multiple of the {config.tile}-px tile")
    if config.epochs < 1 or config.steps_per_epoch < 1 or config.batch_size < 1:
        raise BadInputError("epochs, steps per epoch and batch size must be positive")
    if config.train_samples < config.batch_size:
        raise BadInputError(f"train_samples ({config.train_samples}) must be at least the batch size ({config.batch_size})")
    if not (math.isfinite(config.psnr_min) and config.psnr_min > 0):
        raise BadInputError(f"--psnr-min must be a positive number of dB, got {config.psnr_min}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise BadInputError("the learning rate must be positive")
    if config.validation_crops < 1:
        raise BadInputError("validation_crops must be positive")
    if config.device not in DEVICE_CHOICES:
        raise BadInputError(f"unknown device {config.device!r} ({', '.join(DEVICE_CHOICES)})")
    if config.frame_views not in FRAME_VIEWS:
        raise BadInputError(f"unknown frame_views {config.frame_views!r} (choose from {', '.join(FRAME_VIEWS)})")
    try:
        config.constraint.check()
    except ValueError as error:
        raise BadInputError(str(error)) from None
    unknown = [a for a in config.attacks if a not in TRAINING_ATTACKS]
    if unknown:
        raise BadInputError(f"unknown training attack(s): {', '.join(unknown)}")
    if "crop" in config.attacks and math.floor(config.crop * CROP_SMALLEST_SIDE) < config.tile:
        raise BadInputError(f"the crop attack keeps as little as {CROP_SMALLEST_SIDE:.0%} of a side, less than one "
                            f"{config.tile}-px tile of a {config.crop}-px crop; use crop >= "
                            f"{math.ceil(config.tile / CROP_SMALLEST_SIDE)}")
