"""The polar code under payload v2, checked against brute force on codes small enough to list."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from watermark_cli.polar import PolarCode


def all_codewords(code: PolarCode) -> tuple[np.ndarray, np.ndarray]:
    messages = np.array(list(itertools.product([0, 1], repeat=code.k)), dtype=np.uint8)
    return messages, np.array([code.encode(m) for m in messages])


@pytest.mark.parametrize("n, k, punctured", [(8, 4, ()), (16, 8, ()), (16, 6, (3, 7)), (32, 10, ())])
def test_a_list_that_keeps_every_path_is_maximum_likelihood(n, k, punctured):
    """With 2^k paths nothing is pruned: the best candidate is the codeword nearest the beliefs,
    and every path metric is its codeword's correlation discrepancy (the sum of |λ| over the bits
    that disagree with the beliefs), so the metrics the payload ranks candidates by mean what
    they say."""
    code = PolarCode(n, k, punctured=punctured)
    messages, codewords = all_codewords(code)
    rng = np.random.default_rng(n * 100 + k)
    for _ in range(40):
        sent = codewords[rng.integers(len(codewords))]
        llr = rng.normal(1.0, 2.0, n) * (1.0 - 2.0 * sent)
        llr[list(punctured)] = 0.0
        discrepancy = (np.abs(llr) * ((llr < 0) != codewords)).sum(axis=1)
        candidates, metrics = code.decode_list(llr, 2**k)
        index = [int("".join(map(str, c)), 2) for c in candidates]
        assert np.array_equal(candidates[0], messages[np.argmin(discrepancy)])
        np.testing.assert_allclose(metrics, discrepancy[index])
        assert len(set(index)) == len(index) == 2**k


def test_encoding_is_linear_and_uses_k_distinct_positions():
    code = PolarCode(64, 20, punctured=tuple(range(0, 64, 9)))
    assert len(set(code.info.tolist())) == 20 and not code.frozen[code.info].any()
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, (2, 20), dtype=np.uint8)
    assert np.array_equal(code.encode(a) ^ code.encode(b), code.encode(a ^ b))


def test_punctured_positions_never_carry_information_alone():
    """A punctured bit is erased: the construction ranks it worst, so the code still decodes
    every message from the bits that are sent, without errors."""
    punctured = tuple(range(200, 256))
    code = PolarCode(256, 106, punctured=punctured)
    rng = np.random.default_rng(2)
    for _ in range(5):
        message = rng.integers(0, 2, 106, dtype=np.uint8)
        llr = 4.0 * (1.0 - 2.0 * code.encode(message).astype(np.float64))
        llr[list(punctured)] = 0.0
        candidates, _ = code.decode_list(llr, 8)
        assert np.array_equal(candidates[0], message)


@pytest.mark.parametrize("n, k, punctured", [(12, 4, ()), (16, 0, ()), (16, 17, ()), (16, 10, tuple(range(8)))])
def test_impossible_codes_are_refused(n, k, punctured):
    with pytest.raises(ValueError):
        PolarCode(n, k, punctured=punctured)


def test_wrong_shapes_are_refused():
    code = PolarCode(16, 8)
    with pytest.raises(ValueError):
        code.encode(np.zeros(7))
    with pytest.raises(ValueError):
        code.decode_list(np.zeros(15))
