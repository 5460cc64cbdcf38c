"""Tests for the payload codec (design §5): round trips, error correction, rejection of non-payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watermark_cli.errors import BadInputError, MessageTooLongError
from watermark_cli.payload import (
    DEFAULT_KEY,
    DecodedPayload,
    PayloadCodec,
    bytes_to_text,
    default_parity_bytes,
)

N_BITS = [64, 128, 256, 512]


def confident(bits: np.ndarray, margin: float = 0.45) -> np.ndarray:
    """Bit probabilities a well-trained decoder would give for these bits."""
    return 0.5 + margin * (2.0 * bits.astype(np.float64) - 1.0)


def corrupt_bytes(bits: np.ndarray, byte_indices, rng: np.random.Generator) -> np.ndarray:
    """Replace whole bytes of the raw bits with different random values."""
    raw = np.packbits(bits)
    for i in byte_indices:
        raw[i] ^= rng.integers(1, 256)
    return np.unpackbits(raw)


# -- layout and capacity -------------------------------------------------------------------------


def test_default_layout_for_256_bits():
    codec = PayloadCodec(256)
    assert default_parity_bytes(256) == 10
    assert (codec.n_bits, codec.parity_bytes, codec.capacity_bytes) == (256, 10, 17)


@pytest.mark.parametrize("n_bits", N_BITS)
def test_capacity_accounts_for_frame_and_parity(n_bits):
    codec = PayloadCodec(n_bits)
    assert codec.parity_bytes % 2 == 0
    assert codec.capacity_bytes == n_bits // 8 - codec.parity_bytes - 1 - 4
    assert codec.capacity_bytes >= 1
    assert codec.false_positive_bound < 1e-8


def test_explicit_parity_changes_capacity():
    assert PayloadCodec(256, parity_bytes=4).capacity_bytes == 23
    assert PayloadCodec(256, parity_bytes=0).capacity_bytes == 27


@pytest.mark.parametrize("n_bits", [0, -8, 12, 2048])
def test_unusable_payload_sizes_are_bad_input(n_bits):
    with pytest.raises(BadInputError):
        PayloadCodec(n_bits)


def test_parity_leaving_no_room_is_bad_input():
    with pytest.raises(BadInputError):
        PayloadCodec(64, parity_bytes=4)


def test_empty_key_is_bad_input():
    with pytest.raises(BadInputError):
        PayloadCodec(256, key="")


# -- round trips ---------------------------------------------------------------------------------


def messages_for(codec: PayloadCodec) -> list[bytes]:
    cap = codec.capacity_bytes
    candidates = [
        b"",
        b"A",
        b"ID-7f3a",
        "é✓".encode(),  # 2- and 3-byte UTF-8 sequences
        "Ø-脑".encode(),
        b"x" * cap,
        bytes(range(256))[:cap],  # raw bytes (--hex), including 0x00 and invalid UTF-8
        b"\x00" * cap,  # a message of zeros must not be confused with padding
    ]
    return [m for m in candidates if len(m) <= cap]


@pytest.mark.parametrize("n_bits", N_BITS)
def test_round_trip(n_bits):
    codec = PayloadCodec(n_bits, key="site-secret")
    for message in messages_for(codec):
        bits = codec.encode(message)
        assert bits.shape == (n_bits,) and bits.dtype == np.uint8
        assert set(np.unique(bits).tolist()) <= {0, 1}
        for observed in (bits, confident(bits)):
            result = codec.decode(observed)
            assert result.found, (n_bits, message)
            assert result.message == message
            assert result.corrected_bytes == 0 and result.bit_errors == 0


def test_max_length_utf8_text_round_trips():
    codec = PayloadCodec(256)
    text = "Ärzt-ü" + "e" * (codec.capacity_bytes - len("Ärzt-ü".encode()))
    message = text.encode("utf-8")
    assert len(message) == codec.capacity_bytes
    result = codec.decode(codec.encode(message))
    assert result.found and bytes_to_text(result.message) == text


def test_zero_parity_still_checks_crc():
    codec = PayloadCodec(64, parity_bytes=0)
    bits = codec.encode(b"ok")
    assert codec.decode(bits).message == b"ok"
    bits[3] ^= 1
    assert not codec.decode(bits).found


def test_encode_rejects_text_and_too_long_messages():
    codec = PayloadCodec(256)
    with pytest.raises(TypeError):
        codec.encode("text")  # type: ignore[arg-type]
    with pytest.raises(MessageTooLongError) as info:
        codec.encode(b"y" * (codec.capacity_bytes + 1))
    assert isinstance(info.value, BadInputError)
    assert str(info.value) == "message is 18 bytes; this model carries at most 17 bytes"


def test_decode_rejects_wrong_length_and_logits():
    codec = PayloadCodec(256)
    with pytest.raises(ValueError):
        codec.decode(np.zeros(128))
    with pytest.raises(ValueError):
        codec.decode(np.full(256, 3.0))  # logits, not probabilities


def test_false_positive_bound_counts_the_decoding_attempts():
    codec = PayloadCodec(256)
    assert codec.max_decode_attempts == 6  # errors only, then 2, 4, 6, 8, 10 erasures
    assert codec.false_positive_bound == pytest.approx(6 * 2.0**-32)
    assert PayloadCodec(256, parity_bytes=5).max_decode_attempts == 3  # 1, 3, 5 erasures


# -- keys ----------------------------------------------------------------------------------------


def test_default_key_is_the_documented_constant():
    assert DEFAULT_KEY == "wm-default-key"
    message = b"hello"
    assert np.array_equal(PayloadCodec(256).encode(message), PayloadCodec(256, key=DEFAULT_KEY).encode(message))


def test_text_and_bytes_keys_agree():
    assert np.array_equal(PayloadCodec(128, key="k1").encode(b"a"), PayloadCodec(128, key=b"k1").encode(b"a"))


@pytest.mark.parametrize("n_bits", N_BITS)
def test_wrong_key_is_not_found(n_bits):
    message = b"m" * PayloadCodec(n_bits).capacity_bytes
    rng = np.random.default_rng(n_bits)
    for write_key, read_key in [("alice", "bob"), (None, "bob"), ("alice", None), ("alice", "alicf")]:
        bits = PayloadCodec(n_bits, key=write_key).encode(message)
        reader = PayloadCodec(n_bits, key=read_key)
        assert reader.decode(bits) == DecodedPayload(False, None, 0.0, -1, None)
        # Uneven certainty, so that every erasure attempt is made too.
        for _ in range(20):
            soft = 0.5 + rng.uniform(0.05, 0.5, n_bits) * (2.0 * bits - 1.0)
            assert not reader.decode(soft).found


# -- error correction ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", N_BITS)
def test_corrects_up_to_half_the_parity_in_byte_errors(n_bits):
    rng = np.random.default_rng(n_bits)
    codec = PayloadCodec(n_bits, key="k")
    message = b"scan-0042"[: codec.capacity_bytes]
    bits = codec.encode(message)
    for n_errors in range(codec.parity_bytes // 2 + 1):
        for _ in range(5):
            where = rng.choice(codec.n_bytes, size=n_errors, replace=False)
            damaged = corrupt_bytes(bits, where, rng)
            # Errors the network is sure about: only the code can find them.
            result = codec.decode(confident(damaged))
            assert result.found and result.message == message
            assert result.corrected_bytes == n_errors
            assert result.bit_errors == int(np.count_nonzero(damaged != bits))


@pytest.mark.parametrize("n_bits", N_BITS)
def test_flagged_errors_up_to_the_full_parity_are_corrected(n_bits):
    """Bytes the network was unsure about become erasures, which cost half as much as errors."""
    rng = np.random.default_rng(1000 + n_bits)
    codec = PayloadCodec(n_bits, key="k")
    message = b"Q" * codec.capacity_bytes
    bits = codec.encode(message)
    for n_flagged in range(codec.parity_bytes + 1):
        where = rng.choice(codec.n_bytes, size=n_flagged, replace=False)
        damaged = corrupt_bytes(bits, where, rng)
        probabilities = confident(damaged)
        for i in where:
            probabilities[8 * i : 8 * i + 8] = confident(damaged[8 * i : 8 * i + 8], margin=0.05)
        result = codec.decode(probabilities)
        assert result.found and result.message == message, n_flagged
        assert result.corrected_bytes == n_flagged
        assert 0.0 < result.confidence < 1.0


def test_odd_parity_corrects_flagged_errors():
    rng = np.random.default_rng(11)
    codec = PayloadCodec(128, parity_bytes=5)
    bits = codec.encode(b"odd")
    for n_flagged in range(6):
        where = rng.choice(codec.n_bytes, size=n_flagged, replace=False)
        damaged = corrupt_bytes(bits, where, rng)
        probabilities = confident(damaged)
        for i in where:
            probabilities[8 * i : 8 * i + 8] = confident(damaged[8 * i : 8 * i + 8], margin=0.05)
        assert codec.decode(probabilities).message == b"odd"
    # Two confident errors: within the errors-only radius of 5 parity bytes.
    assert codec.decode(confident(corrupt_bytes(bits, [0, 9], rng))).message == b"odd"


def test_mix_of_flagged_and_unflagged_errors():
    rng = np.random.default_rng(7)
    codec = PayloadCodec(256)
    message = b"mixed"
    bits = codec.encode(message)
    # 2 confident errors (cost 4) + 6 flagged ones (cost 6) = 10 = parity: correctable.
    where = rng.choice(codec.n_bytes, size=8, replace=False)
    damaged = corrupt_bytes(bits, where, rng)
    probabilities = confident(damaged)
    for i in where[2:]:
        probabilities[8 * i : 8 * i + 8] = 0.5 + 0.02 * (2.0 * damaged[8 * i : 8 * i + 8] - 1)
    result = codec.decode(probabilities)
    assert result.found and result.message == message and result.corrected_bytes == 8


def test_too_many_confident_errors_are_not_found_rather_than_garbled():
    rng = np.random.default_rng(3)
    codec = PayloadCodec(256)
    message = b"too damaged"
    bits = codec.encode(message)
    for _ in range(50):
        where = rng.choice(codec.n_bytes, size=codec.parity_bytes // 2 + 3, replace=False)
        result = codec.decode(confident(corrupt_bytes(bits, where, rng)))
        assert not result.found and result.message is None


def test_confidence_reflects_bit_certainty():
    codec = PayloadCodec(256)
    bits = codec.encode(b"c")
    assert codec.decode(bits).confidence == 1.0
    assert codec.decode(confident(bits, 0.25)).confidence == pytest.approx(0.5)
    noisy = confident(bits, 0.45)
    noisy[:8] = 1.0 - noisy[:8]  # one byte confidently wrong
    result = codec.decode(noisy)
    assert result.found and result.bit_errors == 8
    assert result.confidence == pytest.approx(0.9 * (248 - 8) / 256)


# -- no false positives --------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", N_BITS)
def test_degenerate_inputs_are_not_found(n_bits):
    codec = PayloadCodec(n_bits)
    for probabilities in (np.full(n_bits, 0.5), np.zeros(n_bits), np.ones(n_bits), np.full(n_bits, np.nan)):
        assert not codec.decode(probabilities).found


def test_random_probabilities_give_no_false_positives():
    """20 000 unmarked 'images': the bound is 1.4e-9 per decode, so any hit means a bug."""
    rng = np.random.default_rng(20240601)
    codec = PayloadCodec(256)
    # Soft outputs: every erasure attempt is made, the costly and the riskier case.
    found = sum(codec.decode(rng.random(256)).found for _ in range(12_000))
    # Hard random bits, as from a decoder that saturates on an unmarked image, at every size.
    for n_bits in N_BITS:
        codec = PayloadCodec(n_bits)
        found += sum(codec.decode(rng.integers(0, 2, n_bits)).found for _ in range(2_000))
    assert found == 0


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_bits=st.sampled_from(N_BITS), key=st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_any_message_up_to_capacity_round_trips_through_byte_errors(data, n_bits, key):
    codec = PayloadCodec(n_bits, key=key)
    message = data.draw(st.binary(max_size=codec.capacity_bytes), label="message")
    n_errors = data.draw(st.integers(0, codec.parity_bytes // 2), label="n_errors")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    bits = codec.encode(message)
    damaged = corrupt_bytes(bits, rng.choice(codec.n_bytes, size=n_errors, replace=False), rng)
    soft = 0.5 + rng.uniform(0.2, 0.5, n_bits) * (2.0 * damaged - 1.0)
    for observed in (damaged, soft):
        result = codec.decode(observed)
        assert result.found and result.message == message and result.corrected_bytes == n_errors


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=17))
def test_any_text_that_fits_round_trips_as_text(text):
    codec = PayloadCodec(256)
    message = text.encode("utf-8")
    if len(message) > codec.capacity_bytes:
        with pytest.raises(MessageTooLongError):
            codec.encode(message)
    else:
        assert bytes_to_text(codec.decode(codec.encode(message)).message) == text


def test_bytes_to_text_falls_back_to_hex():
    assert bytes_to_text("Größe".encode()) == "Größe"
    assert bytes_to_text(b"") == ""
    assert bytes_to_text(b"\xff\x00\xab") == "ff00ab"
