"""Polar codes with successive-cancellation list decoding: the channel code of payload v2.

Why a polar code (Arıkan 2009) with list decoding (Tal & Vardy 2015): the watermark's channel
gives independent bit errors with a confidence per bit (the network's logit), the block is short
(256 raw bits) and the rate varies with the message length. At such lengths a polar code decoded
with a list of candidates, the right one picked by a check value, comes within a fraction of a dB
of the finite-length bound, takes the confidences as they are (log-likelihood ratios), and any
rate is a choice of which positions carry information. Here the check value is the payload's
keyed tag, so list decoding also costs nothing in capacity.

Construction: the information positions are the most reliable synthetic channels of a binary
symmetric channel at a design crossover probability, ranked by their Bhattacharyya parameters
(z⁻ = z_a + z_b − z_a·z_b and z⁺ = z_a·z_b for the two channels each split gives; exact for the
erasure channel, a standard and good approximation elsewhere). Punctured code bits (not sent,
when the model carries fewer raw bits than the code's power-of-two length) enter as z = 1. Encoding is x = u·G with G the n-fold Kronecker power
of [[1, 0], [1, 1]], in natural order. Decoding follows the recursive structure of G: at each node
the left half's beliefs are the min-sum combination f(a, b) = sign(a)·sign(b)·min(|a|, |b|), the
right half's g(a, b, û) = b + (1 − 2û)·a once the left half is decided, and a list of the L most
likely paths is kept, each scored by the usual approximate path metric (add |λ| whenever a
decision goes against its belief λ). All L paths are processed together as one numpy array.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field

import numpy as np


def _bhattacharyya(z: np.ndarray) -> np.ndarray:
    """The Bhattacharyya parameter of each u position, from those of the code bits (`z`).

    Follows the decoder's recursion (see `_ListDecoder`): the left half of a node sees the two
    halves combined by f, a worse channel (z_a + z_b − z_a·z_b), the right half sees them
    combined by g, a better one (z_a·z_b)."""
    if len(z) == 1:
        return z
    a, b = z[: len(z) // 2], z[len(z) // 2 :]
    return np.concatenate([_bhattacharyya(a + b - a * b), _bhattacharyya(a * b)])


@dataclass(frozen=True)
class PolarCode:
    """An (n, k) polar code: `info` are the positions of u that carry the k message bits."""

    n: int
    k: int
    design_crossover: float = 0.05
    punctured: tuple[int, ...] = ()  # code bits never sent (erased at the decoder)
    info: np.ndarray = field(init=False, repr=False, compare=False)
    frozen: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError("a polar code's length is a power of two")
        if not 0 < self.k <= self.n:
            raise ValueError(f"a polar code of length {self.n} carries 1 to {self.n} bits, not {self.k}")
        if self.k > self.n - len(self.punctured):
            raise ValueError(f"{self.k} bits do not fit {self.n - len(self.punctured)} sent code bits")
        z = np.full(self.n, 2.0 * np.sqrt(self.design_crossover * (1.0 - self.design_crossover)))
        z[list(self.punctured)] = 1.0  # an erased bit says nothing
        info = np.sort(np.argsort(_bhattacharyya(z), kind="stable")[: self.k])
        frozen = np.ones(self.n, dtype=bool)
        frozen[info] = False
        object.__setattr__(self, "info", info)
        object.__setattr__(self, "frozen", frozen)

    def encode(self, bits: np.ndarray) -> np.ndarray:
        """k bits (0/1) → n code bits."""
        bits = np.asarray(bits, dtype=np.uint8)
        if bits.shape != (self.k,):
            raise ValueError(f"expected {self.k} bits, got {bits.shape}")
        u = np.zeros(self.n, dtype=np.uint8)
        u[self.info] = bits
        return _transform(u[None])[0]

    def decode_list(self, llr: np.ndarray, list_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(candidates (≤ list_size, k) of 0/1 message bits, best first; their path metrics,
        lower = more likely). `llr` holds log P(bit = 0) / P(bit = 1) per code bit."""
        llr = np.asarray(llr, dtype=np.float64)
        if llr.shape != (self.n,):
            raise ValueError(f"expected {self.n} log-likelihood ratios, got {llr.shape}")
        if list_size < 1:
            raise ValueError(f"a list decoder keeps at least one path, not {list_size}")
        decoder = _ListDecoder(llr, list_size)
        with np.errstate(over="ignore"):  # f's a·b may overflow for absurd LLRs: only its sign counts
            decoder.decode(_tree(self.frozen.tobytes()), llr[None])
        # Each path's u bits follow from its codeword (u = x·G, G its own inverse): recovered once
        # here rather than kept for every path at every node as they are decided.
        u = _transform((decoder.codewords < 0).astype(np.uint8))
        metric = np.array(decoder.metric)
        order = np.argsort(metric, kind="stable")
        return u[order][:, self.info], metric[order]


