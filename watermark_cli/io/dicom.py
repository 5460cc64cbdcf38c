"""DICOM in and out at native depth, through pydicom (compressed syntaxes decode through the
pylibjpeg plugins; RLE and JPEG 2000 lossless encode).

Reading checks what a header declares (size, frames, codestream sizes, the length of native
pixel data) before anything is decoded, and turns every decoder failure into one line naming the
file. Writing keeps every element but those `DICOM_ELEMENTS_CHANGED_ON_WRITE` lists, and the
unused high bits of unsigned words; the 128-byte preamble is always written as zeros (never
copied: CVE-2019-11687). Colour and palette images are refused, never turned gray.
"""

from __future__ import annotations

import copy
import struct
import threading
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import BadInputError
from ..integrity import containers
from ..integrity.binding import DICOM_VRS, bits_above_stored
from ..integrity.envelope import is_envelope
from ..integrity.signature import sign_dataset
from ..views import display_from_dicom
from .medical_image import MedicalImage, check_declared_size, one_line, stored_range

# pydicom is imported inside the functions that need it, so that importing wm stays fast.


#: DICOM elements (keywords) that `write_image` may change; every other element is copied as is.
#:
#: - PixelData: the new stored values, native (uncompressed) little endian, or losslessly
#:   re-encoded (RLE Lossless, JPEG 2000 Lossless) when asked. Where BitsStored < BitsAllocated
#:   in unsigned data and the original was native, the unused high bits of every word are copied
#:   from the original (signed data keeps them as the sign extension).
#: - ExtendedOffsetTable, ExtendedOffsetTableLengths: removed, they only describe compressed data.
#: - SOPInstanceUID: a new instance (the written image is a new, derived object).
#: - ImageType: first value set to DERIVED (other values kept; ['DERIVED', 'SECONDARY'] if absent
#:   or single-valued).
#: - DerivationDescription: the caller's `derivation` text (at most 1024 characters, ST).
#: - SourceImageSequence: one item appended that references the original SOP Class/Instance.
#: - DigitalSignaturesSequence, MACParametersSequence: earlier signatures removed (they do not
#:   match the new instance); with a signer, one new signature over the instance as written.
#: - WmRestorationRecord: the private element (0077,xx01) of creator 'WM RESTORATION RECORD 1'
#:   and its creator element, when a restoration record is written (integrity.containers).
#: - EncryptedAttributesSequence: one item appended when the record is written for a recipient
#:   (integrity.envelope).
#: - File meta: TransferSyntaxUID (Explicit VR Little Endian, or the lossless syntax asked for), MediaStorageSOPInstanceUID (the new
#:   SOPInstanceUID), FileMetaInformationGroupLength (recomputed), and, only where the original
#:   lacked them, FileMetaInformationVersion, ImplementationClassUID, ImplementationVersionName and
#:   MediaStorageSOPClassUID (filled in by pydicom to make a valid DICOM file).
#: - GroupLength: retired (gggg,0000) group lengths (no keyword in the dictionary; this name stands for
#:   all of them) are dropped by pydicom, as PS3.5 §7.2 asks; they would be wrong after the edits.
#: - Preamble: not an element, but not copied either: always 128 zero bytes (see ZERO_PREAMBLE).
#: Lossy-compression flags (LossyImageCompression, ...Ratio, ...Method) are deliberately KEPT: the
#: pixels did go through lossy compression once, and decompressing does not undo that.
DICOM_ELEMENTS_CHANGED_ON_WRITE: tuple[str, ...] = (
    "PixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "SOPInstanceUID",
    "ImageType",
    "DerivationDescription",
    "SourceImageSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "WmRestorationRecord",
    "EncryptedAttributesSequence",
    "TransferSyntaxUID",
    "MediaStorageSOPInstanceUID",
    "FileMetaInformationGroupLength",
    "FileMetaInformationVersion",
    "ImplementationClassUID",
    "ImplementationVersionName",
    "MediaStorageSOPClassUID",
    "GroupLength",
)
_MAX_DERIVATION_CHARS = 1024  # DerivationDescription is ST
# Decoder warnings that mean the decoded values are not the image the header describes: frames
# the header does not declare, an RLE segment of the wrong length, compressed data the size of
# uncompressed data (a wrong transfer syntax), a colour codestream in a grayscale header. Other
# warnings (trailing padding removed, a plugin switched) leave the values right.
_GARBAGE_WARNINGS = (
    "frames have been found",
    "sufficient to contain",
    "doesn't match the expected amount",
    "matches the expected number for uncompressed",
    "indicates it should be",
    "indicate it should be",
)
#: Lossless DICOM re-encodings `write_image` offers (name -> transfer syntax UID); 'none' writes
#: native Explicit VR Little Endian. JPEG-LS is absent: no JPEG-LS encoder is installed.
DICOM_COMPRESSIONS: dict[str, str | None] = {
    "none": None,
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
}


