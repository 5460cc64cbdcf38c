"""How an image becomes an input of a diagnostic classifier.

One frame per image (the middle one of a multi-frame image), its stored values mapped to [0, 1]
by the classifier's `Intensity`, letterboxed to a square and resampled with antialiasing to the
input size. wm's own classifiers read the nominal stored range exactly as the watermark model
sees it (`model.inputs.normalised_frames`), at the training images' own side up to
MAX_NATIVE_INPUT, so that a small finding is not halved by downsampling; a user's model says in
its card how it reads an image (`diagnostic.card`): the nominal range, a window in modality
units, or the frame's own min..max. `classifier_input` takes stored pixel values, so originals
read from disk and watermarked pixels held in memory go through the very same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..model.inputs import normalised_frames
from ..views import ModalityTransform, VoiWindow

DEFAULT_INPUT_SIZE = 128  # for scoring callers that name no size
# Training's default input side: the images' own (a 4-px finding halved by resampling is a
# 2-px one), up to this; a larger image is resampled down to it.
MAX_NATIVE_INPUT = 256


INTENSITY_KINDS = ("nominal", "window", "range")


@dataclass(frozen=True)
class Intensity:
    """How stored values become [0, 1] before letterboxing.

    - 'nominal': over the format's nominal stored range (2^BitsStored − 1 for unsigned data);
    - 'window': the DICOM linear window `window` = (centre, width) in modality units, after the
      frame's modality transform (Rescale Slope/Intercept or Modality LUT); the formula is
      `views.VoiWindow`'s, the one every view of wm uses;
    - 'range': the frame's own min..max (a constant frame gives 0).
    MONOCHROME1 is not inverted: values are read as stored, as the watermark model reads them.
    """

    kind: str = "nominal"
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_KINDS:
            raise BadInputError(f"intensity must be one of {', '.join(INTENSITY_KINDS)}, not {self.kind!r}")
        if (self.kind == "window") != (self.window is not None):
            raise BadInputError("a window intensity needs its [centre, width], and only it takes one")
        if self.window is not None and not (np.isfinite(self.window).all() and self.window[1] > 0):
            raise BadInputError(f"window [centre, width] must be finite with a positive width, got {list(self.window)}")

    def unit_frame(self, frame: np.ndarray, stored_range: tuple[int, int],
                   modality: ModalityTransform | None = None) -> np.ndarray:
        """One (rows, cols) frame of stored values → float32 in [0, 1]."""
        if self.kind == "window":
            values = (modality or ModalityTransform()).apply(frame)
            return VoiWindow(*self.window).apply(values).astype(np.float32)
        if self.kind == "range":
            values = frame.astype(np.float32)
            low, high = float(values.min()), float(values.max())
            return (values - low) / (high - low) if high > low else np.zeros_like(values)
        low, high = stored_range
        unit = normalised_frames(_StoredFrames(frame[np.newaxis], low, high))[0]
        return np.clip(unit, 0.0, 1.0)

    def of_export(self) -> "Intensity":
        """How the same classifier reads an 8-bit export (values 0..255 of the view it was exported
        through): the picture's own levels for 'nominal' and 'window' (the export already applied
        a window), its own min..max for 'range'."""
        return self if self.kind == "range" else NOMINAL

    def describe(self) -> str:
        if self.kind == "window":
            return f"window C{self.window[0]:g}/W{self.window[1]:g} (modality units)"
        return {"nominal": "nominal stored range", "range": "the frame's own min..max"}[self.kind]


NOMINAL = Intensity()


@dataclass(frozen=True)
class _StoredFrames:
    """Just what `normalised_frames` reads from a MedicalImage: pixels and the stored range."""

    pixels: np.ndarray
    stored_min: int
    stored_max: int


def classifier_input(pixels: np.ndarray, stored_range: tuple[int, int], size: int = DEFAULT_INPUT_SIZE,
                     intensity: Intensity = NOMINAL, modality: ModalityTransform | None = None) -> np.ndarray:
    """(size, size) float32 in [0, 1]: what the network sees of one image.

    `pixels`: stored values, (frames, rows, cols) or (rows, cols); the middle frame is used.
    `stored_range`: (stored_min, stored_max) of the image's format (MedicalImage's fields), the
    scale the watermark model and the PSNR guarantee use. `intensity` maps the frame to [0, 1]
    (`modality`: the frame's modality transform, for a window in modality units). The frame is
    letterboxed (aspect kept, padded with 0) and resampled with Pillow's antialiased bilinear filter.
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
    frame = intensity.unit_frame(pixels[pixels.shape[0] // 2], (low, high), modality)
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
