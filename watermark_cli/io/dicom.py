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
from .encapsulated import check_codestream_sizes, check_frame_tables, check_jpeg_frames, check_rle_segments
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
    high_bit = _high_bit(ds)
    if high_bit is not None and high_bit != bits_stored - 1:
        # PS3.5 8.1.1: High Bit is one less than Bits Stored. Otherwise readers place the bits
        # two ways: pydicom takes the low BitsStored bits, dcmtk the ones below High Bit (a
        # 12-bit MR with High Bit 15 was another image to each, and wm marked pydicom's).
        raise BadInputError(f"{path}: HighBit {high_bit} is not BitsStored - 1 ({bits_stored - 1}): readers place "
                            "the pixel bits differently")
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _declared_frames(path, ds)
    check_declared_size(path, (frames, rows, cols), max_pixels, "DICOM ")
    _check_native_length(path, ds, frames * rows * cols * (bits_allocated // 8))
    check_codestream_sizes(path, ds, rows, cols)
    check_frame_tables(path, ds, frames)
    check_rle_segments(path, ds, frames, rows * cols, samples * bits_allocated // 8)
    check_jpeg_frames(path, ds, frames)
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
        _parse_every_sequence(pydicom.dcmread(path, force=True))
    except Exception:
        pass
    finally:
        _PARSE_CHECK.found = None
    return ElementsReadTwoWays(tuple(sorted(set(found.repeated))), tuple(dict.fromkeys(found.other_vr)))


def _parse_every_sequence(dataset: Any) -> None:
    """Read the items of every sequence in `dataset`, at any depth, through the element
    generator. A sequence whose VR the file states (SQ) is read as the data set is; one that
    becomes a sequence only when converted (implicit VR, or UN with a dictionary VR of SQ) is
    read then. An element of any other explicit VR never becomes one, so it is left raw:
    converting every value (`iterall`) was two thirds of this check's time, twice per embed."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if getattr(raw, "is_raw", False) and raw.VR not in (None, "SQ", "UN"):
            continue
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value or []:
                _parse_every_sequence(item)


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


def _high_bit(ds: Any) -> int | None:
    """High Bit as an integer, None where the header has none (or not a number)."""
    try:
        value = ds.get("HighBit")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _swap_words_to_little_endian(ds: Any) -> None:
    """Byte-swap OW/OF/OL/OD/OV values read from a big-endian file.

    pydicom converts numbers and text when changing endianness but keeps these binary values as
    raw bytes, so without this step, e.g., an overlay or LUT would come out scrambled. UN values
    have no known word size and are left as they are. The image's own Pixel Data is written anew;
    a thumbnail's (Icon Image Sequence) is swapped like any other (it was kept, and the written
    file's check refused every big-endian file with a thumbnail).
    """

    def swap(dataset: Any, element: Any) -> None:
        size = _WORD_SIZES.get(element.VR)
        if (size and isinstance(element.value, (bytes, bytearray))
                and not (dataset is ds and element.keyword == "PixelData")):
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()

    ds.walk(swap)
