"""Evaluation attacks: what really happens to a marked image, with real codecs.

Each attack takes one frame of stored values (float64, stored units) plus its context (valid
range, and the view the mark was budgeted in) and returns the frame a decoder would receive, in whatever units that
pipeline produces (an 8-bit export arrives as 0..255). The decoder standardises its input, so
the unit does not matter; what matters is that codecs are the real ones (Pillow's JPEG, a real
PNG round trip), never a differentiable stand-in.

Strengths are relative to that view (design §6): `window8` and `jpeg` export through it to 8
bits, `noise:0.01` adds σ = 1 % of its peak (a window's width, the frame's data range).

Names are parameterised as `name:value`, e.g. `jpeg:80`, `noise:0.01`, `window8`, `window8:40,400`
(a window in modality units, HU for CT), `jpeg2000:15` (15:1; plain `jpeg2000` is lossless);
`a+b` applies a then b.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..errors import BadInputError
from ..views import ModalityTransform, View, VoiView, VoiWindow, parse_window


@dataclass(frozen=True)
class FrameContext:
    """What an attack needs to know about the frame it receives: the valid stored range and the
    view the mark was budgeted in (design §6: exports go through that view, and strengths such as
    noise σ are fractions of its peak). Without a view, the frame's own data range stands in."""

    stored_min: int
    stored_max: int
    view: View | None = None
    seed: int = 0

    @property
    def peak(self) -> float:
        """The view's peak in stored units (a window's width, the frame's range, 255 for 8-bit)."""
        return self.view.stored_span if self.view is not None else float(self.stored_max - self.stored_min)


