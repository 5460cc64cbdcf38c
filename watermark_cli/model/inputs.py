"""How the model sees a frame: stored values on the nominal stored range as [0, 1] floats.

Marking, training and the diagnostic classifier all take frames this way, so it lives with the
model rather than with any one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..io.medical_image import MedicalImage

#: Frames smaller than this on a side carry too little anatomy to train or mark on.
MIN_SIDE = 64


def normalised_frames(image: "MedicalImage") -> np.ndarray:
    """(frames, rows, cols) float32 in [0, 1] on the nominal stored range."""
    span = float(image.stored_max - image.stored_min)
    return ((image.pixels.astype(np.float32) - image.stored_min) / span).astype(np.float32)
