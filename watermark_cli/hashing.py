"""SHA-256 of files and of stored pixel values: what the audit trail, the restoration record and
the model store name things by."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of stored values as little-endian words in (frame, row, column) order: the same
    digest whatever file format or transfer syntax holds them."""
    little_endian = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    return hashlib.sha256(little_endian.tobytes()).hexdigest()
