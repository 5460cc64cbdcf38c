"""The restoration record: what `wm embed` keeps so that the original can be had back bit-exactly,
and what `wm verify` checks the pixels against.

A mark changes each stored value by a few units, so the exact difference (original − marked)
compresses to a small fraction of the pixel data. The record holds

- that difference, in the smallest integer type that holds it (or as bytes with the few wider
  values listed apart), compressed losslessly (xz);
- SHA-256 of the original stored values and of the marked ones (``pixel_sha256``: the same
  digest whatever file format or transfer syntax holds them), their shape and type;
- keyed per-block tags of the marked stored values: HMAC-SHA256 of each BLOCK × BLOCK tile
  (with its frame and position), cut to 64 bits. Recomputing them says which blocks changed
  since marking; a legitimate re-write that keeps the stored values (another transfer syntax,
  lossless compression) changes none, so a false alarm is impossible by construction, and a
  change goes unnoticed with probability 2⁻⁶⁴ per block;
- for DICOM, the original values of every element the embed changed (SOP Instance UID among
  them) and the names of those it added, as a small Explicit VR Little Endian dataset;
- the *binding* (integrity.binding): a digest of everything in the marked file, as written, that
  changes what a reader sees or whose image it is — presentation and identity — item by item, so
  that `wm verify` names each change. Records written before it have none: verify then says the
  presentation and identity are not bound, and never "intact".

Sealing: AES-256-GCM under a key derived from the user's key (`keys.key_material`: a passphrase
is stretched by scrypt first, since anyone holding a marked file can test guesses against its
record) by HKDF-SHA256 with a random 16-byte salt per record (so no two records share a key
stream, and the block-tag key differs from the encryption key by its HKDF label). The header — format name, version, salt — is the
associated data, so nothing in the record can be changed or swapped without the tag check
failing. A wrong key and a forged or damaged record are the same answer: not authentic.
With the public default key (no `--key`) the record is readable and forgeable by anyone: it
still restores and still detects accidental change, but proves nothing against a deliberate one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import lzma
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError, CheckFailedError
from ..hashing import pixel_sha256
from ..keys import key_material
from .binding import pack as pack_binding
from .binding import unpack as unpack_binding
from .compression import decompressed, decompression_errors

MAGIC = b"WMRR"  # wm restoration record
VERSION = 1
BLOCK = 32  # side of a tamper-localisation block, in pixels
TAG_BYTES = 8
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER = struct.Struct(">4sB16s12sI")  # magic, version, salt, nonce, ciphertext length
_ENCRYPTION_LABEL = b"wm restoration record v1: encryption"
_BLOCK_TAG_LABEL = b"wm restoration record v1: block tags"


class RecordNotAuthenticError(CheckFailedError):
    """The record was not sealed with this key, or it was changed after sealing (exit 1)."""


@dataclass(frozen=True)
class RestorationRecord:
    """The opened record (see the module docstring)."""

    shape: tuple[int, int, int]  # (frames, rows, cols)
    dtype: str  # numpy dtype of the stored values, e.g. '<u2'
    original_pixels_sha256: str
    marked_pixels_sha256: str
    difference: np.ndarray = field(repr=False)  # original − marked, int8/16/32, shape `shape`
    block_tags: bytes = field(repr=False)  # TAG_BYTES per block, frames × block rows × block columns
    original_elements: bytes = field(default=b"", repr=False)  # DICOM only: Explicit VR LE dataset
    added_elements: tuple[str, ...] = ()  # DICOM only: keywords the embed added
    original_sop_instance_uid: str | None = None
    block_size: int = BLOCK
    difference_codec: str = "xz"
    creator: str = ""
    # DICOM with BitsStored < BitsAllocated whose unused high bits were not all zero (overlays):
    # those bits of every original word (word >> BitsStored), so restore gives the very words back.
    high_bits: np.ndarray | None = field(default=None, repr=False)
    # SHA-256 of the certificate the marked instance was signed with (--sign), if it was: a
    # signature removed or replaced by another signer's is then seen.
    signer_sha256: str | None = None
    # DICOM: how the stored values are read (see containers.pixel_interpretation), at marking.
    interpretation: dict = field(default_factory=dict)
    # The presentation and identity of the marked file as written (integrity.binding); None in a
    # record written before wm bound them.
    binding: dict | None = field(default=None, repr=False)

    def original_pixels(self, marked: np.ndarray) -> np.ndarray:
        """The original stored values from the marked ones (exact integer arithmetic)."""
        if tuple(marked.shape) != self.shape:
            raise CheckFailedError(f"the image is {_shape_text(marked.shape)}, the record was made for "
                                   f"{_shape_text(self.shape)}: it was cropped or resized since marking")
        restored = marked.astype(np.int64) + self.difference.astype(np.int64)
        return restored.astype(np.dtype(self.dtype).newbyteorder("="))


def _shape_text(shape) -> str:
    frames, rows, cols = shape
    return f"{frames} frame(s) of {rows}x{cols}"


def _unpacked_binding(data: bytes) -> dict:
    """The sealed binding; a record that authenticates but holds an unreadable one is damaged."""
    try:
        binding = unpack_binding(data)
    except (*decompression_errors(), ValueError, UnicodeDecodeError):
        binding = None
    if not isinstance(binding, dict) or not isinstance(binding.get("items"), dict):
        raise RecordNotAuthenticError("the restoration record is damaged (its binding cannot be read)")
    return binding


# ---- keys ------------------------------------------------------------------------------------

def _derive(key_material: bytes, salt: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=label).derive(key_material)


# ---- block tags ------------------------------------------------------------------------------

def block_grid(shape: tuple[int, int, int], block_size: int = BLOCK) -> tuple[int, int, int]:
    """(frames, block rows, block columns); edge blocks are smaller where the side is not a multiple."""
    frames, rows, cols = shape
    return frames, -(-rows // block_size), -(-cols // block_size)


def block_tags(pixels: np.ndarray, tag_key: bytes, block_size: int = BLOCK) -> bytes:
    """HMAC-SHA256 of every block's little-endian stored values with its position, cut to TAG_BYTES."""
    little_endian = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    frames, block_rows, block_cols = block_grid(pixels.shape, block_size)
    tags = bytearray()
    for frame in range(frames):
        for block_row in range(block_rows):
            rows = slice(block_row * block_size, (block_row + 1) * block_size)
            for block_col in range(block_cols):
                tile = little_endian[frame, rows, block_col * block_size:(block_col + 1) * block_size]
                where = struct.pack(">IIIII", frame, block_row, block_col, *tile.shape)
                tags += hmac.new(tag_key, where + tile.tobytes(), hashlib.sha256).digest()[:TAG_BYTES]
    return bytes(tags)


