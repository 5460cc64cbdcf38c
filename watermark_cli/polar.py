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
decision goes against its belief λ). The decoder itself is compiled (`polar_decoder`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np


def _bhattacharyya(z: np.ndarray) -> np.ndarray:
    """The Bhattacharyya parameter of each u position, from those of the code bits (`z`).

    Follows the decoder's recursion (see `polar_decoder`): the left half of a node sees the two
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
        from .polar_decoder import decode  # compiled on first use (numba): not on `wm --help`

        codewords, metric = decode(np.ascontiguousarray(llr), *_flat_tree(self.frozen.tobytes()), list_size,
                                   min(list_size, 1 << self.k))
        # Each path's u bits follow from its codeword (u = x·G, G its own inverse): recovered once
        # here rather than kept for every path at every node as they are decided.
        order = np.argsort(metric, kind="stable")
        codewords = codewords[:, :len(metric)].T.take(order, axis=0)
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
def _flat_tree(frozen_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_tree` as the compiled decoder takes it: per node (the root first, then each node's left
    subtree before its right), its kind (`polar_decoder.FROZEN`, ...), size, and the indices of
    its children (0 for a leaf)."""
    from .polar_decoder import FREE, FROZEN, INNER, REPETITION

    codes = {"frozen": FROZEN, "free": FREE, "repetition": REPETITION, "inner": INNER}
    kinds, sizes, lefts, rights = [], [], [], []

    def add(node: _Node) -> int:
        index = len(kinds)
        kinds.append(codes[node.kind])
        sizes.append(node.size)
        lefts.append(0)
        rights.append(0)
        if node.kind == "inner":
            lefts[index] = add(node.left)
            rights[index] = add(node.right)
        return index

    add(_tree(frozen_bytes))
    return tuple(np.array(values, dtype=np.int64) for values in (kinds, sizes, lefts, rights))


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
