"""Bounded decompression of the record's sections (xz, read from older records, and zstd): a
damaged or hostile record never expands beyond what its reader allows."""

from __future__ import annotations

import io
import lzma


def decompressed(compressor: str, data: bytes, most: int) -> bytes:
    """`data` ('xz' or 'zstd') decompressed to at most `most` bytes: what lies beyond is never
    made. A damaged stream raises one of `decompression_errors()`."""
    if compressor == "xz":
        return lzma.LZMADecompressor().decompress(data, max_length=most)
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as stream:
        return stream.read(most)


def decompression_errors() -> tuple[type[Exception], ...]:
    """The exceptions a damaged xz or zstd stream raises in `decompressed`."""
    import zstandard

    return lzma.LZMAError, zstandard.ZstdError