def changed_blocks(record: RestorationRecord, pixels: np.ndarray, tag_key: bytes) -> list[tuple[int, int, int]]:
    """(frame, first row, first column) of every block whose values differ from the marked ones."""
    current = block_tags(pixels, tag_key, record.block_size)
    frames, block_rows, block_cols = block_grid(record.shape, record.block_size)
    changed = []
    for index in range(frames * block_rows * block_cols):
        span = slice(index * TAG_BYTES, (index + 1) * TAG_BYTES)
        if not hmac.compare_digest(current[span], record.block_tags[span]):
            frame, rest = divmod(index, block_rows * block_cols)
            block_row, block_col = divmod(rest, block_cols)
            changed.append((frame, block_row * record.block_size, block_col * record.block_size))
    return changed


# ---- the difference --------------------------------------------------------------------------

def _smallest_signed(difference: np.ndarray) -> np.ndarray:
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if difference.size == 0 or (difference.min() >= info.min and difference.max() <= info.max):
            return difference.astype(np.dtype(dtype).newbyteorder("<"))
    raise ValueError("a difference of stored values does not fit 32 bits")


# Where at most one value in this many needs more than a signed byte (most marks: a CT's 1.6 %,
# an MR's 0.01 %), the difference is kept as one byte per value plus a list of the others.
_ESCAPES_AT_MOST = 32
_ESCAPE = -128