def read_dicom(path: Path, max_pixels: int) -> MedicalImage:
    """DICOM through pydicom (compressed syntaxes decode via the pylibjpeg plugins).

    Only single-sample MONOCHROME1/2 images with 8 or 16 bits allocated are accepted: those are
    what the watermark model and the PSNR peak (2^BitsStored - 1) are defined for.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        # Old files without the 128-byte preamble; only tried because the suffix says DICOM.
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise BadInputError(f"{path}: not a DICOM file ({one_line(exc)})") from exc
        if "Rows" not in ds:
            raise BadInputError(f"{path}: not a readable DICOM image (no DICOM header found)")
        _record_guessed_transfer_syntax(ds)
    encoding = body_encoding(ds)

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise BadInputError(f"{path}: floating-point DICOM pixel data is not supported")
        raise BadInputError(f"{path}: DICOM file has no pixel data (not an image)")

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2" if samples == 1 else "")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadInputError(
            f"{path}: colour DICOM images are not supported "
            f"(PhotometricInterpretation {photometric or '?'}, SamplesPerPixel {samples}); "
            "only grayscale MONOCHROME1/MONOCHROME2"
        )

    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise BadInputError(f"{path}: incomplete DICOM image header (no {', '.join(missing)})")
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    if bits_allocated not in (8, 16):
        raise BadInputError(
            f"{path}: {bits_allocated}-bit DICOM pixel data is not supported (only 8 or 16 bits allocated)"
        )
    if not 1 <= bits_stored <= bits_allocated:
        raise BadInputError(f"{path}: inconsistent DICOM header (BitsStored {bits_stored}, "
                            f"BitsAllocated {bits_allocated})")
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _declared_frames(path, ds)
    check_declared_size(path, (frames, rows, cols), max_pixels, "DICOM ")
    _check_native_length(path, ds, frames * rows * cols * (bits_allocated // 8))
    _check_codestream_sizes(path, ds, rows, cols)
    _check_frame_tables(path, ds, frames)
    _check_rle_segments(path, ds, frames, rows * cols, int(ds.get("SamplesPerPixel", 1) or 1) * bits_allocated // 8)
    _check_encoding(path, ds, bits_allocated, encoding)

    decoded = _decode_dicom_pixels(path, ds, pixel_array)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")  # native byte order
    pixels = np.ascontiguousarray(decoded.astype(dtype).reshape(-1, rows, cols))

    # pydicom masks (or sign-extends) the bits above BitsStored; a value still outside the range
    # means the header contradicts the data, and the PSNR peak and write checks would be wrong.
    stored_min, stored_max = stored_range(bits_stored, signed)
    if pixels.size and (pixels.min() < stored_min or pixels.max() > stored_max):
        raise BadInputError(f"{path}: pixel values {pixels.min()}..{pixels.max()} do not fit "
                            f"BitsStored {bits_stored} (inconsistent DICOM header)")
    modality = str(ds.get("Modality", "") or "").strip() or None
    return MedicalImage(
        pixels=pixels, kind="dicom", path=path, bits_stored=bits_stored,
        stored_min=stored_min, stored_max=stored_max, photometric=photometric, modality=modality,
        source=ds, display=display_from_dicom(ds, pixels.shape[0]),
    )


@dataclass(frozen=True)
class ElementsReadTwoWays:
    """Elements of a file that readers read two ways (see `elements_read_two_ways`)."""

    #: tags one data set (at any depth) holds twice, or after a larger tag
    repeated: tuple[int, ...] = ()
    #: (tag, VR) of each standard element an explicit-VR file writes in another VR than the
    #: dictionary's (file meta aside), in file order
    other_vr: tuple[tuple[int, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.repeated or self.other_vr)


def elements_read_two_ways(path: Path) -> ElementsReadTwoWays:
    """What in the file readers read two ways, though pydicom reads it without complaint.

    - An element held twice (or out of order; a data set is sorted and holds each tag once): a
      reader keeps one copy, pydicom the last and dcmtk the first, so such a file shows one
      window, one patient or one set of pixels to wm and another to a viewer.
    - A standard element written in another VR than the dictionary's (RescaleIntercept as SS or
      FL, WindowCenter as IS, PatientName or PixelData as UN): pydicom decodes the same number or
      text, dcmtk ignores the element or shows its bytes (a CT without its rescale, a patient
      name in hex). `verify` must not call such a file intact.

    A file pydicom cannot read gives nothing: it fails where it is read, with its own message."""
    import pydicom

    _install_element_check()
    _PARSE_CHECK.found = found = _ParseFindings()
    try:
        dataset = pydicom.dcmread(path, force=True)
        for _ in dataset.iterall():  # a sequence's items are parsed when first reached
            pass
    except Exception:
        pass
    finally:
        _PARSE_CHECK.found = None
    return ElementsReadTwoWays(tuple(sorted(set(found.repeated))), tuple(dict.fromkeys(found.other_vr)))


@dataclass
class _ParseFindings:
    repeated: list[int] = field(default_factory=list)
    other_vr: list[tuple[int, str]] = field(default_factory=list)


def dictionary_vr_differs(tag: int, vr: str | None) -> bool:
    """Whether an explicit VR `vr` is one readers read two ways: a VR DICOM does not define, on any
    element (pydicom reads a 2-byte length after it, dcmtk a 4-byte one: they part where the
    element ends, and whatever one of them reads as its value the other reads as elements), a
    group length (gggg,0000) not written as UL, or a standard element not in the dictionary's VR
    (one of its choices, for 'US or SS' and the like). Private, unknown and file meta elements in
    a defined VR, item delimiters and implicit VR (None) never differ; nor does one text VR for
    another (a Protocol Name as SH, as older dictionaries had it: the same text to any reader).
    A number's VRs (DS, IS, binary) and UN always do."""
    from pydicom.datadict import dictionary_VR

    if vr is None or " or " in vr:  # 'OB or OW': pydicom's dictionary VR for an implicit element, never written
        return False
    if vr not in DICOM_VRS:
        return True
    group = tag >> 16
    if group == 0xFFFE:
        return False
    if tag & 0xFFFF == 0:
        return vr != "UL"
    if group & 1 or group == 0x0002:
        return False
    try:
        expected = dictionary_VR(tag)
    except KeyError:
        return False
    if vr == expected or vr in expected.split(" or "):
        return False
    return not (vr in _PLAIN_TEXT_VRS and expected in _PLAIN_TEXT_VRS)


