"""The quality guard: the last line that makes every written frame meet the floor.

A trained encoder usually meets the floor by itself, but "usually" is not a guarantee. Before
anything is written, each frame's residual is scaled by s, added to the stored values, rounded
and clipped to the valid stored range (the frame's own range where the floor holds in it), and
re-measured exactly as the file will be read back, in every binding view (a `quality.FrameMeter`:
by default every view a reader uses, so the lowest of them, the binding view, decides). While
the floor is missed, s shrinks (by the amount the MSE says is needed, then a little more). s = 0
returns the original frame, which always meets the floor, so the loop terminates with the
guarantee held; such a frame simply carries no mark, and verification will say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quality import FrameMeter, FrameQuality, QualityFloor, meets_floor

# Each retry aims this many dB above the floor, so that rounding noise cannot make it miss again.
_RETRY_MARGIN_DB = 0.05
_MAX_RETRIES = 40
# Below this scale the mark is too weak to be worth keeping; write the original frame instead.
_SMALLEST_SCALE = 1e-3
# When the residual is stretched to use the whole quality budget, it lands this far above the
# floor (quantisation moves PSNR by a few hundredths of a dB), and never grows more than this.
FILL_MARGIN_DB = 0.1
_LARGEST_GAIN = 8.0
_FILL_CORRECTIONS = 4


@dataclass(frozen=True)
class GuardedFrame:
    pixels: np.ndarray
    scale: float
    quality: FrameQuality


def quantise(original: np.ndarray, residual: np.ndarray, scale: float, stored_min, stored_max,
             refused: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Stored values that a file would hold: original + scale * residual, rounded and clipped
    (to `stored_min`..`stored_max`: numbers, or arrays of per-pixel bounds); a pixel that would
    take a value of one of the `refused` runs (first, last, inclusive) keeps its own."""
    # Worked in one new array (the guard quantises several times a frame); float addition and
    # multiplication commute, so these are rint(original + scale·residual), bit for bit.
    marked = residual.astype(np.float64)
    marked *= scale
    marked += original
    np.rint(marked, out=marked)
    np.clip(marked, stored_min, stored_max, out=marked)
    for first, last in refused:
        taken = (marked >= first) & (marked <= last)
        marked[taken] = original[taken]
    return marked.astype(original.dtype)


def guard_frame(
    original: np.ndarray,
    residual: np.ndarray,
    floor: QualityFloor,
    meter: FrameMeter,
    *,
    stored_min: int | np.ndarray,
    stored_max: int | np.ndarray,
    fill_budget: bool = False,
    refused: tuple[tuple[int, int], ...] = (),
) -> GuardedFrame:
    """Largest tried scale whose quantised frame meets the floor in every binding view of
    `meter`. The first try is 1, or, with fill_budget, the scale that puts the binding view's
    PSNR FILL_MARGIN_DB above the floor: a mark as strong as the floor allows survives
    compression best, and the floor is what the user promised."""
    if original.shape != residual.shape:
        raise ValueError(f"residual shape {residual.shape} does not match frame shape {original.shape}")
    if not np.all(np.isfinite(residual)):
        raise ValueError("residual contains NaN or infinity")
    scale = 1.0
    if fill_budget:
        scale = _budget_filling_scale(original, residual, floor, meter, stored_min, stored_max, refused)
    for _ in range(_MAX_RETRIES):
        candidate = quantise(original, residual, scale, stored_min, stored_max, refused)
        quality = meter.measure(candidate)
        if meets_floor(quality, floor):
            return GuardedFrame(candidate, scale, meter.with_ssim(quality, candidate))
        scale *= _shrink_factor(quality, floor)
        if scale < _SMALLEST_SCALE:
            break
    unchanged = original.copy()
    return GuardedFrame(unchanged, 0.0, meter.with_ssim(meter.measure(unchanged), unchanged))


def _budget_filling_scale(original, residual, floor: QualityFloor, meter: FrameMeter, stored_min,
                          stored_max, refused) -> float:
    """Scale s whose quantised frame has its binding PSNR close to floor + margin. The first
    guess assumes MSE grows as s²; clipping (at the stored range: black backgrounds, saturated
    film; and at a window's ends) breaks that, so a few corrections follow on the quantised
    frame itself."""
    target = floor.psnr_min + FILL_MARGIN_DB
    largest = _LARGEST_GAIN
    if floor.max_abs_error is not None:
        peak_residual = float(np.max(np.abs(residual))) if residual.size else 0.0
        if peak_residual > 0:
            largest = min(largest, 0.98 * floor.max_abs_error / peak_residual)
    unquantised = meter.binding_psnr(original + residual)
    if not np.isfinite(unquantised):
        return 1.0
    scale = 10.0 ** ((unquantised - target) / 20.0)
    for _ in range(_FILL_CORRECTIONS):
        scale = float(min(max(scale, _SMALLEST_SCALE), largest))
        achieved = meter.binding_psnr(quantise(original, residual, scale, stored_min, stored_max, refused))
        surplus = achieved - target
        if not np.isfinite(achieved) or abs(surplus) < 0.1 or (surplus > 0 and scale >= largest):
            break
        scale *= 10.0 ** (surplus / 20.0)
    return float(min(max(scale, _SMALLEST_SCALE), largest))


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
    meters: list[FrameMeter],
    *,
    stored_min: int,
    stored_max: int,
    fill_budget: bool = False,
) -> list[GuardedFrame]:
    """Guard every frame of a (frames, rows, cols) image independently: the floor holds per
    frame, each in its own views (`quality.frame_meters`).

    A frame whose floor holds in its data range (`FrameMeter.data_range`) keeps that range: its
    pixels at the minimum and the maximum stay as they are and every other stays between them.
    A viewer that windows to the data takes the range from the frame it shows, so a mark that
    moved it would re-window the whole frame, whatever its PSNR against the original's range (a
    few pushed pixels took a held-out MR's range from 0..595 to 0..910: 22 dB as shown); under a
    Modality LUT that is not monotonic, no pixel takes a stored value the LUT shows outside the
    range either (`DataRangeView.values_outside_range`). In any domain, padding pixels
    (`FrameMeter.padding`) stay as they are, and no other pixel takes a padding value (a CT's
    padding of −2000 may lie amid its values). Both are runs of values no pixel may be moved to."""
    guarded = []
    for frame, frame_residual, meter in zip(original, residual, meters):
        low, high = stored_min, stored_max
        kept = np.zeros(frame.shape, dtype=bool)
        refused: tuple[tuple[int, int], ...] = ()
        data_range = meter.data_range
        if data_range is not None and frame.size:
            low, high = data_range.stored_low, data_range.stored_high
            kept |= (frame == low) | (frame == high)
            refused += data_range.values_outside_range()
        padding = meter.padding
        if padding is not None:
            padded = (frame >= padding[0]) & (frame <= padding[1])
            kept |= padded
            # Per pixel: a padding pixel's bounds are its own value, every other's the range.
            low, high = np.where(padded, frame, low), np.where(padded, frame, high)
            refused += (padding,)
        if kept.any():
            frame_residual = np.where(kept, 0.0, frame_residual)
        guarded.append(guard_frame(frame, frame_residual, floor, meter, stored_min=low, stored_max=high,
                                   fill_budget=fill_budget, refused=refused))
    return guarded
