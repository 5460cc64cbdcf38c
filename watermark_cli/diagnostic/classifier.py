"""The diagnostic classifier of the watermark check: labels, preprocessing, training, scoring.

`wm evaluate --classifier` asks whether a frozen diagnostic classifier answers the same on
watermarked images as on the originals (design §6; the statistics are in `diagnostic.check`).
This module provides that classifier:

- labels (`read_labels`): a CSV `path,label` (0/1: one finding), a CSV `path,A,B,...` (0/1 per
  finding: multi-label), or class subfolders of a folder (see `read_labels` for the rule that
  picks the positive class of two);
- preprocessing (`classifier_input`): one frame per image (the middle one of a multi-frame
  image), stored values mapped to [0, 1] over the nominal stored range exactly as the watermark
  model sees them (`model.inputs.normalised_frames`), letterboxed to a square and resampled with
  antialiasing to the input size: by default the training images' own side up to 256, so that a
  small finding is not halved by downsampling. It takes stored pixel values, so originals read
  from disk and watermarked pixels held in memory go through the very same function;
- networks trained from scratch: a small CNN that learns on a CPU in a few minutes (default),
  or torchvision's ResNet-18 / DenseNet-121 with one input channel (for a GPU). Every network
  first standardises each image to zero mean and unit variance, so a CT whose anatomy spans a
  few hundred of 65536 stored values and a full-range PNG look alike to it. `--weights` loads
  local pretrained weights (nothing is ever downloaded);
- training (`train_classifier`) on the clean training split: binary cross-entropy with logits
  (one output per finding, positives weighted to balance the classes), Adam with a one-cycle
  learning rate, the eight right-angle turns and mirrorings and small shifts, a validation split
  by file (by group where the labels have a `group` column), a fixed seed, the epoch with the
  best validation AUROC kept and early stopping some epochs after it. Images of one group train
  in the same batch with the same augmentation: for the pairs of `wm data lesions` (one
  background with and without a nodule) that is what lets a small CNN find the nodule in a few
  minutes instead of memorising the few real backgrounds. It does not find the faint blobs of
  `--task faint-brain` (README: the recipe stays at chance there);
- a classifier folder: `weights.safetensors` + `card.yaml`; `load_classifier` gives a scorer.

What `wm evaluate` uses: `read_labels(csv_or_folder) -> LabelledImages`, `load_classifier(folder)
-> Classifier` with `.label_names`, `classifier_input` (one image's network input, from stored
pixels) and `.score_inputs(inputs) -> (N, K) probabilities`; `.score_pixels` and `.score_images`
do both steps for scripts.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import MedicalImage, iter_image_files, read_image
from ..model.device import pick_device
from ..model.inputs import normalised_frames
from ..model.store import (CARD_FILE, PICKLED_WEIGHT_SUFFIXES, WEIGHTS_FILE, file_sha256, load_safetensors,
                           load_torch_tensors, read_yaml_card, save_model)

ARCHITECTURES = ("small", "resnet18", "densenet121")
DEFAULT_INPUT_SIZE = 128  # for scoring callers that name no size
# Training's default input side: the images' own (a 4-px finding halved by resampling is a
# 2-px one), up to this; a larger image is resampled down to it.
MAX_NATIVE_INPUT = 256
CARD_KIND = "diagnostic-classifier"
# Two class subfolders: the positive one is the folder with one of these names (any case) ...
POSITIVE_FOLDER_NAMES = ("1", "positive", "lesion", "abnormal")
# ... else the second in sorted order (e.g. "0" / "1", "benign" / "malignant").


# ============================================================================== labels ====


@dataclass(frozen=True)
class LabelledImages:
    """Images with their 0/1 findings: `targets[i, k]` is finding `label_names[k]` of `paths[i]`."""

    paths: list[Path]
    targets: np.ndarray  # (N, K) float32 of 0. / 1.
    label_names: list[str]
    source: Path  # the labels CSV or the folder of class subfolders
    groups: list[str] | None = None  # from an optional `group` column; None: each image alone

    @property
    def task(self) -> str:
        return "binary" if len(self.label_names) == 1 else "multilabel"

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "LabelledImages":
        indices = list(indices)
        groups = None if self.groups is None else [self.groups[i] for i in indices]
        return LabelledImages([self.paths[i] for i in indices], self.targets[indices], self.label_names, self.source,
                              groups)

    def group_of(self, index: int) -> str:
        """The image's group: its `group` value, else the image itself."""
        if self.groups is not None and self.groups[index]:
            return self.groups[index]
        return f"file:{self.paths[index]}"

    def within(self, folder: Path) -> "LabelledImages":
        """Only the images below `folder` (or equal to it, for a file); BadInputError if none."""
        root = Path(folder).resolve()
        keep = [i for i, path in enumerate(self.paths)
                if path.resolve() == root or root in path.resolve().parents]
        if not keep:
            raise BadInputError(f"none of the {len(self)} images labelled in {self.source} lies in {folder}")
        return self.subset(keep)

    def targets_for(self, paths: Sequence[Path]) -> np.ndarray:
        """(len(paths), K) targets of these files (matched by resolved path); BadInputError for
        a file that has no label."""
        index = {path.resolve(): i for i, path in enumerate(self.paths)}
        rows = []
        for path in paths:
            row = index.get(Path(path).resolve())
            if row is None:
                raise BadInputError(f"{path} has no label in {self.source}")
            rows.append(row)
        return self.targets[rows]

    def positives(self) -> dict[str, int]:
        return {name: int(self.targets[:, k].sum()) for k, name in enumerate(self.label_names)}