def _compress_difference(difference: np.ndarray) -> tuple[str, bytes]:
    """zstd at level 6 ('zstd'). A wide difference whose values nearly all fit a byte goes as
    bytes and escapes ('zstd-escapes': each byte, −128 where the value did not fit; then the
    gaps between those positions, uint32; then their values, int32; one stream): half the data
    to compress, and 10-12 % smaller on a 512² CT and a 1024² MR.

    Why zstd (issue 30): records used to be xz at its default preset, which cost 40-100 ms of a
    512² embed's ~350 ms and 3.4 s of a 1955×1841 CR's. zstd 6 takes 1-5 % of that time (4 ms
    on the CT, 80 ms on the CR) for records 5-10 % larger (CT 168 KiB against 156 KiB, CR 3.2
    MiB against 3.0 MiB; `benchmarks/restoration_record.py`); xz's edge is its context-coded
    literals, which no faster general compressor matches on this near-random difference, and
    zstd's higher levels buy 1-2 % for 4-10 times the time. Records written as 'xz' and
    'xz-escapes' are still read."""
    import zstandard

    values = difference.ravel()
    wide = np.abs(values.astype(np.int64)) > 127
    compress = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress
    if difference.dtype.itemsize > 1 and np.count_nonzero(wide) * _ESCAPES_AT_MOST <= values.size:
        positions = np.flatnonzero(wide)
        packed = (np.where(wide, _ESCAPE, values).astype(np.int8).tobytes()
                  + np.diff(positions, prepend=0).astype("<u4").tobytes() + values[wide].astype("<i4").tobytes())
        return "zstd-escapes", compress(packed)
    return "zstd", compress(difference.tobytes())


_ZSTD_LEVEL = 6
_CODECS = ("zstd", "zstd-escapes", "xz", "xz-escapes")