# VRs whose value every reader shows as the text it is (numbers as text, DS and IS, are not here).
_PLAIN_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


# pydicom keeps one element per tag as it parses (a dict), and replaces a UN by the dictionary's
# VR, so the order and the VRs the file gives are seen only inside its element generator, which
# each data set (the file's and every sequence item's) reads through: that generator is wrapped,
# once, to report to the thread that asks.
_PARSE_CHECK = threading.local()
_PARSE_CHECK_LOCK = threading.Lock()


def _install_element_check() -> None:
    from pydicom import filereader

    with _PARSE_CHECK_LOCK:
        original = filereader.data_element_generator
        if getattr(original, "wm_element_check", False):
            return

        def checked(*args: Any, **kwargs: Any):
            previous = -1
            for element in original(*args, **kwargs):
                found = getattr(_PARSE_CHECK, "found", None)
                if found is not None:
                    tag = int(element.tag)
                    if tag <= previous:
                        found.repeated.append(tag)
                    previous = max(previous, tag)
                    if dictionary_vr_differs(tag, element.VR):
                        found.other_vr.append((tag, str(element.VR)))
                yield element

        checked.wm_element_check = True
        filereader.data_element_generator = checked


def _declared_frames(path: Path, ds: Any) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise BadInputError(f"{path}: DICOM NumberOfFrames {value!r} is not a number") from None
    return frames or 1  # 0 is non-conformant for 1 (pydicom reads it so too)


