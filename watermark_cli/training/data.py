"""Training images: files on disk turned into float frames, split by file, sampled as crops.

By default (`frame_views="nominal"`, how the shipped model was trained) frames are normalised to
[0, 1] by the format's nominal range (stored_min .. stored_max). `frame_views="reader"` shows each
frame as a reader sees it instead, once in every view the floor holds in (`views.reader_views`:
its data range, each declared window, the CT presets; 8-bit rasters as stored), the view's peak
as 1, so that 40 dB on a training crop means what the view floor means on a written file. (A
24-epoch fine-tune of the shipped model that way measured no better on the held-out images; the
budget fill at embedding puts every mark at the floor whatever the training scale was.) The
held-out split is by file, never by crop: crops of one file are correlated, and a split by crop
would flatter every figure.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..io.medical_image import MedicalImage
from ..model.inputs import MIN_SIDE, normalised_frames
from ..views import reader_views

FRAME_VIEWS = ("reader", "nominal")


def reader_view_frames(image: MedicalImage) -> np.ndarray:
    """(frames × views, rows, cols) float32: every frame in every reader view, clipped to [0, 1]
    (a window clips what lies outside it, as the reader sees it)."""
    shown = [np.clip(view.display(frame), 0.0, 1.0).astype(np.float32)
             for index, frame in enumerate(image.pixels) for view in reader_views(image, index)]
    return np.stack(shown)


def training_frames(image: MedicalImage, frame_views: str) -> np.ndarray:
    if frame_views == "reader":
        return reader_view_frames(image)
    if frame_views == "nominal":
        return normalised_frames(image)
    raise BadInputError(f"unknown frame_views {frame_views!r} (choose from {', '.join(FRAME_VIEWS)})")


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
    def load(cls, files: list[Path], weights: list[float] | None = None, frame_views: str = "nominal") -> "FramePool":
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
            loaded.append(training_frames(image, frame_views))
            used.append(path)
            used_weights.append(weight)
        return cls(loaded, used, used_weights, skipped)

    def sample_crops(self, count: int, size: int, rng: random.Random,
                     scale_range: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """(count, 1, size, size) random crops, with random flips, quarter turns and rescales.

        A rescale by s takes a (size / s)² region and resamples it to size²: anatomy then
        appears at many pixel scales, as it does across scanners and fields of view.
        """
        recipes = self.draw_recipes(count, size, rng, scale_range)
        return np.stack([self.cut(recipe, size) for recipe in recipes])[:, None] if recipes else \
            np.empty((0, 1, size, size), dtype=np.float32)

    def draw_recipes(self, count: int, size: int, rng: random.Random,
                     scale_range: tuple[float, float] = (1.0, 1.0)) -> list["CropRecipe"]:
        """Where `count` crops come from: file (by weight), frame, region, flip and turn."""
        if not self.frames_by_file:
            raise BadInputError("no usable images to sample from")
        recipes = []
        for file_index in rng.choices(range(len(self.frames_by_file)), weights=self.weights, k=count):
            frames = self.frames_by_file[file_index]
            frame_index = rng.randrange(len(frames))
            rows, cols = frames[frame_index].shape
            scale = rng.uniform(*scale_range)
            region = max(8, min(round(size / scale), rows, cols)) if scale != 1.0 else size
            # Frames smaller than the region are reflect-padded up to it when cut.
            top = rng.randrange(max(rows, region) - region + 1)
            left = rng.randrange(max(cols, region) - region + 1)
            flip = rng.random() < 0.5
            recipes.append(CropRecipe(file_index, frame_index, top, left, region, flip, rng.randrange(4)))
        return recipes

    def cut(self, recipe: "CropRecipe", size: int) -> np.ndarray:
        """The (size, size) float32 crop a recipe describes."""
        frame = self.frames_by_file[recipe.file_index][recipe.frame_index]
        region = recipe.region
        rows, cols = frame.shape
        if rows < region or cols < region:
            frame = np.pad(frame, ((0, max(0, region - rows)), (0, max(0, region - cols))), mode="reflect")
        crop = frame[recipe.top : recipe.top + region, recipe.left : recipe.left + region]
        if region != size:
            crop = _resample_square(crop, size)
        if recipe.flip:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(np.rot90(crop, recipe.quarter_turns), dtype=np.float32)


@dataclass(frozen=True)
class CropRecipe:
    file_index: int
    frame_index: int
    top: int
    left: int
    region: int
    flip: bool
    quarter_turns: int


class TrainingSamples:
    """A fixed, finite training set: N crops drawn once from the pool, named 0..N-1.

    Per-sample constraints (one penalty coefficient or Lagrange multiplier per training sample)
    need samples that keep their identity from one step to the next, which freshly drawn random
    crops do not have. So the training set is N crop recipes (file, frame, position, rescale,
    flip, turn) drawn once from the seed; sample i is always the same pixels, and a constraint on
    sample i is a constraint on that crop. Only the recipes are kept; pixels are cut on demand.
    Every method sees the same samples in the same order (see `SampleOrder`).
    """

    def __init__(self, pool: FramePool, count: int, size: int, seed: int,
                 scale_range: tuple[float, float] = (1.0, 1.0)) -> None:
        if count < 1:
            raise BadInputError("the number of training samples must be positive")
        self.pool = pool
        self.size = size
        self.recipes = pool.draw_recipes(count, size, random.Random(f"training-samples:{seed}"), scale_range)

    def __len__(self) -> int:
        return len(self.recipes)

    def crops(self, indices) -> np.ndarray:
        """(len(indices), 1, size, size) float32."""
        return np.stack([self.pool.cut(self.recipes[int(i)], self.size) for i in indices])[:, None]


class SampleOrder:
    """The order samples are visited in: shuffled passes over 0..N-1, each sample once per pass.

    Its state (the generator's state, the current pass and the position in it) is part of a
    checkpoint, so that a resumed run visits the same samples in the same order. Data-parallel
    processes hold identical orders and each takes its own slice of every global batch.
    """

    def __init__(self, count: int, seed: int) -> None:
        import torch

        self.count = count
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(count, generator=self.generator)
        self.position = 0

    def next(self, batch: int):
        """The next `batch` sample indices (a LongTensor); a pass that runs out starts the next."""
        import torch

        taken = []
        needed = batch
        while needed:
            if self.position == self.count:
                self.order = torch.randperm(self.count, generator=self.generator)
                self.position = 0
            chunk = self.order[self.position : self.position + needed]
            self.position += len(chunk)
            needed -= len(chunk)
            taken.append(chunk)
        return torch.cat(taken)

    def state_dict(self) -> dict:
        return {"count": self.count, "generator": self.generator.get_state(), "order": self.order.clone(),
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if int(state["count"]) != self.count:
            raise BadInputError(f"the checkpoint has {state['count']} training samples, this run {self.count}")
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])


def _resample_square(crop: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    factor = size / crop.shape[0]
    resized = zoom(crop, factor, order=1, grid_mode=True, mode="reflect")
    return np.clip(resized[:size, :size], 0.0, 1.0)
