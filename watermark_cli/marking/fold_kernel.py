"""The column fold of the pilot scans (`synchronisation._separable_folds`), compiled.

Each fold sums, for every place v of the tile, the samples v, v + tile, ... of a row, each the
bilinear mix of two pixels: eight pixels a place on a 512² frame. A dense product with the
fold's matrix (tile × span) multiplied mostly zeros, two thirds of a resize scan's folding."""

from __future__ import annotations

import numpy as np
from numba import float32, int64

from ..compiled import compiled


@compiled(float32[:, :, :, ::1], int64[:, :, ::1], float32[:, :, ::1], float32[:, :, :, ::1])
def fold_columns(by_rows, indices, weights, out):
    """out[s, k, u, v] = Σ_t weights[s, v, t] · by_rows[s, u, k, indices[s, v, t]], in float32:
    by_rows (scales, tile, maps, cols) the rows already folded, indices and weights
    (scales, tile, taps) each place's pixels and their weights (`synchronisation._fold_taps`)."""
    scales, tile, maps, _ = by_rows.shape
    taps = indices.shape[2]
    for scale in range(scales):
        for u in range(tile):
            for k in range(maps):
                row = by_rows[scale, u, k]
                for v in range(tile):
                    total = np.float32(0.0)
                    for tap in range(taps):
                        total += weights[scale, v, tap] * row[indices[scale, v, tap]]
                    out[scale, k, u, v] = total
