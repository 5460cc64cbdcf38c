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
        decoder = _ListDecoder(llr, list_size, self.k)
        with np.errstate(over="ignore"):  # f's a·b may overflow for absurd LLRs: only its sign counts
            decoder.decode(_tree(self.frozen.tobytes()), llr[:, None])
        # Each path's u bits follow from its codeword (u = x·G, G its own inverse): recovered once
        # here rather than kept for every path at every node as they are decided.
        metric = np.array(decoder.metric)
        order = np.argsort(metric, kind="stable")
        codewords = decoder.codewords[:, :len(metric)].T.take(order, axis=0)
        return _transform(codewords < 0)[:, self.info], metric[order]


def _transform(u: np.ndarray) -> np.ndarray:
    """x = u·G over GF(2) for every row of u (0/1, uint8 or bool; returns uint8); G is its own
    inverse, so the same function takes x back to u.

    G = F⊗…⊗F (F = [[1, 0], [1, 1]]) splits into G_high ⊗ G_low, two Kronecker powers of about
    √n each, and with each row of u as a √n × √n matrix U, u·G is G_highᵀ·U·G_low: two small
    matrix products (float32 counts up to n, exact) and the parities, in far fewer numpy calls
    than the log₂ n butterfly stages."""
    rows, n = u.shape
    high = _kronecker_power(1 << (n.bit_length() - 1) // 2)
    low = _kronecker_power(n // len(high))
    x = u.astype(np.float32).reshape(rows, len(high), len(low))
    return (high.T @ x @ low).reshape(rows, n).astype(np.uint8) & 1


@functools.lru_cache(maxsize=16)
def _kronecker_power(n: int) -> np.ndarray:
    """F⊗…⊗F (n × n, n a power of two), F = [[1, 0], [1, 1]], as float32 0/1."""
    power = np.ones((1, 1), dtype=np.float32)
    while len(power) < n:
        power = np.kron(np.array([[1, 0], [1, 1]], dtype=np.float32), power)
    power.flags.writeable = False  # cached: shared by every call
    return power


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


# numpy converts a Python number operand anew on every ufunc call, a 0-d array it takes as it is:
# on the decoder's small arrays that halves the cost of fmin(λ, 0) and the like.
_ZERO = np.zeros(())


class _ListDecoder:
    """Successive-cancellation list decoding of one received word, one node of the tree at a time.

    All surviving paths are processed together: a node's beliefs are one numpy array, a column
    per path (code bit × path: the two halves a node splits its beliefs into are then contiguous
    blocks, on which numpy's small operations cost half what they do on strided ones). Each
    path's code bits, as they are decided, are kept as signs in `codewords` (+1 for a 0, −1 for a
    1: the factor (1 − 2x) of g, and x_L ⊕ x_R is then a product); a node combines its halves
    there in place. A node returns its `parents`: for each surviving path, the column of the
    node's incoming beliefs it continues (None: each continues itself, as nothing was chosen).
    The code bits of a finished subtree are reordered only when its parent node combines them
    with its right half's, once, rather than every time the survivors are chosen.

    The path metrics and the choice of survivors are plain Python floats and lists: with at most
    2·list_size candidates per choice, numpy's cost per call would dominate (this decoder runs
    some twenty times per image read). Python floats are the same IEEE doubles, added in the same
    order, and candidates are listed as the paths were, then the forks of each, and sorted stably
    by metric: numpy's stable argsort of the concatenated metrics, the list decoder's rule, so
    ties are broken the same way too. Sums over a path's beliefs are taken over a row-major copy,
    so that numpy adds them in the same (pairwise) order whatever the layout.
    """

    def __init__(self, llr: np.ndarray, list_size: int, k: int) -> None:
        n = len(llr)
        self.list_size = list_size
        self.metric = [0.0]  # one path before anything is decided; lower = more likely
        # Code bit × path, +1 (a 0) where nothing is decided yet, frozen bits too; the paths
        # alive are the first len(metric) columns (at most 2^k: no more codewords exist).
        self.codewords = np.ones((n, min(list_size, 1 << k)))
        self.position = 0  # code bits decided so far
        # A NaN metric (from a NaN LLR, or from infinities meeting in g) must sort last, as numpy
        # sorts it, which Python's `<` alone does not do. Below this bound nothing overflows (a
        # belief is at most n times the largest LLR, a metric a sum of at most n beliefs), so no
        # metric can be NaN and the plain key serves.
        self.by_metric = _first if np.abs(llr).max() < 1e300 / n**2 else _first_nan_last
        self._decoders = {"inner": self._inner, "frozen": self._frozen, "repetition": self._repetition,
                          "free": self._free}

    def decode(self, node: _Node, beliefs: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray | None:
        """Decode the subtree `node` whose code bits have `beliefs` (size × paths), given
        `magnitude` = |beliefs| when the caller has it already; returns the parents of the
        surviving paths. (A node decodes its children through `_decoders` directly.)"""
        return self._decoders[node.kind](node, beliefs, magnitude)

    def _keep(self, paths: list[tuple]) -> np.ndarray | None:
        """The survivors: `paths` sorted as (metric, parent, ...). Returns their parents (None if
        every path survived, in its place: then nothing needs reordering)."""
        rows = [path[1] for path in paths]
        unchanged = rows == list(range(len(self.metric)))
        self.metric = [path[0] for path in paths]
        return None if unchanged else np.array(rows)

    def _inner(self, node: _Node, beliefs: np.ndarray, magnitude: np.ndarray | None) -> np.ndarray | None:
        start, half, end = self.position, node.size // 2, self.position + node.size
        if magnitude is None:
            magnitude = np.abs(beliefs)
        # The left half's beliefs: f(a, b) = sign(a)·sign(b)·min(|a|, |b|), the sign taken from
        # a·b (the sign of a zero changes nothing downstream). min(|a|, |b|) is also exactly the
        # magnitude of f (copysign sets only the sign bit), so the left half gets it too.
        a, b = beliefs[:half], beliefs[half:]
        left_magnitude = np.minimum(magnitude[:half], magnitude[half:])
        left, right = node.left, node.right
        left_parents = self._decoders[left.kind](left, np.copysign(left_magnitude, a * b), left_magnitude)
        if left_parents is not None:
            beliefs = beliefs.take(left_parents, axis=1)
            a, b = beliefs[:half], beliefs[half:]
        # The right half's: g(a, b, x) = b + (1 − 2x)·a, x the left half's code bits (0 if frozen).
        left_bits = self.codewords[start:start + half, :len(self.metric)]
        right_beliefs = b + a if left.kind == "frozen" else b + left_bits * a
        right_parents = self._decoders[right.kind](right, right_beliefs, None)
        if right.kind != "frozen":  # the node's code bits: [x_L ⊕ x_R, x_R], x_L reordered first
            if right_parents is not None:
                left_bits = left_bits.take(right_parents, axis=1)
            paths = len(self.metric)
            np.multiply(left_bits, self.codewords[start + half:end, :paths],
                        out=self.codewords[start:start + half, :paths])
        if left_parents is None or right_parents is None:
            return right_parents if left_parents is None else left_parents
        return left_parents.take(right_parents)

    def _frozen(self, node: _Node, beliefs: np.ndarray, magnitude: np.ndarray | None) -> None:
        """Every bit is 0, nothing to choose: each path pays |λ| for every λ < 0. fmin(λ, 0) is
        −|λ| there and 0 elsewhere (a NaN too, which `λ < 0` does not count), so its row sums are
        minus the costs, exactly (rounding is symmetric), summed in the same order."""
        against = _sum(np.fmin(beliefs, _ZERO).T.copy(), 1).tolist()  # by path: see the class docstring
        self.metric = [metric - cost for metric, cost in zip(self.metric, against)]
        self.position += node.size
        return None

    def _repetition(self, node: _Node, beliefs: np.ndarray, magnitude: np.ndarray | None) -> np.ndarray | None:
        """The code bits are all 0 or all 1: each path forks in two. All 1 costs |λ| for every
        λ that is not < 0, which is maximum(λ, 0) (NaN included, as it counts)."""
        by_path = beliefs.T.copy()  # see the class docstring
        against = np.empty((2, *by_path.shape))
        np.fmin(by_path, _ZERO, out=against[0])  # minus the costs of all 0, see _frozen
        np.maximum(by_path, _ZERO, out=against[1])
        against_0, against_1 = _sum(against, 2).tolist()
        paths = [(metric - cost, row, False) for row, (metric, cost) in enumerate(zip(self.metric, against_0))]
        paths += [(metric + cost, row, True) for row, (metric, cost) in enumerate(zip(self.metric, against_1))]
        paths.sort(key=self.by_metric)
        del paths[self.list_size:]
        parents = self._keep(paths)
        signs = [-1.0 if one else 1.0 for _, _, one in paths]
        self.codewords[self.position:self.position + node.size, :len(paths)] = signs
        self.position += node.size
        return parents

    def _free(self, node: _Node, beliefs: np.ndarray, reliability: np.ndarray | None) -> np.ndarray | None:
        """A subtree of information bits only: any code bits are a codeword, the likeliest are the
        hard decisions, and the list only needs each path's choices on its list_size − 1 least
        reliable bits (Hashemi et al., fast simplified SC list decoding): fork on them in turn."""
        size = node.size
        if reliability is None:
            reliability = np.abs(beliefs)
        steps = min(self.list_size - 1, size)
        # Per step, per incoming path: what flipping its next least reliable bit costs.
        ranked = reliability.copy()  # np.sort, without its Python wrapper
        ranked.sort(axis=0)
        cost = ranked[:steps].tolist()
        # Each path: (metric, the incoming path it continues, the steps at which it flipped).
        paths = [(metric, row, ()) for row, metric in enumerate(self.metric)]
        key = self.by_metric
        for step, step_cost in enumerate(cost):
            forks = [(metric + step_cost[row], row, flipped + (step,)) for metric, row, flipped in paths]
            if step and len(paths) == self.list_size and key(min(forks, key=key)) >= key(paths[-1]):
                # The list is full and sorted, and no fork would enter it (a tie goes to the
                # path already there); nor at a later step, as each path's costs only grow.
                break
            paths += forks
            paths.sort(key=key)
            del paths[self.list_size:]
        parents = self._keep(paths)
        # The hard decisions, 1 where λ < 0 (NaN and −0 read as 0), of each survivor's parent.
        ones = beliefs < _ZERO
        if parents is not None:
            ones = ones.take(parents, axis=1)
        if any(flipped for _, _, flipped in paths):
            # The bits flipped: the paths' least reliable, in the order the costs were sorted in
            # (a stable argsort: the same values in the same order, NaN last).
            weakest = reliability.argsort(axis=0, kind="stable")[:steps].tolist()
            count = len(paths)
            flat = ones.reshape(-1)  # a view: `ones` is a fresh contiguous array
            flat[[weakest[step][row] * count + path for path, (_, row, flipped) in enumerate(paths)
                  for step in flipped]] ^= True
        # The undecided code bits are still +1 (a 0) for every path.
        self.codewords[self.position:self.position + size, :len(paths)][ones] = -1.0
        self.position += size
        return parents


_first = operator.itemgetter(0)
_sum = np.add.reduce  # ndarray.sum, without its Python wrapper


def _first_nan_last(path: tuple) -> tuple[bool, float]:
    """Sort key of (metric, ...) with NaN metrics after all others, as numpy sorts them."""
    return math.isnan(path[0]), path[0]
