"""Finding the tile grid again after a crop or a resize (self-reference watermarking).

The mark is one tile repeated over the image, so it is periodic. A crop only moves the grid:
the decoder's fold is then rolled cyclically, and `CarrierDecoder.logits_for_every_shift` scores
every roll at once. A resize changes the period: the autocorrelation of the high-passed image
has peaks at multiples of the new period (Kutter 1999), which tells how much to scale back. A
rotation turns the lattice of those peaks by the same angle, which tells how much to turn back.
"""

from __future__ import annotations

import functools

import numpy as np

from ..model.key_field import key_field

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
    Computed once and passed to both when a reader tries both. (A keyed mark repeats nowhere;
    its public synchronisation pilot, `model.key_field.sync_pilot_tile`, repeats with the tile.)"""
    return _full_autocorrelation(_high_pass(frame))


def locate_key_field(maps: np.ndarray, seed: bytes, sigma: float, tried: int,
                     origin: tuple[int, int] = (0, 0)) -> list[tuple[int, int]]:
    """Where (rows, cols) in the marked image the frames of `maps` were cut from, best first,
    found by the keyed mark's pilot: the pilot is the key field itself (times the host's signs
    and strength map), so a map that responds to the mark correlates with the field, shifted
    to where the crop sat, at that shift only. One FFT per map scores every shift from `origin`
    up to ~45 % of the frame's size; only a key holder can.

    `maps`: (K, rows, cols) responses to the mark, each already multiplied by the host's signs
    (`key_field.host_signs`): the decoder's feature maps (`marking.image`). A map may respond
    with either sign, so each is scored in robust spreads and a shift by its largest size."""
    sizes = key_field_correlation(maps, seed, sigma, origin)
    best = np.argsort(-sizes.ravel())[:tried]
    return [(origin[0] + int(i) // sizes.shape[1], origin[1] + int(i) % sizes.shape[1]) for i in best]


def key_field_correlation(maps: np.ndarray, seed: bytes, sigma: float, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(shifts, shifts): for every shift from `origin`, how far the maps' correlation with the
    key field stands out, in robust spreads (the largest over the maps); see `locate_key_field`."""
    import torch
    from scipy import fft

    rows, cols = maps.shape[-2:]
    reach_rows, reach_cols = min(512, int(0.45 * rows)), min(512, int(0.45 * cols))
    # Any size from rows + reach up holds every shift without wrapping round; a fast one is
    # several times quicker than the bare sum (742 = 2·7·53 for a 512² frame), and torch's
    # transforms (MKL on x86) half the time of scipy's.
    shape = (fft.next_fast_len(rows + reach_rows, real=True), fft.next_fast_len(cols + reach_cols, real=True))
    field_spectrum = _field_spectrum(bytes(seed), shape, float(sigma), tuple(origin))
    # Correlation at shift (dy, dx): sum over the crop of response(p) × field(p + (dy, dx)).
    spectra = torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)), s=shape)
    spectra.conj_physical_()  # in place: a lazy conj() made the product below 4 times slower
    spectra *= field_spectrum
    # The inverse transform as irfft2 takes it, along the rows, then the columns of just the
    # rows kept (the same values in half the time of the whole inverse).
    by_rows = torch.fft.ifft(spectra, dim=-2)[:, : reach_rows + 1]
    scores = torch.fft.irfft(by_rows, n=shape[1], dim=-1)[..., : reach_cols + 1].numpy()
    best_size = None
    for score in scores:
        score = score.astype(np.float64)
        centre = np.median(score)
        size = np.abs(score - centre) / (np.median(np.abs(score - centre)) + 1e-30)
        best_size = size if best_size is None else np.maximum(best_size, size)
    return best_size


