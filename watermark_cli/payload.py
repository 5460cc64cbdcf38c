"""Payload codec: message bytes <-> the raw bits a watermarking network carries (design §5).

Format 2 (this module's `PayloadCodec`), for a model that carries ``n_bits`` raw bits:

    plaintext  = [length within its class][message][zero padding to the class's capacity]
    tag        = HMAC-SHA256(K_tag, "wm-payload-v2" || n_bits || class || plaintext)[:40 bits]
    ciphertext = plaintext XOR HMAC-SHA256-CTR(K_enc, tag)
    frame      = tag || ciphertext                       (k bits; k depends on the class)
    raw bits   = polar_code_k(frame), punctured to n_bits, XOR pad(K_pad)

where K_tag, K_enc and K_pad are derived from the key by HMAC-SHA256 with distinct labels.

**Authenticated encryption, deterministic (SIV).** The tag is a PRF of the whole plaintext and
serves as the IV of the encryption, the synthetic-IV construction of Rogaway and Shrimpton
(deterministic authenticated encryption), built here from HMAC-SHA256 alone (hashlib/hmac, no
home-made primitive). Decoding accepts a frame only if the tag recomputed from the decrypted
plaintext matches. So:
- without the key, a valid frame for any message is a 40-bit guess: forgery succeeds with
  probability 2^-40 per try;
- knowing one marked image and its message (an audit ID printed in a report) gives one
  (plaintext, tag, keystream block) triple: the keystream is a PRF of the tag, so it is never
  reused for another message, and no other message's tag follows from it;
- flipping bits never yields another valid message: any change to the ciphertext changes the
  decrypted plaintext and with it the tag it must match; any change to the tag changes the
  keystream. XOR-ing encodings (the channel code is linear) gives a codeword whose frame fails
  the tag like any other;
- the keyed pad over the coded bits hides which length class a mark uses and makes even the
  all-zero codeword of the linear code look random; with a secret key a mark looks like noise.
What it leaks: **equal messages under one key give equal marks** (deterministic encryption; a
random ID per image avoids it), and with the public default key everything is public.

**Coding for the channel.** The network's raw bits err independently, with a confidence each;
whole-byte codes (the Reed-Solomon of format 1) waste that. Messages are grouped into up to four
length classes (for 256 raw bits: 0-4, 5-8, 9-12 and 13-16 bytes) and each class has its own polar
code (`polar.py`) over the same raw bits, so a short message gets a low-rate code: unused
capacity is protection. The decoder does not know the class: it tries each (shortest first) with
successive-cancellation list decoding on the network's log-likelihood ratios (soft decisions),
and the tag picks the right candidate. A message always uses the smallest class it fits, so each
message has exactly one encoding.

**False positives, derived.** On an input that holds no payload for this key (unmarked image,
wrong key, noise), one decode examines at most `LIST_SIZE` candidates per class, each accepted
only if its 40-bit tag matches: for a candidate not made with the key, the recomputed tag is a
PRF output independent of the received one, so each passes with probability 2^-40. The union
bound gives at most ``classes × LIST_SIZE × 2^-40`` per decode (4 × 8 × 2^-40 = 2.9e-11 for 256
bits), and per image `marking.image.DECODES_PER_IMAGE` (24; a keyed model's read makes at most 12,
the stored polarity only) decodes and two of a small instance's
fragile mark (`marking.fragile`: its coded bits, and its uncoded frame's one tag test a length
class): 7.6e-10, under the 1e-8 of design §5. (With the public default
key anyone can forge a valid payload on purpose.)

**Format 1** (`LegacyPayloadCodec`: CRC-32 and Reed-Solomon under a key-only XOR keystream) is
what wm wrote before; it is malleable and forgeable (see its docstring) and is read only when
asked (`wm extract --accept-format-1`), reported as unauthenticated.

Default key: when no key is given, ``DEFAULT_KEY`` is used. It is public (it is written here), so
it gives **no secrecy and no authenticity**: it detects and checks integrity, nothing more. Every
other key enters through `keys.key_material` (a passphrase stretched by scrypt first).

Never put patient identifiers in a payload: embed a random ID or a hash that points to an audit
record kept elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import zlib
from dataclasses import dataclass

import numpy as np
import reedsolo

from .errors import BadInputError, MessageTooLongError
from .keys import key_material
from .polar import PolarCode

FORMAT = 2
TAG_BITS = 40
_TAG_BYTES = TAG_BITS // 8  # TAG_BITS is a whole number of bytes (`_first_message` relies on it)
LIST_SIZE = 8
# The largest class keeps at least this share of the raw bits as redundancy.
_LARGEST_RATE = 0.70
_CLASSES = 4
_LABEL = b"wm-payload-v2"
_LARGEST_MESSAGE = 255


def _stream(secret: bytes, label: bytes, n_bytes: int) -> bytes:
    """``n_bytes`` of HMAC-SHA256(secret, label || counter), counter = 0, 1, 2, ..."""
    blocks = [hmac.new(secret, label + counter.to_bytes(4, "big"), hashlib.sha256).digest()
              for counter in range((n_bytes + 31) // 32)]
    return b"".join(blocks)[:n_bytes]


def _bits(data: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count]


def _bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8)).tobytes()


@dataclass
class DecodedPayload:
    """What a decode found.

    confidence: how strongly the network's outputs agree with the payload that was found, in
    [0, 1]: the mean over raw bits of ``2 q - 1`` (clipped at 0), where ``q`` is the probability
    the network gave to the bit value of the re-encoded mark. 1.0 means every bit certain and
    right; values near 0 mean the payload was recovered mainly by the error correction. 0.0 when
    nothing was found. bit_errors: raw bits the decoder read wrong (hard decisions).
    format: 2, or 1 for a legacy mark (never authenticated: anyone can forge one).
    fragile: read from the fragile mark of a small frame (`marking.fragile`), which any change
    of the values removes.
    unfitted_message: with `found` false, a message whose payload decoded and authenticated but
    whose mark does not cover the image it was read from as a mark written there would
    (`marking.image`'s fit test): a copy from another image, or an image much of which changed.
    Not a reading: a lead, never reported as the image's mark.
    """

    found: bool
    message: bytes | None
    confidence: float
    bit_errors: int | None
    format: int = FORMAT
    fragile: bool = False
    unfitted_message: bytes | None = None

    @property
    def authenticated(self) -> bool:
        return self.found and self.format >= 2

    @classmethod
    def not_found(cls, unfitted_message: bytes | None = None) -> "DecodedPayload":
        return cls(found=False, message=None, confidence=0.0, bit_errors=None, unfitted_message=unfitted_message)


@dataclass(frozen=True)
class LengthClass:
    """Messages of `shortest`..`capacity` bytes, with their own polar code."""

    shortest: int
    capacity: int
    length_bits: int  # the length within the class, lengths shortest..capacity
    code: PolarCode

    @property
    def plaintext_bits(self) -> int:
        return self.length_bits + 8 * self.capacity


def length_classes(n_bits: int) -> tuple[LengthClass, ...]:
    """Up to four classes splitting 0..capacity evenly (256 bits: 0-4, 5-8, 9-12, 13-16 bytes)."""
    capacity = min(int(_LARGEST_RATE * n_bits) // 8 - TAG_BITS // 8 - 1, _LARGEST_MESSAGE)
    if capacity < 1:
        smallest = math.ceil(8 * (TAG_BITS // 8 + 2) / _LARGEST_RATE)
        raise BadInputError(f"a payload of {n_bits} raw bits cannot hold an authenticated message "
                            f"(a {TAG_BITS}-bit tag, a length and at least one byte need {smallest} raw bits)")
    tops = sorted({math.ceil(capacity * step / _CLASSES) for step in range(1, _CLASSES + 1)})
    n_code = 1 << max(1, (n_bits - 1).bit_length())
    punctured = _punctured_positions(n_code, n_code - n_bits)
    classes = []
    shortest = 0  # an empty message says only "marked here"
    for top in tops:
        length_bits = max(0, (top - shortest).bit_length())
        k = TAG_BITS + length_bits + 8 * top
        classes.append(LengthClass(shortest, top, length_bits, PolarCode(n_code, k, punctured=punctured)))
        shortest = top + 1
    return tuple(classes)


def _punctured_positions(n_code: int, count: int) -> tuple[int, ...]:
    """Code bits not sent when the model carries fewer bits than the code's power-of-two length:
    the first `count` in bit-reversed order (quasi-uniform puncturing), which the code's
    construction then treats as erased."""
    width = max(1, (n_code - 1).bit_length())
    reversed_order = sorted(range(n_code), key=lambda i: int(format(i, f"0{width}b")[::-1], 2))
    return tuple(sorted(reversed_order[:count]))


def field_seed(key: str | bytes | None) -> bytes:
    """The seed of the key field a keyed model multiplies its mark by: HMAC-SHA256 of the key's
    material under its own label, so the field reveals nothing of the tag, encryption or pad keys."""
    return _field_seed(key_material(key))


def _field_seed(material: bytes) -> bytes:
    return hmac.new(material, b"wm-key-field-v1", hashlib.sha256).digest()


class PayloadCodec:
    """Turns messages into a model's raw bits and back (format 2; see the module docstring).

    ``n_bits``: raw bits the model carries (at least about 100). ``key``: text or bytes; None uses
    the public ``DEFAULT_KEY`` (no secrecy, no authenticity).
    """

    format = FORMAT

    def __init__(self, n_bits: int, key: str | bytes | None = None):
        if not isinstance(n_bits, (int, np.integer)) or n_bits <= 0:
            raise BadInputError(f"payload size must be a positive number of bits, got {n_bits}")
        self.n_bits = int(n_bits)
        self.classes = length_classes(self.n_bits)
        self.capacity_bytes = self.classes[-1].capacity
        secret = key_material(key)  # a passphrase stretched (keys.py)
        self._tag_key = hmac.new(secret, _LABEL + b" tag", hashlib.sha256).digest()
        self._encryption_key = hmac.new(secret, _LABEL + b" encryption", hashlib.sha256).digest()
        pad_key = hmac.new(secret, _LABEL + b" pad", hashlib.sha256).digest()
        self._pad = _bits(_stream(pad_key, b"", (self.n_bits + 7) // 8), self.n_bits)
        #: The seed of a keyed model's key field (model/key_field.py), derived under its own label.
        self.field_seed = _field_seed(secret)
        code = self.classes[0].code
        self._sent = np.setdiff1d(np.arange(code.n), np.asarray(code.punctured, dtype=np.int64))

    def __repr__(self) -> str:
        return (f"PayloadCodec(n_bits={self.n_bits}, format={FORMAT}, capacity_bytes={self.capacity_bytes}, "
                f"classes={[c.capacity for c in self.classes]})")

    @property
    def max_decode_attempts(self) -> int:
        """Candidate frames one decode may test against the tag."""
        return len(self.classes) * LIST_SIZE

    @property
    def false_positive_bound(self) -> float:
        """Upper bound on P(found=True) for one decode of an input that holds no payload for this
        key: a union bound over the candidates, each passing the 40-bit tag with 2^-40."""
        return self.max_decode_attempts * 2.0**-TAG_BITS

    def describe(self) -> dict:
        """The layout, for model cards and `wm models`."""
        return {"format": FORMAT, "raw_bits": self.n_bits, "capacity_bytes": self.capacity_bytes,
                "layout": f"SIV frame ({TAG_BITS}-bit HMAC-SHA256 tag + length + message, encrypted under the tag), "
                          "polar code per length class, keyed pad",
                "length_classes": [[c.shortest, c.capacity] for c in self.classes],
                "code_rates": [round(c.code.k / self.n_bits, 3) for c in self.classes]}

    # -- encoding --------------------------------------------------------------------------

    def _class_for(self, length: int) -> LengthClass:
        return next(c for c in self.classes if length <= c.capacity)

    def _tag_header(self, cls: LengthClass, plaintext_bits: int) -> bytes:
        """What the tag's HMAC covers before the plaintext. The bit count goes in too, so that
        plaintexts of different bit lengths never collide."""
        return (_LABEL + self.n_bits.to_bytes(4, "big") + cls.capacity.to_bytes(2, "big")
                + plaintext_bits.to_bytes(2, "big"))

    def _tag(self, cls: LengthClass, plaintext: np.ndarray) -> np.ndarray:
        digest = hmac.new(self._tag_key, self._tag_header(cls, len(plaintext)) + _bytes(plaintext),
                          hashlib.sha256).digest()
        return _bits(digest, TAG_BITS)

    def _keystream(self, tag: np.ndarray, count: int) -> np.ndarray:
        return _bits(_stream(self._encryption_key, _bytes(tag), (count + 7) // 8), count)

    def _frame(self, message: bytes) -> tuple[LengthClass, np.ndarray]:
        cls = self._class_for(len(message))
        length = np.array([(len(message) - cls.shortest) >> i & 1 for i in reversed(range(cls.length_bits))],
                          dtype=np.uint8)
        body = _bits(message + bytes(cls.capacity - len(message)), 8 * cls.capacity)
        plaintext = np.concatenate([length, body])
        tag = self._tag(cls, plaintext)
        return cls, np.concatenate([tag, plaintext ^ self._keystream(tag, len(plaintext))])

    def _checked(self, message: bytes) -> bytes:
        if isinstance(message, str):
            raise TypeError("encode() takes bytes; encode text with message.encode('utf-8')")
        message = bytes(message)
        if len(message) > self.capacity_bytes:
            raise MessageTooLongError(
                f"message is {len(message)} bytes; this model carries at most {self.capacity_bytes} bytes"
            )
        return message

    def encode(self, message: bytes) -> np.ndarray:
        """The ``(n_bits,)`` uint8 array of 0/1 that the network should embed for ``message``."""
        cls, frame = self._frame(self._checked(message))
        return cls.code.encode(frame)[self._sent] ^ self._pad

    # -- uncoded frames ---------------------------------------------------------------------

    def frame_bits(self, message: bytes) -> np.ndarray:
        """The (k,) 0/1 frame of `message` before the polar code (its class's tag, length and
        encrypted body, no pad): for a channel that loses no bit (`marking.fragile` where a frame
        has too few pixels for the coded bits), where the code would only take room."""
        return self._frame(self._checked(message))[1]

    def frame_capacity_bytes(self, n_bits: int) -> int:
        """The longest message whose `frame_bits` fit in `n_bits` (−1: not even an empty one)."""
        fitting = [cls.capacity for cls in self.classes if cls.code.k <= n_bits]
        return fitting[-1] if fitting else -1

    def read_frame_bits(self, bits: np.ndarray) -> DecodedPayload:
        """The message whose `frame_bits` are `bits` (0/1, read exactly): one tag test, of the
        length class whose frame has that many bits (not found where none has)."""
        bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
        for cls in self.classes:
            if cls.code.k == bits.size:
                message = self._unframe(cls, bits)
                if message is not None:
                    return DecodedPayload(found=True, message=message, confidence=1.0, bit_errors=0)
        return DecodedPayload.not_found()

    # -- decoding --------------------------------------------------------------------------

    def _unframe(self, cls: LengthClass, frame: np.ndarray) -> bytes | None:
        """The message if `frame` is a valid frame of class `cls` under this key, else None."""
        tag, ciphertext = frame[:TAG_BITS], frame[TAG_BITS:]
        plaintext = ciphertext ^ self._keystream(tag, len(ciphertext))
        if not hmac.compare_digest(_bytes(self._tag(cls, plaintext)), _bytes(tag)):
            return None
        length = cls.shortest + int("".join(map(str, plaintext[: cls.length_bits])) or "0", 2)
        body = _bytes(plaintext[cls.length_bits :])
        if length > cls.capacity or any(body[length:]):
            return None
        return body[:length]

    def decode(self, bit_probabilities: np.ndarray) -> DecodedPayload:
        """Recover the message from the network's per-bit P(bit == 1) (hard 0/1 bits also work).

        Each length class is list-decoded on the log-likelihood ratios, shortest class first; the
        first candidate whose tag verifies is the message. NaN counts as 0.5; values outside
        [0, 1] raise ValueError. Returns ``found=False`` unless a candidate verifies.
        """
        return self.decode_either_polarity(bit_probabilities, inverted_too=False)[0]

    def decode_either_polarity(self, bit_probabilities: np.ndarray,
                               inverted_too: bool = True) -> tuple[DecodedPayload, DecodedPayload]:
        """`decode` of the probabilities, and, when that finds nothing and `inverted_too`, of
        their complement (1 − p: an image exported in display polarity), for the cost of one
        list decoding. Negated log-likelihood ratios decode to the complements of the same
        codewords with the same metrics (the all-ones word is a codeword of every class: the
        last u bit is never frozen), so the inverted candidates are these with that bit flipped;
        each is still checked against the tag, and each polarity still tries at most
        `max_decode_attempts` candidates. The second answer is not-found when it was not asked."""
        p = np.asarray(bit_probabilities, dtype=np.float64).reshape(-1)
        if p.size != self.n_bits:
            raise ValueError(f"expected {self.n_bits} bit probabilities, got {p.size}")
        p = np.nan_to_num(p, nan=0.5)  # a NaN says nothing about its bit
        if p.min() < -1e-6 or p.max() > 1.0 + 1e-6:
            raise ValueError("bit probabilities must lie in [0, 1] (were logits passed?)")
        p = np.clip(p, 0.0, 1.0)
        # log P(0)/P(1) of each raw bit (a certain bit: ±20.7); the pad flips a bit's meaning,
        # not its certainty.
        sure = np.clip(p, 1e-9, 1.0 - 1e-9)
        llr = np.log1p(-sure) - np.log(sure)
        llr = np.where(self._pad == 1, -llr, llr)
        code_llr = np.zeros(self.classes[0].code.n)  # punctured bits: no information
        code_llr[self._sent] = llr
        lists = []
        keystreams: dict[tuple[bytes, int], bytes] = {}  # shared by the two polarities
        for cls in self.classes:
            candidates, _ = cls.code.decode_list(code_llr, LIST_SIZE)
            lists.append(candidates)
            message = self._first_message(cls, candidates, keystreams)
            if message is not None:
                return self._result(message, p), DecodedPayload.not_found()
        if inverted_too:
            for cls, candidates in zip(self.classes, lists):
                if cls.code.info[-1] != cls.code.n - 1:  # never so for the codes wm builds; decode anew
                    candidates, _ = cls.code.decode_list(-code_llr, LIST_SIZE)
                else:
                    candidates = candidates.copy()
                    candidates[:, -1] ^= 1
                message = self._first_message(cls, candidates, keystreams)
                if message is not None:
                    return DecodedPayload.not_found(), self._result(message, 1.0 - p)
        return DecodedPayload.not_found(), DecodedPayload.not_found()

    def _first_message(self, cls: LengthClass, frames: np.ndarray,
                       keystreams: dict[tuple[bytes, int], bytes]) -> bytes | None:
        """`_unframe` of each of `frames` (rows) in turn: the first message found, or None.

        Almost every candidate fails the tag, so that check comes first, on whole bytes: all the
        candidates packed at once (the tag is whole bytes, so the ciphertext starts on a byte),
        each keystream computed once per tag (`keystreams`, kept by the caller: the other
        polarity's candidates have the same tags), and each tag's HMAC continued from a copy of
        one that has taken in the class's header. A candidate that passes goes through `_unframe`
        itself, so what is accepted is exactly what it accepts."""
        count = cls.code.k - TAG_BITS  # ciphertext bits
        size = (count + 7) // 8
        packed = np.packbits(frames, axis=1)
        tag_bytes = packed[:, :_TAG_BYTES].tobytes()
        tags = [tag_bytes[start:start + _TAG_BYTES] for start in range(0, len(tag_bytes), _TAG_BYTES)]
        streams = []
        for tag in tags:
            stream = keystreams.get((tag, count))
            if stream is None:
                stream = keystreams[tag, count] = _stream(self._encryption_key, tag, size)
            streams.append(stream)
        # packbits pads the last byte with 0 bits, as `_bytes` does the plaintext's: the
        # keystream's bits there are masked off.
        mask = np.full(size, 0xFF, dtype=np.uint8)
        mask[-1] = (0xFF << (-count % 8)) & 0xFF
        keystream = np.frombuffer(b"".join(streams), dtype=np.uint8).reshape(len(tags), size)
        plaintexts = ((packed[:, _TAG_BYTES:] ^ keystream) & mask).tobytes()
        header = hmac.new(self._tag_key, self._tag_header(cls, count), hashlib.sha256)
        for row, tag in enumerate(tags):
            mac = header.copy()
            mac.update(plaintexts[row * size:(row + 1) * size])
            if hmac.compare_digest(mac.digest()[:_TAG_BYTES], tag):
                message = self._unframe(cls, frames[row])
                if message is not None:
                    return message
        return None

    def _result(self, message: bytes, p: np.ndarray) -> DecodedPayload:
        true_bits = self.encode(message)
        prob_of_true_bit = np.where(true_bits == 1, p, 1.0 - p)
        confidence = float(np.clip(np.mean(2.0 * prob_of_true_bit - 1.0), 0.0, 1.0))
        errors = int(np.count_nonzero(true_bits != (p > 0.5)))
        return DecodedPayload(found=True, message=message, confidence=confidence, bit_errors=errors)


# ----------------------------------------------------------------------------- format 1 ----

_V1_KEYSTREAM_DOMAIN = b"wm-keystream-v1"
_V1_LENGTH_BYTES = 1
_V1_CRC_BYTES = 4


def default_parity_bytes(n_bits: int) -> int:
    """Format 1's Reed-Solomon parity for ``n_bits``: about 30 % of the bytes, rounded to even."""
    n_bytes = n_bits // 8
    parity = 2 * int(0.15 * n_bytes + 0.5)
    room = n_bytes - _V1_LENGTH_BYTES - _V1_CRC_BYTES
    return max(min(parity, room - room % 2), 0)


class LegacyPayloadCodec:
    """Format 1, as wm wrote it before payload v2: read-only, on request, never authenticated.

        frame = [length][message][zero padding][CRC-32], Reed-Solomon with ``parity_bytes``,
        raw bits = codeword XOR keystream(key)

    The keystream depends on the key alone and CRC-32 and Reed-Solomon are linear, so anyone who
    knows one marked image's message can forge any other message under the same key (and XOR-ing
    two encodings under any key forges without knowing one): a mark in this format proves nothing.
    """

    format = 1

    def __init__(self, n_bits: int, key: str | bytes | None = None, parity_bytes: int | None = None):
        if n_bits <= 0 or n_bits % 8 or n_bits > 8 * 255:
            raise BadInputError(f"format 1 needs a multiple of 8 bits up to 2040, got {n_bits}")
        self.n_bits = n_bits
        self.n_bytes = n_bits // 8
        self.parity_bytes = default_parity_bytes(n_bits) if parity_bytes is None else int(parity_bytes)
        capacity = self.n_bytes - self.parity_bytes - _V1_LENGTH_BYTES - _V1_CRC_BYTES
        if self.parity_bytes < 0 or capacity < 0:
            raise BadInputError(f"{n_bits} bits cannot hold format 1's frame plus {self.parity_bytes} parity bytes")
        self.capacity_bytes = min(capacity, 255)
        self._frame_bytes = self.n_bytes - self.parity_bytes
        self._keystream = np.frombuffer(_stream(key_material(key), _V1_KEYSTREAM_DOMAIN, self.n_bytes), dtype=np.uint8)
        self._rs = reedsolo.RSCodec(self.parity_bytes) if self.parity_bytes > 0 else None

    def _erasure_counts(self) -> range:
        # With 2 t + e <= parity, erasure counts of the other parity add nothing.
        return range(self.parity_bytes % 2, self.parity_bytes + 1, 2)

    @property
    def false_positive_bound(self) -> float:
        return len(self._erasure_counts()) * 2.0**-32

    def _frame(self, message: bytes) -> bytes:
        padding = bytes(self._frame_bytes - _V1_LENGTH_BYTES - len(message) - _V1_CRC_BYTES)
        body = bytes([len(message)]) + message + padding
        return body + zlib.crc32(body).to_bytes(_V1_CRC_BYTES, "big")

    def _codeword(self, frame: bytes) -> np.ndarray:
        coded = bytes(self._rs.encode(frame)) if self._rs is not None else frame
        return np.frombuffer(coded, dtype=np.uint8)

    def encode(self, message: bytes) -> np.ndarray:
        message = bytes(message)
        if len(message) > self.capacity_bytes:
            raise MessageTooLongError(f"message is {len(message)} bytes; format 1 carries {self.capacity_bytes}")
        return np.unpackbits(self._codeword(self._frame(message)) ^ self._keystream)

    def _unframe(self, frame: bytes) -> bytes | None:
        body, crc = frame[:-_V1_CRC_BYTES], frame[-_V1_CRC_BYTES:]
        if zlib.crc32(body).to_bytes(_V1_CRC_BYTES, "big") != crc:
            return None
        length = body[0]
        if length > self.capacity_bytes or any(body[_V1_LENGTH_BYTES + length :]):
            return None
        return bytes(body[_V1_LENGTH_BYTES : _V1_LENGTH_BYTES + length])

    def _attempt(self, received: np.ndarray, erasures: list[int]) -> bytes | None:
        if self._rs is None:
            frame = received.tobytes()
        else:
            try:
                frame = bytes(self._rs.decode(bytearray(received.tobytes()), erase_pos=erasures or None)[0])
            except (reedsolo.ReedSolomonError, ZeroDivisionError, IndexError, ValueError):
                return None
        message = self._unframe(frame)
        if message is None:
            return None
        wrong = self._codeword(frame) != received
        wrong[erasures] = False
        return message if 2 * int(wrong.sum()) + len(erasures) <= self.parity_bytes else None

    def decode_either_polarity(self, bit_probabilities: np.ndarray,
                               inverted_too: bool = True) -> tuple[DecodedPayload, DecodedPayload]:
        """`PayloadCodec.decode_either_polarity` for format 1: the two decodes, one after the other."""
        as_stored = self.decode(bit_probabilities)
        if as_stored.found or not inverted_too:
            return as_stored, DecodedPayload.not_found()
        return as_stored, self.decode(1.0 - np.asarray(bit_probabilities, dtype=np.float64))

    def decode(self, bit_probabilities: np.ndarray) -> DecodedPayload:
        p = np.clip(np.nan_to_num(np.asarray(bit_probabilities, dtype=np.float64).reshape(-1), nan=0.5), 0, 1)
        if p.size != self.n_bits:
            raise ValueError(f"expected {self.n_bits} bit probabilities, got {p.size}")
        received = np.packbits((p > 0.5).astype(np.uint8)) ^ self._keystream
        certainty = np.abs(p - 0.5).reshape(self.n_bytes, 8).min(axis=1)
        order = np.argsort(certainty, kind="stable")
        attempts = self._erasure_counts() if certainty.min() < certainty.max() else [0]
        for count in attempts:
            message = self._attempt(received, sorted(order[:count].tolist()))
            if message is not None:
                true_bits = self.encode(message)
                agreement = np.where(true_bits == 1, p, 1.0 - p)
                return DecodedPayload(True, message, float(np.clip(np.mean(2 * agreement - 1), 0, 1)),
                                      int(np.count_nonzero(true_bits != (p > 0.5))), format=1)
        return DecodedPayload.not_found()


def bytes_to_text(message: bytes) -> str:
    """The message as text: UTF-8 when it is valid UTF-8 without control characters, otherwise
    lowercase hex (e.g. from --hex).

    Hex keeps binary payloads printable and copy-pasteable, and a payload of terminal escape
    sequences is shown, never obeyed; a caller that needs to tell the cases apart should try
    ``message.decode('utf-8')`` itself.
    """
    try:
        text = bytes(message).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(message).hex()
    return bytes(message).hex() if has_control_characters(text) else text


def has_control_characters(text: str) -> bool:
    """C0/C1 controls and other format characters a terminal may act on (Unicode category C*,
    but not the private-use and unassigned ones, which print as boxes)."""
    import unicodedata

    return any(unicodedata.category(char) in ("Cc", "Cf") for char in text)