def read_labels(source: str | Path) -> LabelledImages:
    """Labels from a CSV file, or from a folder (its `labels.csv`, else its class subfolders).

    CSV: a header row `path,NAME` (one finding, 0/1) or `path,A,B,...` (0/1 per finding), one
    row per image; paths relative to the CSV's folder, or absolute. An optional column named
    `group` (a patient or study ID; in `wm data lesions`, the background two images share) is
    not a finding: images of one group are never split between training and validation, and
    train in the same batch with the same augmentation.
    Class subfolders (at least two subfolders holding images): with two, the positive class is
    the folder named 1, positive, lesion or abnormal (any case) if exactly one is, else the
    second in sorted order, and the finding is named after it; with three or more, each folder
    is a finding and each image is positive for its own folder only.
    Any unusable label or missing file is a BadInputError naming it.
    """
    source = Path(source)
    if source.is_file():
        return _read_label_csv(source)
    if not source.is_dir():
        raise BadInputError(f"labels: no such file or folder: {source}")
    if (source / "labels.csv").is_file():
        return _read_label_csv(source / "labels.csv")
    return _read_class_folders(source)


def _read_label_csv(path: Path) -> LabelledImages:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(number, row) for number, row in enumerate(csv.reader(f), start=1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadInputError(f"{path}: cannot read labels ({error})") from None
    if not rows:
        raise BadInputError(f"{path}: empty labels file")
    header = [cell.strip() for cell in rows[0][1]]
    if len(header) < 2 or header[0].lower() != "path":
        raise BadInputError(f"{path}: the first row must be a header 'path,label' or 'path,FINDING,...', "
                            f"got {','.join(header)!r}")
    group_column = next((i for i, name in enumerate(header) if i > 0 and name.lower() == "group"), None)
    finding_columns = [i for i in range(1, len(header)) if i != group_column]
    names = [header[i] for i in finding_columns]
    if not names:
        raise BadInputError(f"{path}: no finding column besides path and group")
    if any(not name for name in names) or len(set(names)) != len(names):
        raise BadInputError(f"{path}: finding names in the header must be non-empty and distinct")
    if len(rows) < 2:
        raise BadInputError(f"{path}: no images listed")

    paths, targets, groups, missing, seen = [], [], [], [], {}
    for number, row in rows[1:]:
        cells = [cell.strip() for cell in row]
        if len(cells) != len(header):
            raise BadInputError(f"{path} line {number}: {len(cells)} columns, the header has {len(header)}")
        values = []
        for name, cell in zip(names, (cells[i] for i in finding_columns)):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if value not in (0.0, 1.0):
                raise BadInputError(f"{path} line {number}: {name} is {cell!r}, not 0 or 1")
            values.append(value)
        if not cells[0]:
            raise BadInputError(f"{path} line {number}: empty path")
        image = Path(cells[0]) if Path(cells[0]).is_absolute() else path.parent / cells[0]
        key = image.resolve()
        if key in seen:
            raise BadInputError(f"{path} line {number}: {cells[0]} is listed twice (first on line {seen[key]})")
        seen[key] = number
        if not image.is_file():
            missing.append(f"line {number}: {cells[0]}")
        paths.append(image)
        targets.append(values)
        groups.append(cells[group_column] if group_column is not None else "")
    if missing:
        raise BadInputError(f"{path}: {len(missing)} listed file(s) do not exist, first {missing[0]}")
    return LabelledImages(paths, np.asarray(targets, dtype=np.float32), names, path,
                          groups if group_column is not None else None)


def _read_class_folders(folder: Path) -> LabelledImages:
    classes = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = iter_image_files(sub)
        if files:
            classes.append((sub.name, files))
    if len(classes) < 2:
        raise BadInputError(f"{folder}: no labels.csv and no class subfolders (at least two folders of images)")
    if len(classes) == 2:
        named_positive = [i for i, (name, _) in enumerate(classes) if name.lower() in POSITIVE_FOLDER_NAMES]
        positive = named_positive[0] if len(named_positive) == 1 else 1
        names = [classes[positive][0]]
        paths = [path for _, files in classes for path in files]
        targets = [[1.0 if i == positive else 0.0] for i, (_, files) in enumerate(classes) for _ in files]
    else:
        names = [name for name, _ in classes]
        paths = [path for _, files in classes for path in files]
        targets = [[1.0 if j == i else 0.0 for j in range(len(classes))]
                   for i, (_, files) in enumerate(classes) for _ in files]
    return LabelledImages(paths, np.asarray(targets, dtype=np.float32), names, folder)


# ======================================================================== preprocessing ====


@dataclass(frozen=True)
class _StoredFrames:
    """Just what `normalised_frames` reads from a MedicalImage: pixels and the stored range."""

    pixels: np.ndarray
    stored_min: int
    stored_max: int


def classifier_input(pixels: np.ndarray, stored_range: tuple[int, int], size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: what the network sees of one image.

    `pixels`: stored values, (frames, rows, cols) or (rows, cols); the middle frame is used.
    `stored_range`: (stored_min, stored_max) of the image's format (MedicalImage's fields), the
    scale the watermark model and the PSNR guarantee use. The frame is letterboxed (aspect kept,
    padded with 0) and resampled with Pillow's antialiased bilinear filter.
    """
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or min(pixels.shape) < 1:
        raise BadInputError(f"expected (frames, rows, cols) pixels, got shape {pixels.shape}")
    low, high = (int(v) for v in stored_range)
    if high <= low:
        raise BadInputError(f"stored range {stored_range} is empty")
    middle = pixels[pixels.shape[0] // 2][np.newaxis]
    frame = np.clip(normalised_frames(_StoredFrames(middle, low, high))[0], 0.0, 1.0)
    rows, cols = frame.shape
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(frame, dtype=np.float32)).resize(
        (new_cols, new_rows), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = np.clip(resized, 0.0, 1.0)
    return out


def native_input_size(shapes: Sequence[tuple[int, int]]) -> int:
    """The side that keeps every frame of these (rows, cols) at full resolution (the longest
    side), capped at MAX_NATIVE_INPUT and at least 32."""
    longest = max(max(shape) for shape in shapes)
    return int(min(MAX_NATIVE_INPUT, max(32, longest)))


def _load_inputs(paths: Sequence[Path], size: int | None) -> np.ndarray:
    """(N, size, size) network inputs of the files; size None: `native_input_size` of them.

    Each file is decoded once: its middle frame (all the network reads) is kept in stored
    values until every shape is known."""
    frames = []
    for path in paths:
        image = read_image(path)
        frames.append((image.pixels[image.n_frames // 2], (image.stored_min, image.stored_max)))
    size = size or native_input_size([frame.shape for frame, _ in frames])
    inputs = np.empty((len(frames), size, size), dtype=np.float32)
    for i, (frame, stored_range) in enumerate(frames):
        inputs[i] = classifier_input(frame, stored_range, size)
    return inputs


# ============================================================================= networks ====


def _build_network(arch: str, n_outputs: int):
    """A network of `arch` with 1 input channel and `n_outputs` logits, randomly initialised."""
    import torch
    from torch import nn

    class PerImageStandardisation(nn.Module):
        """Zero mean, unit variance per image: the network ignores the stored range's scale."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            return (x - mean) / (std + 1e-4)

    class DiagnosticNetwork(nn.Module):
        def __init__(self, backbone: nn.Module):
            super().__init__()
            self.standardise = PerImageStandardisation()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(self.standardise(x))

    if arch == "small":
        backbone = _small_cnn(n_outputs)
    elif arch == "resnet18":
        import torchvision  # imported here only: it costs seconds, and only these archs need it

        backbone = torchvision.models.resnet18(weights=None, num_classes=n_outputs)
        backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif arch == "densenet121":
        import torchvision

        backbone = torchvision.models.densenet121(weights=None, num_classes=n_outputs)
        backbone.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        raise BadInputError(f"unknown classifier architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return DiagnosticNetwork(backbone)


def _small_cnn(n_outputs: int):
    """Five conv stages, each halving the resolution (128² → 4²), then global average AND max
    pooling: a small lesion lights up a few positions, which the max keeps and a mean dilutes.
    About 20 M multiply-adds per 128² image: an epoch of 400 images takes seconds on a CPU."""
    from torch import nn

    class SmallLesionCNN(nn.Module):
        def __init__(self):
            super().__init__()
            widths = (1, 8, 16, 32, 64, 128)
            layers = []
            for cin, cout in zip(widths[:-1], widths[1:]):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                           nn.MaxPool2d(2)]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(2 * widths[-1], n_outputs)

        def forward(self, x):
            import torch

            f = self.features(x)
            pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
            return self.head(pooled)

    return SmallLesionCNN()


_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _read_weights_file(path: Path) -> dict:
    """A state dict from a safetensors file or a torch file (plain, or under 'state_dict'/'model')."""
    import torch

    if not path.is_file():
        raise BadInputError(f"--weights: no such file: {path}")
    # Tensors only, either way: a pickle that would run code is refused unread.
    if path.suffix == ".safetensors":
        state = load_safetensors(path, "--weights")
    else:
        state = load_torch_tensors(path, "--weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"--weights {path}: not a state dict of tensors")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        match = _LEGACY_DENSENET_KEY.match(key)  # old torchvision DenseNet files name 'norm.1'
        cleaned[match.group(1) + match.group(2) if match else key] = value
    return cleaned


def load_initial_weights(network, path: Path) -> dict:
    """Copy every tensor of `path` that fits the network's backbone; a 3-channel first conv is
    summed over its colour channels (a gray image then excites it as the RGB net's gray input
    would). A head of another size (e.g. 1000 ImageNet classes) is left at its random start.
    BadInputError when under half of the backbone's tensors fit (the file is for another arch)."""
    source = _read_weights_file(path)
    target = network.backbone.state_dict()
    loaded, skipped = {}, []
    for key, value in target.items():
        incoming = source.get(key)
        if incoming is None:
            skipped.append(key)
            continue
        if incoming.shape != value.shape and incoming.ndim == 4 and incoming.shape[1] == 3 and value.shape[1] == 1 \
                and incoming.shape[0] == value.shape[0] and incoming.shape[2:] == value.shape[2:]:
            incoming = incoming.sum(dim=1, keepdim=True)
        if incoming.shape != value.shape:
            skipped.append(key)
            continue
        loaded[key] = incoming.to(value.dtype)
    if len(loaded) < len(target) / 2:
        raise BadInputError(f"--weights {path}: only {len(loaded)} of {len(target)} tensors fit this architecture")
    network.backbone.load_state_dict(loaded, strict=False)
    return {"path": path.name, "sha256": file_sha256(path), "tensors_loaded": len(loaded),
            "tensors_left_random": skipped}


# ============================================================================= training ====


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

    from .check import macro_auroc

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
    inputs = torch.from_numpy(_load_inputs(labelled.paths, config.input_size)).unsqueeze(1)
    size = int(inputs.shape[-1])
    targets = torch.from_numpy(labelled.targets)
    k = len(labelled.label_names)
    # Class balance: a finding's positives weigh negatives / positives of the training split, so
    # a rare finding is not learnt as "never".
    positives = targets[train_idx].sum(dim=0)
    negatives = len(train_idx) - positives
    positive_weight = (negatives / positives.clamp(min=1.0)).clamp(min=1e-3) if config.balance_classes \
        else torch.ones(k)

    network = _build_network(config.arch, k)
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
            logits = _logits(network, inputs[val_idx], device)
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
        probabilities = torch.sigmoid(_logits(network, inputs[val_idx], device)).numpy()
        from .check import auroc

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


def _logits(network, inputs, device: str, batch_size: int = 64):
    import torch

    network.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunks.append(network(inputs[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(chunks)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.name


# ============================================================================== scoring ====


@dataclass
class Classifier:
    """A trained, frozen classifier: `score_*` give (N, K) sigmoid probabilities."""

    network: object
    card: dict
    path: Path
    device: str = "cpu"

    @property
    def label_names(self) -> list[str]:
        return list(self.card["label_names"])

    @property
    def input_size(self) -> int:
        return int(self.card["architecture"]["input_size"])

    def score_inputs(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, size, size) preprocessed inputs (`classifier_input`) → (N, K) probabilities."""
        import torch

        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim != 3 or inputs.shape[1:] != (self.input_size, self.input_size):
            raise BadInputError(f"classifier inputs must be (N, {self.input_size}, {self.input_size}), got {inputs.shape}")
        if len(inputs) == 0:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        logits = _logits(self.network, torch.from_numpy(inputs).unsqueeze(1), self.device, batch_size)
        return torch.sigmoid(logits).double().numpy()

    def score_pixels(self, pixels: Sequence[np.ndarray],
                     stored_ranges: Sequence[tuple[int, int]] | tuple[int, int],
                     batch_size: int = 64) -> np.ndarray:
        """Stored pixel arrays ((frames, rows, cols) each, any sizes) → (N, K) probabilities.

        `stored_ranges`: one (stored_min, stored_max) per array, or one pair for all; for
        watermarked pixels, the original image's range (a marked image keeps its format).
        """
        pixels = list(pixels)
        if len(stored_ranges) == 2 and all(isinstance(v, (int, np.integer)) for v in stored_ranges):
            stored_ranges = [tuple(stored_ranges)] * len(pixels)
        if len(stored_ranges) != len(pixels):
            raise BadInputError(f"{len(stored_ranges)} stored ranges for {len(pixels)} pixel arrays")
        size = self.input_size
        scores = []
        for start in range(0, len(pixels), batch_size):  # preprocess a batch at a time: bounded memory
            inputs = np.stack([classifier_input(p, r, size) for p, r in
                               zip(pixels[start : start + batch_size], stored_ranges[start : start + batch_size])])
            scores.append(self.score_inputs(inputs, batch_size))
        return np.concatenate(scores) if scores else np.zeros((0, len(self.label_names)))

    def score_images(self, images: Sequence[MedicalImage], batch_size: int = 64) -> np.ndarray:
        """MedicalImages (as read from disk) → (N, K) probabilities."""
        return self.score_pixels([image.pixels for image in images],
                                 [(image.stored_min, image.stored_max) for image in images], batch_size)


def read_classifier_card(folder: Path) -> dict:
    path = Path(folder) / CARD_FILE
    card = read_yaml_card(path, "classifier card")
    if card.get("kind") != CARD_KIND:
        raise BadInputError(f"{folder} is not a diagnostic classifier folder (card kind is not {CARD_KIND!r})")
    architecture = card.get("architecture")
    names = card.get("label_names")
    if not isinstance(architecture, dict) or not isinstance(names, list) or not names \
            or any(key not in architecture for key in ("arch", "outputs", "input_size")) \
            or int(architecture["outputs"]) != len(names):
        raise BadInputError(f"classifier card {path} lacks its architecture or label names")
    return card


def load_classifier(folder: str | Path, device: str = "cpu") -> Classifier:
    """The classifier written by `wm classifier train` to `folder`, frozen, on `device`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"classifier folder not found: {folder}")
    card = read_classifier_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLED_WEIGHT_SUFFIXES)
        found = f" (it has {', '.join(pickled)}: wm only loads safetensors weights)" if pickled else ""
        raise BadInputError(f"classifier {folder} has no {WEIGHTS_FILE}{found}")
    state = load_safetensors(weights, "classifier weights")
    device = pick_device(device).type
    network = _build_network(str(card["architecture"]["arch"]), int(card["architecture"]["outputs"]))
    try:
        network.load_state_dict(state)
    except Exception as error:  # a damaged or mismatched file is bad input, not a crash
        raise BadInputError(f"cannot load classifier weights {weights}: {str(error).splitlines()[0]}") from None
    network.to(device).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return Classifier(network, card, folder, device)
