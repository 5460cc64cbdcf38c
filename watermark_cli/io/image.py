"""Reading and writing the images `wm` watermarks: DICOM, PNG, TIFF (read/write) and JPEG (read).

Everything here works on STORED pixel values in their native integer dtype, because the PSNR
guarantee (design §1) is measured on the values of the file as written. For DICOM that means
before Rescale Slope/Intercept and without inverting MONOCHROME1. What the file says about
displaying them (modality transform, VOI windows and LUTs, per frame where it says so) is kept
beside them as a `views.Display`, from which `views.reader_views` builds the views the floor
holds in.

Every problem with an input file surfaces as a one-line `BadInputError` naming the file; no
pydicom, Pillow or tifffile exception escapes for bad input. Colour images are refused rather
than silently converted to gray, except for JPEG, which is read only to extract marks from
exported or attacked copies (see `_read_jpeg`).

Writes are atomic (`writing.write_atomically`), never replace an existing file unless asked
to, and never write onto the original.
"""

from __future__ import annotations

import copy
import os
import re
import struct
from collections.abc import Sequence
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import BadInputError
from ..integrity import containers
from ..integrity.envelope import is_envelope
from ..integrity.signature import sign_dataset
from ..views import Display, VoiWindow, display_from_dicom, window_in_stored_units
from .writing import png_bytes, write_atomically

# Heavy imports (pydicom, Pillow, tifffile) happen inside the functions that need them so that
# `wm --help` stays fast.

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PNG_SUFFIXES = frozenset({".png"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
#: Suffixes `wm` accepts. '' stands for suffix-less DICOM files, recognised by the 'DICM' preamble.
SUPPORTED_SUFFIXES = frozenset(DICOM_SUFFIXES | PNG_SUFFIXES | TIFF_SUFFIXES | JPEG_SUFFIXES | {""})

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

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_MAX_DERIVATION_CHARS = 1024  # DerivationDescription is ST

#: Default for `--max-pixels`: rows x columns x frames an input may declare before anything is
#: decoded (10^8, e.g. 381 CT slices of 512 x 512; at 16 bits 200 MB of stored values). Headers are
#: checked against it before any pixel is decoded, so a decompression bomb or a header that lies
#: costs a header read, not the memory it asks for.
DEFAULT_MAX_PIXELS = 100_000_000

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


@dataclass(eq=False)
class MedicalImage:
    """One image (all its frames) as stored in its file, plus what is needed to write it back."""

    pixels: np.ndarray  # (frames, rows, cols), stored values, native integer dtype
    kind: str  # 'dicom' | 'png' | 'tiff' | 'jpeg'
    path: Path
    bits_stored: int
    stored_min: int
    stored_max: int
    photometric: str  # 'MONOCHROME1' | 'MONOCHROME2'
    modality: str | None
    source: Any = field(default=None, repr=False)  # pydicom Dataset for DICOM, else None
    display: Display = field(default_factory=Display)  # modality transform and VOIs, per frame

    @property
    def window(self) -> tuple[float, float] | None:
        """The first declared linear VOI window of the first frame, in stored units (None when
        there is none, or when a Modality LUT makes stored and modality values non-linear)."""
        frame = self.display.frame(0)
        first = next((voi for voi in frame.vois if isinstance(voi, VoiWindow)), None)
        return window_in_stored_units(frame.modality, first) if first is not None else None

    @property
    def nominal_peak(self) -> float:
        """Design §1 'nominal' peak: 2^BitsStored - 1 (PNG/TIFF: 255 or 65535)."""
        return float(2**self.bits_stored - 1)

    @property
    def n_frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])


# --------------------------------------------------------------------------------------------
# Discovery


def is_image_file(path: str | Path) -> bool:
    """Cheap check used to pick files out of a folder: a known suffix, or a DICOM preamble.

    Only files with an unknown suffix (DICOM files are often named by UID or have none) are
    opened, and only their first 132 bytes are read.
    """
    path = Path(path)
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES and suffix != "":
        return True
    try:
        return sniff_kind(path) == "dicom"
    except OSError:
        return False


