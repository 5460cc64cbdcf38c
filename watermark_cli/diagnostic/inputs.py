"""How an image becomes an input of the diagnostic classifier.

One frame per image (the middle one of a multi-frame image), stored values mapped to [0, 1]
over the nominal stored range exactly as the watermark model sees them
(`model.inputs.normalised_frames`), letterboxed to a square and resampled with antialiasing to
the input size: by default the training images' own side up to MAX_NATIVE_INPUT, so that a
small finding is not halved by downsampling. `classifier_input` takes stored pixel values, so
originals read from disk and watermarked pixels held in memory go through the very same
function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..model.inputs import normalised_frames

DEFAULT_INPUT_SIZE = 128  # for scoring callers that name no size
# Training's default input side: the images' own (a 4-px finding halved by resampling is a
# 2-px one), up to this; a larger image is resampled down to it.
MAX_NATIVE_INPUT = 256


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


def read_inputs(paths: Sequence[Path], size: int | None) -> np.ndarray:
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
