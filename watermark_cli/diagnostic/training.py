"""The training recipe of the diagnostic classifier (`wm classifier train`).

`train_classifier` trains on the clean training split: binary cross-entropy with logits (one
output per finding, positives weighted to balance the classes), Adam with a one-cycle learning
rate, the eight right-angle turns and mirrorings and small shifts, a validation split by file
(by group where the labels have a `group` column), a fixed seed, the epoch with the best
validation AUROC kept and early stopping some epochs after it. Images of one group train in the
same batch with the same augmentation: for the pairs of `wm data lesions` (one background with
and without a nodule) that is what lets a small CNN find the nodule in a few minutes instead of
memorising the few real backgrounds. It does not find the faint blobs of `--task faint-brain`
(README: the recipe stays at chance there). It writes a classifier folder (`weights.safetensors`
+ `card.yaml`) that `diagnostic.classifier.load_classifier` reads.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BadInputError
from ..model.device import pick_device
from ..model.store import save_model
from .check import auroc, macro_auroc
from .classifier import CARD_KIND
from .inputs import read_inputs
from .labels import LabelledImages


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    arch: str = "small"
    input_size: int | None = None  # None: the images' own side, up to MAX_NATIVE_INPUT
    epochs: int = 40
    patience: int = 12  # stop after this many epochs without a better validation AUROC
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.2
    max_shift: float = 0.06  # augmentation: random shift up to this fraction of the side
    balance_classes: bool = True  # weigh each finding's positives by negatives / positives
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    weights: Path | None = None  # local pretrained weights to start from


@dataclass
class EpochFigures:
    epoch: int
    train_loss: float
    validation_loss: float | None
    validation_auroc: float | None  # macro over findings


@dataclass
class ClassifierTrainingResult:
    output: Path
    card: dict
    history: list[EpochFigures] = field(default_factory=list)


def validation_split(labelled: LabelledImages, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices, by group (by file where there are no groups), stratified
    by each group's findings so that validation holds both classes whenever the data do. The
    order within a stratum comes from a hash of the seed and the group, not the listing order."""
    if not 0.0 <= fraction < 1.0:
        raise BadInputError("the validation fraction must be in [0, 1)")
    members: dict[str, list[int]] = {}
    for i in range(len(labelled)):
        members.setdefault(labelled.group_of(i), []).append(i)
    strata: dict[tuple, list[str]] = {}
    for group, indices in members.items():
        composition = tuple(sorted(tuple(labelled.targets[i].tolist()) for i in indices))
        strata.setdefault(composition, []).append(group)
    train, validation = [], []
    for groups in strata.values():
        groups.sort(key=lambda g: hashlib.sha256(f"{seed}:{_short_name(g)}".encode()).hexdigest())
        take = int(round(fraction * len(groups)))
        if fraction > 0 and len(groups) >= 2:
            take = max(1, take)
        validation += [i for g in groups[:take] for i in members[g]]
        train += [i for g in groups[take:] for i in members[g]]
    return sorted(train), sorted(validation)


def _short_name(group: str) -> str:
    """A group key that does not depend on where the data folder lies (parent folder + name)."""
    if group.startswith("file:"):
        path = Path(group[5:])
        return f"{path.parent.name}/{path.name}"
    return group


def _group_batches(indices: list[int], labelled: LabelledImages, batch_size: int, generator) -> list[list[int]]:
    """Shuffled batches of groups: a group's images (e.g. one background with and without a
    lesion) are seen together, so their difference drives the step. A group larger than half a
    batch (a patient, a slice with many variants) is cut into chunks of half a batch in listing
    order, so that a batch still mixes several groups and an epoch still takes many steps."""
    import torch

    members: dict[str, list[int]] = {}
    for i in indices:
        members.setdefault(labelled.group_of(i), []).append(i)
    chunk = max(2, batch_size // 2)
    groups = [images[start : start + chunk] for images in members.values() for start in range(0, len(images), chunk)]
    batches, current = [], []
    for position in torch.randperm(len(groups), generator=generator).tolist():
        current += groups[position]
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    if len(current) >= 2:  # BatchNorm needs two images; a lone leftover waits for the next epoch
        batches.append(current)
    elif current and not batches:
        batches.append(current)
    return batches


def _augment(batch, max_shift: int, generator, units: list[int]):
    """Random horizontal and vertical flips, a transpose (with the flips: all eight right-angle
    turns and mirrorings of the square input) and shifts of up to `max_shift` pixels (reflected
    borders): a lesion may sit anywhere, at any orientation. Images of one unit (`units[i]`,
    their group) get the same transform, so that they still differ only where their content
    does."""
    import torch

    n, _, size, _ = batch.shape
    unit_index = torch.tensor(units)
    flips = torch.rand(int(unit_index.max()) + 1, 3, generator=generator)[unit_index]
    batch = torch.where((flips[:, 0] < 0.5)[:, None, None, None], batch.flip(3), batch)
    batch = torch.where((flips[:, 1] < 0.5)[:, None, None, None], batch.flip(2), batch)
    batch = torch.where((flips[:, 2] < 0.5)[:, None, None, None], batch.transpose(2, 3), batch)
    if max_shift <= 0:
        return batch
    padded = torch.nn.functional.pad(batch, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (int(unit_index.max()) + 1, 2), generator=generator)[unit_index]
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])


