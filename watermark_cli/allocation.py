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
    """(views, rows, cols): each binding view's change of display per stored unit at each pixel,
    the larger of the two one-sided slopes over ±`reach` stored units."""
    values = original.astype(np.float64)
    reach = np.maximum(reach, 0.5)
    slopes = []
    for view in meter.binding:
        here = view.display(values)
        up = np.abs(view.display(values + reach) - here)
        down = np.abs(view.display(values - reach) - here)
        slopes.append(np.maximum(up, down) / reach)
    return np.stack(slopes)


def spread_over_views(residual: np.ndarray, original: np.ndarray, meter: FrameMeter, psnr_min: float) -> np.ndarray:
    """`residual` reshaped so that each region carries what its tightest view allows (see the
    module docstring); unchanged when the frame has a single binding view."""
    if len(meter.binding) < 2 or not residual.size or not np.any(residual):
        return residual
    rms = 10.0 ** (-psnr_min / 20.0)  # the RMS change the floor allows, in display units
    first = sensitivities(meter, original, 1.0).max(axis=0)
    reach = _REACH_IN_RMS * rms / np.maximum(first, 1e-12)
    slopes = sensitivities(meter, original, reach)
    tightest = slopes.max(axis=0)
    floor_slope = float(tightest.max()) / _LARGEST_RATIO
    tightest = np.maximum(tightest, floor_slope)
    region = slopes.argmax(axis=0)

    # error[v, k]: view v's mean squared display error from region k's pixels at unit region gain.
    shaped = residual / tightest
    n_views = len(meter.binding)
    error = np.zeros((n_views, n_views))
    for k in range(n_views):
        inside = region == k
        if inside.any():
            error[:, k] = [float(np.sum((slopes[v][inside] * shaped[inside]) ** 2)) / residual.size
                           for v in range(n_views)]
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
    return shaped * gains[region]
