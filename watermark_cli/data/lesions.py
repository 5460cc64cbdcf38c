"""The diagnostic-check dataset: SYNTHETIC lesions on real clinical and on synthetic backgrounds.

`wm evaluate --classifier` asks whether a diagnostic classifier answers the same on watermarked
images as on the originals. Demonstrating that offline needs labelled images, and pydicom-data
has no findings, so the lesions here are synthetic (the blurred nodule of `data.synthetic`); what
is real is the anatomy, noise and texture under them:

- real backgrounds: random square crops of the grayscale frames of the pydicom-data clinical
  images of ONE split (`data.clinical`: train or held_out, split by image group, never mixed),
  rescaled with antialiasing to the output size; nearly flat crops (air, collimator shadow,
  blank padding) are rejected so that every image holds anatomy. Each frame is first shown as
  a viewer would: through the file's VOI window (else its 1st..99.5th percentile), MONOCHROME1
  inverted. Modality OT (test patterns) gives no backgrounds;
- synthetic backgrounds: the CT-, MR- and radiograph-like phantoms of `synthetic.synth_image`.

Images come in pairs sharing one background (same crop, same noise); one of the two, at random,
gets the nodule (`synthetic.add_nodule`), placed in fairly homogeneous tissue that is neither
dark nor saturated. So the label is independent of the background by construction: the train
split has only eight real images with anatomy, and a classifier that could score by recognising
them would learn nothing about lesions. `labels.csv` (`path,label,group`; 1 = lesion) names the
pair in `group`, which `wm classifier train` keeps on one side of its validation split and in one
batch. The nodule is 3-8 % of the image width with a contrast of 30-70 % of the tissue under it
(dense on radiographs, either sign elsewhere): the small CNN learns it in under five minutes
on 2 CPU cores (validation AUROC 0.87, held-out 0.92 at 256²), and still misses some on busy
real anatomy. `data.faint_lesions` is the harder task of faint blobs on real brain slices. Images are
16-bit PNG; `manifest.csv` says where each background came from; README.txt says the lesions
are synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..io.writing import csv_text, png_bytes, write_atomically
from ..views import VoiView, reader_views
from .clinical import clinical_files
from .synthetic import KINDS, add_nodule, synth_image

LESION_TASKS = ("nodules", "faint-brain")  # this module's task, and data.faint_lesions'
LESION_CONTRAST = (0.30, 0.70)  # fraction of the mean tissue value under the nodule
_SPLIT_STREAM = {"train": 0, "held_out": 1}  # the same --seed gives different images per split
_MAX_CROP_TRIES = 60


@dataclass(frozen=True)
class LesionDatasetConfig:
    split: str = "train"
    n: int = 400
    size: int = 256
    seed: int = 0
    real_fraction: float = 0.5  # share of images on real clinical backgrounds
    lesion_contrast: tuple[float, float] = LESION_CONTRAST


@dataclass(frozen=True)
class _RealFrame:
    group: str
    modality: str
    source: str  # the pydicom-data file name
    frame: int
    display: np.ndarray  # float32 in [0, 1], dense bright


def _display_frames(split: str) -> list[_RealFrame]:
    """Every grayscale frame of the split's clinical images, as a viewer would first show it.

    The file's own VOI window when it has one (what the radiologist sees), else the frame's
    1st..99.5th percentile; MONOCHROME1 inverted so that dense is bright. Modality OT in
    pydicom-data is test patterns (grey steps, SMPTE-like charts), not anatomy, so those groups
    give no backgrounds.
    """
    frames = []
    for group, path in clinical_files(split):
        if group.modality == "OT":
            continue
        image = read_image(path)
        for index, stored in enumerate(image.pixels):
            declared = [view for view in reader_views(image, index)
                        if isinstance(view, VoiView) and view.voi.origin == "declared"]
            if declared:  # the file's first window, through the one VOI formula of views
                display = declared[0].display(stored).astype(np.float32)
            else:
                frame = stored.astype(np.float32)
                low, high = np.percentile(frame, [1.0, 99.5])
                if high - low <= 0:
                    continue  # a blank frame has no anatomy to offer
                display = np.clip((frame - low) / (high - low), 0.0, 1.0)
            if np.ptp(display) <= 0:
                continue
            if image.photometric == "MONOCHROME1":
                display = 1.0 - display
            frames.append(_RealFrame(group.name, group.modality, path.name, index, display.astype(np.float32)))
    if not frames:
        raise BadInputError(f"no usable clinical frames in the {split} split")
    return frames


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resampling (Pillow widens its filter when it shrinks), float32 kept."""
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def has_anatomy(crop: np.ndarray) -> bool:
    """True when most of the crop is neither dark background nor saturated (collimator shadow,
    blank padding) and it is not a flat field."""
    return bool(np.mean((crop > 0.08) & (crop < 0.92)) >= 0.6 and crop.std() >= 0.05)


