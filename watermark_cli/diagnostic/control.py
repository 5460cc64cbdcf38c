"""The positive control of the classifier check: the same images, harmed on purpose.

"No change in AUROC" means something only if the same check, with the same images, classifier
and statistics, would have said "fail" had the images been harmed. So every check scores a third
set beside the originals and the marked copies, made by a documented harmful change:

- `mark:DB` (by default 20 dB below the floor: `mark:20` at 40 dB): the image's own mark made larger, the difference marked −
  original scaled by 10^((floor − DB)/20), which lowers its PSNR by floor − DB (a mark at a 40 dB
  floor, scaled towards 20 dB, is ten times as strong); rounded and clipped to the stored range.
  It is the harm a mark of this kind would do if it were far too strong;
- `blur:SIGMA`: a Gaussian blur of sd SIGMA pixels of the classifier's input (scaled to the image:
  a 512² image read at 128² is blurred with sd 4·SIGMA), which erases findings of about that size.

The check's statistics treat the control exactly as the marked set; when the control does not
come out "fail", a "pass" of the mark is not believed (`check.with_positive_control`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError

CONTROL_KINDS = ("mark", "blur")
DEFAULT_MARK_DROP_DB = 20.0  # the default control: the mark scaled 20 dB below the floor (×10)


@dataclass(frozen=True)
class PositiveControl:
    kind: str
    strength: float  # mark: the PSNR (dB) the mark is scaled towards; blur: sd in input pixels

    def harmed(self, original: np.ndarray, marked: np.ndarray, stored_range: tuple[int, int],
               floor_db: float, input_size: int) -> np.ndarray:
        """(frames, rows, cols) stored values of the harmed image, in the original's dtype."""
        original = np.asarray(original)
        if self.kind == "mark":
            if not self.strength < floor_db:
                raise BadInputError(f"the control mark:{self.strength:g} must lie below the {floor_db:g} dB floor")
            gain = 10.0 ** ((floor_db - self.strength) / 20.0)
            values = original + gain * (np.asarray(marked, dtype=np.float64) - original)
        else:
            from scipy.ndimage import gaussian_filter

            sigma = self.strength * max(original.shape[1:]) / input_size
            values = gaussian_filter(original.astype(np.float64), sigma=(0.0, sigma, sigma), mode="nearest")
        return np.clip(np.rint(values), *stored_range).astype(original.dtype)

    def describe(self, floor_db: float | None = None) -> str:
        if self.kind == "mark":
            gain = "" if floor_db is None else f", ×{10.0 ** ((floor_db - self.strength) / 20.0):.3g}"
            return f"mark:{self.strength:g}: the mark scaled towards {self.strength:g} dB{gain}"
        return f"blur:{self.strength:g}: Gaussian blur, sd {self.strength:g} px of the classifier's input"


def default_control(floor_db: float) -> PositiveControl:
    """The control of a check at this floor when none is asked for: the mark ×10."""
    return PositiveControl("mark", floor_db - DEFAULT_MARK_DROP_DB)


def parse_control(text: str) -> PositiveControl:
    """`mark:DB` or `blur:SIGMA` (one line of BadInputError otherwise)."""
    kind, _, value = str(text).partition(":")
    try:
        strength = float(value)
    except ValueError:
        strength = float("nan")
    if kind not in CONTROL_KINDS or not np.isfinite(strength) or strength <= 0:
        raise BadInputError(f"--control must be mark:DB (a PSNR below the floor) or blur:SIGMA (input pixels), "
                            f"got {text!r}")
    return PositiveControl(kind, strength)
