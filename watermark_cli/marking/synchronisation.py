"""Finding the tile grid again after a crop or a resize (self-reference watermarking).

The mark is one tile repeated over the image, so it is periodic. A crop only moves the grid:
the decoder's fold is then rolled cyclically, and `CarrierDecoder.logits_for_every_shift` scores
every roll at once. A resize changes the period: the autocorrelation of the high-passed image
has peaks at multiples of the new period (Kutter 1999), which tells how much to scale back. A
rotation turns the lattice of those peaks by the same angle, which tells how much to turn back.
"""

from __future__ import annotations

import numpy as np

# Scales (new size / original size) that the period search considers.
MIN_SCALE = 0.4
MAX_SCALE = 1.6
# How far above the background (in robust spreads, and as a share of the found peak's height) a
# peak at half the found period must stand to be taken as the period.
_SUB_PEAK_STRENGTH = 3.0
_SUB_PEAK_SHARE = 0.3
# Rotations (degrees, either way) that the angle search considers, and its step.
MAX_ROTATION = 5.0
_ROTATION_STEP = 0.05


def _high_pass(frame: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    frame = frame.astype(np.float64)
    detail = frame - gaussian_filter(frame, sigma=1.5, mode="reflect")
    # Flat regions (the black around an ultrasound sector, which carries no mark) have no
    # detail; the filter's rounding leaves ~1e-16 of the level there, which is set to 0.
    detail[np.abs(detail) <= 1e-9 * (float(np.abs(frame).max()) + 1e-30)] = 0.0
    # Edges of the anatomy dominate a raw high-pass; clipping keeps them from hiding the mark.
    # The spread is measured where there is detail at all: flat regions would otherwise pull
    # the median to zero.
    live = detail != 0
    spread = (np.median(np.abs(detail[live])) if live.any() else 0.0) * 1.4826 + 1e-12
    return np.clip(detail, -3 * spread, 3 * spread)


def _full_autocorrelation(detail: np.ndarray) -> np.ndarray:
    """Autocorrelation of the detail at every lag, negative ones included: lag (dy, dx) is at
    [rows + dy, cols + dx]. Each lag is averaged over the pixel pairs that both have detail:
    flat regions hold no mark, and counting them would weaken lags unevenly."""
    live = (detail != 0).astype(np.float64)
    if live.any():
        detail = np.where(live > 0, detail - detail[live > 0].mean(), 0.0)
    rows, cols = detail.shape

    def linear_autocorrelation(values: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft2(values, s=(2 * rows, 2 * cols))  # zero-padded: linear, not circular
        return np.fft.fftshift(np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * rows, 2 * cols)))

    pairs = np.maximum(linear_autocorrelation(live), 1.0)
    correlation = linear_autocorrelation(detail) / pairs
    return correlation / max(correlation[rows, cols], 1e-30)


def mark_autocorrelation(frame: np.ndarray) -> np.ndarray:
    """What both estimates below read: the autocorrelation of the frame's detail at every lag.
    Computed once and passed to both when a reader tries both."""
    return _full_autocorrelation(_high_pass(frame))


def _refined_peak(profile: np.ndarray, guess: float, radius: float) -> float | None:
    low = max(1, int(np.floor(guess - radius)))
    high = min(len(profile) - 2, int(np.ceil(guess + radius)))
    if high <= low:
        return None
    index = low + int(np.argmax(profile[low : high + 1]))
    left, centre, right = profile[index - 1], profile[index], profile[index + 1]
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return index + float(np.clip(offset, -0.5, 0.5))


