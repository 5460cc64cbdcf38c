"""The image `wm` works on: one file's frames as STORED pixel values in their native integer
dtype, with what a reader needs to view them (a `views.Display`), and the limits every reader
checks before it decodes anything.

Stored values, because the PSNR guarantee (design §1) is measured on the values of the file as
written: for DICOM that means before Rescale Slope/Intercept and without inverting MONOCHROME1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..views import Display, VoiWindow, window_in_stored_units


DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PNG_SUFFIXES = frozenset({".png"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
#: Suffixes `wm` accepts. '' stands for suffix-less DICOM files, recognised by the 'DICM' preamble.
SUPPORTED_SUFFIXES = frozenset(DICOM_SUFFIXES | PNG_SUFFIXES | TIFF_SUFFIXES | JPEG_SUFFIXES | {""})
#: Default for `--max-pixels`: rows x columns x frames an input may declare before anything is
#: decoded (10^8, e.g. 381 CT slices of 512 x 512; at 16 bits 200 MB of stored values). Headers are
#: checked against it before any pixel is decoded, so a decompression bomb or a header that lies
#: costs a header read, not the memory it asks for.
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(eq=False)
class MedicalImage:
    """One image (all its frames) as stored in its file, plus what is needed to write it back."""

    pixels: np.ndarray  # (frames, rows, cols), stored values, native integer dtype
    kind: str  # 'dicom' | 'png' | 'tiff' | 'jpeg'
    path: Path
    bits_stored: int
    stored_min: int
    stored_max: int
    photometric: str  # 'MONOCHROME1' | 'MONOCHROME2'
    modality: str | None
    source: Any = field(default=None, repr=False)  # pydicom Dataset for DICOM, else None
    display: Display = field(default_factory=Display)  # modality transform and VOIs, per frame

    @property
    def window(self) -> tuple[float, float] | None:
        """The first declared linear VOI window of the first frame, in stored units (None when
        there is none, or when a Modality LUT makes stored and modality values non-linear)."""
        frame = self.display.frame(0)
        first = next((voi for voi in frame.vois if isinstance(voi, VoiWindow)), None)
        return window_in_stored_units(frame.modality, first) if first is not None else None

    @property
    def nominal_peak(self) -> float:
        """Design §1 'nominal' peak: 2^BitsStored - 1 (PNG/TIFF: 255 or 65535)."""
        return float(2**self.bits_stored - 1)

    @property
    def n_frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])


def check_declared_size(path: Path, dimensions: Sequence[int], max_pixels: int, what: str = "") -> None:
    """Refuse, before decoding, an image whose header declares more pixels than `max_pixels`
    (or none at all). `dimensions` are the declared sizes, e.g. (frames, rows, columns)."""
    sizes = [int(d) for d in dimensions]
    total = 1
    for value in sizes:
        total *= value
    shape = " x ".join(str(d) for d in sizes)
    if any(d <= 0 for d in sizes):
        raise BadInputError(f"{path}: {what}header declares an empty image ({shape})")
    if total > max_pixels:
        raise BadInputError(f"{path}: {what}header declares {total:,} pixels ({shape}), more than the limit of "
                            f"{max_pixels:,} (--max-pixels); nothing decoded")


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1
