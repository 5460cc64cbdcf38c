"""Payload codec: message bytes <-> the raw bits a watermarking network carries (design §5).

Layout, for a model that carries ``n_bits`` raw bits (``n_bytes = n_bits // 8``)::

    frame    = [length: 1 byte][message][zero padding][CRC-32 of everything before it, 4 bytes]
    codeword = Reed-Solomon over GF(256) (reedsolo), frame + ``parity_bytes`` parity bytes
    raw bits = codeword bits, most significant bit first, XOR keystream(key)

so ``capacity_bytes = n_bytes - parity_bytes - 1 - 4``. The frame is padded so that every
message, short or long, fills the whole codeword; the decoder then knows the codeword length
without being told the message length.

Why each layer is there:

- Reed-Solomon corrects whole bytes, which suits a network whose bit errors come in clusters
  (one damaged region of the image spoils neighbouring carriers). Errors-only decoding repairs up
  to ``parity_bytes // 2`` wrong bytes; if it fails, the bytes the network was least sure about
  are declared erasures and up to ``parity_bytes`` of them can be repaired.
- The CRC-32 is the accept/reject test. Wrong key, unmarked image or a destroyed mark make the
  CRC fail, and the decoder answers "not found" rather than a garbled message.
- The keystream (HMAC-SHA256 in counter mode) whitens the codeword, so that structured inputs
  (an all-black image, a network stuck at 0 or 1) look random to the decoder, and binds the mark
  to a key: without the key the payload cannot be read or forged.

Default key: when no key is given, ``DEFAULT_KEY`` is used. It is public (it is written here), so
it gives **no secrecy**: anyone with ``wm`` can read and forge such a mark. It still gives the
integrity check (CRC) and the whitening. Use your own key for anything that needs secrecy.

False positives: see ``PayloadCodec.false_positive_bound``. On an input that holds no payload
for this key (unmarked image, wrong key, noise), each decoding attempt yields at most one
candidate frame, and the keystream makes that frame look random, so it passes the CRC-32 with
probability about 2^-32. One decode makes at most ``parity_bytes // 2 + 1`` attempts: errors
only, then 2, 4, ..., parity_bytes erasures (odd counts add nothing, see
``PayloadCodec._erasure_counts``; hard 0/1 bits get the errors-only attempt alone). By the
union bound the probability of reporting a payload that is not there is at most
``(parity_bytes // 2 + 1) * 2^-32`` per decode: 6 * 2^-32 = 1.4e-9 for 256 bits with 10
parity bytes, 11 * 2^-32 = 2.6e-9 for 512 bits with 20; far under the 1e-6 per image target
of design §6. The length and zero-padding checks only lower it further. (The bound assumes the
key is not known to whoever made the input; with the public default key anyone can forge a
valid payload on purpose.)

Never put patient identifiers in a payload: embed a random ID or a hash that points to an audit
record kept elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from dataclasses import dataclass

import numpy as np
import reedsolo

from watermark_cli.errors import BadInputError, MessageTooLongError

DEFAULT_KEY = "wm-default-key"
"""Public key used when none is given: integrity check only, no secrecy (see module docstring)."""

_KEYSTREAM_DOMAIN = b"wm-keystream-v1"
_LENGTH_BYTES = 1
_CRC_BYTES = 4
_MAX_CODEWORD_BYTES = 255  # a Reed-Solomon codeword over GF(256) holds at most 255 symbols


def default_parity_bytes(n_bits: int) -> int:
    """Parity bytes for a model carrying ``n_bits``: about 30 % of the bytes, rounded to even.

    30 % lets the decoder repair about 15 % wrong bytes blindly (30 % when the network flags
    them as uncertain) while leaving most of the bytes for the message. An even count uses the
    errors-only radius fully. Small payloads get less, so that the frame still fits.
    For 256 bits: 10 parity bytes, 17 message bytes.
    """
    n_bytes = n_bits // 8
    parity = 2 * int(0.15 * n_bytes + 0.5)
    room = n_bytes - _LENGTH_BYTES - _CRC_BYTES  # what is left once the frame overhead is paid
    parity = min(parity, room - room % 2)
    return max(parity, 0)


def _key_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        return DEFAULT_KEY.encode("utf-8")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise BadInputError(f"key must be text or bytes, not {type(key).__name__}")
    if len(key) == 0:
        # An empty key is nearly always an unset variable (--key "$WM_KEY"); refuse it rather than
        # silently marking with a key the user did not mean.
        raise BadInputError("the key is empty; give a non-empty --key, or none for the default key")
    return bytes(key)


def keystream(key: str | bytes | None, n_bytes: int) -> bytes:
    """``n_bytes`` of keystream: HMAC-SHA256(key, domain || counter), counter = 0, 1, 2, ..."""
    secret = _key_bytes(key)
    blocks = []
    for counter in range((n_bytes + 31) // 32):
        msg = _KEYSTREAM_DOMAIN + counter.to_bytes(4, "big")
        blocks.append(hmac.new(secret, msg, hashlib.sha256).digest())
    return b"".join(blocks)[:n_bytes]


@dataclass
class DecodedPayload:
    """What a decode found.

    confidence: how strongly the network's outputs agree with the payload that was found, in
    [0, 1]. It is the mean over raw bits of ``2 q - 1`` (clipped at 0), where ``q`` is the
    probability the network gave to the bit value of the re-encoded codeword. 1.0 means every bit
    certain and right; values near 0 mean the payload was recovered mainly by the error
    correction. It is 0.0 when nothing was found.
    """

    found: bool
    message: bytes | None
    confidence: float
    corrected_bytes: int
    bit_errors: int | None

    @classmethod
    def not_found(cls) -> "DecodedPayload":
        return cls(found=False, message=None, confidence=0.0, corrected_bytes=-1, bit_errors=None)


class PayloadCodec:
    """Turns messages into a model's raw bits and back (see the module docstring for the layout).

    ``n_bits``: raw bits the model carries (a multiple of 8, at most 2040).
    ``key``: text or bytes; None uses the public ``DEFAULT_KEY`` (no secrecy).
    ``parity_bytes``: Reed-Solomon parity bytes; None uses ``default_parity_bytes(n_bits)``.
    """

    def __init__(self, n_bits: int, key: str | bytes | None = None, parity_bytes: int | None = None):
        if not isinstance(n_bits, (int, np.integer)) or n_bits <= 0 or n_bits % 8:
            raise BadInputError(f"payload size must be a positive multiple of 8 bits, got {n_bits}")
        n_bits = int(n_bits)
        n_bytes = n_bits // 8
        if n_bytes > _MAX_CODEWORD_BYTES:
            raise BadInputError(
                f"payload of {n_bits} bits is too large; at most {8 * _MAX_CODEWORD_BYTES} bits are supported"
            )
        if parity_bytes is None:
            parity_bytes = default_parity_bytes(n_bits)
        parity_bytes = int(parity_bytes)
        capacity = n_bytes - parity_bytes - _LENGTH_BYTES - _CRC_BYTES
        if parity_bytes < 0 or capacity < 0:
            raise BadInputError(
                f"{n_bits} bits cannot hold the {_LENGTH_BYTES + _CRC_BYTES}-byte frame overhead "
                f"plus {parity_bytes} parity bytes"
            )
        self.n_bits = n_bits
        self.n_bytes = n_bytes
        self.parity_bytes = parity_bytes
        self.capacity_bytes = min(capacity, 255)  # the length byte counts to 255
        self._frame_bytes = n_bytes - parity_bytes
        self._keystream = np.frombuffer(keystream(key, n_bytes), dtype=np.uint8)
        self._rs = reedsolo.RSCodec(parity_bytes) if parity_bytes > 0 else None

    def __repr__(self) -> str:
        return (
            f"PayloadCodec(n_bits={self.n_bits}, parity_bytes={self.parity_bytes}, "
            f"capacity_bytes={self.capacity_bytes})"
        )

    def _erasure_counts(self) -> range:
        """Erasure counts worth trying, in order: those with the parity of ``parity_bytes``.

        A decode with ``e`` erasures and ``t`` other errors succeeds when ``2 t + e <= parity``.
        If that holds with ``e`` of the other parity, it holds with one margin to spare, so one more
        erasure (which removes an error or costs one) still succeeds: those counts add nothing.
        For an even parity count this means errors only, then 2, 4, ..., parity erasures.
        """
        return range(self.parity_bytes % 2, self.parity_bytes + 1, 2)

    @property
    def max_decode_attempts(self) -> int:
        """Candidate codewords one decode may test against the CRC (``parity_bytes // 2 + 1``)."""
        return len(self._erasure_counts())

    @property
    def false_positive_bound(self) -> float:
        """Upper bound on P(found=True) for one decode of an input that holds no payload for this key.

        Union bound over the decoding attempts, each accepted by the CRC-32 with probability
        2^-32 (the keystream makes every candidate codeword look random to the CRC).
        """
        return self.max_decode_attempts * 2.0**-32

    # -- encoding --------------------------------------------------------------------------

    def _frame(self, message: bytes) -> bytes:
        padding = bytes(self._frame_bytes - _LENGTH_BYTES - len(message) - _CRC_BYTES)
        body = bytes([len(message)]) + message + padding
        return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "big")

    def _codeword(self, frame: bytes) -> np.ndarray:
        coded = bytes(self._rs.encode(frame)) if self._rs is not None else frame
        return np.frombuffer(coded, dtype=np.uint8)

    def encode(self, message: bytes) -> np.ndarray:
        """The ``(n_bits,)`` uint8 array of 0/1 that the network should embed for ``message``."""
        if isinstance(message, str):
            raise TypeError("encode() takes bytes; encode text with message.encode('utf-8')")
        message = bytes(message)
        if len(message) > self.capacity_bytes:
            raise MessageTooLongError(
                f"message is {len(message)} bytes; this model carries at most {self.capacity_bytes} bytes"
            )
        codeword = self._codeword(self._frame(message))
        return np.unpackbits(codeword ^ self._keystream)

    # -- decoding --------------------------------------------------------------------------

    def _unframe(self, frame: bytes) -> bytes | None:
        """The message if the frame is valid (CRC, length, zero padding), else None."""
        body, crc = frame[:-_CRC_BYTES], frame[-_CRC_BYTES:]
        if zlib.crc32(body).to_bytes(_CRC_BYTES, "big") != crc:
            return None
        length = body[0]
        if length > self.capacity_bytes:
            return None
        if any(body[_LENGTH_BYTES + length :]):
            return None
        return bytes(body[_LENGTH_BYTES : _LENGTH_BYTES + length])

    def _attempt(self, received: np.ndarray, erasures: list[int]) -> tuple[bytes, np.ndarray] | None:
        """One bounded-distance decode: (message, codeword) if it yields a valid frame, else None."""
        if self._rs is None:
            frame = received.tobytes()
        else:
            try:
                frame = bytes(self._rs.decode(bytearray(received.tobytes()), erase_pos=erasures or None)[0])
            except (reedsolo.ReedSolomonError, ZeroDivisionError, IndexError, ValueError):
                # Beyond the code's radius reedsolo says so with ReedSolomonError; the others guard
                # against its internals tripping on garbage input. Either way: no candidate.
                return None
        message = self._unframe(frame)
        if message is None:
            return None
        codeword = self._codeword(frame)
        # Accept only corrections within the code's guaranteed radius (2 errors + erasures <= parity),
        # so that the number of candidates, and with it the false-positive bound, stays as stated.
        wrong = codeword != received
        wrong[erasures] = False
        if 2 * int(wrong.sum()) + len(erasures) > self.parity_bytes:
            return None
        return message, codeword

    def decode(self, bit_probabilities: np.ndarray) -> DecodedPayload:
        """Recover the message from the network's per-bit P(bit == 1) (hard 0/1 bits also work).

        Tries errors-only decoding, then declares the 2, 4, ..., ``parity_bytes`` least certain
        bytes erasures (a byte is as certain as its least certain bit; odd counts are skipped,
        see ``_erasure_counts``). Hard bits, which rank no byte above another, get errors-only
        decoding alone. NaN counts as 0.5; values outside [0, 1] raise ValueError.
        Returns ``found=False`` unless a candidate passes the CRC, length and padding checks.
        """
        p = np.asarray(bit_probabilities, dtype=np.float64).reshape(-1)
        if p.size != self.n_bits:
            raise ValueError(f"expected {self.n_bits} bit probabilities, got {p.size}")
        p = np.nan_to_num(p, nan=0.5)  # a NaN says nothing about its bit
        if p.min() < -1e-6 or p.max() > 1.0 + 1e-6:
            raise ValueError("bit probabilities must lie in [0, 1] (were logits passed?)")
        p = np.clip(p, 0.0, 1.0)

        hard_bits = (p > 0.5).astype(np.uint8)
        received = np.packbits(hard_bits) ^ self._keystream
        # XOR with the keystream flips bits but not their certainty, so the ranking is unchanged.
        byte_certainty = np.abs(p - 0.5).reshape(self.n_bytes, 8).min(axis=1)
        least_certain_first = np.argsort(byte_certainty, kind="stable")

        # Hard bits (or equally sure bytes) carry no ranking: erasures would be arbitrary bytes,
        # so only errors-only decoding is tried.
        has_ranking = byte_certainty.min() < byte_certainty.max()
        attempts = self._erasure_counts() if has_ranking else [0]
        result = None
        for n_erasures in attempts:
            erasures = sorted(least_certain_first[:n_erasures].tolist())
            result = self._attempt(received, erasures)
            if result is not None:
                break
        if result is None:
            return DecodedPayload.not_found()

        message, codeword = result
        true_bits = np.unpackbits(codeword ^ self._keystream)
        prob_of_true_bit = np.where(true_bits == 1, p, 1.0 - p)
        confidence = float(np.clip(np.mean(2.0 * prob_of_true_bit - 1.0), 0.0, 1.0))
        return DecodedPayload(
            found=True,
            message=message,
            confidence=confidence,
            corrected_bytes=int(np.count_nonzero(codeword != received)),
            bit_errors=int(np.count_nonzero(true_bits != hard_bits)),
        )


def bytes_to_text(message: bytes) -> str:
    """The message as text: UTF-8 when it is valid UTF-8, otherwise lowercase hex (e.g. from --hex).

    Hex keeps binary payloads printable and copy-pasteable; a caller that needs to tell the two
    cases apart should try ``message.decode('utf-8')`` itself.
    """
    try:
        return bytes(message).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(message).hex()