def _transform(u: np.ndarray) -> np.ndarray:
    """x = u·G over GF(2) for every row of u (the butterfly of the Kronecker power); G is its
    own inverse, so the same function takes x back to u."""
    x = u.copy()
    n = x.shape[1]
    half = 1
    while half < n:
        x = x.reshape(x.shape[0], -1, 2, half)
        x[:, :, 0, :] ^= x[:, :, 1, :]
        x = x.reshape(x.shape[0], n)
        half *= 2
    return x


@dataclass(frozen=True)
class _Node:
    """A subtree of the decoder: its kind decides how it is decoded (the special kinds in one
    step, as fast simplified SC list decoders do), `left` and `right` for an inner node."""

    kind: str  # "frozen" (rate 0), "free" (rate 1), "repetition" (one free bit, last), "inner"
    size: int
    left: "_Node | None" = None
    right: "_Node | None" = None


@functools.lru_cache(maxsize=64)
def _tree(frozen_bytes: bytes) -> _Node:
    """The decoding tree of a frozen pattern (cached: each code's is built once)."""
    frozen = np.frombuffer(frozen_bytes, dtype=bool)
    if frozen.all():
        return _Node("frozen", len(frozen))
    if not frozen.any():
        return _Node("free", len(frozen))
    if len(frozen) > 1 and frozen[:-1].all():
        return _Node("repetition", len(frozen))
    half = len(frozen) // 2
    return _Node("inner", len(frozen), _tree(frozen[:half].tobytes()), _tree(frozen[half:].tobytes()))


