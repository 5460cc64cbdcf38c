"""The quality guard: the last line that makes every written frame meet the floor.

A trained encoder usually meets the floor by itself, but "usually" is not a guarantee. Before
anything is written, each frame's residual is scaled by s in [0, 1], added to the stored values,
rounded and clipped to the valid stored range, and re-measured exactly as the file will be read
back. While the floor is missed, s shrinks (by the amount the MSE says is needed, then a little
more). s = 0 returns the original frame, which always meets the floor, so the loop terminates
with the guarantee held; such a frame simply carries no mark, and verification will say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quality import FrameQuality, QualityFloor, meets_floor, measure_frame

# Each retry aims this many dB above the floor, so that rounding noise cannot make it miss again.
_RETRY_MARGIN_DB = 0.05
_MAX_RETRIES = 40
# Below this scale the mark is too weak to be worth keeping; write the original frame instead.
_SMALLEST_SCALE = 1e-3


@dataclass(frozen=True)
class GuardedFrame:
    pixels: np.ndarray
    scale: float
    quality: FrameQuality


def quantise(original: np.ndarray, residual: np.ndarray, scale: float, stored_min: int, stored_max: int) -> np.ndarray:
    """Stored values that a file would hold: original + scale * residual, rounded and clipped."""
    marked = np.rint(original.astype(np.float64) + scale * residual.astype(np.float64))
    marked = np.clip(marked, stored_min, stored_max)
    return marked.astype(original.dtype)


def guard_frame(
    original: np.ndarray,
    residual: np.ndarray,
    floor: QualityFloor,
    *,
    stored_min: int,
    stored_max: int,
    nominal_peak: float,
    window: tuple[float, float] | None,
) -> GuardedFrame:
    """Largest tried scale (starting at 1) whose quantised frame meets the floor."""
    if original.shape != residual.shape:
        raise ValueError(f"residual shape {residual.shape} does not match frame shape {original.shape}")
    if not np.all(np.isfinite(residual)):
        raise ValueError("residual contains NaN or infinity")
    scale = 1.0
    for _ in range(_MAX_RETRIES):
        candidate = quantise(original, residual, scale, stored_min, stored_max)
        quality = measure_frame(original, candidate, floor, nominal_peak, window)
        if meets_floor(quality, floor):
            return GuardedFrame(candidate, scale, quality)
        scale *= _shrink_factor(quality, floor)
        if scale < _SMALLEST_SCALE:
            break
    unchanged = original.copy()
    return GuardedFrame(unchanged, 0.0, measure_frame(original, unchanged, floor, nominal_peak, window))


def _shrink_factor(quality: FrameQuality, floor: QualityFloor) -> float:
    factor = 0.9
    if quality.psnr < floor.psnr_min and np.isfinite(quality.psnr):
        # MSE scales with s², so the PSNR deficit d dB needs s multiplied by 10^(-d/20).
        deficit = floor.psnr_min + _RETRY_MARGIN_DB - quality.psnr
        factor = min(factor, 10.0 ** (-deficit / 20.0))
    if floor.max_abs_error is not None and quality.max_abs_error > floor.max_abs_error > 0:
        factor = min(factor, 0.98 * floor.max_abs_error / quality.max_abs_error)
    elif floor.max_abs_error == 0:
        factor = 0.0
    return factor


def guard_image(
    original: np.ndarray,
    residual: np.ndarray,
    floor: QualityFloor,
    *,
    stored_min: int,
    stored_max: int,
    nominal_peak: float,
    window: tuple[float, float] | None,
) -> list[GuardedFrame]:
    """Guard every frame of a (frames, rows, cols) image independently: the floor holds per frame."""
    return [
        guard_frame(o, r, floor, stored_min=stored_min, stored_max=stored_max, nominal_peak=nominal_peak, window=window)
        for o, r in zip(original, residual)
    ]