def _real_background(frame: _RealFrame, size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A random square crop with anatomy, rescaled to size²; (crop, (top, left, side))."""
    rows, cols = frame.display.shape
    shorter = min(rows, cols)
    # Small frames (64² MR) are used nearly whole; large ones give crops of 35-80 % of their side.
    low = min(shorter, max(int(0.35 * shorter), 64))
    high = max(low, int(0.8 * shorter))
    best, best_box, best_fill = None, None, -1.0
    for _ in range(_MAX_CROP_TRIES):
        side = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, rows - side + 1))
        left = int(rng.integers(0, cols - side + 1))
        crop = _resize(frame.display[top : top + side, left : left + side], size)
        if has_anatomy(crop):
            return crop, (top, left, side)
        fill = float(np.mean(crop > 0.08))
        if fill > best_fill:
            best, best_box, best_fill = crop, (top, left, side), fill
    if best is None or best.std() < 0.02:
        raise BadInputError(f"{frame.source} frame {frame.frame}: no crop with anatomy found")
    return best, best_box  # mostly anatomy but lower contrast than asked: still usable


def _lesion_sites(background: np.ndarray) -> np.ndarray:
    """Where a nodule may go: fairly homogeneous tissue, neither near-black nor near-saturated
    over the nodule's scale (a hyperdense nodule must not clip at the top of the range, and a
    nodule straddling an organ edge is not what a reader looks for)."""
    from scipy import ndimage

    scale = max(3, background.shape[0] // 16)
    local_mean = ndimage.uniform_filter(background, size=scale, mode="nearest")
    local_square = ndimage.uniform_filter(background * background, size=scale, mode="nearest")
    local_std = np.sqrt(np.clip(local_square - local_mean * local_mean, 0.0, None))
    tissue = (local_mean > 0.2) & (local_mean < 0.8)
    sites = ndimage.binary_erosion(tissue & (local_std < 0.1), iterations=scale // 2)
    if sites.any():
        return sites
    return tissue if tissue.any() else background > 0.1


def _write_png16(path: Path, image: np.ndarray) -> None:
    stored = np.rint(np.clip(image, 0.0, 1.0).astype(np.float64) * 65535).astype(np.uint16)
    write_atomically(path, png_bytes(stored, compress_level=1))


_README = """\
Synthetic lesions on real and synthetic backgrounds ({split} split), written by `wm data lesions`.

THE LESIONS ARE SYNTHETIC. Every image labelled 1 in labels.csv holds one small blurred nodule
(3-8 % of the image width, contrast {low:.0%}-{high:.0%} of the tissue under it) that was drawn by the
program, not found by a radiologist. The images are for demonstrating and testing the
diagnostic classifier check of `wm evaluate`; they are not for any clinical use.

- real_*.png: random crops of the {split}-split clinical DICOM images shipped with pydicom-data
  (shown through their VOI window), rescaled to {size}x{size}. manifest.csv names each source
  file, frame and crop.
- synth_*.png: CT-, MR- and radiograph-like synthetic phantoms.

