"""`wm train`: learn an encoder/decoder pair under one PSNR constraint per training image.

The problem (design §2): minimise the message loss (binary cross-entropy on the raw bits, after
an attack) subject to PSNR_i >= floor for every training sample i. Image quality is controlled
only by the constraint method (`--method`, see constrained/methods.py); there is no image-MSE
term. The training set is a fixed set of N crops (training.data.TrainingSamples), so that each sample
keeps its identity for per-sample coefficients and multipliers, visited in shuffled passes.

The loop reads top to bottom (`_train`): set up (or pick up a checkpoint); then every epoch take
the next samples, draw messages, embed, attack, decode, hand the per-sample PSNRs to the method,
step; validate on held-out files, keep the best model, write a checkpoint that `--resume`
continues from bit-exactly (checkpoints.py) and one CSV row (artifacts.py); at the end, or at a
requested stop, write the best model.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import BadInputError
from ..io.discovery import collect_image_files
from ..model.device import pick_device
from ..model.store import load_model, save_model
from .artifacts import model_card, plot_metrics, write_metrics
from .checkpoints import absolute_paths, check_resumable, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, config_options, validate_config
from .data import FramePool, SampleOrder, TrainingSamples, split_by_file
from .distributed import Cluster, start_cluster

if TYPE_CHECKING:  # torch comes with the networks; only `wm train` imports this module
    import torch

    from ..constrained.methods import ConstraintMethod


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
    validate_config(config)
    cluster = start_cluster(use_cuda=pick_device(config.device).type == "cuda")
    try:
        return _train(config, data, output, progress, resume, cluster, stop_requested or (lambda: False))
    finally:
        cluster.stop()


def _train(config: TrainConfig, data: list[Path], output: Path, progress, resume: bool, cluster: Cluster,
           stop_requested: Callable[[], bool]) -> TrainResult:
    """The run as it happens: set up (or pick up the checkpoint), then per epoch train, validate,
    keep the best and checkpoint; at the end, or at a requested stop, write the best model."""
    run = _set_up(config, data, output, cluster, resume)
    stopped = False
    for epoch in range(run.first_epoch, config.epochs + 1):
        totals = _train_one_epoch(run, stop_requested)
        if totals is None:  # a stop was requested: the unfinished epoch leaves no trace
            stopped = True
            break
        metrics = _end_epoch(run, epoch, totals)
        _keep_the_best(run, metrics)
        _write_checkpoint(run, metrics)
        if progress:
            progress(metrics)
    return _finish(run, stopped)


@dataclass
class _Best:
    score: tuple[float, float]
    metrics: EpochMetrics
    state: dict


@dataclass
class _Run:
    """What the steps of one run share: set up once, then advanced epoch by epoch."""

    config: TrainConfig
    data: list[Path]
    output: Path
    cluster: Cluster
    device: "torch.device"
    started: float  # time.perf_counter() at the start of this process's part of the run
    train_pool: FramePool
    validation_pool: FramePool  # the training pool when no file is held out
    has_validation_files: bool
    samples: TrainingSamples
    order: SampleOrder
    own_slice: slice  # this process's share of every global batch
    model: "torch.nn.Module"
    optimiser: "torch.optim.Optimizer"
    method: ConstraintMethod
    training_pass: "torch.nn.Module"  # the model's pass with attacks; DistributedDataParallel under torchrun
    rng: random.Random  # messages, attack draws and noise: this process's own
    autocast: Callable
    val_images: "torch.Tensor"
    val_bits: "torch.Tensor"
    history: list[EpochMetrics] = field(default_factory=list)
    best: _Best | None = None
    step: int = 0
    first_epoch: int = 1
    seconds_before: float = 0.0  # training time of the run before it was resumed


# ---- set up: data, model and method, validation set, or a checkpoint's state ---------------------
# The order of the random draws from here to the last step is what makes --resume bit-exact.

def _set_up(config: TrainConfig, data: list[Path], output: Path, cluster: Cluster, resume: bool) -> _Run:
    """Data, model, optimiser, method, the validation set; then a checkpoint's state if resuming."""
    import torch

    device = pick_device(config.device, cluster.local_rank)
    started = time.perf_counter()
    checkpoint = load_checkpoint(output) if resume else None

    # Each source split by file, sources weighted equally; then the fixed training samples.
    train_pool, validation_pool, has_validation_files = load_training_data(config, data)
    samples = TrainingSamples(train_pool, config.train_samples, config.crop, config.seed,
                              (config.rescale_min, config.rescale_max))
    order = SampleOrder(len(samples), config.seed)
    # Each process takes its own slice of every global batch of batch_size × processes samples.
    own_slice = slice(cluster.rank * config.batch_size, (cluster.rank + 1) * config.batch_size)

    model, optimiser, method, training_pass = _build_model(config, len(samples), device, cluster,
                                                           warm_start=checkpoint is None)
    # Messages, attack draws and noise differ between processes; the sample order does not.
    rng = random.Random(config.seed + 7919 * cluster.rank)
    if cluster.rank:
        torch.manual_seed(config.seed + 7919 * cluster.rank)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (
        device.type == "cuda" and config.mixed_precision) else contextlib.nullcontext
    val_images, val_bits = _validation_set(config, validation_pool, device)

    run = _Run(config, data, output, cluster, device, started, train_pool, validation_pool, has_validation_files,
               samples, order, own_slice, model, optimiser, method, training_pass, rng, autocast, val_images, val_bits)
    if checkpoint is not None:
        _resume_from(run, checkpoint)
    return run


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


