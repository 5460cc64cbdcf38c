"""Where the mark may be strong: spreading the PSNR budget over a frame's views.

A CT read in its brain window (W80) shows a change of 1 HU as 1/80 of the display, the same change
in lung parenchyma (−800 HU) not at all: the brain window clips it to black. The lung window
(W1500) sees it 19 times weaker. So a mark whose strength is the same everywhere must be as weak as
the narrowest window allows, everywhere. Here each pixel's mark is scaled by the inverse of the
**tightest view's sensitivity at that pixel** — the largest change of display per stored unit over
the views that see the pixel — so that in-window anatomy keeps the strength the narrow window
allows while everything that window clips carries as much as the wider views allow.

Then the budget is shared out view by view, from the narrowest to the widest: the pixels whose
tightest view is the narrowest get all of its budget, the next view's pixels get what is left
of its budget once the narrower regions' share of its error is paid, and so on. The quality guard
then measures the result in every view on the quantised frame, and scales it so that the binding
view sits just above the floor: this step only shapes the mark, the guard still guarantees it.

A view's sensitivity is measured over the change the mark will make (a few times the RMS the
floor allows, in that pixel's own units), not at a point, so that a pixel just outside a window,
which a strong mark would push into it, counts as inside.
"""

from __future__ import annotations

import numpy as np

from .quality import FrameMeter

# The mark's peak change, in RMS units the floor allows: the sensitivity is measured over this far.
_REACH_IN_RMS = 3.0
# No pixel's mark grows more than this many times over the tightest pixel's (keeps the shaping
# sane where a view is nearly blind, e.g. a sigmoid's flat tails).
_LARGEST_RATIO = 64.0


def sensitivities(meter: FrameMeter, original: np.ndarray, reach: np.ndarray | float) -> np.ndarray:
    """(views, *original.shape): each binding view's change of display per stored unit at each
    pixel, the larger of the two one-sided slopes over ±`reach` stored units."""
    values = original.astype(np.float64)
    reach = np.maximum(reach, 0.5)
    above, below = values + reach, values - reach
    slopes = np.empty((len(meter.binding), *original.shape))
    for view, slope in zip(meter.binding, slopes):
        here = view.display(values)
        up, down = view.display(above), view.display(below)  # new arrays: worked in
        np.abs(np.subtract(up, here, out=up), out=up)
        np.abs(np.subtract(down, here, out=down), out=down)
        np.divide(np.maximum(up, down, out=up), reach, out=slope)
    return slopes


def spread_over_views(residual: np.ndarray, original: np.ndarray, meter: FrameMeter, psnr_min: float) -> np.ndarray:
    """`residual` reshaped so that each region carries what its tightest view allows (see the
    module docstring); unchanged when the frame has a single binding view."""
    if len(meter.binding) < 2 or not residual.size or not np.any(residual):
        return residual
    rms = 10.0 ** (-psnr_min / 20.0)  # the RMS change the floor allows, in display units
    # A pixel's slopes depend on its stored value alone: found once per value where the frame
    # has fewer values than pixels, then looked up (bit for bit what each pixel would give).
    values, where = _stored_values(original)
    first = sensitivities(meter, values, 1.0).max(axis=0)
    reach = _REACH_IN_RMS * rms / np.maximum(first, 1e-12)
    slopes = sensitivities(meter, values, reach)
    slopes = slopes.reshape(len(slopes), -1)
    tightest, region = slopes.max(axis=0), slopes.argmax(axis=0)
    # Per stored value (or per pixel where there is no table): how many pixels hold it and the
    # sum of their squared residuals. Everything below depends on a pixel's value alone, so
    # each region's error is summed over values, not pixels.
    square = np.square(residual).ravel()
    if where is None:
        present, residual_energy = np.ones(len(square), dtype=bool), square
    else:
        flat = where.ravel()
        present = np.bincount(flat, minlength=len(values)) > 0
        residual_energy = np.bincount(flat, weights=square, minlength=len(values))
    floor_slope = float(tightest[present].max()) / _LARGEST_RATIO
    tightest = np.maximum(tightest, floor_slope)

    # error[v, k]: view v's mean squared display error from region k's pixels at unit region
    # gain: the shaped residual is residual / tightest, seen by view v through its slope.
    shaped_energy = residual_energy / np.square(tightest)
    n_views = len(meter.binding)
    error = np.zeros((n_views, n_views))
    for k in range(n_views):
        inside = region == k
        if np.any(inside & present):
            # A sum, not a matrix product: numpy's BLAS would start threads of its own.
            error[:, k] = (np.square(slopes[:, inside]) * shaped_energy[inside]).sum(axis=1) / residual.size
    budget = rms * rms
    gains = np.zeros(n_views)
    for v in np.argsort([view.stored_span for view in meter.binding]):  # narrowest first
        if error[v, v] <= 0:
            continue
        paid = float(np.dot(error[v], gains**2))
        gains[v] = np.sqrt(max(budget - paid, 0.0) / error[v, v])
    # Wider regions may have pushed a narrower view over: one common factor brings all back.
    totals = error @ gains**2
    worst = float(np.max(totals / budget)) if np.any(totals > 0) else 1.0
    gains /= np.sqrt(max(worst, 1e-12))
    factor = gains[region] / tightest
    return residual * (factor if where is None else factor.take(where)).reshape(residual.shape)


def _stored_values(original: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Every integer from `original`'s least value to its greatest, and each pixel's place among
    them, where it holds integers of up to 4 bytes (floats hold them exactly) spanning fewer
    values than it has pixels; else `original` itself and None."""
    if original.dtype.kind in "iu" and original.dtype.itemsize <= 4 and original.size:
        least, greatest = int(original.min()), int(original.max())
        if greatest - least < original.size:
            return np.arange(least, greatest + 1, dtype=np.int64), original.astype(np.intp) - least
    return original, None