def export_8bit(frame: np.ndarray, context: FrameContext) -> np.ndarray:
    """16→8-bit export through the view, as a viewer's 'save as PNG/JPEG' does: the budgeted
    window, else the frame's own minimum to maximum (a viewer's auto-window)."""
    if context.view is not None:
        return context.view.export_8bit(frame)
    low, high = float(frame.min()), float(frame.max())
    scaled = (frame - low) / max(high - low, 1.0) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def identity(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    return frame


def png16_round_trip(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Lossless: stored values through a real 16-bit PNG encode/decode."""
    from PIL import Image

    offset = context.stored_min
    values = np.clip(np.rint(frame) - offset, 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float64) + offset


def gaussian_noise(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Additive Gaussian noise with sigma = strength × the view's peak, rounded to stored values."""
    rng = np.random.default_rng(context.seed)
    noisy = frame + rng.normal(0.0, strength * context.peak, frame.shape)
    return np.clip(np.rint(noisy), context.stored_min, context.stored_max)


def window_8bit(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    return export_8bit(frame, context).astype(np.float64)


def jpeg(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """8-bit windowed export, then a real baseline JPEG at quality `strength` (Pillow/libjpeg)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(export_8bit(frame, context)).save(buffer, format="JPEG", quality=int(strength))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L"), dtype=np.float64)


def jpeg2000(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """A real JPEG 2000 (Pillow/OpenJPEG) at the stored bit depth: `strength` is the compression
    ratio (e.g. 15 for 15:1, irreversible 9/7 wavelet); 0 is the lossless 5/3 mode, as archives
    use it."""
    from PIL import Image

    offset = context.stored_min
    values = np.clip(np.rint(frame) - offset, 0, 65535)
    array = values.astype(np.uint8 if context.stored_max - offset <= 255 else np.uint16)
    options = {"irreversible": False} if strength == 0 else {
        "irreversible": True, "quality_mode": "rates", "quality_layers": [float(strength)]}
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG2000", **options)
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float64) + offset


def gaussian_blur(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if strength <= 0:
        return frame
    return np.rint(gaussian_filter(frame, sigma=strength, mode="reflect"))


def brightness_contrast(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Contrast gain (1 + strength) about the mean, plus a brightness shift of strength × the
    view's peak / 10."""
    mean = float(frame.mean())
    adjusted = (frame - mean) * (1.0 + strength) + mean + strength * context.peak / 10.0
    return np.clip(np.rint(adjusted), context.stored_min, context.stored_max)


def resize(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Rescale by `strength` (e.g. 0.75) with Pillow's antialiased bicubic, as image tools do."""
    from PIL import Image

    if strength == 1.0:
        return frame
    rows, cols = frame.shape
    size = (max(1, round(cols * strength)), max(1, round(rows * strength)))
    resized = Image.fromarray(frame.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC)
    return np.rint(np.asarray(resized, dtype=np.float64))


def crop(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Keep a fraction `strength` of the area, same aspect ratio, at a random (seeded) position."""
    if strength >= 1.0:
        return frame
    rng = np.random.default_rng(context.seed)
    rows, cols = frame.shape
    side = np.sqrt(strength)
    keep_rows, keep_cols = max(1, round(rows * side)), max(1, round(cols * side))
    top = int(rng.integers(0, rows - keep_rows + 1))
    left = int(rng.integers(0, cols - keep_cols + 1))
    return frame[top : top + keep_rows, left : left + keep_cols]


def rotate(frame: np.ndarray, context: FrameContext, strength: float) -> np.ndarray:
    """Rotation by `strength` degrees about the centre, same size, bilinear."""
    from scipy.ndimage import rotate as rotate_array

    if strength == 0:
        return frame
    return np.rint(rotate_array(frame, strength, reshape=False, order=1, mode="nearest"))


AttackFunction = Callable[[np.ndarray, FrameContext, float], np.ndarray]

ATTACKS: dict[str, tuple[AttackFunction, float | None]] = {
    # name: (function, default strength; None = takes no strength)
    "identity": (identity, None),
    "png16": (png16_round_trip, None),
    "noise": (gaussian_noise, 0.01),
    "window8": (window_8bit, None),
    "jpeg": (jpeg, 90.0),
    "jpeg2000": (jpeg2000, 0.0),
    "blur": (gaussian_blur, 0.5),
    "contrast": (brightness_contrast, 0.2),
    "resize": (resize, 0.75),
    "crop": (crop, 0.7),
    "rotate": (rotate, 1.0),
}

DEFAULT_SUITE = (
    "identity", "png16", "jpeg2000", "window8",
    "jpeg:95", "jpeg:90", "jpeg:80", "jpeg:70", "jpeg:50",
    "noise:0.005", "noise:0.01", "noise:0.02",
    "blur:0.5", "blur:1.0", "contrast:0.2",
    "resize:0.5", "resize:0.75", "crop:0.9", "crop:0.7", "crop:0.5", "rotate:1",
    "jpeg2000:10", "jpeg2000:20", "jpeg:80+crop:0.7",
)


@dataclass(frozen=True)
class Attack:
    """A named attack: one function at one strength, or several applied in turn (`a+b`)."""

    label: str
    function: AttackFunction
    strength: float
    family: str = ""
    window: tuple[float, float] | None = None  # window8:C,W: export through this window instead
    then: tuple["Attack", ...] = ()

    @property
    def exports_8bit(self) -> bool:
        """Whether the decoder receives an 8-bit export (0..255, a file of its own), not stored values."""
        return self.function in (window_8bit, jpeg) or any(step.exports_8bit for step in self.then)

    def __call__(self, frame: np.ndarray, context: FrameContext) -> np.ndarray:
        if self.window is not None:
            context = replace(context, view=_window_view(self.window, context, frame))
        result = self.function(frame.astype(np.float64), context, self.strength)
        for step in self.then:
            result = step(result, context)
        return result


def _window_view(window: tuple[float, float], context: FrameContext, frame: np.ndarray) -> View:
    """The `window8:C,W` export window, in the modality units of the budgeted view's frame."""
    modality = getattr(context.view, "modality", None) or ModalityTransform()
    return VoiView(modality, VoiWindow(window[0], window[1], origin="user"), frame)


def parse_attack(spec: str) -> Attack:
    """`name`, `name:strength`, `window8:CENTER,WIDTH`, or steps joined by `+` (applied in order)."""
    steps = [step.strip() for step in spec.split("+")]
    if len(steps) > 1:
        first, *rest = (parse_attack(step) for step in steps)
        return replace(first, label="+".join(steps), family="combined", then=tuple(rest))
    name, _, value = spec.strip().partition(":")
    if name not in ATTACKS:
        raise BadInputError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
    function, default = ATTACKS[name]
    if name == "window8" and value:
        return Attack(spec.strip(), function, 0.0, family=name, window=parse_window(value, repr(spec)))
    if value and default is None:
        raise BadInputError(f"attack {name!r} takes no strength")
    try:
        strength = float(value) if value else (default if default is not None else 0.0)
    except ValueError:
        raise BadInputError(f"attack strength in {spec!r} is not a number") from None
    if not np.isfinite(strength) or strength < 0:
        raise BadInputError(f"attack strength in {spec!r} must be a finite number >= 0")
    if name == "jpeg" and not 1 <= strength <= 100:
        raise BadInputError("JPEG quality must be between 1 and 100")
    if name == "jpeg2000" and 0 < strength < 1:
        raise BadInputError("jpeg2000 takes a compression ratio >= 1 (or 0 for lossless)")
    if name in ("resize", "crop") and not 0 < strength <= (4.0 if name == "resize" else 1.0):
        raise BadInputError(f"{name} takes a factor in (0, {4 if name == 'resize' else 1}] (got {strength:g})")
    return Attack(spec.strip(), function, strength, family=name)


def parse_attack_list(spec: str) -> list[Attack]:
    if spec == "none":
        return [parse_attack("identity")]
    names = [name for item in spec.split(",") if item.strip()
             for name in (DEFAULT_SUITE if item.strip() == "default" else (item.strip(),))]
    # A window (window8:40,400) contains a comma: glue its width back on.
    merged: list[str] = []
    for name in names:
        if merged and merged[-1].split("+")[-1].startswith("window8:") and "," not in merged[-1].split("+")[-1]:
            merged[-1] += "," + name
        else:
            merged.append(name)
    attacks = [parse_attack(name) for name in merged]
    if not attacks:
        raise BadInputError("no attack named")
    return attacks