def _build_model(config: TrainConfig, n_samples: int, device, cluster: Cluster, warm_start: bool):
    """The networks (the same initial weights in every process), Adam, the constraint method,
    and the training pass the steps call (wrapped for data parallelism under torchrun)."""
    import torch

    from ..constrained.methods import build_method
    from ..constrained.sequential_penalty import PerSampleConstraint
    from ..model.networks import TrainingPass, WatermarkModel

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = WatermarkModel(config.network).to(device)
    if config.init_from and warm_start:
        _load_initial_weights(model, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    constraint = PerSampleConstraint("psnr_db", bound=config.psnr_min + config.psnr_margin, sense="ge")
    method = build_method(config.constraint, constraint, n_samples, config.batch_size, device)
    training_pass = TrainingPass(model, projection_psnr=constraint.bound if method.projects else None)
    if cluster.parallel:
        from torch.nn.parallel import DistributedDataParallel

        training_pass = DistributedDataParallel(training_pass, device_ids=[device.index] if device.type == "cuda" else None)
    return model, optimiser, method, training_pass


def _load_initial_weights(model, config: TrainConfig) -> None:
    """Warm start: the weights of `config.init_from`, whose architecture must be this run's."""
    from ..model.networks import NetworkConfig

    start = load_model(config.init_from)
    theirs = NetworkConfig(**{k: v for k, v in start.card["architecture"].items() if k != "type"})
    # The key field and pilot have no weights: an unkeyed model is a warm start for a keyed one.
    unkeyed = dict(key_field_sigma=0.0, pilot=0.0, sync_pilot=0.0)
    if replace(theirs, **unkeyed) != replace(config.network, **unkeyed):
        raise BadInputError(f"init_from {config.init_from}: its architecture ({theirs}) is not this run's "
                            f"({config.network})")
    model.load_state_dict({k: v.float() for k, v in start.model.state_dict().items()})


def _validation_set(config: TrainConfig, validation_pool: FramePool, device) -> tuple["torch.Tensor", "torch.Tensor"]:
    """A fixed validation set: crops of held-out files with fixed messages."""
    import torch

    val_rng = random.Random(config.seed + 1)
    # Frames smaller than the validation crop are reflect-padded by the sampler.
    val_size = max(config.tile, config.validation_crop - config.validation_crop % config.tile)
    val_images = torch.from_numpy(validation_pool.sample_crops(config.validation_crops, val_size, val_rng)).to(device)
    val_bits = torch.from_numpy(np.array(
        [[val_rng.randrange(2) for _ in range(config.n_bits)] for _ in range(config.validation_crops)],
        dtype=np.float32)).to(device)
    return val_images, val_bits


def _resume_from(run: _Run, checkpoint: dict) -> None:
    """Carry on where the checkpoint stopped: every state it holds, the random ones last."""
    check_resumable(checkpoint, run.config, run.train_pool, run.validation_pool, run.cluster)
    run.model.load_state_dict(checkpoint["model"])
    run.optimiser.load_state_dict(checkpoint["optimiser"])
    run.method.load_state_dict(checkpoint["method"])
    run.order.load_state_dict(checkpoint["order"])
    run.history = [EpochMetrics(**row) for row in checkpoint["history"]]
    if checkpoint["best"] is not None:
        saved = checkpoint["best"]
        run.best = _Best(tuple(saved["score"]), EpochMetrics(**saved["metrics"]), saved["state"])
    run.step = int(checkpoint["step"])
    run.first_epoch = int(checkpoint["epoch"]) + 1
    run.seconds_before = float(checkpoint["seconds"])
    set_rng_state(checkpoint["rng"][run.cluster.rank], run.rng, run.device)


# ---- one epoch: steps until the epoch ends or a stop is requested ---------------------------------

def _train_one_epoch(run: _Run, stop_requested: Callable[[], bool]) -> _Totals | None:
    """The epoch's training figures, or None when a stop was requested before its last step."""
    run.model.train()
    totals = _Totals()
    for _ in range(run.config.steps_per_epoch):
        if _stop_agreed(run.cluster, stop_requested):
            return None
        _training_step(run, totals)
    return totals


def _stop_agreed(cluster: Cluster, stop_requested: Callable[[], bool]) -> bool:
    """Every process must stop at the same step, or the others would wait forever."""
    if cluster.parallel:
        return cluster.sum([1.0 if stop_requested() else 0.0])[0] > 0
    return stop_requested()


def _training_step(run: _Run, totals: _Totals) -> None:
    """One batch: draw messages and an attack, embed, attack, decode; the method turns the message
    loss and the per-sample PSNRs into the objective; one optimiser step."""
    import torch
    import torch.nn.functional as F

    from ..attacks.layers import pick_training_attack

    config, cluster, device = run.config, run.cluster, run.device
    _set_learning_rate(run.optimiser, config, run.step)
    batch_indices = run.order.next(config.batch_size * cluster.world_size)[run.own_slice]
    clean = torch.from_numpy(run.samples.crops(batch_indices.tolist())).to(device)
    indices = batch_indices.to(device)
    bits = torch.randint(0, 2, (config.batch_size, config.n_bits), device=device).float()
    _, attack = pick_training_attack(config.attacks, run.rng)
    with run.autocast():
        marked, logits = run.training_pass(clean, bits, attack, run.rng)
    message_loss = F.binary_cross_entropy_with_logits(logits, bits)
    psnr_values = crop_psnr(clean, marked)
    # Every process's constraint values, so that per-sample coefficients stay the same everywhere.
    observed_psnr = cluster.gather(psnr_values.detach())
    observed_indices = cluster.gather(indices)
    objective, _ = run.method.objective(message_loss, psnr_values, indices, observed_psnr, observed_indices)
    run.optimiser.zero_grad(set_to_none=True)
    objective.backward()
    run.optimiser.step()
    run.method.after_step(observed_psnr, observed_indices)
    run.step += 1
    totals.add(message_loss, logits, bits, psnr_values, config.psnr_min)


def _set_learning_rate(optimiser, config: TrainConfig, step: int) -> None:
    if config.learning_rate_final is None:
        return
    progress_fraction = step / (config.epochs * config.steps_per_epoch)
    rate = config.learning_rate_final + 0.5 * (config.learning_rate - config.learning_rate_final) * (
        1.0 + math.cos(math.pi * progress_fraction))
    for group in optimiser.param_groups:
        group["lr"] = rate


def crop_psnr(clean: "torch.Tensor", marked: "torch.Tensor") -> "torch.Tensor":
    """PSNR per image in dB with peak 1 (the nominal range, or the view's peak: see frame_views)."""
    import torch

    mse = (marked.float() - clean.float()).square().mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


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

    def reduce(self, cluster: Cluster) -> dict:
        loss, batches, correct, bits, satisfied, psnr_sum, images = cluster.sum(
            [self.loss, self.batches, self.correct_bits, self.bits, self.satisfied, self.psnr_sum, self.images])
        (min_psnr,) = cluster.min([self.min_psnr])
        return {"train_loss": loss / batches, "train_bit_accuracy": correct / bits,
                "train_fraction_satisfied": satisfied / images, "train_min_psnr": min_psnr,
                "train_mean_psnr": psnr_sum / images}


# ---- validate: the held-out figures, the method's end of epoch, the epoch's row ------------------

def _end_epoch(run: _Run, epoch: int, totals: _Totals) -> EpochMetrics:
    """The epoch's row: training figures of every process, held-out figures, the coefficients
    after the method has ended its epoch."""
    cluster = run.cluster
    train_figures = totals.reduce(cluster)
    val_accuracy, val_satisfied, val_min, val_mean = _validate(
        run.training_pass.module if cluster.parallel else run.training_pass, run.val_images, run.val_bits,
        run.config.psnr_min, cluster)
    run.method.end_of_epoch(held_out_satisfied=val_satisfied >= 1.0)
    coefficient_mean, coefficient_max = run.method.coefficient_summary()
    if cluster.parallel:
        _check_processes_agree(cluster, run.model, (coefficient_mean, coefficient_max))
    metrics = EpochMetrics(
        epoch=epoch, step=run.step, seconds=round(run.seconds_before + time.perf_counter() - run.started, 2),
        method=run.method.name, coefficient_mean=coefficient_mean, coefficient_max=coefficient_max,
        **train_figures,
        val_bit_accuracy=val_accuracy, val_fraction_satisfied=val_satisfied,
        val_min_psnr=val_min, val_mean_psnr=val_mean,
    )
    run.history.append(metrics)
    return metrics


def _validate(training_pass, images, bits, psnr_min: float, cluster: Cluster) -> tuple[float, float, float, float]:
    """Bit accuracy, fraction meeting the floor, min and mean PSNR on the validation crops; each
    process measures its share and the figures are combined."""
    import torch

    training_pass.eval()
    share = slice(cluster.rank, None, cluster.world_size)
    with torch.no_grad():
        own_images, own_bits = images[share], bits[share]
        if len(own_images):
            # The same keys every epoch (keyed models), so that epochs compare.
            fields = training_pass.key_fields(own_images, torch.Generator(own_images.device).manual_seed(cluster.rank))
            marked = marked_for_evaluation(training_pass, own_images, own_bits, fields)
            psnr_values = crop_psnr(own_images, marked)
            logits = training_pass.model.decoder(marked, fields).float()
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


def marked_for_evaluation(training_pass, images: "torch.Tensor", bits: "torch.Tensor",
                          key_fields: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The marked images as a file would store them: the model's output (projected for the
    projection method, as in training) rounded to 16 bits."""
    import torch

    marked = training_pass.embed(images, bits, key_fields)
    return torch.round(marked * 65535.0) / 65535.0


def _check_processes_agree(cluster: Cluster, model, coefficients: tuple[float, float]) -> None:
    """Data-parallel processes must hold the same weights and coefficients; a cheap fingerprint
    per epoch catches a divergence before it silently ruins a long run."""
    import torch

    with torch.no_grad():
        weights = sum(float(p.double().sum()) for p in model.parameters())
    # NaN (no coefficient) never equals itself: compare it as None.
    fingerprints = cluster.gather_objects(tuple(None if math.isnan(v) else round(v, 9) for v in (weights, *coefficients)))
    if any(f != fingerprints[0] for f in fingerprints):
        raise RuntimeError(f"data-parallel processes diverged: {fingerprints}")


# ---- keep the best, checkpoint every epoch ---------------------------------------------------------

def _keep_the_best(run: _Run, metrics: EpochMetrics) -> None:
    """Model selection: first the share of held-out crops meeting the floor, then bit accuracy;
    a later epoch wins a tie."""
    score = (metrics.val_fraction_satisfied, metrics.val_bit_accuracy)
    if run.best is None or score >= run.best.score:
        run.best = _Best(score, metrics, {k: v.detach().clone() for k, v in run.model.state_dict().items()})


def _write_checkpoint(run: _Run, metrics: EpochMetrics) -> None:
    """Everything --resume needs to carry on bit-exactly after `metrics.epoch`, and metrics.csv."""
    rng_states = run.cluster.gather_objects(rng_state(run.rng, run.device))  # every process's
    if not run.cluster.is_writer:
        return
    run.output.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run.output, {
        # Absolute paths: a run may be resumed from another working folder.
        "format": 1, "config": config_options(run.config), "data": absolute_paths(run.data),
        "train_files": absolute_paths(run.train_pool.files),
        "validation_files": absolute_paths(run.validation_pool.files),
        "world_size": run.cluster.world_size, "epoch": metrics.epoch, "step": run.step,
        "seconds": metrics.seconds,
        "model": run.model.state_dict(), "optimiser": run.optimiser.state_dict(), "method": run.method.state_dict(),
        "order": run.order.state_dict(), "history": [asdict(m) for m in run.history],
        "best": {"score": list(run.best.score), "metrics": asdict(run.best.metrics), "state": run.best.state},
        "rng": rng_states,
    })
    write_metrics(run.output, run.history)


# ---- the end, or a requested stop: the best model, its card, metrics and plot -----------------------

def _finish(run: _Run, stopped: bool) -> TrainResult:
    """The best model, its card, metrics.csv and metrics.png (written by one process)."""
    if run.best is None:
        raise TrainingInterrupted("stopped before the first epoch was complete; nothing was written")
    cluster = run.cluster
    run.model.load_state_dict(run.best.state)
    seconds = run.seconds_before + time.perf_counter() - run.started
    held_out = run.validation_pool if run.has_validation_files else None
    if cluster.is_writer:
        card = model_card(run.config, run.train_pool, held_out, run.best.metrics, seconds, run.device,
                          cluster.world_size)
        if stopped:
            card["training"]["stopped_after_epoch"] = run.history[-1].epoch
        save_model(run.output, run.model, card)
        write_metrics(run.output, run.history)
        plot_metrics(run.output, run.history, run.config.psnr_min)
    cluster.barrier()  # no process leaves before the files are written
    return TrainResult(run.output, run.best.metrics, run.history, seconds, run.train_pool.files,
                       held_out.files if held_out is not None else [], rank=cluster.rank,
                       stopped_after_epoch=run.history[-1].epoch if stopped else None)
