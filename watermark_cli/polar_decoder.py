"""The successive-cancellation list decoder of `polar`, compiled (numba).

An unmarked image's read list-decodes some twenty received words (four length classes at each
crop offset and model it tries), which in Python took a fifth of the read; compiled, they take
a few milliseconds. The algorithm is `polar`'s (fast simplified SC list decoding over the code's
tree), and so are its numbers bit for bit: the same IEEE operations in the same order, sums of
a path's beliefs in numpy's pairwise order (`_pairwise_sum`), survivors chosen by a stable sort
with NaN metrics last, as numpy's stable argsort chooses them (`tests/test_polar_list_decoder.py`
holds it to a plain numpy reference).

The tree is walked without recursion: one frame per level (a node of level d has n / 2^d code
bits), each inner node in three phases (split its beliefs for the left child; once that returns,
for the right child; once that returns, combine). Beliefs are code bit × path, as in `polar`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float64, int64

from .compiled import compiled

FROZEN, FREE, REPETITION, INNER = 0, 1, 2, 3

# numpy's pairwise summation: blocks of at most this many values are summed eight ways at once.
_PAIRWISE_BLOCK = 128


@compiled()
def _block_sum(values, start, count):
    """numpy's pairwise sum of at most `_PAIRWISE_BLOCK` values: under 8 in turn, else eight
    running sums, added in pairs, then the rest in turn."""
    if count < 8:
        total = -0.0
        for index in range(count):
            total += values[start + index]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    index = 8
    whole = count - count % 8
    while index < whole:
        at = start + index
        r0 += values[at]
        r1 += values[at + 1]
        r2 += values[at + 2]
        r3 += values[at + 3]
        r4 += values[at + 4]
        r5 += values[at + 5]
        r6 += values[at + 6]
        r7 += values[at + 7]
        index += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while index < count:
        total += values[start + index]
        index += 1
    return total


@compiled()
def _pairwise_sum(values, start, count):
    """`np.add.reduce` of values[start:start + count] (contiguous float64), in its order: blocks
    of up to `_PAIRWISE_BLOCK` (`_block_sum`); a longer run is split in two (the first part a
    multiple of 8 values) and the parts' sums added. Walked with a stack: written recursively, the
    cached decoder crashed the interpreter (numba 0.68)."""
    if count <= _PAIRWISE_BLOCK:
        return _block_sum(values, start, count)
    starts = np.empty(64, dtype=np.int64)
    counts = np.empty(64, dtype=np.int64)
    split = np.zeros(64, dtype=np.bool_)
    sums = np.empty(64)
    top, done = 0, 0
    starts[0], counts[0] = start, count
    while top >= 0:
        first, size = starts[top], counts[top]
        if size <= _PAIRWISE_BLOCK:
            sums[done] = _block_sum(values, first, size)
            done += 1
            top -= 1
        elif not split[top]:  # its two parts go on the stack, the first on top
            split[top] = True
            part = size // 2
            part -= part % 8
            starts[top + 1], counts[top + 1], split[top + 1] = first + part, size - part, False
            starts[top + 2], counts[top + 2], split[top + 2] = first, part, False
            top += 2
        else:  # both parts summed
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            top -= 1
    return sums[0]


@compiled()
def _before(a, b):
    """a sorts strictly before b: by value, NaN after every number (numpy's order)."""
    if math.isnan(a):
        return False
    return math.isnan(b) or a < b


@compiled()
def _stable_sort(metrics, rows, flags, count):
    """Sort the first `count` candidates by metric, in place, keeping the order of equals."""
    for index in range(1, count):
        metric, row, flag = metrics[index], rows[index], flags[index]
        place = index
        while place > 0 and _before(metric, metrics[place - 1]):
            metrics[place], rows[place], flags[place] = metrics[place - 1], rows[place - 1], flags[place - 1]
            place -= 1
        metrics[place], rows[place], flags[place] = metric, row, flag


@compiled()
def _keep(candidate_metric, candidate_row, count, paths, metric, parents):
    """The first `count` candidates (sorted) become the paths: their metrics, and the parents they
    continue. True when each of the `paths` before survived in its place (nothing to reorder)."""
    unchanged = count == paths
    for index in range(count):
        metric[index] = candidate_metric[index]
        parents[index] = candidate_row[index]
        unchanged = unchanged and candidate_row[index] == index
    return unchanged


@compiled()
def _fmin_zero(value):
    """np.fmin(value, 0.0): a NaN gives 0."""
    if value <= 0.0:
        return value
    return 0.0


@compiled()
def _maximum_zero(value):
    """np.maximum(value, 0.0): a NaN stays NaN."""
    if value >= 0.0 or math.isnan(value):
        return value
    return 0.0


@compiled(float64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64, int64)
def decode(llr, kinds, sizes, lefts, rights, list_size, width):
    """List-decode `llr` (n code bits) over the tree given by `kinds`, `sizes`, `lefts` and
    `rights` (node 0 the root; `polar._flat_tree`). Returns the codewords (n × width, +1 for a
    0 bit, −1 for a 1; the first `paths` columns are the survivors') and the survivors' path
    metrics, in survivor order (not sorted)."""
    n = llr.shape[0]
    levels = 1
    while (n >> (levels - 1)) > 1:
        levels += 1
    offsets = np.zeros(levels + 1, dtype=np.int64)
    for level in range(levels):
        offsets[level + 1] = offsets[level] + (n >> level)
    beliefs = np.empty((offsets[levels], list_size))
    codewords = np.ones((n, width))
    metric = np.zeros(list_size)
    paths = 1
    position = 0
    frame_node = np.zeros(levels, dtype=np.int64)
    frame_phase = np.zeros(levels, dtype=np.int64)
    frame_start = np.zeros(levels, dtype=np.int64)
    left_parents = np.zeros((levels, list_size), dtype=np.int64)
    left_unchanged = np.zeros(levels, dtype=np.bool_)
    parents = np.zeros(list_size, dtype=np.int64)  # what a finished node returns
    unchanged = True
    right_parents = np.zeros(list_size, dtype=np.int64)
    scratch = np.empty(max(n, list_size))
    reordered = np.empty((n, list_size))
    candidate_metric = np.empty(2 * list_size)
    candidate_row = np.empty(2 * list_size, dtype=np.int64)
    candidate_flag = np.empty(2 * list_size, dtype=np.int64)  # a repetition's bit; a free node's flips
    fork_metric = np.empty(list_size)
    most_steps = max(1, min(list_size - 1, n))
    cost = np.empty((most_steps, list_size))
    weakest = np.empty((most_steps, list_size), dtype=np.int64)
    # A free node's flips, as linked lists: a candidate's flag is its last flip (−1: none), each
    # flip its step and the flip before it.
    flip_step = np.empty(most_steps * list_size, dtype=np.int64)
    flip_before = np.empty(most_steps * list_size, dtype=np.int64)
    taken = np.zeros(n, dtype=np.bool_)
    ones = np.zeros((n, list_size), dtype=np.bool_)
    for bit in range(n):
        beliefs[bit, 0] = llr[bit]

    level = 0
    frame_node[0] = 0
    frame_phase[0] = 0
    while level >= 0:
        node = frame_node[level]
        kind = kinds[node]
        size = sizes[node]
        base = offsets[level]

        if kind == FROZEN:  # every bit 0: each path pays |λ| for every λ < 0
            for path in range(paths):
                for bit in range(size):
                    scratch[bit] = _fmin_zero(beliefs[base + bit, path])
                metric[path] = metric[path] - _pairwise_sum(scratch, 0, size)
            unchanged = True
            position += size
            level -= 1
            continue

        if kind == REPETITION:  # all 0 or all 1: each path forks in two
            for path in range(paths):
                for bit in range(size):
                    scratch[bit] = _fmin_zero(beliefs[base + bit, path])
                candidate_metric[path] = metric[path] - _pairwise_sum(scratch, 0, size)
                candidate_row[path] = path
                candidate_flag[path] = 0
            for path in range(paths):
                for bit in range(size):
                    scratch[bit] = _maximum_zero(beliefs[base + bit, path])
                candidate_metric[paths + path] = metric[path] + _pairwise_sum(scratch, 0, size)
                candidate_row[paths + path] = path
                candidate_flag[paths + path] = 1
            _stable_sort(candidate_metric, candidate_row, candidate_flag, 2 * paths)
            kept = min(list_size, 2 * paths)
            unchanged = _keep(candidate_metric, candidate_row, kept, paths, metric, parents)
            for index in range(kept):
                sign = -1.0 if candidate_flag[index] else 1.0
                for bit in range(size):
                    codewords[position + bit, index] = sign
            paths = kept
            position += size
            level -= 1
            continue

        if kind == FREE:  # information bits only: fork on each path's least reliable bits
            steps = min(list_size - 1, size)
            for path in range(paths):  # each path's `steps` least reliable bits, stably, NaN last
                for bit in range(size):
                    taken[bit] = False
                for step in range(steps):
                    best = -1
                    for bit in range(size):
                        if not taken[bit] and (best < 0 or _before(abs(beliefs[base + bit, path]),
                                                                   abs(beliefs[base + best, path]))):
                            best = bit
                    taken[best] = True
                    weakest[step, path] = best
                    cost[step, path] = abs(beliefs[base + best, path])
            count = paths
            flips = 0
            for index in range(paths):
                candidate_metric[index] = metric[index]
                candidate_row[index] = index
                candidate_flag[index] = -1
            for step in range(steps):
                lowest = 0
                for index in range(count):
                    fork_metric[index] = candidate_metric[index] + cost[step, candidate_row[index]]
                    if _before(fork_metric[index], fork_metric[lowest]):
                        lowest = index
                if step > 0 and count == list_size:
                    # The list is full and no fork would enter it, nor at a later step.
                    last, fork = candidate_metric[count - 1], fork_metric[lowest]
                    if math.isnan(fork) != math.isnan(last):
                        if math.isnan(fork):
                            break
                    elif fork >= last:
                        break
                for index in range(count):
                    candidate_metric[count + index] = fork_metric[index]
                    candidate_row[count + index] = candidate_row[index]
                    flip_step[flips], flip_before[flips] = step, candidate_flag[index]
                    candidate_flag[count + index] = flips
                    flips += 1
                _stable_sort(candidate_metric, candidate_row, candidate_flag, 2 * count)
                count = min(list_size, 2 * count)
            unchanged = _keep(candidate_metric, candidate_row, count, paths, metric, parents)
            for index in range(count):
                row = candidate_row[index]
                for bit in range(size):
                    ones[bit, index] = beliefs[base + bit, row] < 0.0
                flip = candidate_flag[index]
                while flip >= 0:
                    bit = weakest[flip_step[flip], row]
                    ones[bit, index] = not ones[bit, index]
                    flip = flip_before[flip]
                for bit in range(size):
                    if ones[bit, index]:
                        codewords[position + bit, index] = -1.0
            paths = count
            position += size
            level -= 1
            continue

        half = size // 2
        below = offsets[level + 1]
        phase = frame_phase[level]
        if phase == 0:  # the left half: f(a, b) = sign(a)·sign(b)·min(|a|, |b|)
            frame_start[level] = position
            for bit in range(half):
                for path in range(paths):
                    a, b = beliefs[base + bit, path], beliefs[base + half + bit, path]
                    magnitude_a, magnitude_b = abs(a), abs(b)
                    # np.minimum: a NaN wins
                    smaller = magnitude_a if (magnitude_a <= magnitude_b or math.isnan(magnitude_a)) else magnitude_b
                    beliefs[below + bit, path] = math.copysign(smaller, a * b)
            frame_phase[level] = 1
            frame_node[level + 1] = lefts[node]
            frame_phase[level + 1] = 0
            level += 1
            continue

        start = frame_start[level]
        if phase == 1:  # the right half: g(a, b, x) = b + (1 − 2x)·a, x the left half's bits
            left_unchanged[level] = unchanged
            if not unchanged:
                for path in range(paths):
                    left_parents[level, path] = parents[path]
                    for bit in range(size):
                        reordered[bit, path] = beliefs[base + bit, parents[path]]
                for path in range(paths):
                    for bit in range(size):
                        beliefs[base + bit, path] = reordered[bit, path]
            left_frozen = kinds[lefts[node]] == FROZEN
            for bit in range(half):
                for path in range(paths):
                    a, b = beliefs[base + bit, path], beliefs[base + half + bit, path]
                    if left_frozen:
                        beliefs[below + bit, path] = b + a
                    else:
                        beliefs[below + bit, path] = b + codewords[start + bit, path] * a
            frame_phase[level] = 2
            frame_node[level + 1] = rights[node]
            frame_phase[level + 1] = 0
            level += 1
            continue

        # Both halves decided: the node's code bits are [x_L ⊕ x_R, x_R], x_L reordered first.
        if kinds[rights[node]] != FROZEN:
            for bit in range(half):
                for path in range(paths):
                    row = path if unchanged else parents[path]
                    scratch[path] = codewords[start + bit, row]
                for path in range(paths):
                    codewords[start + bit, path] = scratch[path] * codewords[start + half + bit, path]
        if left_unchanged[level]:
            pass  # the right half's parents are the node's
        elif unchanged:
            for path in range(paths):
                parents[path] = left_parents[level, path]
            unchanged = False
        else:
            for path in range(paths):
                right_parents[path] = parents[path]
            for path in range(paths):
                parents[path] = left_parents[level, right_parents[path]]
        level -= 1
    return codewords, metric[:paths].copy()