def iter_image_files(folder: str | Path) -> list[Path]:
    """All image files below `folder`, recursively, sorted (see `scan_folder`)."""
    return scan_folder(folder)[0]


def collect_image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of `inputs`, files and folders (recursively), each once, sorted; a path
    that does not exist is a one-line error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(iter_image_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise BadInputError(f"no such file or folder: {item}")
    return sorted(dict.fromkeys(files))


def scan_folder(folder: str | Path, exclude: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(skipped file, why)]) below `folder`, recursively, each sorted.

    Hidden files and folders are skipped silently, so that our own `.NAME.tmp-*` files and `.git`
    never count; so are DICOMDIRs (an index, not an image) and everything under `exclude` (an
    output folder placed inside the input folder must not become input on the next run).
    Symbolic links are never followed out of `folder`: a linked folder is not entered (a link
    can make a loop) and a linked file counts only when it resolves inside `folder`; both are
    listed as skipped otherwise, so nothing outside the tree the user named is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder")
    root_resolved = folder.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(folder):
        kept = []
        for name in sorted(dirs):
            candidate = Path(root) / name
            if name.startswith(".") or (excluded is not None and candidate.resolve() == excluded):
                continue
            if candidate.is_symlink():
                skipped.append((candidate, "a linked folder (links are not followed)"))
                continue
            kept.append(name)
        dirs[:] = kept
        for name in files:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            candidate = Path(root) / name
            if candidate.is_symlink() and not _is_within(candidate.resolve(), root_resolved):
                skipped.append((candidate, "a link leading outside the input folder"))
            elif is_image_file(candidate):
                images.append(candidate)
            else:
                skipped.append((candidate, "not an image"))
    return sorted(images), sorted(skipped)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def sniff_kind(path: Path) -> str | None:
    """The format named by the file's first bytes, or None; trusting content over suffix."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if head.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    return None


# --------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> MedicalImage:
    """Read a DICOM, PNG, TIFF or JPEG file into a `MedicalImage`; BadInputError for any problem.

    The declared size (rows x columns x frames) is checked against `max_pixels` before any pixel is
    decoded. Whatever a decoder raises, Python exception or a native extension's panic (pyo3's
    PanicException derives from BaseException), becomes the one-line error; only Ctrl-C and exit
    pass through. A decoder that kills the interpreter cannot be caught here: `isolation` runs
    this function in a process of its own for that.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder, not an image file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise BadInputError(f"{path}: not a regular file")
    try:
        kind = sniff_kind(path)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot open ({exc.strerror or exc})") from exc

    suffix = path.suffix.lower()
    if kind is None:
        if suffix in DICOM_SUFFIXES or suffix == "":
            kind = "dicom"  # maybe a DICOM file without preamble; _read_dicom decides
        else:
            expected = _format_name(suffix)
            raise BadInputError(f"{path}: not a valid {expected} file (unrecognised content)")

    size = path.stat().st_size
    if size > _max_file_bytes(max_pixels):
        raise BadInputError(f"{path}: file of {size / 2**20:.0f} MiB is larger than an image of at most "
                            f"{max_pixels:,} pixels can be (raise --max-pixels to read it)")
    readers: dict[str, Callable[[Path, int], MedicalImage]] = {
        "dicom": _read_dicom, "png": _read_png, "tiff": _read_tiff, "jpeg": _read_jpeg,
    }
    try:
        return readers[kind](path, max_pixels)
    except BadInputError:
        raise
    except MemoryError:
        raise BadInputError(f"{path}: not enough memory to decode this {kind.upper()} file") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any library error or native panic on a bad file: one line
        raise BadInputError(f"{path}: cannot read {kind.upper()} file: {_one_line(exc)}") from None


