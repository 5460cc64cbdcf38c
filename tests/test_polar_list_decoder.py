"""The optimised list decoder (`PolarCode.decode_list`) against a plain reference: the same
fast simplified SC list decoding written straightforwardly (numpy arrays per node, u bits kept per
path, survivors chosen by numpy's stable argsort). Candidates, their order and their metrics must
agree bit for bit, ties included, on the codes the payload really uses."""

from __future__ import annotations

import numpy as np
import pytest

from watermark_cli.payload import length_classes
from watermark_cli.polar import PolarCode, _transform, _tree


def reference_decode_list(code: PolarCode, llr: np.ndarray, list_size: int) -> tuple[np.ndarray, np.ndarray]:
    state = {"metric": np.zeros(1), "u": np.zeros((1, code.n), dtype=np.uint8), "position": 0}

    def against(beliefs, bit):  # the cost of deciding `bit` on every belief: |λ| where it disagrees
        return np.where((beliefs < 0) != bool(bit), np.abs(beliefs), 0.0).sum(axis=1)

    def keep(parents, metric, u_bits):
        state["u"] = state["u"][parents]
        state["u"][:, state["position"]:state["position"] + u_bits.shape[1]] = u_bits
        state["position"] += u_bits.shape[1]
        state["metric"] = metric

    def choose(metrics):  # the list_size best of the candidates, ties in candidate order
        return np.argsort(metrics, kind="stable")[:list_size]

    def node_decode(beliefs, node):  # returns (code bits per survivor, survivor's parent row)
        count, size = beliefs.shape
        if node.kind == "frozen":
            keep(np.arange(count), state["metric"] + against(beliefs, 0), np.zeros((count, size), np.uint8))
            return np.zeros((count, size), np.uint8), np.arange(count)
        if node.kind == "repetition":
            metrics = np.concatenate([state["metric"] + against(beliefs, 0), state["metric"] + against(beliefs, 1)])
            chosen = choose(metrics)
            bit = (chosen >= count).astype(np.uint8)
            u_bits = np.zeros((len(chosen), size), np.uint8)
            u_bits[:, -1] = bit
            keep(chosen % count, metrics[chosen], u_bits)
            return np.repeat(bit[:, None], size, axis=1), chosen % count
        if node.kind == "free":
            hard, reliability = (beliefs < 0).astype(np.uint8), np.abs(beliefs)
            weakest = np.argsort(reliability, axis=1, kind="stable")[:, :min(list_size - 1, size)]
            rows, metric, flips = np.arange(count), state["metric"].copy(), np.zeros((count, size), np.uint8)
            for step in range(weakest.shape[1]):
                where = weakest[rows, step]
                metrics = np.concatenate([metric, metric + reliability[rows, where]])
                chosen = choose(metrics)
                flipped, parent = chosen >= len(metric), chosen % len(metric)
                rows, metric, flips, where = rows[parent], metrics[chosen], flips[parent], where[parent]
                flips[np.flatnonzero(flipped), where[flipped]] ^= 1
            bits = hard[rows] ^ flips
            keep(rows, metric, _transform(bits))
            return bits, rows
        half = size // 2
        a, b = beliefs[:, :half], beliefs[:, half:]
        left_bits, left_rows = node_decode(np.sign(a) * np.sign(b) * np.minimum(np.abs(a), np.abs(b)), node.left)
        a, b = a[left_rows], b[left_rows]
        right_bits, right_rows = node_decode(b + (1.0 - 2.0 * left_bits) * a, node.right)
        return (np.concatenate([left_bits[right_rows] ^ right_bits, right_bits], axis=1),
                left_rows[right_rows])

    node_decode(np.asarray(llr, dtype=np.float64)[None], _tree(code.frozen.tobytes()))
    order = np.argsort(state["metric"], kind="stable")
    return state["u"][order][:, code.info], state["metric"][order]


def received_words(code: PolarCode, rng: np.random.Generator) -> list[np.ndarray]:
    """Noise, noisy codewords, and words full of exact ties and zeros (where tie-breaking shows)."""
    n = code.n
    bpsk = 1.0 - 2.0 * code.encode(rng.integers(0, 2, code.k, dtype=np.uint8))
    p1 = np.clip(1 / (1 + np.exp(rng.normal(0, 1, n) + 2 * bpsk)), 1e-9, 1 - 1e-9)
    words = [
        rng.normal(0, 2, n),  # pure noise
        rng.normal(0, 1e-3, n),
        2 * (bpsk + 0.8 * rng.normal(size=n)) / 0.8**2,  # a codeword through a noisy channel
        np.round(rng.normal(0, 1.5, n)),  # quantised: zeros and ties everywhere
        np.where(rng.random(n) < 0.2, 0.0, rng.choice([-1.0, 1.0], n)),  # one magnitude, some zeros
        np.log1p(-p1) - np.log(p1),  # as the payload computes them: ties at ±20.7
    ]
    for word in words:
        word[list(code.punctured)] = 0.0
    return words


CODES = [c.code for bits in (256, 200) for c in length_classes(bits)]


@pytest.mark.parametrize("code", CODES, ids=lambda c: f"n{c.n}k{c.k}p{len(c.punctured)}")
def test_the_decoder_matches_the_reference_bit_for_bit(code):
    rng = np.random.default_rng(code.k * 1000 + len(code.punctured))
    for list_size in (1, 2, 8, 16):
        for llr in received_words(code, rng):
            candidates, metrics = code.decode_list(llr, list_size)
            expected_candidates, expected_metrics = reference_decode_list(code, llr, list_size)
            assert candidates.dtype == expected_candidates.dtype and metrics.dtype == expected_metrics.dtype
            assert np.array_equal(candidates, expected_candidates)
            assert np.array_equal(metrics.view(np.uint64), expected_metrics.view(np.uint64))


def test_non_finite_beliefs_decode_as_the_reference_does():
    """NaN and infinite LLRs (never produced by the payload, which clips) still give the same
    list: NaN metrics sort last, as numpy sorts them."""
    code = CODES[1]
    rng = np.random.default_rng(7)
    with np.errstate(all="ignore"):
        for special in (np.nan, np.inf, -np.inf):
            llr = rng.normal(0, 2, code.n)
            llr[rng.random(code.n) < 0.02] = special
            for list_size in (2, 8):
                candidates, metrics = code.decode_list(llr, list_size)
                expected_candidates, expected_metrics = reference_decode_list(code, llr, list_size)
                assert np.array_equal(candidates, expected_candidates)
                assert np.array_equal(metrics, expected_metrics, equal_nan=True)