@functools.lru_cache(maxsize=8)
def _field_spectrum(seed: bytes, shape: tuple[int, int], sigma: float, origin: tuple[int, int]):
    """The key field's spectrum over `shape` from `origin` (a complex64 tensor, never changed in
    place): the same for every file of a batch that is read at the same place (a 512² frame's is
    2 MiB)."""
    import torch

    field = np.array(key_field(seed, *shape, sigma, *origin), dtype=np.float32)  # a copy: the canvas is read-only
    return torch.fft.rfft2(torch.from_numpy(field))


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


def _folded_strengths(folded: np.ndarray, pilot: np.ndarray, robust: bool = True) -> np.ndarray:
    """The pilot strengths (`_sampled_strengths`) of maps already folded onto one tile
    (B, tile, tile). The correlation is in float32; each row is sorted once, which gives its
    median, its largest value and its median absolute deviation (`_sorted_row_deviations`): a
    scan scores ~280 tiles, and medians by numpy's partitioning in float64 took a quarter of an
    unmarked read. Not `robust`: in standard deviations above the mean instead, for a scan that
    only picks where to look (`_best_coarse_scale`): the sorts were a third of its time."""
    import torch

    tile = folded.shape[-1]
    folded = np.ascontiguousarray(folded, dtype=np.float32)
    pilot_spectrum = torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(pilot, dtype=np.float32))).conj_physical()
    score = torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(folded)) * pilot_spectrum, s=(tile, tile)).numpy()
    if not robust:
        rows = score.reshape(len(folded), -1).astype(np.float64)
        strengths = (rows.max(axis=1) - rows.mean(axis=1)) / (rows.std(axis=1) + 1e-30)
        return np.where(np.any(folded != 0, axis=(1, 2)), strengths, 0.0)
    ordered = np.sort(score.reshape(len(folded), -1), axis=1)
    background = _sorted_row_medians(ordered)
    spread = _sorted_row_deviations(ordered, background) * 1.4826 + 1e-30
    strengths = (ordered[:, -1].astype(np.float64) - background) / spread
    return np.where(np.any(folded != 0, axis=(1, 2)), strengths, 0.0)


def _sorted_row_medians(ordered: np.ndarray) -> np.ndarray:
    """`np.median(values, axis=1)` in float64 of rows already sorted."""
    middle = ordered.shape[1] // 2
    if ordered.shape[1] % 2:
        return ordered[:, middle].astype(np.float64)
    return 0.5 * (ordered[:, middle - 1].astype(np.float64) + ordered[:, middle].astype(np.float64))


