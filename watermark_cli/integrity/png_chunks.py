"""A PNG file's chunks (PNG specification §5.3: length, type, data, CRC): the one walker that the
record's container, the binding and the reader share."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class PngChunk:
    kind: bytes
    body: bytes
    crc: bytes  # as stored (4 bytes; fewer where the file ends early)

    @property
    def name(self) -> str:
        return self.kind.decode("latin-1")

    @property
    def crc_ok(self) -> bool:
        """Whether the stored CRC is the chunk's (checked only when asked: it reads the whole body)."""
        return len(self.crc) == 4 and struct.unpack(">I", self.crc)[0] == zlib.crc32(self.kind + self.body)


def png_chunks(data: bytes) -> Iterator[PngChunk]:
    """The chunks after the signature, in file order, up to and including IEND (what follows IEND
    is no part of the image: every decoder stops there)."""
    offset = 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4:offset + 8]
        end = offset + 8 + length
        yield PngChunk(kind, data[offset + 8:end], data[end:end + 4])
        offset = end + 4
        if kind == b"IEND":
            return