def _decompress_difference(codec: str, data: bytes, dtype: str, shape) -> np.ndarray:
    """The array back; a record whose data do not decompress to exactly its declared shape is damaged
    (and is never decompressed beyond that size: a forged record cannot exhaust memory)."""
    count = int(np.prod(shape))
    if codec not in _CODECS:
        raise BadInputError(f"restoration record: unknown difference codec {codec!r}")
    compressor = codec.split("-")[0]
    if not codec.endswith("-escapes"):
        raw = _bounded(compressor, data, count * np.dtype(dtype).itemsize)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    raw = _bounded(compressor, data, count + 8 * (count // _ESCAPES_AT_MOST), exact=False)
    escapes, remainder = divmod(len(raw) - count, 8)
    if len(raw) < count or remainder:
        raise RecordNotAuthenticError("the restoration record is damaged (its data do not match its shape)")
    values = np.frombuffer(raw[:count], dtype=np.int8).astype(np.dtype(dtype))
    gaps = np.frombuffer(raw[count:count + 4 * escapes], dtype="<u4").astype(np.int64)
    positions = np.cumsum(gaps)
    if (np.count_nonzero(values == _ESCAPE) != escapes or np.any(gaps[1:] == 0)
            or (escapes and positions[-1] >= count) or np.any(values[positions] != _ESCAPE)):
        raise RecordNotAuthenticError("the restoration record is damaged (its escapes do not match its data)")
    values[positions] = np.frombuffer(raw[count + 4 * escapes:], dtype="<i4")
    return values.reshape(shape)


def _bounded(compressor: str, data: bytes, size: int, exact: bool = True) -> bytes:
    """`data` ('xz' or 'zstd') decompressed to at most `size` bytes (exactly `size` when
    `exact`), else the record is damaged."""
    try:
        raw = decompressed(compressor, data, size + 1)
    except decompression_errors():
        raw = b""
    if len(raw) > size or (exact and len(raw) != size):
        raise RecordNotAuthenticError("the restoration record is damaged (its data do not match its shape)")
    return raw


# ---- sealing ---------------------------------------------------------------------------------

def seal(original: np.ndarray, marked: np.ndarray, key: str | bytes | None, *, original_elements: bytes = b"",
         added_elements: tuple[str, ...] = (), original_sop_instance_uid: str | None = None,
         creator: str = "", high_bits: np.ndarray | None = None, signer_sha256: str | None = None,
         interpretation: dict | None = None, binding: dict | None = None) -> bytes:
    """The sealed record for one marked image (stored values `marked`, from `original`)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if original.shape != marked.shape or original.ndim != 3:
        raise ValueError("original and marked stored values must have the same (frames, rows, cols) shape")
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    material = key_material(key)  # the same key rules as the payload (a passphrase stretched)
    difference = _smallest_signed(original.astype(np.int64) - marked.astype(np.int64))
    codec, packed = _compress_difference(difference)
    tags = block_tags(marked, _derive(material, salt, _BLOCK_TAG_LABEL))
    sections = {"difference": packed, "block_tags": tags, "original_elements": original_elements}
    if high_bits is not None:
        # Rare (bits above BitsStored that hold something) and mostly zeros: xz, as always.
        sections["high_bits"] = lzma.compress(np.ascontiguousarray(high_bits, dtype="<u2").tobytes(), preset=6)
    if binding is not None:
        sections["binding"] = pack_binding(binding)
    header = {
        "shape": list(original.shape), "dtype": original.dtype.newbyteorder("<").str,
        "difference_dtype": difference.dtype.str, "difference_codec": codec, "block_size": BLOCK,
        "original_pixels_sha256": pixel_sha256(original), "marked_pixels_sha256": pixel_sha256(marked),
        "original_sop_instance_uid": original_sop_instance_uid, "added_elements": list(added_elements),
        "creator": creator, "signer_sha256": signer_sha256, "interpretation": interpretation or {}, "sections": [[name, len(data)] for name, data in sections.items()],  # in order
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    plaintext = struct.pack(">I", len(header_bytes)) + header_bytes + b"".join(sections.values())
    # AES-GCM's ciphertext is the plaintext's length plus its 16-byte tag; the length in the
    # header lets a container pad the record (DICOM values have even length).
    associated = _HEADER.pack(MAGIC, VERSION, salt, nonce, len(plaintext) + 16)
    ciphertext = AESGCM(_derive(material, salt, _ENCRYPTION_LABEL)).encrypt(nonce, plaintext, associated)
    return associated + ciphertext


def is_record(blob: bytes) -> bool:
    return len(blob) > _HEADER.size and blob[:4] == MAGIC


def trimmed(blob: bytes) -> bytes:
    """The record without the padding a container added after it."""
    if not is_record(blob):
        return blob
    length = _HEADER.unpack_from(blob)[-1]
    return blob[:_HEADER.size + length]


def open_record(blob: bytes, key: str | bytes | None) -> tuple[RestorationRecord, bytes]:
    """The record and its block-tag key; RecordNotAuthenticError for a wrong key or a changed record."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_record(blob):
        raise RecordNotAuthenticError("the restoration record is damaged (not a wm record)")
    magic, version, salt, nonce, length = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise BadInputError(f"restoration record version {version} is not supported (this wm reads {VERSION})")
    material = key_material(key)
    try:
        plaintext = AESGCM(_derive(material, salt, _ENCRYPTION_LABEL)).decrypt(
            nonce, blob[_HEADER.size:_HEADER.size + length], blob[:_HEADER.size])
    except InvalidTag:
        raise RecordNotAuthenticError("the restoration record is not authentic: wrong key, or the record was "
                                      "changed after marking") from None
    (header_length,) = struct.unpack_from(">I", plaintext)
    header = json.loads(plaintext[4:4 + header_length].decode("utf-8"))
    offset, sections = 4 + header_length, {}
    for name, length in header["sections"]:
        sections[name] = plaintext[offset:offset + length]
        offset += length
    shape = tuple(header["shape"])
    record = RestorationRecord(
        shape=shape, dtype=header["dtype"], original_pixels_sha256=header["original_pixels_sha256"],
        marked_pixels_sha256=header["marked_pixels_sha256"],
        difference=_decompress_difference(header["difference_codec"], sections["difference"],
                                          header["difference_dtype"], shape),
        block_tags=sections["block_tags"], original_elements=sections["original_elements"],
        added_elements=tuple(header["added_elements"]), original_sop_instance_uid=header["original_sop_instance_uid"],
        block_size=int(header["block_size"]), difference_codec=header["difference_codec"], creator=header["creator"],
        high_bits=(_decompress_difference("xz", sections["high_bits"], "<u2", shape) if "high_bits" in sections
                   else None),
        signer_sha256=header.get("signer_sha256"), interpretation=header.get("interpretation") or {},
        binding=_unpacked_binding(sections["binding"]) if "binding" in sections else None,
    )
    return record, _derive(material, salt, _BLOCK_TAG_LABEL)