def body_encoding(ds: Any) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) as pydicom found the data set encoded, or None once every
    element is parsed: ask straight after reading. pydicom's `original_encoding` repeats the
    transfer syntax; an element not yet parsed tells how it was read."""
    raw = next((element for element in map(ds.get_item, ds.keys()) if getattr(element, "is_raw", False)), None)
    return None if raw is None else (bool(raw.is_implicit_VR), bool(raw.is_little_endian))


def _check_encoding(path: Path, ds: Any, bits_allocated: int, encoding: tuple[bool, bool] | None) -> None:
    """What readers decode two ways is refused before decoding: a body encoded otherwise than its
    transfer syntax says (pydicom reads the encoding it finds, dcmtk trusts the file meta and
    fails), and 16-bit words of a big-endian file written as OB (pydicom swaps them by
    BitsAllocated, dcmtk keeps bytes unswapped: another image). `encoding`: `body_encoding`'s."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_transfer_syntax or encoding is None:
        return
    implicit, little_endian = encoding
    if (bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)) != (bool(implicit), bool(little_endian)):
        written = f"{'Implicit' if implicit else 'Explicit'} VR {'Little' if little_endian else 'Big'} Endian"
        raise BadInputError(f"{path}: the data set is encoded {written}, its transfer syntax says {syntax.name} "
                            "(readers disagree on how to read it)")
    if not little_endian and bits_allocated > 8 and ds["PixelData"].VR == "OB":
        raise BadInputError(f"{path}: {bits_allocated}-bit pixel data of a big-endian file written as OB (bytes): "
                            "readers disagree on their byte order")


def _check_native_length(path: Path, ds: Any, expected: int) -> None:
    """Uncompressed pixel data shorter than the header promises: refused before decoding (pydicom
    would read past the frames that exist, or fill them with garbage)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return
    actual = len(ds.PixelData)
    if actual < expected:
        raise BadInputError(f"{path}: DICOM header promises {expected:,} bytes of pixel data, the file holds "
                            f"{actual:,} (truncated or inconsistent header)")


def _check_codestream_sizes(path: Path, ds: Any, rows: int, cols: int) -> None:
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


def _check_frame_tables(path: Path, ds: Any, frames: int) -> None:
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


def _check_rle_segments(path: Path, ds: Any, frames: int, pixels: int, segments: int) -> None:
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
    data = bytes(ds.PixelData)
    try:
        _, items = _encapsulated_items(data)
    except ValueError as exc:
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {exc}") from None
    first = 8 + struct.unpack_from("<I", data, 4)[0]
    fragments = [data[first + start + 8: first + start + 8 + length] for start, length in items]
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
    """What makes one RLE frame read two ways, or None (see `_check_rle_segments`)."""
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
    if head.startswith(b"\xff\xd8"):  # JPEG: walk the marker segments up to the frame header
        at = 2
        while at + 9 <= len(head):
            if head[at] != 0xFF:
                return None
            marker = head[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
                height, width = struct.unpack(">HH", head[at + 5:at + 9])
                return height, width  # a height of 0 (set later by a DNL marker) is refused too
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                at += 2
                continue
            at += 2 + struct.unpack(">H", head[at + 2:at + 4])[0]
        return None
    siz = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (bare, or inside a JP2 box)
    if siz < 0 or siz + 24 > len(head) or not (siz == 0 or head[4:8] == b"jP  "):
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", head[siz + 8:siz + 24])
    return y_size - y_offset, x_size - x_offset


_WARNINGS_CAUGHT = threading.Lock()


def _decode_dicom_pixels(path: Path, ds: Any, pixel_array: Callable[[Any], np.ndarray]) -> np.ndarray:
    """pydicom's decode, with the warnings that mean garbage values (see _GARBAGE_WARNINGS) made
    errors."""
    import warnings

    # The warning filters are the process's: two threads that each catch them would take each
    # other's warnings, or restore the wrong filters (`marking.threads` reads files on several).
    with _WARNINGS_CAUGHT, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = pixel_array(ds)
        except (KeyboardInterrupt, SystemExit):
            raise
        except MemoryError:
            raise BadInputError(f"{path}: not enough memory to decode the DICOM pixel data") from None
        except BaseException as exc:  # pydicom's and the plugins' errors, and native panics
            raise BadInputError(f"{path}: cannot decode DICOM pixel data: {one_line(exc)}") from None
    for warning in caught:
        text = str(warning.message)
        if any(marker in text for marker in _GARBAGE_WARNINGS):
            raise BadInputError(f"{path}: DICOM pixel data does not match its header: {one_line(warning.message)}")
    return decoded


def _record_guessed_transfer_syntax(ds: Any) -> None:
    """A file without File Meta has no Transfer Syntax UID; pydicom's decoders need one.

    The encoding pydicom detected while parsing is native (uncompressed) data in that encoding.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )

