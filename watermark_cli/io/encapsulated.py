"""Encapsulated pixel data (PS3.5 A.4): the compressed frames of a DICOM file, checked before
anything is decoded so that every decoder reads them alike.

A compressed frame is read by whichever decoder a reader has: pydicom's plugins here (libjpeg,
OpenJPEG, its RLE decoder), dcmtk's IJG and CharLS in a viewer or a PACS. Where the standards
leave room, or a stream says one thing to one decoder and another to the next (an offset table
out of step with its items, an RLE run header -128, a second scan, a JPEG process other than
the transfer syntax's, a JPEG-LS MAXVAL that one decoder honours and the other ignores), wm
would verify and seal values that a viewer never shows: such frames are refused, each with a
line naming what readers would read two ways. What all readers read alike (trailing bytes after
EOI, restart markers, Huffman tables defined twice) is left alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from .medical_image import one_line


def check_codestream_sizes(path: Path, ds: Any, rows: int, cols: int) -> None:
    """A JPEG or JPEG 2000 frame carries its own size; a decoder allocates what the codestream
    says, not what Rows and Columns say (a small file whose frame header claims 65535 x 65535
    costs gigabytes). Every fragment that starts a codestream is checked against the header
    before anything is decoded."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed or "PixelData" not in ds:
        return
    from pydicom.encaps import generate_fragments

    try:
        fragments = list(generate_fragments(ds.PixelData))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # broken encapsulation: named here instead of by the decoder
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {one_line(exc)}") from None
    for fragment in fragments:
        size = _codestream_size(bytes(fragment[:65536]))
        if size is not None and size != (rows, cols):
            raise BadInputError(f"{path}: a compressed frame declares {size[1]} x {size[0]} pixels, the DICOM "
                                f"header {cols} x {rows} (inconsistent file); nothing decoded")


def check_frame_tables(path: Path, ds: Any, frames: int) -> None:
    """The offset tables of encapsulated pixel data point at the frames in the order the file
    holds them (PS3.5 A.4: the first at 0, each at the start of an item, in order; the Extended
    Offset Table of PS3.3 C.7.6.3.1.8: one item per frame, with its length). pydicom follows a
    table, dcmtk reads the items in order: a table that points past a forged item, or lists the
    frames in another order, shows a viewer other frames than wm reads and seals."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed or "PixelData" not in ds:
        return
    try:
        basic, items = _encapsulated_items(bytes(ds.PixelData))
    except ValueError as exc:
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {exc}") from None
    starts = [start for start, _ in items]
    if basic and (len(basic) != frames or basic[0] != 0 or basic != sorted(set(basic))
                  or not set(basic) <= set(starts)):
        raise BadInputError(f"{path}: the Basic Offset Table does not point at the frames in the order the file "
                            "holds them (readers would show different frames); nothing decoded")
    extended = [ds.get(keyword) for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")]
    if any(value is not None for value in extended):
        offsets, lengths = (np.frombuffer(bytes(value or b"")[:len(value or b"") // 8 * 8], "<u8").tolist()
                            for value in extended)
        if offsets != starts or lengths != [length for _, length in items] or len(items) != frames:
            raise BadInputError(f"{path}: the Extended Offset Table does not list the frames one item each, in the "
                                "order the file holds them (readers would show different frames); nothing decoded")


_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def check_rle_segments(path: Path, ds: Any, frames: int, pixels: int, segments: int) -> None:
    """RLE Lossless frames that every decoder reads alike (PS3.5 Annex G), refused otherwise
    before decoding: a header of as many segments as the samples' bytes, the first at 64, in
    order, each inside the frame; each segment's runs giving exactly one byte per pixel. Above
    all, no run header -128: PS3.5 G.3.1 makes it 'output nothing' and no encoder writes one, but
    decoders part there (pydicom's outputs nothing, dcmtk's repeats the next byte 129 times): a
    frame whose values pydicom reads as the marked ones showed a viewer a forged band and the
    anatomy shifted down. Bytes after a segment's last run (padding) are left alone: every
    decoder stops at the pixels it needs."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax != _RLE_LOSSLESS or "PixelData" not in ds:
        return
    try:
        fragments = _fragments(bytes(ds.PixelData))
    except ValueError as exc:
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {exc}") from None
    if frames == 1 and fragments:
        fragments = [b"".join(fragments)]  # a single frame may be split over fragments
    if len(fragments) != frames:
        raise BadInputError(f"{path}: RLE pixel data holds {len(fragments)} fragments for {frames} frames "
                            "(PS3.5 A.4.2: one per frame); nothing decoded")
    for number, fragment in enumerate(fragments, start=1):
        problem = _rle_frame_problem(fragment, pixels, segments)
        if problem:
            raise BadInputError(f"{path}: RLE frame {number}: {problem} (decoders would read it differently); "
                                "nothing decoded")