class _ListDecoder:
    """Successive-cancellation list decoding of one received word, one node of the tree at a time.

    All surviving paths are processed together: a node's beliefs are one numpy array, a row per
    path. Each path's code bits, as they are decided, are kept as signs in `codewords` (+1 for a 0,
    −1 for a 1: the factor (1 − 2x) of g, and x_L ⊕ x_R is then a product); a node combines its
    halves there in place, so a path's row holds the code bits of every subtree decided so far.
    A node returns its `parents`: for each surviving path, the row of the node's incoming beliefs
    it continues (None: each row continues itself, as nothing was chosen).

    The path metrics and the choice of survivors are plain Python floats and lists: with at most
    2·list_size candidates per choice, numpy's cost per call would dominate (this decoder runs
    some twenty times per image read). Python floats are the same IEEE doubles, added in the same
    order, and candidates are listed as the paths were, then the forks of each, and sorted stably
    by metric: numpy's stable argsort of the concatenated metrics, the list decoder's rule, so
    ties are broken the same way too.
    """

    def __init__(self, llr: np.ndarray, list_size: int) -> None:
        n = len(llr)
        self.list_size = list_size
        self.metric = [0.0]  # one path before anything is decided; lower = more likely
        self.codewords = np.ones((1, n))  # +1 (a 0) where nothing is decided yet, frozen bits too
        self.position = 0  # code bits decided so far
        # A NaN metric (from a NaN LLR, or from infinities meeting in g) must sort last, as numpy
        # sorts it, which Python's `<` alone does not do. Below this bound nothing overflows (a
        # belief is at most n times the largest LLR, a metric a sum of at most n beliefs), so no
        # metric can be NaN and the plain key serves.
        self.by_metric = _first if np.abs(llr).max() < 1e300 / n**2 else _first_nan_last

    def decode(self, node: _Node, beliefs: np.ndarray) -> np.ndarray | None:
        """Decode the subtree `node` whose code bits have `beliefs` (paths × size); returns the
        parents of the surviving paths."""
        if node.kind == "inner":
            return self._inner(node, beliefs)
        if node.kind == "frozen":
            return self._frozen(beliefs)
        if node.kind == "repetition":
            return self._repetition(beliefs)
        return self._free(beliefs)

    def _keep(self, paths: list[tuple]) -> np.ndarray | None:
        """The survivors: `paths` sorted as (metric, parent, ...). Returns their parents (None if
        every path survived, in its place: then nothing needs reordering)."""
        self.metric = [path[0] for path in paths]
        rows = [path[1] for path in paths]
        if rows == list(range(len(self.codewords))):
            return None
        parents = np.array(rows)
        self.codewords = self.codewords.take(parents, axis=0)
        return parents

    def _decided(self, signs: np.ndarray, size: int) -> None:
        """The next `size` code bits of each path are `signs` (broadcast)."""
        self.codewords[:, self.position:self.position + size] = signs
        self.position += size

    def _inner(self, node: _Node, beliefs: np.ndarray) -> np.ndarray | None:
        start, half = self.position, node.size // 2
        # The left half's beliefs: f(a, b) = sign(a)·sign(b)·min(|a|, |b|), the sign taken from
        # a·b (the sign of a zero changes nothing downstream).
        a, b = beliefs[:, :half], beliefs[:, half:]
        magnitude = np.abs(beliefs)
        left = np.copysign(np.minimum(magnitude[:, :half], magnitude[:, half:]), a * b)
        left_parents = self.decode(node.left, left)
        if left_parents is not None:
            beliefs = beliefs.take(left_parents, axis=0)
            a, b = beliefs[:, :half], beliefs[:, half:]
        # The right half's: g(a, b, x) = b + (1 − 2x)·a, x the left half's code bits (0 if frozen).
        right = b + a if node.left.kind == "frozen" else b + self.codewords[:, start:start + half] * a
        right_parents = self.decode(node.right, right)
        if node.right.kind != "frozen":  # the node's code bits: [x_L ⊕ x_R, x_R]
            self.codewords[:, start:start + half] *= self.codewords[:, start + half:start + node.size]
        if left_parents is None or right_parents is None:
            return right_parents if left_parents is None else left_parents
        return left_parents.take(right_parents)

    def _frozen(self, beliefs: np.ndarray) -> None:
        """Every bit is 0, nothing to choose: each path pays |λ| for every λ < 0. fmin(λ, 0) is
        −|λ| there and 0 elsewhere (a NaN too, which `λ < 0` does not count), so its row sums are
        minus the costs, exactly (rounding is symmetric), summed in the same order."""
        against = np.fmin(beliefs, 0.0).sum(axis=1).tolist()
        self.metric = [metric - cost for metric, cost in zip(self.metric, against)]
        self.position += beliefs.shape[1]
        return None

    def _repetition(self, beliefs: np.ndarray) -> np.ndarray | None:
        """The code bits are all 0 or all 1: each path forks in two. All 1 costs |λ| for every
        λ that is not < 0, which is maximum(λ, 0) (NaN included, as it counts)."""
        against_0 = np.fmin(beliefs, 0.0).sum(axis=1).tolist()  # minus the costs, see _frozen
        against_1 = np.maximum(beliefs, 0.0).sum(axis=1).tolist()
        paths = [(metric - cost, row, 1.0) for row, (metric, cost) in enumerate(zip(self.metric, against_0))]
        paths += [(metric + cost, row, -1.0) for row, (metric, cost) in enumerate(zip(self.metric, against_1))]
        paths.sort(key=self.by_metric)
        del paths[self.list_size:]
        parents = self._keep(paths)
        self._decided(np.array([[sign] for _, _, sign in paths]), beliefs.shape[1])
        return parents

    def _free(self, beliefs: np.ndarray) -> np.ndarray | None:
        """A subtree of information bits only: any code bits are a codeword, the likeliest are the
        hard decisions, and the list only needs each path's choices on its list_size − 1 least
        reliable bits (Hashemi et al., fast simplified SC list decoding): fork on them in turn."""
        size = beliefs.shape[1]
        signs = np.where(beliefs < 0, -1.0, 1.0)  # the hard decisions (NaN and −0 read as 0)
        steps = min(self.list_size - 1, size)
        reliability = np.abs(beliefs)
        # Per step, per incoming row: what flipping its next least reliable bit costs.
        cost = np.sort(reliability, axis=1)[:, :steps].T.tolist()
        # Each path: (metric, the incoming row it continues, the steps at which it flipped).
        paths = [(metric, row, ()) for row, metric in enumerate(self.metric)]
        key = self.by_metric
        for step, step_cost in enumerate(cost):
            forks = [(metric + step_cost[row], row, flipped + (step,)) for metric, row, flipped in paths]
            if step and len(paths) == self.list_size and key(min(forks, key=key)) >= key(paths[-1]):
                # The list is full and sorted, and no fork would enter it (a tie goes to the
                # path already there); nor at a later step, as each row's costs only grow.
                break
            paths += forks
            paths.sort(key=key)
            del paths[self.list_size:]
        parents = self._keep(paths)
        self._decided(signs if parents is None else signs.take(parents, axis=0), size)
        flipped_paths = [path for path, (_, _, flipped) in enumerate(paths) for _ in flipped]
        if flipped_paths:
            # The bits flipped: the rows' least reliable, in the order the costs were sorted in
            # (a stable argsort: the same values in the same order, NaN last).
            weakest = np.argsort(reliability, axis=1, kind="stable")[:, :steps].tolist()
            start = self.position - size
            columns = [start + weakest[row][step] for _, row, flipped in paths for step in flipped]
            self.codewords[flipped_paths, columns] *= -1.0
        return parents


_first = operator.itemgetter(0)


def _first_nan_last(path: tuple) -> tuple[bool, float]:
    """Sort key of (metric, ...) with NaN metrics after all others, as numpy sorts them."""
    return math.isnan(path[0]), path[0]