Images come in pairs with the same background (labels.csv column `group`): one with the
nodule, one without. 16-bit grayscale PNG. labels.csv: path,label,group (label 1 = lesion).
Seed {seed}; {n} images.
"""


def write_lesion_dataset(out_dir: Path, config: LesionDatasetConfig) -> Path:
    """Write the images, labels.csv, manifest.csv and README.txt; return labels.csv's path.

    Images come in pairs that share one background (same crop, same noise): one of the two, at
    random, gets the lesion. The label is then independent of the background by construction,
    so a classifier cannot score by recognising the anatomy (the train split has only a handful
    of real images); it has to find the lesion. Pair j depends only on (seed, split, j); with an
    odd n the last background is used once. Existing files of the same names are replaced.
    """
    if config.split not in _SPLIT_STREAM:
        raise BadInputError(f"unknown split {config.split!r} (train or held_out)")
    if config.n < 2:
        raise BadInputError(f"the number of images must be at least 2, got {config.n}")
    if config.size < 64:
        raise BadInputError(f"images must be at least 64 pixels a side, got {config.size}")
    if config.seed < 0:
        raise BadInputError(f"seed must be zero or positive, got {config.seed}")
    if not 0.0 <= config.real_fraction <= 1.0:
        raise BadInputError(f"the real fraction must be between 0 and 1, got {config.real_fraction}")
    low, high = config.lesion_contrast
    if not 0.0 < low <= high < 1.0:
        raise BadInputError(f"lesion contrast must be 0 < low <= high < 1, got {config.lesion_contrast}")

    n, size = int(config.n), int(config.size)
    stream = _SPLIT_STREAM[config.split]
    n_pairs = (n + 1) // 2
    # Real backgrounds at evenly spaced positions, so any prefix of the set holds both kinds.
    is_real = np.diff(np.floor(np.arange(n_pairs + 1) * config.real_fraction + 0.5)).astype(bool)
    frames = _display_frames(config.split) if is_real.any() else []
    groups = sorted({frame.group for frame in frames})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_rows, manifest_rows = [], []
    real_count = synth_count = 0
    for pair, real in enumerate(is_real):
        rng = np.random.default_rng([config.seed, stream, pair])
        if real:
            group = groups[real_count % len(groups)]
            real_count += 1
            candidates = [frame for frame in frames if frame.group == group]
            frame = candidates[int(rng.integers(len(candidates)))]
            background, (top, left, side) = _real_background(frame, size, rng)
            radiograph = frame.modality in ("CR", "DX")
            stem, provenance = f"real_{group}", (f"real:{group}", frame.source, frame.frame, top, left, side)
        else:
            kind = KINDS[synth_count % len(KINDS)]
            synth_count += 1
            background = synth_image(kind, (size, size), rng, lesion=False)
            radiograph = kind == "xray"
            stem, provenance = f"synth_{kind}", (f"synthetic:{kind}", "", "", "", "", "")
        with_lesion = add_nodule(background, _lesion_sites(background), rng,
                                 (1,) if radiograph else (-1, 1), (low, high))
        members = [2 * pair, 2 * pair + 1] if 2 * pair + 1 < n else [2 * pair]
        lesion_member = int(rng.integers(len(members)))
        for position, i in enumerate(members):
            label = int(position == lesion_member)
            file_name = f"{stem}_{i:05d}.png"
            _write_png16(out / file_name, with_lesion if label else background)
            label_rows.append((file_name, label, f"background{pair:05d}"))
            manifest_rows.append((file_name, label, f"background{pair:05d}", *provenance))

    labels_path = out / "labels.csv"
    write_atomically(labels_path, csv_text(["path", "label", "group"], label_rows))
    write_atomically(out / "manifest.csv", csv_text(["path", "label", "group", "background", "source_file", "frame",
                                                     "crop_top", "crop_left", "crop_side"], manifest_rows))
    write_atomically(out / "README.txt", _README.format(split=config.split, size=size, seed=config.seed, n=n,
                                                        low=low, high=high))
    return labels_path