def _rle_frame_problem(frame: bytes, pixels: int, segments: int) -> str | None:
    """What makes one RLE frame read two ways, or None (see `check_rle_segments`)."""
    if len(frame) < 64:
        return "shorter than its 64-byte header"
    count, *offsets = struct.unpack_from("<16I", frame, 0)
    if count != segments:
        return f"{count} segments where the header's samples need {segments}"
    offsets = offsets[:count] + [len(frame)]  # the unused offsets are read by no decoder
    if offsets[0] != 64 or any(a > b for a, b in zip(offsets, offsets[1:])):
        return "segment offsets out of order or outside the frame"
    for index in range(count):
        problem = _rle_segment_problem(frame[offsets[index]: offsets[index + 1]], pixels)
        if problem:
            return f"segment {index + 1}: {problem}"
    return None


def _rle_segment_problem(segment: bytes, pixels: int) -> str | None:
    at, produced, size = 0, 0, len(segment)
    while produced < pixels:
        if at >= size:
            return f"ends after {produced:,} of its {pixels:,} bytes"
        header = segment[at]
        if header == 0x80:
            return f"a run header -128 at byte {at} (no-op to some decoders, a run of 129 to others)"
        run = header + 1 if header < 0x80 else 257 - header
        source = run if header < 0x80 else 1
        if at + 1 + source > size or produced + run > pixels:
            return f"a run at byte {at} crosses the end of its segment or of the frame"
        at += 1 + source
        produced += run
    return None


def _fragments(data: bytes) -> list[bytes]:
    """The fragments of encapsulated pixel data, in order, the Basic Offset Table left out."""
    _, items = _encapsulated_items(data)
    first = 8 + struct.unpack_from("<I", data, 4)[0]
    return [data[first + start + 8: first + start + 8 + length] for start, length in items]


def _encapsulated_items(data: bytes) -> tuple[list[int], list[tuple[int, int]]]:
    """(the Basic Offset Table's offsets, each later item's (start, length)), starts measured from
    the first item after the table, as the tables measure them (encapsulated data are little endian)."""
    def item_at(at: int) -> int | None:
        if at + 8 > len(data):
            raise ValueError("an item runs past the end of the pixel data")
        tag, length = struct.unpack_from("<2I", data, at)
        if tag == 0xE0DDFFFE:  # sequence delimiter (group FFFE, element E0DD, read as one word)
            return None
        if tag != 0xE000FFFE or at + 8 + length > len(data):
            raise ValueError(f"no item where one belongs (byte {at})")
        return length

    table_length = item_at(0)
    if table_length is None or table_length % 4:
        raise ValueError("no Basic Offset Table item")
    basic = list(struct.unpack_from(f"<{table_length // 4}I", data, 8))
    first, items, at = 8 + table_length, [], 8 + table_length
    while at < len(data):
        length = item_at(at)
        if length is None:
            break
        items.append((at - first, length))
        at += 8 + length
    return basic, items


