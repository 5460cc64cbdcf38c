"""Reading and writing the images `wm` watermarks, whatever the format: the one entry point that
sniffs a file, checks it and hands it to its format's reader (`dicom`, `raster`), and the one
writer that checks an output before any work, writes it atomically (`writing.write_atomically`)
with the restoration record and signature the integrity codecs make, never replaces a file
unless asked to and never writes onto the original.

Every problem with an input file surfaces as a one-line `BadInputError` naming the file; no
pydicom, Pillow or tifffile exception escapes for bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import BadInputError
from ..integrity import containers
from .dicom import DICOM_COMPRESSIONS, read_dicom, write_dicom
from .discovery import sniff_kind
from .medical_image import (DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, JPEG_SUFFIXES, PNG_SUFFIXES, TIFF_SUFFIXES,
                            MedicalImage, one_line)
from .raster import read_jpeg, read_png, read_tiff, write_tiff
from .writing import png_bytes, write_atomically


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
            kind = "dicom"  # maybe a DICOM file without preamble; read_dicom decides
        else:
            expected = _format_name(suffix)
            raise BadInputError(f"{path}: not a valid {expected} file (unrecognised content)")

    size = path.stat().st_size
    if size > _max_file_bytes(max_pixels):
        raise BadInputError(f"{path}: file of {size / 2**20:.0f} MiB is larger than an image of at most "
                            f"{max_pixels:,} pixels can be (raise --max-pixels to read it)")
    readers: dict[str, Callable[[Path, int], MedicalImage]] = {
        "dicom": read_dicom, "png": read_png, "tiff": read_tiff, "jpeg": read_jpeg,
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
        raise BadInputError(f"{path}: cannot read {kind.upper()} file: {one_line(exc)}") from None


def _max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of `max_pixels` 16-bit samples can honestly be: twice its
    uncompressed size (padding, overlays, private data) plus room for a large header."""
    return 4 * max_pixels + 64 * 2**20


def _format_name(suffix: str) -> str:
    for name, suffixes in (("DICOM", DICOM_SUFFIXES), ("PNG", PNG_SUFFIXES),
                           ("TIFF", TIFF_SUFFIXES), ("JPEG", JPEG_SUFFIXES)):
        if suffix in suffixes:
            return name
    return "DICOM, PNG, TIFF or JPEG"


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
                signer: Any = None, sop_instance_uid: str | None = None) -> Path:
    """Write `pixels` (same shape and stored range as `original.pixels`) as a new image file.

    DICOM originals give DICOM output (whatever the suffix): the original dataset with new pixel
    data and the identity of a derived image (see DICOM_ELEMENTS_CHANGED_ON_WRITE). Other
    originals are written as PNG or TIFF according to `out_path`'s suffix, in the original dtype.
    `derivation` is recorded in DICOM only, and so is `compression` (a DICOM_COMPRESSIONS name;
    PNG and TIFF are always lossless). `verify`, if given, is called on the complete
    temporary file before it is moved into place; if it raises, nothing is written. `record` (a
    sealed restoration record) is stored in the file (integrity.containers says where), and
    `signer` (DICOM only, an integrity.signature.Signer) signs the instance as written;
    `sop_instance_uid` (DICOM only) is the new instance's UID where the caller chose it. Returns
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
            write_dicom(original, stored, fh, derivation, DICOM_COMPRESSIONS[compression], record, signer,
                        sop_instance_uid)
    elif out_path.suffix.lower() in PNG_SUFFIXES:
        def writer(fh: BinaryIO) -> None:
            png = png_bytes(stored[0])
            fh.write(containers.png_with_record(png, record) if record is not None else png)
    else:
        def writer(fh: BinaryIO) -> None:
            write_tiff(stored, original.photometric, fh,
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
