"""The fragile mark: small frames whose floor leaves the robust mark too little to read back.

A single 64² or 96² frame whose own data range is narrow (a low-count nuclear-medicine patch, an
8-bit ultrasound crop, a dim MR slice) gets a robust mark of under 1.5 stored units RMS at a 40 dB
floor, and the network cannot read that back through its host (README, "Where single small frames
fail"). The same payload (`payload.PayloadCodec`'s frame: tag, length, encrypted body) fits such
a frame many times over in the lowest bits of keyed blocks of its pixels (matrix embedding,
`_Layout`): a block whose bits are wrong has one pixel moved by one stored unit (v → v XOR 1).
The channel loses no bit (the mark is read exactly or not at all), so the frame goes without the
polar code (`PayloadCodec.frame_bits`: 75 bits for up to 4 bytes, 106 for 8, 138 for 12, 170 for
16; since stop 52): an 8-byte frame in blocks of 127 or 255 pixels moves about 14 to 16 pixels,
where stop 51's 256 coded bits in blocks of 63 moved about 42 (a mean squared error of 0.004
stored units² on a 64² frame against 0.01: 40 dB in a view whose span is about 6.3 stored units,
not 10), and a frame almost all background (an ultrasound crop almost all black, a sparse
low-count scan) holds a short message in as few as 75 pixels, one bit each. The coded bits are
still written where a 16-byte frame does not fit but they do (154 to 169 carriers, erasures read
through), and read where no frame is found (stop 51's marks).

What it holds against (README, "Security"): without the key nobody can read it or tell which
pixels carry it (the blocks and a pad over the bits are drawn from the key); it is bound to its
host (the pad is also drawn from the frame with every pixel's lowest bit left out, which the mark
never changes), so a mark's moves, or all the lowest bits, pasted onto another frame read as
nothing. What it does not hold against: any change of the values. A lossy export, a resize or
noise removes it, and so does anyone who moves half a percent of the pixels by one unit (2 to 5
dB more than the mark costs on held-out crops, where the robust mark's removal must cost 4 dB
more: issue 28; README, Security). Reports call it fragile; `embed` uses it only where the
robust mark does not read back.

Which pixels may carry it is a function of the values the mark never changes (`carriers`): a
pixel at one of its frame's two least or two greatest values, or one unit from them, carries
nothing, so the reader finds the same pixels in the marked frame as the writer did in the
original, without the header (a lossless copy that drops the Pixel Padding Value element reads
the same), and the guard's rules (the range's ends and the padding stay as they are,
`guard.guard_image`) move no bit; an instance whose padding lies amid its content, or whose
modality LUT makes the guard hold back any move, is not given it. The keyed choices come from
SHAKE-256, not a numpy generator, so a mark reads back on any machine and numpy. It is no
evidence of tampering (pixels outside its blocks can change): that is the restoration record's
job (`wm verify`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ..io.medical_image import MedicalImage
from ..payload import DecodedPayload, PayloadCodec, length_classes

#: Frames this small or smaller, in pixels over the whole instance, may carry the fragile mark
#: (the instances whose robust mark is fitted to its host: `image.FITTED_PIXELS_AT_MOST`).
FRAGILE_PIXELS_AT_MOST = 256 * 256
#: The largest blocks of the matrix embedding: 2^k − 1 pixels carry k bits.
_LARGEST_BLOCK_BITS = 8
#: At least this share of the raw bits must have a pixel: fewer and the frame is too flat to carry
#: the mark (the bits without one are erased, which the code corrects up to a point).
_LEAST_SHARE_CARRIED = 0.6
#: How sure a read bit is: every bit is read exactly or not at all (the mark is fragile), and the
#: list decoder needs a finite log-likelihood ratio to weigh the bits with.
_BIT_CERTAINTY = 0.98


def _keyed_stream(codec: PayloadCodec, purpose: bytes, data: bytes, size: int) -> bytes:
    """`size` bytes of SHAKE-256 under the key's field seed: the same on every machine and numpy
    (a numpy generator's stream is promised on one build only; a mark must read back for years)."""
    return hashlib.shake_256(b"wm fragile mark: " + purpose + b"\0" + codec.field_seed + data).digest(size)


def _keyed_order(codec: PayloadCodec, purpose: bytes, size: int) -> np.ndarray:
    """0..size − 1 in a keyed order: sorted by a keyed 64-bit value each (ties, at 2^-64, by index)."""
    values = np.frombuffer(_keyed_stream(codec, purpose, b"", 8 * size), dtype="<u8")
    return np.argsort(values, kind="stable")


def carriers(pixels: np.ndarray) -> np.ndarray:
    """(frames, rows, cols) bool: the pixels that may carry a bit, decided by values alone and the
    same in the original and in any frame the fragile mark wrote from it (module docstring): none
    at a frame's two least or two greatest values, nor one unit from them, nor one that a move
    would put there. The second least and greatest are the content's ends when the least or
    greatest is padding (Pixel Padding Value below or above every content value, as in CT), which
    the guard keeps too; so the reader needs no header, and a lossless copy that drops or adds the
    padding element reads the same."""
    values = pixels.astype(np.int64)
    usable = np.ones(values.shape, dtype=bool)
    for index, frame in enumerate(values):
        distinct = np.unique(frame)
        ends = np.concatenate([distinct[:2], distinct[-2:]])
        kept = np.concatenate([ends - 1, ends, ends + 1])
        # Neither a pixel's value nor the one a move gives it (v XOR 1) is kept: a carrier stays a
        # carrier when it moves, and no move reaches an end.
        usable[index] = ~np.isin(frame, kept) & ~np.isin(frame ^ 1, kept)
    return usable


def _padding_fits(pixels: np.ndarray, usable: np.ndarray, padding: tuple[int, int] | None) -> bool:
    """Whether the frames' Pixel Padding values are all among the values `carriers` keeps
    (`usable`: its answer; a padding value amid the content would be a carrier to a reader without
    the header)."""
    if padding is None:
        return True
    values = pixels.astype(np.int64)
    low, high = padding
    return not np.any(usable & (values >= low - 1) & (values <= high + 1))


@dataclass(frozen=True)
class _Layout:
    """Where the bits go: block b is the pixels `blocks[b]` (indices into the flattened instance)
    and carries the raw bits `bits[b]` (−1: a slot past the last bit, written as 0). Matrix
    embedding (Crandall 1998; Westfeld's F5): the k lowest bits' syndrome of a block of 2^k − 1
    pixels, the XOR of the (1-based) places of its odd pixels, is its k bits, and any syndrome is
    reached by moving at most one pixel. Blocks as large as the frame's carriers allow: 256 bits in
    blocks of 63 pixels move about 42 pixels, where one pixel a bit would move about 128."""

    blocks: np.ndarray  # (B, 2^k − 1)
    bits: np.ndarray  # (B, k)


def _carrier_order(codec: PayloadCodec, usable: np.ndarray) -> np.ndarray:
    """The `usable` pixels (indices into the flattened instance) in a keyed order."""
    order = _keyed_order(codec, b"pixels " + repr(usable.shape).encode(), usable.size)
    return order[usable.reshape(-1)[order]]


def _blocks_for(pixels: np.ndarray, slots: np.ndarray) -> _Layout | None:
    """Bits `slots` (raw-bit indices) in the largest blocks the `pixels` (keyed order) allow."""
    for k in range(_LARGEST_BLOCK_BITS, 0, -1):
        blocks = -(-slots.size // k)
        if blocks * (2**k - 1) <= pixels.size:
            padded = np.full(blocks * k, -1)
            padded[: slots.size] = slots
            return _Layout(pixels[: blocks * (2**k - 1)].reshape(blocks, 2**k - 1), padded.reshape(blocks, k))
    return None


def _frame_layout(pixels: np.ndarray, n_bits: int) -> _Layout | None:
    """The layout of an uncoded frame of `n_bits` (`PayloadCodec.frame_bits`) over the carriers
    `pixels` (keyed order); None where they are fewer than its bits."""
    return _blocks_for(pixels, np.arange(n_bits))


def _coded_layout(codec: PayloadCodec, pixels: np.ndarray) -> _Layout | None:
    """The layout of `codec`'s coded raw bits (keyed order) over the carriers `pixels`; with
    fewer pixels than bits, one bit each and the rest erased (the code's redundancy reads through)
    down to 60 % of them; None with fewer."""
    bit_order = _keyed_order(codec, b"bits", codec.n_bits)
    layout = _blocks_for(pixels, bit_order)
    if layout is None and pixels.size >= _least_coded_carriers(codec.n_bits):
        layout = _Layout(pixels[:, None], bit_order[: pixels.size, None])
    return layout


def _least_coded_carriers(n_bits: int) -> int:
    """The fewest carriers the coded bits are written in (60 % of them; the rest erased)."""
    return math.ceil(_LEAST_SHARE_CARRIED * n_bits)


def _room_bytes(n_bits: int, count: int) -> int:
    """The longest message `count` carriers hold for a model of `n_bits` raw bits (−1: none):
    the longest uncoded frame that fits (`_frame_layout`: one bit a carrier at least), or every
    message where the coded bits fit (`_coded_layout`)."""
    classes = length_classes(n_bits)
    if count >= _least_coded_carriers(n_bits):
        return classes[-1].capacity
    return max((cls.capacity for cls in classes if cls.code.k <= count), default=-1)


def _syndromes(values: np.ndarray, layout: _Layout) -> np.ndarray:
    """(B,) each block's syndrome: the XOR of the 1-based places of its pixels with an odd value."""
    places = np.arange(1, layout.blocks.shape[1] + 1)
    return np.bitwise_xor.reduce(np.where(values[layout.blocks] & 1 == 1, places, 0), axis=1)


def _pad(codec: PayloadCodec, pixels: np.ndarray) -> np.ndarray:
    """n_bits keyed bits drawn from the instance without its pixels' lowest bits (which the mark
    never changes): a mark read on another host reads through another pad, as noise."""
    host = np.ascontiguousarray(pixels.astype(np.int64) >> 1, dtype="<i8")
    stream = _keyed_stream(codec, b"pad", repr(pixels.shape).encode() + host.tobytes(), (codec.n_bits + 7) // 8)
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[: codec.n_bits]


def fits_fragile_mark(image: MedicalImage) -> bool:
    """Whether `image` is small enough to be given the fragile mark (integer values only)."""
    return (image.pixels.size <= FRAGILE_PIXELS_AT_MOST and image.pixels.dtype.kind in "iu"
            and image.pixels.ndim == 3)


def capacity_by_carriers(n_bits: int) -> dict[int, int]:
    """{carriers: bytes}: how long a message the fragile mark of a model of `n_bits` raw bits
    holds from that many carrier pixels up (`_room_bytes` where it grows); for `wm models`."""
    counts = sorted({cls.code.k for cls in length_classes(n_bits)} | {_least_coded_carriers(n_bits)})
    table: dict[int, int] = {}
    for count in counts:
        room = _room_bytes(n_bits, count)
        if room > max(table.values(), default=-1):
            table[count] = room
    return table


def fragile_capacity_bytes(codec: PayloadCodec, image: MedicalImage) -> int:
    """The longest message the fragile mark has room for in `image`, the floor aside (−1: none:
    too large, too flat, or padding amid the content); for embed's refusal to say."""
    pixels = _instance_carriers(codec, image) if fits_fragile_mark(image) else None
    return -1 if pixels is None else _room_bytes(codec.n_bits, pixels.size)


def _instance_carriers(codec: PayloadCodec, image: MedicalImage) -> np.ndarray | None:
    """The instance's carriers in keyed order (`_carrier_order`), or None where Pixel Padding
    values lie amid its content (see `carriers`)."""
    usable = carriers(image.pixels)
    return _carrier_order(codec, usable) if _padding_fits(image.pixels, usable, image.display.padding) else None


def fragile_residual(codec: PayloadCodec, image: MedicalImage, message: bytes) -> np.ndarray | None:
    """(frames, rows, cols) of 0 and ±1: what the fragile mark of `message` moves each pixel by
    (for the guard to place: `guard.guard_image`), or None where the instance is too flat, or has
    Pixel Padding values amid its content (see `carriers`). The uncoded frame where it fits (its
    fewer bits need fewer moves: about 16 for an 8-byte message in blocks of 127 pixels, where the
    coded 256 bits need about 42), else the coded bits (stop 51's layout: where 154 to 169
    carriers hold a 16-byte message's coded bits, with erasures, and not its 170-bit frame)."""
    pixels = _instance_carriers(codec, image)
    written = None if pixels is None else _written_bits(codec, pixels, message)
    if written is None:
        return None
    raw, layout = written
    return _moves(image.pixels, layout, raw ^ _pad(codec, image.pixels)[: raw.size])


def _written_bits(codec: PayloadCodec, pixels: np.ndarray, message: bytes) -> tuple[np.ndarray, _Layout] | None:
    """(raw bits before the pad, layout): what the mark of `message` writes over the carriers
    `pixels` (keyed order): its uncoded frame where it fits, else its coded bits; None where
    neither fits."""
    raw = codec.frame_bits(message)
    layout = _frame_layout(pixels, raw.size)
    if layout is None:
        raw, layout = codec.encode(message), _coded_layout(codec, pixels)
    return None if layout is None else (raw, layout)


def _moves(pixels: np.ndarray, layout: _Layout, bits: np.ndarray) -> np.ndarray:
    """(frames, rows, cols) of 0 and ±1: the moves that give `pixels`' blocks the syndromes
    `bits` (already padded), at most one a block."""
    values = pixels.astype(np.int64).reshape(-1)
    wanted = np.append(bits, 0)[layout.bits]  # slot −1: the 0
    targets = (wanted.astype(np.int64) << np.arange(layout.bits.shape[1])).sum(axis=1)
    place = _syndromes(values, layout) ^ targets  # the 1-based place to move in each block, 0: none
    moved = layout.blocks[place > 0, place[place > 0] - 1]
    residual = np.zeros(values.shape)
    residual[moved] = (values[moved] ^ 1) - values[moved]
    return residual.reshape(pixels.shape)


def _read_bits(values: np.ndarray, layout: _Layout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(bits, carried): the `size` raw bits the blocks of `layout` hold in `values` (flattened),
    and which of them have a pixel."""
    read = (_syndromes(values, layout)[:, None] >> np.arange(layout.bits.shape[1])) & 1
    bits, carried = np.zeros(size, dtype=np.uint8), np.zeros(size, dtype=bool)
    slots = layout.bits >= 0
    bits[layout.bits[slots]] = read[slots]
    carried[layout.bits[slots]] = True
    return bits, carried


def fragile_bit_agreement(codec: PayloadCodec, pixels: np.ndarray, message: bytes) -> float:
    """The share of the fragile mark's raw bits of `message` that `pixels` (stored values, as
    `read_fragile` takes them) hold where the writer would put them: 1.0 on a marked copy, about
    0.5 on anything else. The uncoded frame where it fits the carriers, else the coded bits (a bit
    without a pixel counts as a coin's 0.5); 0.5 where no layout fits or the values are not whole
    numbers (a lossy export: nothing of the mark is left). For `wm evaluate`'s bit accuracy of
    the frames given the fragile mark, whose robust bits were never meant to read back."""
    pixels = _stored_instance(pixels)
    if pixels is None:
        return 0.5
    written = _written_bits(codec, _carrier_order(codec, carriers(pixels)), message)
    if written is None:
        return 0.5
    raw, layout = written
    bits, carried = _read_bits(pixels.reshape(-1), layout, raw.size)
    agree = (bits ^ _pad(codec, pixels)[: raw.size]) == raw
    return float(np.where(carried, agree, 0.5).mean())


def _stored_instance(pixels) -> np.ndarray | None:
    """`pixels` as int64 where they may hold a fragile mark: an instance (frames, rows, cols) of
    at most `FRAGILE_PIXELS_AT_MOST` whole numbers, as stored values are (a lossy export's, or
    rescaled values, are not: they hold none); else None."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.size > FRAGILE_PIXELS_AT_MOST:
        return None
    if pixels.dtype.kind not in "iu" and not (np.all(np.isfinite(pixels)) and np.array_equal(pixels, np.rint(pixels))):
        return None
    return pixels.astype(np.int64)


def read_fragile(codec: PayloadCodec, pixels: np.ndarray) -> DecodedPayload:
    """The fragile mark's payload in stored values `pixels` (frames, rows, cols), or not found.
    Values that are not whole numbers (a lossy export, rescaled) hold none."""
    pixels = _stored_instance(pixels)
    if pixels is None:
        return DecodedPayload.not_found()
    order, values, pad = _carrier_order(codec, carriers(pixels)), pixels.reshape(-1), _pad(codec, pixels)
    # The uncoded frame of each length class in turn (one tag test each: `read_frame_bits`).
    for size in sorted({cls.code.k for cls in codec.classes}):
        layout = _frame_layout(order, size)
        if layout is None:
            break
        decoded = codec.read_frame_bits(_read_bits(values, layout, size)[0] ^ pad[:size])
        if decoded.found:
            decoded.fragile = True
            return decoded
    # The coded bits (stop 51's layout, and where a 16-byte frame does not fit).
    layout = _coded_layout(codec, order)
    if layout is None:
        return DecodedPayload.not_found()
    bits, carried = _read_bits(values, layout, codec.n_bits)
    probabilities = np.where(bits ^ pad == 1, _BIT_CERTAINTY, 1.0 - _BIT_CERTAINTY)
    probabilities[~carried] = 0.5  # a bit without a pixel is erased
    decoded = codec.decode_either_polarity(probabilities, inverted_too=False)[0]
    if decoded.found:
        decoded.fragile = True
    return decoded