_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def write_dicom(original: MedicalImage, pixels: np.ndarray, fh: BinaryIO, derivation: str,
                 compression_uid: str | None = None, record: bytes | None = None, signer: Any = None,
                 sop_instance_uid: str | None = None) -> None:
    """The original dataset as a derived image with new little-endian pixel data: native, or
    losslessly re-encoded with `compression_uid`; with the restoration record and a signature
    when given. `sop_instance_uid`: the new instance's UID when the caller chose it (the record
    binds it), else a fresh one."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(original.source)
    give_unknown_vrs_their_dictionary_vr(ds)
    set_native_pixel_data(ds, pixels, keep_high_bits=compression_uid is None)
    # An earlier signature no longer matches the new instance (the record keeps it for restore).
    for keyword in ("DigitalSignaturesSequence", "MACParametersSequence"):
        if keyword in ds:
            del ds[keyword]

    source_class = ds.get("SOPClassUID")
    source_instance = ds.get("SOPInstanceUID")
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    ds.ImageType = _derived_image_type(ds.get("ImageType"))
    ds.DerivationDescription = derivation[:_MAX_DERIVATION_CHARS]

    reference = Dataset()
    if source_class:
        reference.ReferencedSOPClassUID = source_class
    if source_instance:
        reference.ReferencedSOPInstanceUID = source_instance
    if "SourceImageSequence" not in ds:
        ds.SourceImageSequence = Sequence()
    ds.SourceImageSequence.append(reference)

    containers.dicom_remove_record(ds)  # an earlier marking's record (kept in the new record, if any)
    if record is not None:
        if is_envelope(record):  # for a recipient: the standard Encrypted Attributes Sequence
            containers.dicom_attach_envelope(ds, record)
        else:
            containers.dicom_attach_record(ds, record)
    if compression_uid is not None:
        compress_losslessly(ds, compression_uid, original.path)
    if signer is not None:
        sign_dataset(ds, signer)
    write_dicom_file(fh, ds)


def give_unknown_vrs_their_dictionary_vr(dataset: Any) -> None:
    """Standard elements the file wrote as UN get their dictionary VR, at every depth, in place.

    pydicom writes an element it has not parsed as it read it, so a UN would pass into the marked
    file, where dcmtk shows its bytes (a patient name in hex) or refuses the image; parsed, it is
    written in the dictionary's VR, the value unchanged. An element that does not parse stays as
    it was (its file's binding names it)."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if getattr(raw, "is_raw", False) and raw.VR != "SQ" and not dictionary_vr_differs(int(tag), raw.VR):
            continue  # its own VR (or implicit: no VR written), and no sequence to look into
        try:
            element = dataset[tag]
        except Exception:
            continue
        if element.VR == "SQ":
            for item in element.value or []:
                give_unknown_vrs_their_dictionary_vr(item)


#: The preamble every DICOM file wm writes carries. PS3.10 leaves the 128 bytes free for other
#: uses, so an input may hold a Windows executable header there and be a DICOM/PE polyglot
#: (CVE-2019-11687); wm never passes such bytes on. Zero bytes are what PS3.10 asks for when
#: the preamble is unused.
ZERO_PREAMBLE = bytes(128)


def write_dicom_file(fh: BinaryIO, ds: Any) -> None:
    """`ds` as a DICOM file (PS3.10: preamble, 'DICM', file meta) with a zeroed preamble,
    whatever preamble the dataset was read with. Every DICOM file wm writes goes through here."""
    import pydicom

    ds.preamble = ZERO_PREAMBLE
    pydicom.dcmwrite(fh, ds, enforce_file_format=True)


def set_native_pixel_data(ds: Any, pixels: np.ndarray, keep_high_bits: bool = True) -> None:
    """`pixels` as the dataset's native little-endian pixel data (Explicit VR Little Endian), in
    place; with `keep_high_bits`, unsigned words keep the dataset's bits above BitsStored where
    it holds native data (data to be compressed has none: encoders code BitsStored bits only)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    words = _with_original_high_bits(ds, pixels) if keep_high_bits else pixels
    if not _is_little_endian(ds):
        _swap_words_to_little_endian(ds)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    data = words.astype(words.dtype.newbyteorder("<")).tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def compress_losslessly(ds: Any, compression_uid: str, path: Path) -> None:
    """Re-encode the dataset's native pixel data with a lossless transfer syntax, in place."""
    import pydicom

    try:
        ds.compress(compression_uid, generate_instance_uid=False)  # the caller decides the identity
    except Exception as exc:  # the encoders raise many types; the message names the problem
        raise BadInputError(f"{path}: cannot re-encode losslessly as "
                            f"{pydicom.uid.UID(compression_uid).name}: {one_line(exc)}") from exc


def _with_original_high_bits(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """`pixels` as the words to store. When BitsStored < BitsAllocated in unsigned data, the bits
    above BitsStored belong to the original (old files keep overlays there): they are copied from
    its native pixel data, so that only the stored value changes. In signed data those bits are the
    sign extension of the new value (as written by numpy), which readers rely on; compressed
    originals have no such bits to keep."""
    allocated = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    native = syntax is None or not syntax.is_compressed
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if stored >= allocated or signed or not native or "PixelData" not in ds:
        return pixels
    unsigned = np.dtype(f"u{allocated // 8}")
    byte_order = "<" if _is_little_endian(ds) else ">"
    raw = ds.PixelData
    n_words = pixels.size
    if len(raw) < n_words * unsigned.itemsize:
        return pixels
    original_words = np.frombuffer(raw, dtype=unsigned.newbyteorder(byte_order), count=n_words).astype(unsigned)
    mask = unsigned.type((1 << stored) - 1)
    new_words = pixels.reshape(-1).view(unsigned) & mask
    combined = (original_words & ~mask) | new_words
    return combined.view(pixels.dtype).reshape(pixels.shape)


def dicom_high_bits(ds: Any, pixels: np.ndarray, bits_stored: int) -> np.ndarray | None:
    """The original words' bits above BitsStored (word >> BitsStored) where any is set, else None:
    old files keep overlays there, and a compressed marked copy cannot keep them (the
    restoration record does). Signed words: only where some are not the value's sign extension
    (which is what wm writes, and what restore would give back without them)."""
    words = _with_original_high_bits(ds, pixels)
    if words is not pixels:
        high = words.astype(np.uint32) >> bits_stored
        return high.astype(np.uint16) if high.any() else None
    return _signed_high_bits(ds, pixels)


def _signed_high_bits(ds: Any, pixels: np.ndarray) -> np.ndarray | None:
    if int(ds.get("PixelRepresentation", 0) or 0) != 1:
        return None
    found = bits_above_stored(ds)
    if found is None or found[0].size < pixels.size:
        return None
    high, sign_extension = (bits[:pixels.size] for bits in found)
    return high.reshape(pixels.shape) if (high != sign_extension).any() else None


def _derived_image_type(value: Any) -> list[str]:
    """ImageType with DERIVED as first value; the other values describe the image and stay."""
    values = _as_list(value)
    return ["DERIVED", *map(str, values[1:])] if len(values) > 1 else ["DERIVED", "SECONDARY"]


def _as_list(value: Any) -> list[Any]:
    """A DICOM value as a list: multi-valued elements are sequences, single values are not."""
    if value is None or value == "":
        return []
    if isinstance(value, SequenceABC) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]


def _is_little_endian(ds: Any) -> bool:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_transfer_syntax:
        return bool(syntax.is_little_endian)
    encoding = getattr(ds, "original_encoding", (None, True))
    return encoding[1] is not False


def _swap_words_to_little_endian(ds: Any) -> None:
    """Byte-swap OW/OF/OL/OD/OV values read from a big-endian file.

    pydicom converts numbers and text when changing endianness but keeps these binary values as
    raw bytes, so without this step, e.g., an overlay or LUT would come out scrambled. UN values
    have no known word size and are left as they are.
    """

    def swap(dataset: Any, element: Any) -> None:
        size = _WORD_SIZES.get(element.VR)
        if size and isinstance(element.value, (bytes, bytearray)) and element.keyword != "PixelData":
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()

    ds.walk(swap)