def _max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of `max_pixels` 16-bit samples can honestly be: twice its
    uncompressed size (padding, overlays, private data) plus room for a large header."""
    return 4 * max_pixels + 64 * 2**20


def check_declared_size(path: Path, dimensions: Sequence[int], max_pixels: int, what: str = "") -> None:
    """Refuse, before decoding, an image whose header declares more pixels than `max_pixels`
    (or none at all). `dimensions` are the declared sizes, e.g. (frames, rows, columns)."""
    sizes = [int(d) for d in dimensions]
    total = 1
    for value in sizes:
        total *= value
    shape = " x ".join(str(d) for d in sizes)
    if any(d <= 0 for d in sizes):
        raise BadInputError(f"{path}: {what}header declares an empty image ({shape})")
    if total > max_pixels:
        raise BadInputError(f"{path}: {what}header declares {total:,} pixels ({shape}), more than the limit of "
                            f"{max_pixels:,} (--max-pixels); nothing decoded")


def _format_name(suffix: str) -> str:
    for name, suffixes in (("DICOM", DICOM_SUFFIXES), ("PNG", PNG_SUFFIXES),
                           ("TIFF", TIFF_SUFFIXES), ("JPEG", JPEG_SUFFIXES)):
        if suffix in suffixes:
            return name
    return "DICOM, PNG, TIFF or JPEG"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_dicom(path: Path, max_pixels: int) -> MedicalImage:
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
            raise BadInputError(f"{path}: not a DICOM file ({_one_line(exc)})") from exc
        if "Rows" not in ds:
            raise BadInputError(f"{path}: not a readable DICOM image (no DICOM header found)")
        _record_guessed_transfer_syntax(ds)

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

    decoded = _decode_dicom_pixels(path, ds, pixel_array)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")  # native byte order
    pixels = np.ascontiguousarray(decoded.astype(dtype).reshape(-1, rows, cols))

    # pydicom masks (or sign-extends) the bits above BitsStored; a value still outside the range
    # means the header contradicts the data, and the PSNR peak and write checks would be wrong.
    stored_min, stored_max = _stored_range(bits_stored, signed)
    if pixels.size and (pixels.min() < stored_min or pixels.max() > stored_max):
        raise BadInputError(f"{path}: pixel values {pixels.min()}..{pixels.max()} do not fit "
                            f"BitsStored {bits_stored} (inconsistent DICOM header)")
    modality = str(ds.get("Modality", "") or "").strip() or None
    return MedicalImage(
        pixels=pixels, kind="dicom", path=path, bits_stored=bits_stored,
        stored_min=stored_min, stored_max=stored_max, photometric=photometric, modality=modality,
        source=ds, display=display_from_dicom(ds, pixels.shape[0]),
    )


def _declared_frames(path: Path, ds: Any) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise BadInputError(f"{path}: DICOM NumberOfFrames {value!r} is not a number") from None
    return frames or 1  # 0 is non-conformant for 1 (pydicom reads it so too)


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
        raise BadInputError(f"{path}: broken encapsulated DICOM pixel data: {_one_line(exc)}") from None
    for fragment in fragments:
        size = _codestream_size(bytes(fragment[:65536]))
        if size is not None and size != (rows, cols):
            raise BadInputError(f"{path}: a compressed frame declares {size[1]} x {size[0]} pixels, the DICOM "
                                f"header {cols} x {rows} (inconsistent file); nothing decoded")


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


def _decode_dicom_pixels(path: Path, ds: Any, pixel_array: Callable[[Any], np.ndarray]) -> np.ndarray:
    """pydicom's decode, with the warnings that mean garbage values (see _GARBAGE_WARNINGS) made
    errors."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = pixel_array(ds)
        except (KeyboardInterrupt, SystemExit):
            raise
        except MemoryError:
            raise BadInputError(f"{path}: not enough memory to decode the DICOM pixel data") from None
        except BaseException as exc:  # pydicom's and the plugins' errors, and native panics
            raise BadInputError(f"{path}: cannot decode DICOM pixel data: {_one_line(exc)}") from None
    for warning in caught:
        text = str(warning.message)
        if any(marker in text for marker in _GARBAGE_WARNINGS):
            raise BadInputError(f"{path}: DICOM pixel data does not match its header: {_one_line(warning.message)}")
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


