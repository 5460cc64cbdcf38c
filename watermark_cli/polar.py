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
from dataclasses import dataclass, field

import numpy as np


def _bhattacharyya(z: np.ndarray) -> np.ndarray:
    """The Bhattacharyya parameter of each u position, from those of the code bits (`z`).

    Follows the decoder's recursion (see `_decode_node`): the left half of a node sees the two
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
        paths = _Paths(list_size, self.n)
        _decode_node(llr[None].copy(), _tree(self.frozen.tobytes()), paths)
        order = np.argsort(paths.metric, kind="stable")
        return paths.u[order][:, self.info], paths.metric[order]


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


class _Paths:
    """The surviving decoding paths: their u bits so far (rows) and their metrics."""

    def __init__(self, list_size: int, n: int) -> None:
        self.list_size = list_size
        self.metric = np.zeros(1)
        self.u = np.zeros((1, n), dtype=np.uint8)
        self.position = 0  # u bits decided so far

    def keep(self, parents: np.ndarray, metric: np.ndarray, segment: np.ndarray) -> None:
        """The paths that survive, each from its parent, with the next u bits decided."""
        self.u = self.u[parents]
        self.u[:, self.position : self.position + segment.shape[1]] = segment
        self.position += segment.shape[1]
        self.metric = metric


def _against(beliefs: np.ndarray, bits) -> np.ndarray:
    """The path-metric cost of deciding `bits` (0/1, broadcast) against `beliefs`: |λ| where
    the decision goes against the sign of λ."""
    return np.where((beliefs < 0) != np.asarray(bits, dtype=bool), np.abs(beliefs), 0.0)


def _decode_node(beliefs: np.ndarray, node: _Node, paths: _Paths) -> tuple[np.ndarray, np.ndarray]:
    """Decode the subtree `node` whose code bits have `beliefs` (paths × size). Returns (its
    code bits per surviving path (paths' × size), each surviving path's parent among the
    incoming paths); the decided u bits go to `paths`."""
    count, size = beliefs.shape
    if node.kind == "frozen":  # every bit is 0, nothing to choose
        paths.keep(np.arange(count), paths.metric + _against(beliefs, 0).sum(axis=1),
                   np.zeros((count, size), dtype=np.uint8))
        return np.zeros((count, size), dtype=np.uint8), np.arange(count)
    if node.kind == "free":
        return _decode_free(beliefs, paths)
    if node.kind == "repetition":  # the code bits are all 0 or all 1
        metrics = np.concatenate([paths.metric + _against(beliefs, 0).sum(axis=1),
                                  paths.metric + _against(beliefs, 1).sum(axis=1)])
        keep = np.argsort(metrics, kind="stable")[: paths.list_size]
        parents, bit = keep % count, (keep >= count).astype(np.uint8)
        segment = np.zeros((len(keep), size), dtype=np.uint8)
        segment[:, -1] = bit
        paths.keep(parents, metrics[keep], segment)
        return np.repeat(bit[:, None], size, axis=1), parents
    half = size // 2
    a, b = beliefs[:, :half], beliefs[:, half:]
    left_beliefs = np.sign(a) * np.sign(b) * np.minimum(np.abs(a), np.abs(b))
    left_bits, left_parents = _decode_node(left_beliefs, node.left, paths)
    a, b = a[left_parents], b[left_parents]
    right_beliefs = b + (1.0 - 2.0 * left_bits) * a
    right_bits, right_parents = _decode_node(right_beliefs, node.right, paths)
    left_bits = left_bits[right_parents]
    return np.concatenate([left_bits ^ right_bits, right_bits], axis=1), left_parents[right_parents]


def _decode_free(beliefs: np.ndarray, paths: _Paths) -> tuple[np.ndarray, np.ndarray]:
    """A subtree of information bits only: any code bits are a codeword, the likeliest are the
    hard decisions, and the list only needs each path's choices on its list_size − 1 least
    reliable bits (Hashemi et al., fast simplified SC list decoding): fork on them in turn."""
    count, size = beliefs.shape
    hard = (beliefs < 0).astype(np.uint8)
    reliability = np.abs(beliefs)
    least_reliable = np.argsort(reliability, axis=1, kind="stable")[:, : min(paths.list_size - 1, size)]
    ancestors = np.arange(count)
    metric = paths.metric.copy()
    flips = np.zeros((count, size), dtype=np.uint8)
    for step in range(least_reliable.shape[1]):
        where = least_reliable[ancestors, step]
        metrics = np.concatenate([metric, metric + reliability[ancestors, where]])
        keep = np.argsort(metrics, kind="stable")[: paths.list_size]
        flipped = keep >= len(metric)
        chosen = keep % len(metric)
        ancestors, metric, flips = ancestors[chosen], metrics[keep], flips[chosen]
        flips[np.flatnonzero(flipped), where[chosen][flipped]] ^= 1
    bits = hard[ancestors] ^ flips
    paths.keep(ancestors, metric, _transform(bits))
    return bits, ancestors