def train_classifier(
    labelled: LabelledImages,
    out: Path,
    config: ClassifierTrainingConfig = ClassifierTrainingConfig(),
    on_epoch: Callable[[EpochFigures], None] | None = None,
    data_description: str | None = None,
) -> ClassifierTrainingResult:
    """Train from scratch (or from `config.weights`) on `labelled`; write `out/` and return.

    The epoch with the best validation AUROC (macro; ties: lower validation loss) is kept, and
    training stops `config.patience` epochs after it; with no validation images (too few to
    split), every epoch runs and the last is kept.
    """
    import torch

    from .networks import ARCHITECTURES, build_network, load_initial_weights, predict_logits

    if config.arch not in ARCHITECTURES:
        raise BadInputError(f"unknown classifier architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if config.epochs < 1:
        raise BadInputError("--epochs must be at least 1")
    if config.input_size is not None and config.input_size < 32:
        raise BadInputError("the classifier input size must be at least 32 pixels")
    if config.patience < 1:
        raise BadInputError("the early-stopping patience must be at least 1 epoch")
    if len(labelled) < 2:
        raise BadInputError("at least two labelled images are needed to train a classifier")
    for k, name in enumerate(labelled.label_names):
        if labelled.targets[:, k].min() == labelled.targets[:, k].max():
            raise BadInputError(f"finding {name!r} is {int(labelled.targets[0, k])} for every image: nothing to learn")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} exists and is not empty; choose another --out")
    if config.weights is not None and not Path(config.weights).is_file():
        raise BadInputError(f"--weights: no such file: {config.weights}")  # before minutes of loading

    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = pick_device(config.device).type
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    train_idx, val_idx = validation_split(labelled, config.validation_fraction, config.seed)
    inputs = torch.from_numpy(read_inputs(labelled.paths, config.input_size)).unsqueeze(1)
    size = int(inputs.shape[-1])
    targets = torch.from_numpy(labelled.targets)
    k = len(labelled.label_names)
    # Class balance: a finding's positives weigh negatives / positives of the training split, so
    # a rare finding is not learnt as "never".
    positives = targets[train_idx].sum(dim=0)
    negatives = len(train_idx) - positives
    positive_weight = (negatives / positives.clamp(min=1.0)).clamp(min=1e-3) if config.balance_classes \
        else torch.ones(k)

    network = build_network(config.arch, k)
    initial = load_initial_weights(network, Path(config.weights)) if config.weights else "random (trained from scratch)"
    network.to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # Every batch but an epoch's last holds at least batch_size images: an upper bound on the steps.
    steps_per_epoch = len(train_idx) // config.batch_size + 1
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                   total_steps=config.epochs * steps_per_epoch, pct_start=0.2)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=positive_weight.to(device))
    validation_loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=positive_weight)
    shift = int(round(config.max_shift * size))

    history: list[EpochFigures] = []
    best_state, best_key, best_epoch = None, None, 0
    for epoch in range(1, config.epochs + 1):
        network.train()
        total, seen = 0.0, 0
        for chosen in _group_batches(train_idx, labelled, config.batch_size, generator):
            group_names = [labelled.group_of(i) for i in chosen]
            units = [group_names.index(name) for name in group_names]
            batch = _augment(inputs[chosen], shift, generator, units).to(device)
            loss = loss_fn(network(batch), targets[chosen].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(chosen)
            seen += len(chosen)
        figures = EpochFigures(epoch, total / max(seen, 1), None, None)
        if val_idx:
            logits = predict_logits(network, inputs[val_idx], device)
            figures.validation_loss = float(validation_loss_fn(logits, targets[val_idx]))
            value = macro_auroc(torch.sigmoid(logits).numpy(), labelled.targets[val_idx])
            figures.validation_auroc = value if math.isfinite(value) else None
        history.append(figures)
        key = (figures.validation_auroc if figures.validation_auroc is not None else -1.0,
               -(figures.validation_loss if figures.validation_loss is not None else -epoch))
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}
        if on_epoch:
            on_epoch(figures)
        if val_idx and epoch - best_epoch >= config.patience:
            break  # early stopping: the validation AUROC has not improved for `patience` epochs

    network.load_state_dict(best_state)
    selected = max(history, key=lambda f: (f.validation_auroc if f.validation_auroc is not None else -1.0,
                                           -(f.validation_loss if f.validation_loss is not None else -f.epoch)))
    per_label = {}
    if val_idx:
        probabilities = torch.sigmoid(predict_logits(network, inputs[val_idx], device)).numpy()
        for j, name in enumerate(labelled.label_names):
            value = auroc(probabilities[:, j], labelled.targets[val_idx, j])
            per_label[name] = value if math.isfinite(value) else None

    root = labelled.source.parent if labelled.source.is_file() else labelled.source
    train_set, val_set = labelled.subset(train_idx), labelled.subset(val_idx)
    card = {
        "kind": CARD_KIND,
        "name": out.name,
        "architecture": {"arch": config.arch, "input_channels": 1, "outputs": k, "input_size": size},
        "task": labelled.task,
        "label_names": list(labelled.label_names),
        "preprocessing": {
            "frame": "middle frame of multi-frame images",
            "intensity": "stored values over the nominal stored range to [0, 1] (model.inputs.normalised_frames), "
                         "then zero mean and unit variance per image inside the network",
            "geometry": f"letterboxed (aspect kept, 0-padded) and resampled to {size}x{size} "
                        "with Pillow's antialiased bilinear filter"
                        + (" (the training images' own side)" if config.input_size is None else ""),
        },
        "output": "sigmoid probability per finding",
        "training": {
            "data": data_description or str(labelled.source),
            "labels": labelled.source.name,
            "started": started_at,
            "seconds": None,
            "device": device,
            "seed": config.seed,
            "initial_weights": initial,
            "loss": "binary cross-entropy with logits, one output per finding"
                    + (", positives weighted by negatives / positives (class balance): "
                       + ", ".join(f"{name} {float(w):.3g}" for name, w in zip(labelled.label_names, positive_weight))
                       if config.balance_classes else ""),
            "optimiser": f"Adam, one-cycle learning rate up to {config.learning_rate:g}, weight decay {config.weight_decay:g}",
            "augmentation": f"random flips and transposes (the eight right-angle turns and mirrorings), shifts "
                            f"up to {shift} px (reflected borders); the same for all images of a group",
            "groups": "from the labels' group column: one side of the validation split, one batch"
                      if labelled.groups is not None else "none: each image alone",
            "epochs": config.epochs,
            "epochs_run": len(history),
            "patience": config.patience,
            "batch_size": config.batch_size,
            "selected_epoch": selected.epoch,
            "selection": "best validation AUROC (macro), ties to the lower validation loss; early stopping "
                         f"{config.patience} epochs after it",
            "n_train": len(train_idx),
            "n_validation": len(val_idx),
            "positives_train": train_set.positives(),
            "positives_validation": val_set.positives() if val_idx else {},
            "train_files": [_relative(path, root) for path in train_set.paths],
            "validation_files": [_relative(path, root) for path in val_set.paths],
        },
        "validation": {
            "auroc_macro": selected.validation_auroc,
            "auroc": per_label,
            "loss": selected.validation_loss,
        },
        "history": [asdict(f) for f in history],
    }
    card["training"]["seconds"] = round(time.perf_counter() - started, 1)
    save_model(out, network, card, half_precision=False, record_weights_hash=True)
    return ClassifierTrainingResult(out, card, history)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.name
