"""Image quality measures on stored pixel values: PSNR with a stated peak, windowed PSNR, SSIM.

Everything here works on numpy arrays of the values as stored in the file, never on a model's
floats: the guarantee is about what a viewer will load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import BadInputError

PeakKind = Literal["nominal", "range"]
Domain = Literal["stored", "window"]


def mean_squared_error(reference: np.ndarray, test: np.ndarray) -> float:
    difference = reference.astype(np.float64) - test.astype(np.float64)
    return float(np.mean(difference * difference))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float) -> float:
    """10 log10(peak² / MSE) in dB; +inf for identical images."""
    if peak <= 0:
        raise ValueError("PSNR peak must be positive")
    mse = mean_squared_error(reference, test)
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def peak_value(reference: np.ndarray, nominal_peak: float, kind: PeakKind) -> float:
    """The peak of the PSNR: the format's nominal maximum, or the original image's own range."""
    if kind == "nominal":
        return float(nominal_peak)
    if kind == "range":
        value_range = float(reference.max()) - float(reference.min())
        # A constant image has no range; fall back to 1 stored unit so the PSNR stays defined.
        return max(value_range, 1.0)
    raise ValueError(f"unknown PSNR peak {kind!r} (use 'nominal' or 'range')")


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to [0, 1]."""
    width = max(float(width), 1.0)
    low = center - 0.5 - (width - 1.0) / 2.0
    if width <= 1.0:  # DICOM: a width of 1 is a threshold at c - 0.5
        return (values > center - 0.5).astype(np.float64)
    scaled = (values.astype(np.float64) - low) / (width - 1.0)
    return np.clip(scaled, 0.0, 1.0)


def windowed_psnr(reference: np.ndarray, test: np.ndarray, window: tuple[float, float]) -> float:
    center, width = window
    return psnr(apply_window(reference, center, width), apply_window(test, center, width), 1.0)


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Mean SSIM of one 2-D frame (scikit-image's implementation, Gaussian weights)."""
    from skimage.metrics import structural_similarity

    reference = reference.astype(np.float64)
    test = test.astype(np.float64)
    if min(reference.shape) < 7:
        return float("nan")
    return float(
        structural_similarity(reference, test, data_range=data_range, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
    )


@dataclass(frozen=True)
class QualityFloor:
    """What the user asked for: PSNR >= psnr_min in a domain with a peak, and an optional |error| bound."""

    psnr_min: float = 40.0
    peak: PeakKind = "nominal"
    domain: Domain = "stored"
    max_abs_error: float | None = None

    def describe_peak(self, nominal_peak: float) -> str:
        if self.domain == "window":
            return "1 (windowed to [0, 1])"
        return f"{self.peak} ({nominal_peak:g})" if self.peak == "nominal" else "range (max - min of original)"


@dataclass(frozen=True)
class FrameQuality:
    psnr: float
    peak: float
    max_abs_error: float
    windowed_psnr: float | None


def measure_frame(
    reference: np.ndarray,
    test: np.ndarray,
    floor: QualityFloor,
    nominal_peak: float,
    window: tuple[float, float] | None,
) -> FrameQuality:
    """Quality of one frame in the floor's domain, plus the windowed PSNR whenever a window is known."""
    windowed = windowed_psnr(reference, test, window) if window is not None else None
    if floor.domain == "window":
        if window is None:
            raise BadInputError("the window domain needs a VOI window (Window Center/Width in the file, or --window C,W)")
        value, peak = windowed, 1.0
    else:
        peak = peak_value(reference, nominal_peak, floor.peak)
        value = psnr(reference, test, peak)
    error = float(np.max(np.abs(reference.astype(np.float64) - test.astype(np.float64)))) if reference.size else 0.0
    return FrameQuality(psnr=value, peak=peak, max_abs_error=error, windowed_psnr=windowed)


@dataclass(frozen=True)
class ImageQuality:
    """A whole image's quality: the worst frame for each measure (the floor holds per frame)."""

    psnr: float
    peak: float
    windowed_psnr: float | None
    ssim: float
    max_abs_error: float


def image_quality(reference: np.ndarray, written: np.ndarray, frames: list[FrameQuality],
                  data_range: float) -> ImageQuality:
    """Summarise per-frame qualities of (frames, rows, cols) images, adding SSIM."""
    worst = min(frames, key=lambda q: q.psnr)
    windowed = [q.windowed_psnr for q in frames if q.windowed_psnr is not None]
    return ImageQuality(
        psnr=worst.psnr,
        peak=worst.peak,
        windowed_psnr=min(windowed) if windowed else None,
        ssim=min(ssim(r, w, data_range) for r, w in zip(reference, written)),
        max_abs_error=max(q.max_abs_error for q in frames),
    )


def meets_floor(quality: FrameQuality, floor: QualityFloor) -> bool:
    # Written as "not >=" so that a NaN anywhere counts as a miss, never as a pass.
    if not quality.psnr >= floor.psnr_min:
        return False
    return floor.max_abs_error is None or quality.max_abs_error <= floor.max_abs_error