def _stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def _gray_image(path: Path, pixels: np.ndarray, kind: str, photometric: str = "MONOCHROME2") -> MedicalImage:
    """A MedicalImage for the non-DICOM formats: bit depth and range come from the dtype."""
    info = np.iinfo(pixels.dtype)
    return MedicalImage(
        pixels=pixels, kind=kind, path=path, bits_stored=pixels.dtype.itemsize * 8,
        stored_min=int(info.min), stored_max=int(info.max),
        photometric=photometric, modality=None, source=None,
    )


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk: read before Pillow, which
    hides 16-bit colour by reducing it to 8."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise BadInputError(f"{path}: corrupt PNG file (no IHDR header)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24], head[25]


def _read_png(path: Path, max_pixels: int) -> MedicalImage:
    """8- or 16-bit grayscale PNG.

    An 8-bit RGB/RGBA/gray+alpha/palette PNG is accepted as gray only when R == G == B and alpha
    is opaque everywhere (common for gray images exported by viewers); it is written back as a
    one-channel gray PNG with the same values. Any real colour is refused.
    """
    from PIL import Image

    width, height, bit_depth, colour_type = _png_header(path)
    check_declared_size(path, (height, width), max_pixels, "PNG ")
    Image.MAX_IMAGE_PIXELS = None  # --max-pixels replaces Pillow's own bomb check
    with Image.open(path) as img:
        img.load()
        if colour_type == 0:  # grayscale
            if bit_depth not in (8, 16):
                raise BadInputError(f"{path}: {bit_depth}-bit grayscale PNG is not supported (only 8 or 16 bits)")
            pixels = np.asarray(img)
            pixels = pixels.astype(np.uint8 if bit_depth == 8 else np.uint16)
        else:
            if bit_depth == 16:
                raise BadInputError(f"{path}: 16-bit colour PNG images are not supported (grayscale only)")
            rgba = np.asarray(img.convert("RGBA"))
            if not _is_opaque_gray(rgba):
                raise BadInputError(f"{path}: colour PNG images are not supported (grayscale only)")
            pixels = rgba[..., 0].copy()
    return _gray_image(path, pixels[np.newaxis], "png")


def _is_opaque_gray(rgba: np.ndarray) -> bool:
    return bool(np.all(rgba[..., 0] == rgba[..., 1]) and np.all(rgba[..., 0] == rgba[..., 2])
                and np.all(rgba[..., 3] == np.iinfo(rgba.dtype).max))


def _read_tiff(path: Path, max_pixels: int) -> MedicalImage:
    """8/16-bit (unsigned, or signed 16-bit) grayscale TIFF via tifffile; a 3-D stack is frames.

    Only the first series is read (pyramids and thumbnails are ignored). MINISWHITE is reported
    as MONOCHROME1 and kept on write, mirroring DICOM: stored values are never inverted.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise BadInputError(f"{path}: TIFF file holds no image")
        page = tif.series[0].pages[0]
        photometric = int(page.photometric)
        if page.samplesperpixel != 1 or photometric not in (0, 1):  # 0 MINISWHITE, 1 MINISBLACK
            raise BadInputError(f"{path}: colour TIFF images are not supported (grayscale only)")
        check_declared_size(path, tif.series[0].shape, max_pixels, "TIFF ")
        pixels = tif.series[0].asarray()
    if pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise BadInputError(f"{path}: TIFF sample type {pixels.dtype} is not supported "
                            "(only 8/16-bit integer grayscale)")
    if pixels.ndim < 2:
        raise BadInputError(f"{path}: TIFF image is not two-dimensional")
    pixels = np.ascontiguousarray(pixels.reshape(-1, *pixels.shape[-2:]), dtype=pixels.dtype.newbyteorder("="))
    return _gray_image(path, pixels, "tiff", "MONOCHROME1" if photometric == 0 else "MONOCHROME2")


def _read_jpeg(path: Path, max_pixels: int) -> MedicalImage:
    """8-bit JPEG, read only: JPEG inputs are exported or attacked copies handed to `extract`.

    Colour is tolerated here (unlike DICOM/PNG/TIFF) because an export may have been saved as
    RGB: equal channels are taken as they are, otherwise the image is converted to luminance
    (ITU-R 601, Pillow's 'L'), which is what the exporting viewer started from.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # --max-pixels replaces Pillow's own bomb check, with its message
    with Image.open(path) as img:
        check_declared_size(path, img.size[::-1], max_pixels, "JPEG ")
        img.load()
        if img.mode == "L":
            pixels = np.asarray(img).copy()
        elif img.mode == "RGB":
            rgb = np.asarray(img)
            if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 0] == rgb[..., 2]):
                pixels = rgb[..., 0].copy()
            else:
                pixels = np.asarray(img.convert("L")).copy()
        else:
            raise BadInputError(f"{path}: JPEG mode {img.mode} is not supported (8-bit gray or RGB only)")
    return _gray_image(path, pixels.astype(np.uint8)[np.newaxis], "jpeg")