def _period_along(profile: np.ndarray, tile: int) -> float | None:
    """Period of a lag profile: the first strong peak in the scale range, refined at its multiples."""
    low, high = int(MIN_SCALE * tile), min(int(np.ceil(MAX_SCALE * tile)), len(profile) - 2)
    if high <= low:
        return None
    candidates = profile[low : high + 1]
    # Compare against the typical level of the profile so that a flat profile finds nothing.
    background = np.median(profile[low : min(len(profile), 4 * tile)])
    spread = np.median(np.abs(profile[low : min(len(profile), 4 * tile)] - background)) + 1e-12
    strength = (candidates - background) / spread
    if strength.max() < 6.0:
        return None
    # The period is the *first* strong peak: its multiples can be as strong or stronger.
    threshold = max(6.0, 0.5 * float(strength.max()))
    is_peak = (strength[1:-1] >= threshold) & (strength[1:-1] >= strength[:-2]) & (strength[1:-1] >= strength[2:])
    peaks = np.flatnonzero(is_peak) + 1
    first = int(peaks[0]) if len(peaks) else int(np.argmax(strength))
    period = _refined_peak(profile, low + first, 1.0)
    if period is None:
        return None
    # A peak at half (or a third) of it, clear of the background though under the threshold, is
    # the true period and this one its multiple: few tiles (a 256² image resized) make the first
    # peak weak (held-out slices resized by 0.75: 4 spreads at the period, 10 at twice it).
    found = (profile[int(round(period))] - background) / spread
    for divisor in (2, 3):
        guess = period / divisor
        if guess < low:
            break
        candidate = _refined_peak(profile, guess, 1.5)
        if candidate is None:
            continue
        strength_there = (profile[int(round(candidate))] - background) / spread
        if strength_there >= max(_SUB_PEAK_STRENGTH, _SUB_PEAK_SHARE * found):
            period = candidate
            break
    # Each multiple k of the period divides the position error by k.
    multiple = 2
    while (multiple + 0.5) * period < len(profile) - 2 and multiple <= 16:
        peak = _refined_peak(profile, multiple * period, 1.5)
        if peak is None:
            break
        period = peak / multiple
        multiple *= 2
    return period


def estimate_tile_period(frame: np.ndarray, tile: int,
                         correlation: np.ndarray | None = None) -> tuple[float, float] | None:
    """(rows, cols) period in pixels of the repeated mark in `frame`, or None if none is evident."""
    if correlation is None:
        correlation = mark_autocorrelation(frame)
    correlation = correlation[frame.shape[0]:, frame.shape[1]:]  # lag (dy, dx) ≥ 0 at [dy, dx]
    row_period = _period_along(correlation[:, 0], tile)
    col_period = _period_along(correlation[0, :], tile)
    if row_period is None and col_period is None:
        return None
    # A resize that keeps the aspect ratio gives one period; use the other axis's when one is missing.
    return (row_period or col_period, col_period or row_period)


def estimate_rotation(frame: np.ndarray, tile: int, correlation: np.ndarray | None = None) -> float | None:
    """Degrees to turn `frame` by (scipy's sense) to undo a rotation of the mark, or None when no
    rotation is evident. The tile lattice shows in the autocorrelation as peaks at (0, k·tile) and
    (k·tile, 0); a rotation by θ turns them by θ, so each angle in ±MAX_ROTATION is scored by
    the correlation at the turned lattice points, and the best must stand out from the rest."""
    from scipy.ndimage import map_coordinates

    if correlation is None:
        correlation = mark_autocorrelation(frame)
    centre_row, centre_col = frame.shape[0], frame.shape[1]
    reach = [k for k in (1, 2, 3) if k * tile < 0.9 * min(frame.shape)]
    if not reach:
        return None
    angles = np.arange(-MAX_ROTATION, MAX_ROTATION + 1e-9, _ROTATION_STEP)
    theta = np.deg2rad(angles)[:, None]
    rows, cols = [], []
    for k in reach:
        for lag_row, lag_col in ((0.0, k * tile), (k * tile, 0.0)):
            rows.append(centre_row + lag_row * np.cos(theta) + lag_col * np.sin(theta))
            cols.append(centre_col - lag_row * np.sin(theta) + lag_col * np.cos(theta))
    points = np.stack([np.concatenate(rows, axis=1).ravel(), np.concatenate(cols, axis=1).ravel()])
    scores = map_coordinates(correlation, points, order=1).reshape(len(angles), -1).sum(axis=1)
    best = int(np.argmax(scores))
    background = np.median(scores)
    spread = np.median(np.abs(scores - background)) + 1e-12
    # Marked images score 19-47 spreads above the rest here, unmarked ones 2-13 (held-out CT,
    # MR, CR, US); an angle of ~0 means no rotation to undo, whatever the score.
    if (scores[best] - background) / spread < 8.0 or abs(angles[best]) < 2 * _ROTATION_STEP:
        return None
    return float(angles[best])


def rotate(frame: np.ndarray, degrees: float) -> np.ndarray:
    """Turn a frame about its centre, same size (bicubic; edges repeat the nearest pixel)."""
    from scipy.ndimage import rotate as rotate_array

    return rotate_array(frame.astype(np.float64), degrees, reshape=False, order=3, mode="nearest")


def resample(frame: np.ndarray, row_factor: float, col_factor: float) -> np.ndarray:
    """Scale a frame by the given factors (bicubic)."""
    from scipy.ndimage import zoom

    return zoom(frame.astype(np.float64), (row_factor, col_factor), order=3, mode="reflect", grid_mode=True)