def _codestream_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG (SOFn, JPEG-LS SOF55) or JPEG 2000 (SIZ) codestream declares at its
    start, or None when the fragment does not start one (a continuation) or declares none."""
    if head.startswith(b"\xff\xd8"):
        found = first_jpeg_header(head)
        if found is None or found[0] == _SOS or found[1] + 9 > len(head):
            return None
        height, width = struct.unpack(">HH", head[found[1] + 5:found[1] + 9])
        return height, width  # a height of 0 (set later by a DNL marker) is refused too
    siz = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (bare, or inside a JP2 box)
    if siz < 0 or siz + 24 > len(head) or not (siz == 0 or head[4:8] == b"jP  "):
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", head[siz + 8:siz + 24])
    return y_size - y_offset, x_size - x_offset


def first_jpeg_header(head: bytes) -> tuple[int, int] | None:
    """(marker, where it starts) of the first frame header (SOFn, JPEG-LS SOF55) or scan header
    (SOS) of the JPEG stream `head` begins, its marker segments walked from SOI; None when `head`
    is not a JPEG stream or ends (or breaks off into data) before either."""
    at = 2 if head.startswith(b"\xff\xd8") else len(head)
    while at + 4 <= len(head) and head[at] == 0xFF:
        marker = head[at + 1]
        if marker in _SOF_MARKERS or marker == _SOS:
            return marker, at
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a segment
            at += 2
        else:
            at += 2 + struct.unpack_from(">H", head, at + 2)[0]
    return None


# ---- JPEG, JPEG-LS and JPEG 2000 frames -------------------------------------------------------

#: The frame headers (SOF markers) each JPEG transfer syntax allows, with their sample precisions
#: (PS3.5 A.4.1, A.4.3; T.81 B.2.2; T.87 C.2.2). dcmtk picks its decoder by transfer syntax and
#: libjpeg by the stream: a 16-bit lossless stream filed as Baseline is the marked image to one
#: and the same image cut to 8 bits to the other.
_JPEG_FRAME_HEADERS: dict[str, dict[int, range]] = {
    "1.2.840.10008.1.2.4.50": {0xC0: range(8, 9)},  # Baseline (process 1)
    "1.2.840.10008.1.2.4.51": {0xC0: range(8, 9), 0xC1: range(8, 13, 4)},  # Extended (processes 2 and 4)
    "1.2.840.10008.1.2.4.57": {0xC3: range(2, 17)},  # Lossless (process 14)
    "1.2.840.10008.1.2.4.70": {0xC3: range(2, 17)},  # Lossless, first-order prediction (selection value 1)
    "1.2.840.10008.1.2.4.80": {0xF7: range(2, 17)},  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": {0xF7: range(2, 17)},  # JPEG-LS Near-Lossless
}
_JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
_JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
_JPEG_2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                                 "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201",
                                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_SOS, _EOI, _DRI, _LSE = 0xDA, 0xD9, 0xDD, 0xF8
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
#: Marker segments that may come before the scan and that every decoder reads alike: tables
#: (DHT, DQT), comments and application data.
_TABLES_AND_DATA = frozenset({0xC4, 0xDB, 0xFE, *range(0xE0, 0xF0)})


@dataclass(frozen=True)
class JpegFrameHeader:
    """What a JPEG-family frame declares that its decoding depends on."""

    marker: int  # its SOF marker (0xC3: lossless, 0xF7: JPEG-LS)
    precision: int  # P, bits per sample
    precision_at: int  # where P is in the frame
    end: int = 0  # where its EOI marker ends


def check_jpeg_frames(path: Path, ds: Any, frames: int) -> None:
    """JPEG-family frames that every decoder reads alike, refused otherwise before decoding:

    - one frame header of the process the transfer syntax names, at one of its precisions, of
      one component (wm reads grayscale only), no hierarchical or arithmetic process;
    - one scan of that component, nothing but EOI after it (of two scans pydicom keeps the last
      and dcmtk the first), no DNL or other marker a decoder may skip;
    - the scan's parameters the process defines: lossless with no point transform (libjpeg and
      IJG start their prediction at different values), a predictor of 1 for syntax .70, a restart
      interval of whole rows (libjpeg and IJG resume a row differently); JPEG-LS with no mapping
      table (CharLS ignores it, libjpeg applies it), no point transform, line interleaving (ILV
      0, which CharLS needs for one component), NEAR 0 for .80, and a coding-parameter preset,
      if any, of MAXVAL 2^P - 1 (CharLS takes it from P, libjpeg from the preset) and thresholds
      and reset inside T.87 C.2.4.1.1's ranges (CharLS reads a 0 as 'the default', libjpeg
      literally);
    - lossless frames of fewer than 16 bits whose samples all decode inside [0, 2^P - 1]
      (`_lossless_range_problem`);
    - in a multi-frame file, fragments that every decoder groups into the same frames
      (`_fragment_split_problem`);
    - in signed data, samples of at least BitsStored bits (`_signed_precision_problem`).

    JPEG 2000 frames must start with the bare codestream (SOC, SIZ: PS3.5 A.4.4 has no JP2 box).
    The lossy DCT processes are accepted as they are: decoders round them differently by one
    level (a verdict on them is this decoder's), and no stream crafted to differ more is known."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if "PixelData" not in ds or (syntax not in _JPEG_FRAME_HEADERS and syntax not in _JPEG_2000_SYNTAXES):
        return
    from pydicom.encaps import generate_frames

    try:
        coded = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {one_line(exc)}") from None
    columns = int(ds.Columns)
    signed_bits = int(ds.get("BitsStored", 0) or 0) if int(ds.get("PixelRepresentation", 0) or 0) == 1 else 0
    groups = _fragments_of_frames(ds.PixelData, coded) if len(coded) > 1 else [None] * len(coded)
    for number, (frame, group) in enumerate(zip(coded, groups), start=1):
        if syntax in _JPEG_2000_SYNTAXES:
            problem = None if frame.startswith(b"\xff\x4f\xff\x51") else \
                "does not start with a bare JPEG 2000 codestream (SOC, SIZ)"
        else:
            try:
                header = jpeg_frame_header(frame, syntax, columns)
                problem = (_fragment_split_problem(group, header, syntax) if group is not None else None) \
                    or _signed_precision_problem(header, signed_bits) or _lossless_range_problem(frame, header)
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise BadInputError(f"{path}: compressed frame {number}: {problem} (decoders would read it "
                                "differently); nothing decoded")


def jpeg_frame_header(frame: bytes, syntax: str, columns: int) -> JpegFrameHeader:
    """The frame header of one JPEG or JPEG-LS frame of `syntax`, its markers walked to EOI; a
    ValueError names what readers would read two ways (see `check_jpeg_frames`)."""
    allowed = _JPEG_FRAME_HEADERS[syntax]
    jpeg_ls = 0xF7 in allowed
    if not frame.startswith(b"\xff\xd8"):
        raise ValueError("does not start with a JPEG SOI marker")
    header, component, restart, preset, scanned, at = None, None, 0, None, False, 2
    while True:
        if at + 2 > len(frame):
            raise ValueError("ends before its EOI marker")
        if frame[at] != 0xFF:
            raise ValueError(f"data where a marker belongs (byte {at})")
        marker = frame[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == _EOI:
            if not scanned:
                raise ValueError("no scan")
            return replace(header, end=at + 2)  # what follows EOI no decoder reads
        if scanned:
            raise ValueError(f"marker FF{marker:02X} after the scan (only EOI may follow it)")
        if at + 4 > len(frame):
            raise ValueError("ends inside a marker segment")
        length = struct.unpack_from(">H", frame, at + 2)[0]
        segment = frame[at + 4: at + 2 + length]
        if length < 2 or at + 2 + length > len(frame):
            raise ValueError(f"marker segment FF{marker:02X} runs past the end of the frame")
        if marker in _SOF_MARKERS:
            if header is not None:
                raise ValueError("a second frame header")
            if marker not in allowed:
                raise ValueError(f"frame header FF{marker:02X}, a JPEG process its transfer syntax does not name")
            if len(segment) < 9 or segment[5] != 1:
                raise ValueError("a frame header of more than one component")
            if segment[0] not in allowed[marker]:
                raise ValueError(f"{segment[0]}-bit samples, which its transfer syntax does not allow here")
            header, component = JpegFrameHeader(marker, segment[0], at + 4), segment[6]
        elif marker == _SOS:
            if header is None:
                raise ValueError("a scan before the frame header")
            _check_scan(segment, header, component, syntax, restart, preset, columns)
            at = _scan_end(frame, at + 2 + length, jpeg_ls)
            scanned = True
            continue
        elif marker == _DRI and len(segment) >= 2:
            restart = struct.unpack_from(">H", segment)[0]
        elif marker == _LSE and jpeg_ls:
            if segment[:1] != b"\x01" or len(segment) < 11:
                raise ValueError("a JPEG-LS preset other than coding parameters (a mapping table)")
            if preset is not None:
                raise ValueError("JPEG-LS coding parameters given twice")
            preset = struct.unpack_from(">5H", segment, 1)
        elif marker not in _TABLES_AND_DATA:
            raise ValueError(f"marker FF{marker:02X}, which decoders read differently or not at all")
        at += 2 + length


def _check_scan(segment: bytes, header: JpegFrameHeader, component: int | None, syntax: str, restart: int,
                preset: tuple[int, ...] | None, columns: int) -> None:
    """A scan header (SOS) the frame's process defines; ValueError otherwise."""
    if len(segment) != 6 or segment[0] != 1 or segment[1] != component:
        raise ValueError("a scan header that is not one scan of the frame's one component")
    table, start, end, transform = segment[2], segment[3], segment[4], segment[5]
    if header.marker == 0xF7:  # JPEG-LS: mapping table, NEAR, ILV, point transform
        if table:
            raise ValueError("a JPEG-LS mapping table")
        if transform or end:
            raise ValueError("a JPEG-LS point transform or interleave mode other than 0")
        if start and syntax == _JPEG_LS_LOSSLESS:
            raise ValueError(f"NEAR {start} in a lossless JPEG-LS syntax")
        if preset is not None:
            _check_preset(preset, header.precision, start)
    elif header.marker == 0xC3:  # lossless: predictor, no spectral end, no successive approximation
        if not 1 <= start <= 7 or end or transform:
            raise ValueError("a lossless scan with a point transform or an undefined predictor")
        if syntax == _JPEG_LOSSLESS_SV1 and start != 1:
            raise ValueError(f"predictor {start} where its transfer syntax names predictor 1")
        if restart % columns:
            raise ValueError(f"a restart interval of {restart} samples, not whole rows of {columns}")
    elif (start, end, transform) != (0, 63, 0):
        raise ValueError("a sequential DCT scan with other than the full spectrum")


def _check_preset(preset: tuple[int, ...], precision: int, near: int) -> None:
    """A JPEG-LS coding-parameter preset (MAXVAL, T1, T2, T3, RESET) every decoder reads alike:
    MAXVAL 2^P - 1 and the others inside T.87 C.2.4.1.1's ranges. CharLS reads a 0 as 'the
    default' and takes MAXVAL from P; libjpeg uses each value as written."""
    maxval, t1, t2, t3, reset = preset
    if maxval != (1 << precision) - 1:
        raise ValueError(f"JPEG-LS MAXVAL {maxval} for {precision}-bit samples")
    if not (near + 1 <= t1 <= t2 <= t3 <= maxval and 3 <= reset <= max(255, maxval)):
        raise ValueError(f"JPEG-LS thresholds {t1}, {t2}, {t3} and reset {reset} outside T.87's ranges "
                         f"for MAXVAL {maxval}")


def _signed_precision_problem(header: JpegFrameHeader, signed_bits: int) -> str | None:
    """Signed samples coded at fewer bits than BitsStored, or None: pydicom extends a JPEG-LS
    sample's sign from the frame's precision, dcmtk from BitsStored, so a signed CT coded at 12
    bits read the marked values to wm and every negative value 4096 higher to dcmtk (air shown
    bright). `signed_bits`: BitsStored of signed data, else 0."""
    if header.precision < signed_bits:
        return f"{header.precision}-bit samples of signed data whose BitsStored is {signed_bits}"
    return None


def _fragments_of_frames(pixel_data: bytes, coded: list[bytes]) -> list[list[bytes] | None]:
    """The fragments each frame pydicom assembled is made of (None for a frame that is not a
    run of whole fragments)."""
    try:
        fragments = _fragments(bytes(pixel_data))
    except ValueError:
        return [None] * len(coded)
    groups: list[list[bytes] | None] = []
    at = 0
    for frame in coded:
        group: list[bytes] = []
        size = 0
        while size < len(frame) and at < len(fragments):
            group.append(fragments[at])
            size += len(fragments[at])
            at += 1
        groups.append(group if b"".join(group) == frame else None)
    return groups


def _fragment_split_problem(group: list[bytes] | None, header: JpegFrameHeader, syntax: str) -> str | None:
    """Why decoders would group a multi-frame file's fragments into frames otherwise than pydicom,
    or None. pydicom follows the Basic Offset Table, or without one ends a frame at a fragment
    whose last bytes hold EOI; IJG (dcmtk) feeds a frame's fragments until it meets EOI and ignores
    the table; dcmtk's CharLS starts a frame at each fragment that opens with SOI and SOF55, APPn or
    COM. A marked frame, ten zero bytes after its EOI, then a forged frame and the marked frame 2
    read the marked frames to pydicom and the forged one as frame 2 to dcmtk. So a frame's EOI
    must be in its last fragment, no later fragment of it may open with SOI, and a JPEG-LS
    frame must open as CharLS looks for it."""
    if group is None:
        return "pixel data that are not whole fragments per frame"
    if any(fragment.startswith(b"\xff\xd8") for fragment in group[1:]):
        return "a fragment inside the frame that opens a new JPEG stream"
    if header.end <= sum(map(len, group[:-1])):
        return "an EOI marker before its last fragment (decoders would start the next frame elsewhere)"
    opening = group[0][2:4]
    if 0xF7 in _JPEG_FRAME_HEADERS[syntax] and not (opening in (b"\xff\xf7", b"\xff\xfe")
                                                     or (opening[:1] == b"\xff" and opening[1:2] >= b"\xe0"
                                                         and opening[1:2] <= b"\xef")):
        return "a JPEG-LS frame opening with other than SOF55, APPn or COM after SOI"
    return None


def _scan_end(frame: bytes, at: int, jpeg_ls: bool) -> int:
    """Where the entropy-coded data starting at `at` end: the first marker other than a restart.
    In JPEG a 0xFF data byte is followed by 0x00; in JPEG-LS by a byte below 0x80 (T.87 A.1)."""
    while True:
        at = frame.find(b"\xff", at)
        if at < 0 or at + 1 >= len(frame):
            return len(frame)
        following = frame[at + 1]
        in_data = following < 0x80 if jpeg_ls else following == 0x00
        if not in_data and not 0xD0 <= following <= 0xD7:
            return at
        at += 1


def _lossless_range_problem(frame: bytes, header: JpegFrameHeader) -> str | None:
    """A lossless frame of P < 16 bits whose prediction plus difference leaves [0, 2^P - 1]
    somewhere, or None. T.81 H.2.1 takes such a sum modulo 2^16, which IJG (dcmtk) shows; libjpeg
    (pydicom) clamps it to 2^P - 1: a saturated marked pixel coded as 4095 + J reads 4095 to wm
    and J - 1 to a viewer. The frame is decoded again with P + 1 bits: its initial prediction is
    2^(P-1) higher and every later one follows (the predictors are averages and differences), so
    the samples come out 2^(P-1) higher, unclamped, and any sum outside the range shows outside
    it. Samples of 16 bits wrap alike in every decoder."""
    if header.marker != 0xC3 or header.precision >= 16:
        return None
    from libjpeg import decode

    wider = bytearray(frame)
    wider[header.precision_at] = header.precision + 1
    try:
        samples = decode(bytes(wider)).astype(np.int64) - (1 << (header.precision - 1))
    except Exception as exc:  # libjpeg's errors name the stream's problem
        return f"does not decode ({one_line(exc)})"
    if samples.size and (samples.min() < 0 or samples.max() >= 1 << header.precision):
        return f"lossless samples coded outside the range of {header.precision} bits"
    return None