# --------------------------------------------------------------------------------------------
# The restoration record a file carries (integrity.containers says where each format keeps it)

def file_record(image: MedicalImage) -> bytes | None:
    """The sealed record stored in the file `image` was read from, or None."""
    if image.kind == "dicom":
        return containers.dicom_record(image.source)
    if image.kind == "png":
        return containers.png_record(Path(image.path).read_bytes())
    if image.kind == "tiff":
        import tifffile

        with tifffile.TiffFile(image.path) as tif:
            tag = tif.pages[0].tags.get(containers.TIFF_TAG) if tif.pages else None
            return bytes(tag.value) if tag is not None else None
    return None  # JPEG (an export) carries no record


# --------------------------------------------------------------------------------------------
# Writing


def check_writable(original: MedicalImage, out_path: str | Path, overwrite: bool = False) -> Path:
    """Every reason `write_image` would refuse `out_path`, checked before any work is done."""
    out_path = Path(out_path)
    if _same_file(out_path, original.path):
        raise BadInputError(f"{out_path}: refusing to write onto the original image")
    if out_path.is_dir():
        raise BadInputError(f"{out_path}: is a folder, cannot write an image there")
    if out_path.exists() and not overwrite:
        raise BadInputError(f"{out_path}: already exists (use --overwrite to replace it)")
    suffix = out_path.suffix.lower()
    if original.kind == "dicom":
        if suffix in PNG_SUFFIXES | TIFF_SUFFIXES | JPEG_SUFFIXES:
            raise BadInputError(f"{out_path}: a DICOM image is written as DICOM; use a .dcm name (or none)")
        return out_path
    if suffix in PNG_SUFFIXES:
        if original.pixels.shape[0] != 1 or original.pixels.dtype not in (np.uint8, np.uint16):
            raise BadInputError(f"{out_path}: PNG holds one unsigned 8/16-bit frame; this image has "
                                f"{original.pixels.shape[0]} frame(s) of {original.pixels.dtype}, use .tif")
    elif suffix in JPEG_SUFFIXES:
        raise BadInputError(f"{out_path}: writing JPEG is not supported (lossy); use .png or .tif")
    elif suffix not in TIFF_SUFFIXES:
        raise BadInputError(f"{out_path}: cannot write a {original.kind.upper()} image with suffix "
                            f"'{out_path.suffix}'; use .png or .tif")
    return out_path


