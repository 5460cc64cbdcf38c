"""Training images: files on disk turned into float frames, split by file, sampled as crops.

Frames are normalised to [0, 1] by the format's nominal range (stored_min .. stored_max), the
same scale the PSNR guarantee uses, so a PSNR measured on a training crop means what it means
on a written file. The held-out split is by file, never by crop: crops of one file are
correlated, and a split by crop would flatter every figure.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .image_io import MedicalImage, iter_image_files, read_image  # noqa: E402

MIN_SIDE = 64


def normalised_frames(image: MedicalImage) -> np.ndarray:
    """(frames, rows, cols) float32 in [0, 1] on the nominal stored range."""
    span = float(image.stored_max - image.stored_min)
    return ((image.pixels.astype(np.float32) - image.stored_min) / span).astype(np.float32)


def collect_image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files.extend(iter_image_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise BadInputError(f"no such file or folder: {item}")
    return sorted(dict.fromkeys(files))


def split_by_file(files: list[Path], held_out_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split that depends on each file's name, not on the listing order."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise BadInputError("the held-out fraction must be in [0, 1)")

    def rank(path: Path) -> str:
        return hashlib.sha256(f"{seed}:{path.name}:{path.parent.name}".encode()).hexdigest()

    ordered = sorted(files, key=rank)
    n_held_out = int(round(held_out_fraction * len(ordered)))
    if held_out_fraction > 0 and len(ordered) >= 2:
        n_held_out = max(1, n_held_out)
    return sorted(ordered[n_held_out:]), sorted(ordered[:n_held_out])


@dataclass
class FramePool:
    """All usable frames of a set of files, kept in memory as float32, grouped by file.

    Sampling picks a file (by its weight), then one of its frames, then a crop: a multi-frame
    file or a huge radiograph does not drown out the others. Callers weight files so that each
    data source (each folder given to `wm train`) gets an equal share.
    """

    frames_by_file: list[np.ndarray]
    files: list[Path]
    weights: list[float]
    skipped: list[tuple[Path, str]]

    @property
    def frames(self) -> list[np.ndarray]:
        return [frame for frames in self.frames_by_file for frame in frames]

    @classmethod
    def load(cls, files: list[Path], weights: list[float] | None = None) -> "FramePool":
        weights = weights if weights is not None else [1.0] * len(files)
        loaded: list[np.ndarray] = []
        used: list[Path] = []
        used_weights: list[float] = []
        skipped: list[tuple[Path, str]] = []
        for path, weight in zip(files, weights):
            try:
                image = read_image(path)
            except BadInputError as error:
                skipped.append((path, str(error)))
                continue
            if min(image.rows, image.cols) < MIN_SIDE:
                skipped.append((path, f"smaller than {MIN_SIDE} px"))
                continue
            loaded.append(normalised_frames(image))
            used.append(path)
            used_weights.append(weight)
        return cls(loaded, used, used_weights, skipped)

    def sample_crops(self, count: int, size: int, rng: random.Random,
                     scale_range: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """(count, 1, size, size) random crops, with random flips, quarter turns and rescales.

        A rescale by s takes a (size / s)² region and resamples it to size²: anatomy then
        appears at many pixel scales, as it does across scanners and fields of view.
        """
        if not self.frames_by_file:
            raise BadInputError("no usable images to sample from")
        crops = np.empty((count, 1, size, size), dtype=np.float32)
        indices = rng.choices(range(len(self.frames_by_file)), weights=self.weights, k=count)
        for i, file_index in enumerate(indices):
            frames = self.frames_by_file[file_index]
            frame = frames[rng.randrange(len(frames))]
            scale = rng.uniform(*scale_range)
            region = max(8, min(round(size / scale), *frame.shape)) if scale != 1.0 else size
            rows, cols = frame.shape
            if rows < region or cols < region:
                frame = np.pad(frame, ((0, max(0, region - rows)), (0, max(0, region - cols))), mode="reflect")
                rows, cols = frame.shape
            top = rng.randrange(rows - region + 1)
            left = rng.randrange(cols - region + 1)
            crop = frame[top : top + region, left : left + region]
            if region != size:
                crop = _resample_square(crop, size)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops[i, 0] = np.rot90(crop, rng.randrange(4))
        return crops


def _resample_square(crop: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    factor = size / crop.shape[0]
    resized = zoom(crop, factor, order=1, grid_mode=True, mode="reflect")
    return np.clip(resized[:size, :size], 0.0, 1.0)
