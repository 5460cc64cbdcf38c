"""`wm train`: learn an encoder/decoder pair under one PSNR constraint per training image.

The problem (design §2): minimise the message loss (binary cross-entropy on the raw bits, after
an attack) subject to PSNR_i >= floor for every training sample i. Image quality is controlled
only by the constraint method (`--method`, see constrained/methods.py); there is no image-MSE
term. The training set is a fixed set of N crops (training.data.TrainingSamples), so that each sample
keeps its identity for per-sample coefficients and multipliers, visited in shuffled passes.

The loop reads top to bottom: take the next samples, draw messages, embed, attack, decode, hand
the per-sample PSNRs to the method, step; every epoch validate on held-out files, log one CSV
row, keep the best model and write a checkpoint that `--resume` continues from bit-exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import FramePool, SampleOrder, TrainingSamples, collect_image_files, split_by_file
from ..errors import BadInputError
from ..io.writing import csv_text, write_atomically
from ..constrained.methods import MethodSettings
from ..model.device import DEVICE_CHOICES, pick_device
from ..model.networks import NetworkConfig

if TYPE_CHECKING:  # torch comes with the network and method settings; only `wm train` imports this
    import torch

# Training aims a little above the user's floor so that held-out images clear it without the
# guard having to act; the guard still enforces the floor itself on every written file.
DEFAULT_MARGIN_DB = 0.5
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.csv"
PLOT_FILE = "metrics.png"


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
    if config.n_bits < 8 or config.n_bits % 8:
        raise BadInputError("--bits must be a positive multiple of 8")
    from ..payload import PayloadCodec

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
    from .data import FRAME_VIEWS

    if config.frame_views not in FRAME_VIEWS:
        raise BadInputError(f"unknown frame_views {config.frame_views!r} (choose from {', '.join(FRAME_VIEWS)})")
    try:
        config.constraint.check()
    except ValueError as error:
        raise BadInputError(str(error)) from None
    from ..attacks.layers import TRAINING_ATTACKS

    unknown = [a for a in config.attacks if a not in TRAINING_ATTACKS]
    if unknown:
        raise BadInputError(f"unknown training attack(s): {', '.join(unknown)}")
    from ..attacks.layers import CROP_SMALLEST_SIDE

    if "crop" in config.attacks and math.floor(config.crop * CROP_SMALLEST_SIDE) < config.tile:
        raise BadInputError(f"the crop attack keeps as little as {CROP_SMALLEST_SIDE:.0%} of a side, less than one "
                            f"{config.tile}-px tile of a {config.crop}-px crop; use crop >= "
                            f"{math.ceil(config.tile / CROP_SMALLEST_SIDE)}")


def crop_psnr(clean: "torch.Tensor", marked: "torch.Tensor") -> "torch.Tensor":
    """PSNR per image in dB with peak 1 (the nominal range, or the view's peak: see frame_views)."""
    import torch

    mse = (marked.float() - clean.float()).square().mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


# ---- what a run reports ------------------------------------------------------------------------

@dataclass
class EpochMetrics:
    epoch: int
    step: int
    seconds: float
    method: str
    # tau for the penalty methods, the Lagrange multipliers for the Lagrangian ones; NaN for
    # projection, which has no coefficient.
    coefficient_mean: float
    coefficient_max: float
    train_loss: float
    train_bit_accuracy: float
    train_fraction_satisfied: float
    train_min_psnr: float
    train_mean_psnr: float
    val_bit_accuracy: float
    val_fraction_satisfied: float
    val_min_psnr: float
    val_mean_psnr: float


@dataclass
class TrainResult:
    output: Path
    best: EpochMetrics
    history: list[EpochMetrics]
    seconds: float
    train_files: list[Path] = field(default_factory=list)
    validation_files: list[Path] = field(default_factory=list)
    rank: int = 0
    # Set when a stop was requested (Ctrl-C, a scheduler's SIGTERM): the last completed epoch.
    stopped_after_epoch: int | None = None


@dataclass
class _Best:
    score: tuple[float, float]
    metrics: EpochMetrics
    state: dict


class TrainingInterrupted(Exception):
    """Raised by a progress callback to stop after an epoch (tests, schedulers)."""


# ---- the run -------------------------------------------------------------------------------------

def train(
    config: TrainConfig,
    data: list[Path],
    output: Path,
    progress: Callable[[EpochMetrics], None] | None = None,
    resume: bool = False,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train and write the model folder `output`. With `resume`, continue the run whose
    checkpoint is in `output` (its configuration may differ only in epochs and device).

    When `stop_requested()` turns true, the run stops after the current step, drops that
    unfinished epoch (the checkpoint stays at the last whole one, so --resume is still exact)
    and writes the best model so far; TrainingInterrupted if no epoch was completed."""
    from .distributed import start_cluster

    validate_config(config)
    cluster = start_cluster(use_cuda=pick_device(config.device).type == "cuda")
    try:
        return _train(config, data, output, progress, resume, cluster, stop_requested or (lambda: False))
    finally:
        cluster.stop()


def _train(config: TrainConfig, data: list[Path], output: Path, progress, resume: bool, cluster,
           stop_requested: Callable[[], bool]) -> TrainResult:
    import torch
    import torch.nn.functional as F

    from ..constrained.methods import build_method
    from ..model.networks import TrainingPass, WatermarkModel
    from ..constrained.sequential_penalty import PerSampleConstraint
    from ..attacks.layers import pick_training_attack

    device = pick_device(config.device, cluster.local_rank)
    started = time.perf_counter()
    checkpoint = load_checkpoint(output) if resume else None

    # ---- data: split each source by file, weight sources equally, fix the training samples ----
    train_pool, validation_pool, has_validation_files = load_training_data(config, data)
    samples = TrainingSamples(train_pool, config.train_samples, config.crop, config.seed,
                              (config.rescale_min, config.rescale_max))
    order = SampleOrder(len(samples), config.seed)
    # Each process takes its own slice of every global batch of batch_size × processes samples.
    own_slice = slice(cluster.rank * config.batch_size, (cluster.rank + 1) * config.batch_size)

    # ---- model, optimiser, constraint method ------------------------------------------------------
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = WatermarkModel(config.network).to(device)
    if config.init_from and checkpoint is None:
        _load_initial_weights(model, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    constraint = PerSampleConstraint("psnr_db", bound=config.psnr_min + config.psnr_margin, sense="ge")
    method = build_method(config.constraint, constraint, len(samples), config.batch_size, device)
    training_pass = TrainingPass(model, projection_psnr=constraint.bound if method.projects else None)
    if cluster.parallel:
        from torch.nn.parallel import DistributedDataParallel

        training_pass = DistributedDataParallel(training_pass, device_ids=[device.index] if device.type == "cuda" else None)
    # Messages, attack draws and noise differ between processes; the sample order does not.
    rng = random.Random(config.seed + 7919 * cluster.rank)
    if cluster.rank:
        torch.manual_seed(config.seed + 7919 * cluster.rank)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (
        device.type == "cuda" and config.mixed_precision) else contextlib.nullcontext

    # A fixed validation set: crops of held-out files with fixed messages.
    val_rng = random.Random(config.seed + 1)
    # Frames smaller than the validation crop are reflect-padded by the sampler.
    val_size = max(config.tile, config.validation_crop - config.validation_crop % config.tile)
    val_images = torch.from_numpy(validation_pool.sample_crops(config.validation_crops, val_size, val_rng)).to(device)
    val_bits = torch.from_numpy(np.array(
        [[val_rng.randrange(2) for _ in range(config.n_bits)] for _ in range(config.validation_crops)],
        dtype=np.float32)).to(device)

    history: list[EpochMetrics] = []
    best: _Best | None = None
    step = 0
    first_epoch = 1
    seconds_before = 0.0
    if checkpoint is not None:
        _check_resumable(checkpoint, config, train_pool, validation_pool, cluster)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        method.load_state_dict(checkpoint["method"])
        order.load_state_dict(checkpoint["order"])
        history = [EpochMetrics(**row) for row in checkpoint["history"]]
        if checkpoint["best"] is not None:
            saved = checkpoint["best"]
            best = _Best(tuple(saved["score"]), EpochMetrics(**saved["metrics"]), saved["state"])
        step = int(checkpoint["step"])
        first_epoch = int(checkpoint["epoch"]) + 1
        seconds_before = float(checkpoint["seconds"])
        _set_rng_state(checkpoint["rng"][cluster.rank], rng, device)

    stopped = False
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        totals = _Totals()
        for _ in range(config.steps_per_epoch):
            # Every process must stop at the same step, or the others would wait forever.
            stopped = cluster.sum([1.0 if stop_requested() else 0.0])[0] > 0 if cluster.parallel else stop_requested()
            if stopped:
                break
            _set_learning_rate(optimiser, config, step)
            batch_indices = order.next(config.batch_size * cluster.world_size)[own_slice]
            clean = torch.from_numpy(samples.crops(batch_indices.tolist())).to(device)
            indices = batch_indices.to(device)
            bits = torch.randint(0, 2, (config.batch_size, config.n_bits), device=device).float()
            _, attack = pick_training_attack(config.attacks, rng)
            with autocast():
                marked, logits = training_pass(clean, bits, attack, rng)
            message_loss = F.binary_cross_entropy_with_logits(logits, bits)
            psnr_values = crop_psnr(clean, marked)
            observed_psnr = cluster.gather(psnr_values.detach())
            observed_indices = cluster.gather(indices)
            objective, _ = method.objective(message_loss, psnr_values, indices, observed_psnr, observed_indices)
            optimiser.zero_grad(set_to_none=True)
            objective.backward()
            optimiser.step()
            method.after_step(observed_psnr, observed_indices)
            step += 1
            totals.add(message_loss, logits, bits, psnr_values, config.psnr_min)
        if stopped:
            break

        train_figures = totals.reduce(cluster)
        val_accuracy, val_satisfied, val_min, val_mean = _validate(
            training_pass.module if cluster.parallel else training_pass, val_images, val_bits, config.psnr_min, cluster)
        method.end_of_epoch(held_out_satisfied=val_satisfied >= 1.0)
        coefficient_mean, coefficient_max = method.coefficient_summary()
        if cluster.parallel:
            _check_processes_agree(cluster, model, (coefficient_mean, coefficient_max))
        metrics = EpochMetrics(
            epoch=epoch, step=step, seconds=round(seconds_before + time.perf_counter() - started, 2),
            method=method.name, coefficient_mean=coefficient_mean, coefficient_max=coefficient_max,
            **train_figures,
            val_bit_accuracy=val_accuracy, val_fraction_satisfied=val_satisfied,
            val_min_psnr=val_min, val_mean_psnr=val_mean,
        )
        history.append(metrics)
        # Model selection: first the share of held-out crops meeting the floor, then bit accuracy.
        score = (val_satisfied, val_accuracy)
        if best is None or score >= best.score:
            best = _Best(score, metrics, {k: v.detach().clone() for k, v in model.state_dict().items()})
        rng_states = cluster.gather_objects(_rng_state(rng, device))
        if cluster.is_writer:
            output.mkdir(parents=True, exist_ok=True)
            save_checkpoint(output, {
                # Absolute paths: a run may be resumed from another working folder.
                "format": 1, "config": config_options(config), "data": _absolute(data),
                "train_files": _absolute(train_pool.files), "validation_files": _absolute(validation_pool.files),
                "world_size": cluster.world_size, "epoch": epoch, "step": step,
                "seconds": metrics.seconds,
                "model": model.state_dict(), "optimiser": optimiser.state_dict(), "method": method.state_dict(),
                "order": order.state_dict(), "history": [asdict(m) for m in history],
                "best": {"score": list(best.score), "metrics": asdict(best.metrics), "state": best.state},
                "rng": rng_states,
            })
            _write_metrics(output, history)
        if progress:
            progress(metrics)

    if best is None:
        raise TrainingInterrupted("stopped before the first epoch was complete; nothing was written")
    model.load_state_dict(best.state)
    seconds = seconds_before + time.perf_counter() - started
    if cluster.is_writer:
        card = _model_card(config, train_pool, validation_pool if has_validation_files else None, best.metrics,
                           seconds, device, cluster.world_size)
        if stopped:
            card["training"]["stopped_after_epoch"] = history[-1].epoch
        from ..model.store import save_model

        save_model(output, model, card)
        _write_metrics(output, history)
        _plot_metrics(output, history, config.psnr_min)
    cluster.barrier()  # no process leaves before the files are written
    return TrainResult(output, best.metrics, history, seconds, train_pool.files,
                       validation_pool.files if has_validation_files else [], rank=cluster.rank,
                       stopped_after_epoch=history[-1].epoch if stopped else None)


def load_training_data(config: TrainConfig, data: list[Path]) -> tuple[FramePool, FramePool, bool]:
    """The training pool, the validation pool (the training pool when no file is held out) and
    whether files were held out: each source split by file, sources weighted equally."""
    if not data:
        raise BadInputError("no training data given (DATA arguments, or `data:` in --config)")
    train_files: list[Path] = []
    train_weights: list[float] = []
    validation_files: list[Path] = []
    for source in data:
        source_files = collect_image_files([source])
        if not source_files:
            raise BadInputError(f"no image files in {source}")
        source_train, source_validation = split_by_file(source_files, config.held_out_fraction, config.seed)
        train_files += source_train
        train_weights += [1.0 / len(source_train)] * len(source_train)
        validation_files += source_validation
    train_pool = FramePool.load(train_files, train_weights, config.frame_views)
    if not train_pool.frames:
        reasons = "; ".join(f"{path.name}: {why}" for path, why in train_pool.skipped[:3])
        raise BadInputError(f"no usable training image (≥ 64 px, grayscale) in {', '.join(map(str, data))}"
                            + (f" ({reasons})" if reasons else ""))
    validation_pool = FramePool.load(validation_files, frame_views=config.frame_views) if validation_files else train_pool
    has_validation_files = bool(validation_files) and bool(validation_pool.frames)
    if not validation_pool.frames:
        validation_pool = train_pool
    return train_pool, validation_pool, has_validation_files


def _load_initial_weights(model, config: TrainConfig) -> None:
    """Warm start: the weights of `config.init_from`, whose architecture must be this run's."""
    from ..model.store import load_model
    from ..model.networks import NetworkConfig

    start = load_model(config.init_from)
    theirs = NetworkConfig(**{k: v for k, v in start.card["architecture"].items() if k != "type"})
    if theirs != config.network:
        raise BadInputError(f"init_from {config.init_from}: its architecture ({theirs}) is not this run's "
                            f"({config.network})")
    model.load_state_dict({k: v.float() for k, v in start.model.state_dict().items()})


def _set_learning_rate(optimiser, config: TrainConfig, step: int) -> None:
    if config.learning_rate_final is None:
        return
    progress_fraction = step / (config.epochs * config.steps_per_epoch)
    rate = config.learning_rate_final + 0.5 * (config.learning_rate - config.learning_rate_final) * (
        1.0 + math.cos(math.pi * progress_fraction))
    for group in optimiser.param_groups:
        group["lr"] = rate


class _Totals:
    """Per-epoch sums over this process's training batches, reduced across processes at the end."""

    def __init__(self) -> None:
        self.loss = self.correct_bits = self.bits = self.satisfied = self.psnr_sum = 0.0
        self.images = self.batches = 0
        self.min_psnr = math.inf

    def add(self, loss, logits, bits, psnr_values, psnr_min: float) -> None:
        psnr = psnr_values.detach()
        self.loss += float(loss.detach())
        self.batches += 1
        self.correct_bits += float(((logits.detach() > 0).float() == bits).float().sum())
        self.bits += bits.numel()
        self.satisfied += float((psnr >= psnr_min).float().sum())
        self.psnr_sum += float(psnr.sum())
        self.images += psnr.numel()
        self.min_psnr = min(self.min_psnr, float(psnr.min()))

    def reduce(self, cluster) -> dict:
        loss, batches, correct, bits, satisfied, psnr_sum, images = cluster.sum(
            [self.loss, self.batches, self.correct_bits, self.bits, self.satisfied, self.psnr_sum, self.images])
        (min_psnr,) = cluster.min([self.min_psnr])
        return {"train_loss": loss / batches, "train_bit_accuracy": correct / bits,
                "train_fraction_satisfied": satisfied / images, "train_min_psnr": min_psnr,
                "train_mean_psnr": psnr_sum / images}


def _check_processes_agree(cluster, model, coefficients: tuple[float, float]) -> None:
    """Data-parallel processes must hold the same weights and coefficients; a cheap fingerprint
    per epoch catches a divergence before it silently ruins a long run."""
    import torch

    with torch.no_grad():
        weights = sum(float(p.double().sum()) for p in model.parameters())
    # NaN (no coefficient) never equals itself: compare it as None.
    fingerprints = cluster.gather_objects(tuple(None if math.isnan(v) else round(v, 9) for v in (weights, *coefficients)))
    if any(f != fingerprints[0] for f in fingerprints):
        raise RuntimeError(f"data-parallel processes diverged: {fingerprints}")


def marked_for_evaluation(training_pass, images: "torch.Tensor", bits: "torch.Tensor") -> "torch.Tensor":
    """The marked images as a file would store them: the model's output (projected for the
    projection method, as in training) rounded to 16 bits."""
    import torch

    marked = training_pass.embed(images, bits)
    return torch.round(marked * 65535.0) / 65535.0


def _validate(training_pass, images, bits, psnr_min: float, cluster) -> tuple[float, float, float, float]:
    """Bit accuracy, fraction meeting the floor, min and mean PSNR on the validation crops; each
    process measures its share and the figures are combined."""
    import torch

    training_pass.eval()
    share = slice(cluster.rank, None, cluster.world_size)
    with torch.no_grad():
        own_images, own_bits = images[share], bits[share]
        if len(own_images):
            marked = marked_for_evaluation(training_pass, own_images, own_bits)
            psnr_values = crop_psnr(own_images, marked)
            logits = training_pass.model.decoder(marked).float()
            correct = float(((logits > 0).float() == own_bits).float().sum())
            satisfied = float((psnr_values >= psnr_min).float().sum())
            psnr_sum, psnr_min_seen = float(psnr_values.sum()), float(psnr_values.min())
        else:
            correct = satisfied = psnr_sum = 0.0
            psnr_min_seen = math.inf
    training_pass.train()
    correct, satisfied, psnr_sum = cluster.sum([correct, satisfied, psnr_sum])
    (psnr_min_seen,) = cluster.min([psnr_min_seen])
    count = len(images)
    return correct / bits.numel(), satisfied / count, psnr_min_seen, psnr_sum / count


# ---- checkpoints and random states ------------------------------------------------------------------

def save_checkpoint(output: Path, state: dict) -> None:
    import torch

    write_atomically(output / CHECKPOINT_FILE, lambda handle: torch.save(state, handle))  # always whole


def load_checkpoint(output: Path) -> dict:
    path = Path(output) / CHECKPOINT_FILE
    if not path.is_file():
        raise BadInputError(f"no checkpoint to resume from in {output} (expected {CHECKPOINT_FILE})")
    from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType

    from ..model.store import load_torch_tensors

    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
    except OSError as error:
        raise BadInputError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not is_zip:  # torch.save has written zip files since torch 1.6; anything else is not wm's
        raise BadInputError(f"{path} is not a wm training checkpoint (not a torch file); refused unread")
    # Tensors and plain containers only: loading a checkpoint never runs code from it.
    checkpoint = load_torch_tensors(path, "checkpoint", allowed_globals=(nuPIInitType,))
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != 1 \
            or any(key not in checkpoint for key in _CHECKPOINT_KEYS) or not isinstance(checkpoint["config"], dict) \
            or "preset" not in checkpoint["config"] or not isinstance(checkpoint["data"], list):
        raise BadInputError(f"{path} is not a wm training checkpoint")
    return checkpoint


_CHECKPOINT_KEYS = ("config", "data", "train_files", "validation_files", "world_size", "epoch", "step", "seconds",
                    "model", "optimiser", "method", "order", "history", "best", "rng")


def resume_config(output: Path, epochs: int | None = None, device: str | None = None) -> tuple[TrainConfig, list[Path]]:
    """The configuration and data of the run checkpointed in `output`, with epochs and device
    optionally changed (a longer run; another machine)."""
    checkpoint = load_checkpoint(output)
    values = dict(checkpoint["config"])
    preset = values.pop("preset")
    values.pop("parity_bytes", None)  # format 1's Reed-Solomon parity: gone with payload v2
    if epochs is not None:
        values["epochs"] = epochs
    if device is not None:
        values["device"] = device
    return config_for_preset(preset, **values), [Path(p) for p in checkpoint["data"]]


def _check_resumable(checkpoint: dict, config: TrainConfig, train_pool: FramePool, validation_pool: FramePool,
                     cluster) -> None:
    saved = dict(checkpoint["config"])
    current = config_options(config)
    changed = sorted(k for k in current if k not in ("epochs", "device") and saved.get(k) != current[k])
    if changed:
        raise BadInputError(f"cannot resume with a different configuration ({', '.join(changed)} changed); "
                            "only epochs and device may change")
    if checkpoint["train_files"] != _absolute(train_pool.files) or \
            checkpoint["validation_files"] != _absolute(validation_pool.files):
        raise BadInputError("the training data differ from the checkpoint's; resume with the same data")
    if int(checkpoint["world_size"]) != cluster.world_size:
        raise BadInputError(f"the checkpoint was written by {checkpoint['world_size']} process(es); "
                            f"resume with the same number (now {cluster.world_size})")
    if int(checkpoint["epoch"]) > config.epochs:
        raise BadInputError(f"the checkpoint is at epoch {checkpoint['epoch']}, past --epochs {config.epochs}")


def _absolute(paths) -> list[str]:
    return [str(Path(p).resolve()) for p in paths]


def _rng_state(rng: random.Random, device) -> dict:
    """Every random state the loop draws from: this process's Python generator, the global
    Python, NumPy and torch generators and the GPU's."""
    import torch

    numpy_state = np.random.get_state()
    state = {
        "python": rng.getstate(),
        "python_global": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, rng: random.Random, device) -> None:
    import torch

    def as_tuple(value):  # what was saved as a tuple may come back as a list
        return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

    rng.setstate(as_tuple(state["python"]))
    random.setstate(as_tuple(state["python_global"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- files ----------------------------------------------------------------------------------------

def _model_card(config: TrainConfig, train_pool: FramePool, validation_pool: FramePool | None,
                best: EpochMetrics, seconds: float, device, world_size: int) -> dict:
    from ..payload import PayloadCodec

    return {
        "name": f"wm-{config.preset}-{config.n_bits}b",
        "format_version": 1,
        "architecture": {"type": "carrier-tiles", **config.network.to_dict()},
        "payload": PayloadCodec(config.n_bits).describe(),
        "quality_floor": {"psnr_min_db": config.psnr_min, "trained_with_margin_db": config.psnr_margin,
                          # The unit training measured PSNR in: every reader view, or the nominal peak.
                          "trained_in": "reader views" if config.frame_views == "reader" else "nominal peak"},
        "training": {
            "method": config.method,
            "config": config_options(config),
            "device": str(device.type),
            "processes": world_size,
            "seconds": round(seconds, 1),
            "files": {
                "train": [str(p) for p in train_pool.files],
                "validation": [str(p) for p in validation_pool.files] if validation_pool else [],
            },
        },
        "figures": {
            "note": "held-out crops, float model output rounded to 16 bits, no attack, no guard"
                    + (" (residual projected onto the floor, as the projection method trains)"
                       if config.method == "projection" else ""),
            "selected_epoch": best.epoch,
            "val_bit_accuracy": round(best.val_bit_accuracy, 6),
            "val_fraction_meeting_floor": round(best.val_fraction_satisfied, 6),
            "val_min_psnr_db": round(best.val_min_psnr, 3),
            "val_mean_psnr_db": round(best.val_mean_psnr, 3),
        },
    }


def _write_metrics(output: Path, history: list[EpochMetrics]) -> None:
    write_atomically(output / METRICS_FILE, csv_text([f.name for f in fields(EpochMetrics)], map(asdict, history)))


def _plot_metrics(output: Path, history: list[EpochMetrics], psnr_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(epochs, [m.train_bit_accuracy for m in history], label="train")
    axes[0].plot(epochs, [m.val_bit_accuracy for m in history], label="validation")
    axes[0].set_title("bit accuracy")
    axes[0].legend()
    axes[1].plot(epochs, [m.train_min_psnr for m in history], label="train min", linestyle=":")
    axes[1].plot(epochs, [m.val_min_psnr for m in history], label="validation min")
    axes[1].plot(epochs, [m.val_mean_psnr for m in history], label="validation mean")
    axes[1].axhline(psnr_min, color="red", linestyle="--", label="floor")
    axes[1].set_title("PSNR (dB)")
    axes[1].legend()
    axes[2].plot(epochs, [m.train_fraction_satisfied for m in history], label="train")
    axes[2].plot(epochs, [m.val_fraction_satisfied for m in history], label="validation")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title("fraction meeting the floor")
    axes[2].legend()
    coefficients = [(m.coefficient_mean, m.coefficient_max) for m in history]
    if all(math.isnan(mean) for mean, _ in coefficients):
        axes[3].text(0.5, 0.5, f"no coefficient ({history[0].method})", ha="center", va="center",
                     transform=axes[3].transAxes)
    else:
        axes[3].plot(epochs, [mean for mean, _ in coefficients], label="mean")
        axes[3].plot(epochs, [top for _, top in coefficients], label="max")
        if all(top > 0 for _, top in coefficients):
            axes[3].set_yscale("log")
        axes[3].legend()
    axes[3].set_title(f"{'multiplier λ' if 'lagrangian' in history[0].method else 'coefficient τ'} ({history[0].method})")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    write_atomically(output / PLOT_FILE, lambda handle: figure.savefig(handle, format="png", dpi=90))
    plt.close(figure)