def write_image(original: MedicalImage, pixels: np.ndarray, out_path: str | Path, *,
                derivation: str, overwrite: bool = False, compression: str = "none",
                verify: Callable[[Path], None] | None = None, record: bytes | None = None,
                signer: Any = None) -> Path:
    """Write `pixels` (same shape and stored range as `original.pixels`) as a new image file.

    DICOM originals give DICOM output (whatever the suffix): the original dataset with new pixel
    data and the identity of a derived image (see DICOM_ELEMENTS_CHANGED_ON_WRITE). Other
    originals are written as PNG or TIFF according to `out_path`'s suffix, in the original dtype.
    `derivation` is recorded in DICOM only, and so is `compression` (a DICOM_COMPRESSIONS name;
    PNG and TIFF are always lossless). `verify`, if given, is called on the complete
    temporary file before it is moved into place; if it raises, nothing is written. `record` (a
    sealed restoration record) is stored in the file (integrity.containers says where), and
    `signer` (DICOM only, an integrity.signature.Signer) signs the instance as written. Returns
    the path written.
    """
    out_path = check_writable(original, out_path, overwrite)
    if compression not in DICOM_COMPRESSIONS:
        raise BadInputError(f"unknown compression {compression!r} (choose from {', '.join(DICOM_COMPRESSIONS)})")
    stored = _validated_pixels(original, pixels)

    if signer is not None and original.kind != "dicom":
        raise BadInputError(f"{original.path}: only DICOM files can carry a digital signature (--sign)")
    if original.kind == "dicom":
        def writer(fh: BinaryIO) -> None:
            _write_dicom(original, stored, fh, derivation, DICOM_COMPRESSIONS[compression], record, signer)
    elif out_path.suffix.lower() in PNG_SUFFIXES:
        def writer(fh: BinaryIO) -> None:
            png = png_bytes(stored[0])
            fh.write(containers.png_with_record(png, record) if record is not None else png)
    else:
        def writer(fh: BinaryIO) -> None:
            _write_tiff(stored, original.photometric, fh,
                        extratags=[containers.tiff_record_tag(record)] if record is not None else ())

    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{out_path.parent}: cannot create folder ({exc.strerror or exc})") from exc
    write_atomically(out_path, writer, overwrite=overwrite, verify=verify)
    return out_path


def _same_file(a: Path, b: Path) -> bool:
    """True if `a` is `b`, also through symlinks or hard links."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _validated_pixels(original: MedicalImage, pixels: np.ndarray) -> np.ndarray:
    """`pixels` cast to the original dtype, after checking shape, integrality and stored range.

    Violations are programming errors in the caller (the guard clips and rounds), hence ValueError.
    """
    pixels = np.asarray(pixels)
    if pixels.shape != original.pixels.shape:
        raise ValueError(f"pixel shape {pixels.shape} differs from the original's {original.pixels.shape}")
    if pixels.dtype.kind not in "iub":
        if not np.all(np.isfinite(pixels)) or not np.array_equal(pixels, np.round(pixels)):
            raise ValueError("pixel values must be integers (round before writing)")
    if pixels.size and (pixels.min() < original.stored_min or pixels.max() > original.stored_max):
        raise ValueError(f"pixel values {pixels.min()}..{pixels.max()} outside the stored range "
                         f"{original.stored_min}..{original.stored_max}")
    return np.ascontiguousarray(pixels.astype(original.pixels.dtype.newbyteorder("=")))


def _write_tiff(pixels: np.ndarray, photometric: str, fh: BinaryIO, extratags=()) -> None:
    """Uncompressed TIFF; a single frame is written as a plain 2-D image, several as a stack."""
    import tifffile

    data = pixels[0] if pixels.shape[0] == 1 else pixels
    tifffile.imwrite(fh, data, photometric="miniswhite" if photometric == "MONOCHROME1" else "minisblack",
                     extratags=list(extratags))


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _write_dicom(original: MedicalImage, pixels: np.ndarray, fh: BinaryIO, derivation: str,
                 compression_uid: str | None = None, record: bytes | None = None, signer: Any = None) -> None:
    """The original dataset as a derived image with new little-endian pixel data: native, or
    losslessly re-encoded with `compression_uid`; with the restoration record and a signature
    when given."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(original.source)
    set_native_pixel_data(ds, pixels, keep_high_bits=compression_uid is None)
    # An earlier signature no longer matches the new instance (the record keeps it for restore).
    for keyword in ("DigitalSignaturesSequence", "MACParametersSequence"):
        if keyword in ds:
            del ds[keyword]

    source_class = ds.get("SOPClassUID")
    source_instance = ds.get("SOPInstanceUID")
    ds.SOPInstanceUID = generate_uid()
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
                            f"{pydicom.uid.UID(compression_uid).name}: {_one_line(exc)}") from exc


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
    restoration record does)."""
    words = _with_original_high_bits(ds, pixels)
    if words is pixels or words.dtype.kind != "u":
        return None
    high = words.astype(np.uint32) >> bits_stored
    return high.astype(np.uint16) if high.any() else None


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