def _sorted_row_deviations(ordered: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """`np.median(np.abs(values - centres[:, None].astype(values.dtype)), axis=1)` in float64,
    the same values, for rows already sorted, without sorting the deviations. Subtracting a
    constant in floating point keeps the order, so along a sorted row the deviations fall, then
    rise (a valley), and the j + 1 smallest of a valley are a run of j + 1 neighbours: the j-th
    smallest deviation is the least, over runs of j + 1, of the larger of the run's two ends."""
    deviations = np.abs(ordered - centres[:, None].astype(ordered.dtype))
    count = deviations.shape[1]

    def smallest(j: int) -> np.ndarray:
        return np.maximum(deviations[:, : count - j], deviations[:, j:]).min(axis=1).astype(np.float64)

    middle = count // 2
    if count % 2:
        return smallest(middle)
    return 0.5 * (smallest(middle - 1) + smallest(middle))


_PILOT_TEST_TILES = 6
# A pilot this many spreads above the other shifts is there (unmarked training slices and files:
# below 5; marked ones at the right scale: 8 and up). Only the best of the candidates is kept, and
# whatever is kept costs the decodes the false-positive bound already counts.
_PILOT_PRESENT = 5.5


def estimate_scale_by_pilot(maps: np.ndarray, tile: int, pilot: np.ndarray) -> tuple[float, float]:
    """The resize factor (new size / marked size) that best fits a keyed mark's public pilot in
    a frame, and how strongly (`_sampled_strengths`: unmarked frames below about 5.5, marked ones
    resized by 0.75 mostly 6 to 11). `maps`: (K, rows, cols) responses of the frame to the mark
    (the decoder's feature maps: they respond to it far more cleanly than a high-pass).

    Every scale in the range is tried directly: the maps' centres scaled back by it (bilinear)
    and matched with the pilot, on a grid 1 % apart, then 0.1 % apart around the best. A
    spectral lattice fit ranked the true scale first in under half of the 256² slices that a
    0.75 resize had turned into 192² (training split; the pilot is a fifth of the mark), and its
    best four missed it in 4 of 16; the direct scan finds it in 16 of 16, in a fifth of the
    time. Its precision is a few tenths of a percent on small frames (few periods): the keyed
    reader refines it with the key field (`marking.image`)."""
    coarse = np.exp(np.arange(np.log(MIN_SCALE), np.log(MAX_SCALE) + 1e-9, np.log1p(_SCAN_STEP)))
    coarse = coarse[np.abs(coarse - 1.0) >= 0.005]
    best = float(coarse[_best_coarse_scale(maps, tile, pilot, coarse)])
    fine = best * (1.0 + np.arange(-_SCAN_STEP, _SCAN_STEP + 1e-9, _SCAN_STEP / 10))
    fine = fine[(fine >= MIN_SCALE) & (fine <= MAX_SCALE) & (np.abs(fine - 1.0) >= 0.005)]
    fine_strengths = _pilot_strengths(maps, tile, pilot, fine)
    index = int(np.argmax(fine_strengths))
    return float(fine[index]), float(fine_strengths[index])


# The scale grid of the direct scan (multiplicative steps).
_SCAN_STEP = 0.01
# The coarse scan looks at most this many periods a side first (2.25 times fewer samples than
# `_PILOT_TEST_TILES` on a 512² frame), and scores again with every period only the scales at
# and beside its best few peaks. On marked frames of the training split resized by 0.5 to 1.5
# (116 frames: whole files and 256² cuts), the full scan's best scale was the first peak of the
# short one wherever the full scan found the true scale (where it did not, neither does this).
_PRESCAN_TILES = 4
_PRESCAN_PEAKS = 3


def _best_coarse_scale(maps: np.ndarray, tile: int, pilot: np.ndarray, scales: np.ndarray) -> int:
    """The index of the scale of `scales` where the pilot is strongest at up to
    `_PILOT_TEST_TILES` periods (`_pilot_strengths`), looked for among the best peaks of a
    scan at up to `_PRESCAN_TILES` periods (see `_PRESCAN_TILES`). That scan only picks the
    peaks, so it scores in standard deviations rather than robust spreads (`_folded_strengths`):
    on 504 frames (training split and held-out, resized by 0.5 to 1.5, and unmarked) the same
    scale wherever the robust scan found the true one, and the scan in 70 % of the time."""
    if np.array_equal(_periods(maps, tile, scales, _PRESCAN_TILES), _periods(maps, tile, scales, _PILOT_TEST_TILES)):
        # A small frame: the short scan is the full one.
        return int(np.argmax(_pilot_strengths(maps, tile, pilot, scales, _PRESCAN_TILES)))
    short = _pilot_strengths(maps, tile, pilot, scales, _PRESCAN_TILES, robust=False)
    inner = (short[1:-1] >= short[:-2]) & (short[1:-1] >= short[2:])
    peaks = np.flatnonzero(np.r_[short[0] >= short[1], inner, short[-1] >= short[-2]])
    peaks = peaks[np.argsort(-short[peaks], kind="stable")][:_PRESCAN_PEAKS]
    chosen = np.unique(np.clip(np.concatenate([peaks - 1, peaks, peaks + 1]), 0, len(scales) - 1))
    full = _pilot_strengths(maps, tile, pilot, scales[chosen])
    return int(chosen[int(np.argmax(full))])


def _periods(maps: np.ndarray, tile: int, scales: np.ndarray, most: int) -> np.ndarray:
    """How many periods a side the scan at each of `scales` samples (`_pilot_strengths`)."""
    return np.minimum(most, (min(maps.shape[1:]) / (tile * np.asarray(scales, dtype=np.float64))).astype(int))


def _pilot_strengths(maps: np.ndarray, tile: int, pilot: np.ndarray, scales: np.ndarray,
                     most_periods: int = _PILOT_TEST_TILES, robust: bool = True) -> np.ndarray:
    """For each scale: the best pilot strength over the maps (`_sampled_strengths`), of their
    centres (up to `most_periods` a side) scaled back from a period of tile·scale to the tile;
    0 where less than two periods fit."""
    responses = map_tensor(maps)
    scales = np.asarray(scales, dtype=np.float64)
    strengths = np.zeros(len(scales))
    periods = _periods(maps, tile, scales, most_periods)
    for count in np.unique(periods[periods >= 2]):  # one period cannot show a repetition
        chosen = np.flatnonzero(periods == count)
        strengths[chosen] = _sampled_strengths(responses, tile, pilot, int(count) * tile, scales[chosen],
                                               robust=robust)
    return strengths


def map_tensor(maps: np.ndarray):
    """Maps (K, rows, cols) as the tensor `_sampled_strengths` samples, made once per scan."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]


def _sampled_strengths(responses, tile: int, pilot: np.ndarray, side: int, scales: np.ndarray,
                       degrees: np.ndarray | None = None, robust: bool = True) -> np.ndarray:
    """For each geometry (scale, and turn in degrees, scipy's `rotate` sense): how strongly the
    maps in `responses` (`map_tensor`), their `side`² centre sampled (bilinear) on a grid
    `scale` px apart and turned (what the centre would be once scaled by 1/scale and turned),
    hold the repeated `pilot` tile at its best cyclic shift, in robust spreads above the other
    shifts (not `robust`: in standard deviations); the best over the maps. The samples are
    folded onto one tile and cross-correlated with the pilot by FFT (`_folded_strengths`). One
    interpolation of just the pixels a test needs, a few geometries per call: the scans try
    ~200, and turning whole maps bicubically cost most of an unmarked read."""
    import torch
    import torch.nn.functional as F

    from ..model.networks import tile_mean

    rows, cols = responses.shape[-2:]
    maps = responses.shape[1]
    if degrees is None or not np.any(degrees):
        folded = _separable_folds(responses[0].numpy(), tile, side, scales)
        return _folded_strengths(folded.reshape(-1, tile, tile), pilot, robust).reshape(len(scales), maps).max(axis=1)
    degrees = np.asarray(degrees, dtype=np.float64)
    folded = np.empty((len(scales), maps, tile, tile), dtype=np.float32)
    for first in range(0, len(scales), _GEOMETRIES_AT_ONCE):
        part = slice(first, first + _GEOMETRIES_AT_ONCE)
        grid = _centre_grids(rows, cols, side, np.asarray(scales[part], dtype=np.float32), degrees[part])
        count = grid.shape[0]
        with torch.inference_mode():
            sampled = F.grid_sample(responses.expand(count, -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="border", align_corners=True)
            folded[part] = tile_mean(sampled, tile).numpy()
    return _folded_strengths(folded.reshape(-1, tile, tile), pilot, robust).reshape(len(scales), maps).max(axis=1)


# Geometries sampled in one call: enough to spread over the threads, few enough to stay in cache.
_GEOMETRIES_AT_ONCE = 4


def _separable_folds(maps: np.ndarray, tile: int, side: int, scales: np.ndarray) -> np.ndarray:
    """(geometries, K, tile, tile): what `_sampled_strengths` folds for turns of 0, the maps'
    (K, rows, cols) `side`² centre sampled bilinearly `scale` px apart and folded onto one tile.
    Bilinear sampling on a grid is separable, and so is the fold: row u of the rows' fold is the
    sum, with their bilinear weights, of the 2·periods whole rows that its samples u, u + tile, ...
    fall between (`_fold_taps`), which one `embedding_bag` gathers for several scales at once;
    the columns' fold then takes the same few pixels of each folded row (`fold_kernel`). The
    same values as sampling every point, to float rounding, in a fraction of the time (the
    resize scan tries ~170 scales)."""
    import torch
    import torch.nn.functional as F

    from .fold_kernel import fold_columns

    maps = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    count, rows, cols = maps.shape
    rows_table = maps.permute(1, 0, 2).reshape(rows, count * cols)  # entry r: row r of every map
    scales = np.asarray(scales, dtype=np.float64)
    indices, weights = _fold_taps(rows, side, scales, tile)
    column_indices, column_weights = _fold_taps(cols, side, scales, tile)
    folded = np.empty((len(scales), count, tile, tile), dtype=np.float32)
    for first in range(0, len(scales), _SCALES_AT_ONCE):
        part = slice(first, first + _SCALES_AT_ONCE)
        bags = len(scales[part]) * tile
        by_rows = F.embedding_bag(torch.from_numpy(indices[part].reshape(bags, -1)), rows_table,
                                  per_sample_weights=torch.from_numpy(weights[part].reshape(bags, -1)), mode="sum")
        fold_columns(by_rows.numpy().reshape(-1, tile, count, cols), column_indices[part], column_weights[part],
                     folded[part])
    return folded * np.float32(1.0 / (side // tile) ** 2)


# Scales whose rows `_separable_folds` gathers in one call: their rows' folds stay in the cache.
_SCALES_AT_ONCE = 8


def _sample_positions(size: int, side: int, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales, side) each: for `side` positions `scale` px apart centred on the middle of `size`
    px (pixel centres, ends clamped: grid_sample's align_corners and border padding), the pixel
    at or before each and the bilinear weight of the one after it."""
    offsets = np.arange(side) - (side - 1) / 2
    positions = np.clip((size - 1) / 2 + offsets[None, :] * np.asarray(scales, dtype=np.float64)[:, None], 0, size - 1)
    low = np.minimum(positions.astype(np.int64), size - 2)  # positions are ≥ 0: truncation floors
    return low, positions - low


def _fold_taps(size: int, side: int, scales: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales, tile, 2·periods) pixels and float32 weights: row u of a scale's fold along one
    axis sums its samples u, u + tile, ... (`_sample_positions`), each the pixel at or before it
    and the one after it, weighted bilinearly."""
    low, above = _sample_positions(size, side, scales)

    def by_row(values: np.ndarray) -> np.ndarray:  # (scales, side) -> (scales, tile, periods)
        return values.reshape(len(values), side // tile, tile).transpose(0, 2, 1)

    indices = np.concatenate([by_row(low), by_row(low + 1)], axis=2)
    weights = np.concatenate([by_row(1.0 - above), by_row(above)], axis=2).astype(np.float32)
    return np.ascontiguousarray(indices), np.ascontiguousarray(weights)


def _centre_grids(rows: int, cols: int, side: int, scales: np.ndarray, degrees: np.ndarray):
    """grid_sample's grids (geometries, side, side, 2) for `_sampled_strengths`' turns (its turns
    of 0 take `_separable_folds`): x first, -1 to 1 over the pixel centres (align_corners). Made
    in numpy: a few small torch operations per geometry, each spread over threads, cost more
    than the sampling on a busy machine."""
    import torch

    offsets = (np.arange(side, dtype=np.float32) - np.float32((side - 1) / 2))[None, :] * scales[:, None]
    x_scale, y_scale = np.float32(2 / (cols - 1)), np.float32(2 / (rows - 1))
    grid = np.empty((len(scales), side, side, 2), dtype=np.float32)
    theta = -np.deg2rad(degrees)
    cos, sin = np.cos(theta).astype(np.float32)[:, None, None], np.sin(theta).astype(np.float32)[:, None, None]
    row_offsets, col_offsets = offsets[:, :, None], offsets[:, None, :]
    grid[..., 0] = ((cols - 1) / 2 + row_offsets * sin + col_offsets * cos) * x_scale - 1
    grid[..., 1] = ((rows - 1) / 2 + row_offsets * cos - col_offsets * sin) * y_scale - 1
    return torch.from_numpy(grid)


def estimate_rotation_by_pilot(maps: np.ndarray, tile: int, pilot: np.ndarray) -> float | None:
    """Degrees to turn a frame by (scipy's sense) to undo a rotation of a keyed mark, or None.
    Every turn in ±MAX_ROTATION, `_COARSE_TURN` apart, is tried by turning the first map's
    centre back and matching the pilot there; the best is refined by halving steps. A turn half
    a step off still matches strongly (held-out slices turned by 1° and 2°: 9 to 11 spreads at the
    true angle and 8 to 10 half a degree away; unmarked, at most 4.5), where the pilot's spectral
    lattice, tried before, was lost in the anatomy's spectrum on some slices (rotation by 1°:
    84 of 87 read; this search: 87 of 87).

    The coarse turns are scored at up to `_PRESCAN_TILES` periods a side (a turn half a step off
    moves the samples less there), and the best of them again at `_PILOT_TEST_TILES`, where the
    refining goes on: the same angle as scoring every coarse turn at `_PILOT_TEST_TILES` on 630
    marked frames turned by 0.8° to 3.3° either way (training split and held-out) and none on the
    unmarked ones, in 85 % of the time."""
    side = min(_PILOT_TEST_TILES, min(maps.shape[1:]) // tile) * tile
    short = min(_PRESCAN_TILES, min(maps.shape[1:]) // tile) * tile
    responses = map_tensor(maps)

    def strengths(degrees, sampled_side: int = side) -> np.ndarray:
        return _sampled_strengths(responses, tile, pilot, sampled_side, np.ones(len(degrees)), np.asarray(degrees))

    turns = np.arange(-MAX_ROTATION, MAX_ROTATION + 1e-9, _COARSE_TURN)
    turns = turns[np.abs(turns) > _COARSE_TURN / 2]  # a turn this small reads as it is
    tried = strengths(turns, short)
    angle, best = float(turns[int(np.argmax(tried))]), float(tried.max())
    if short != side:
        best = float(strengths([angle])[0])
    if best < _PILOT_PRESENT - _REFINING_GAIN_AT_MOST:
        return None  # refining could not bring it to _PILOT_PRESENT: no pilot is there
    for step in _REFINING_STEPS:  # both ways from the best so far
        pair = strengths([angle - step, angle + step])
        if pair.max() > best:
            angle, best = angle + (step if pair[1] > pair[0] else -step), float(pair.max())
    if best < _PILOT_PRESENT or abs(angle) < 2 * _ROTATION_STEP:
        return None
    return angle


# The rotation search's coarse step and its refining steps (degrees).
_COARSE_TURN = 0.5
_REFINING_STEPS = (0.25, 0.1, 0.05)
# A frame whose best coarse turn, scored again at `_PILOT_TEST_TILES` periods, is this far below
# _PILOT_PRESENT is not refined: refining cannot bring it there. On 182 training-split frames
# (7 files whole and cut to 256², marked and turned by -3° to 3.3°, also JPEG q80, and unmarked)
# refining added at most 1.05 to a frame scoring under 7 (at most 2.6 to one scoring higher, whose
# pilot is plainly there); unmarked ones score 3.2 to 4.7, and those under the line (the 512² CT
# 693_UNCR.dcm of `benchmarks/speed.py`: 3.24) pay for the coarse turns alone (23 ms to 15 there).
# The same angle with and without this exit on all 182, in each of three runs (fresh keys).
_REFINING_GAIN_AT_MOST = 2.0


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
