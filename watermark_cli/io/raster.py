"""PNG and TIFF in and out, JPEG in (exports and attacked copies reach `wm extract` as JPEG;
wm never writes a lossy format). Bit depth and range come from the sample type; colour is
refused, except where all channels are equal (a gray image a viewer exported as RGB)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import BadInputError
from ..integrity.png_chunks import png_chunks
from .encapsulated import first_jpeg_header
from .medical_image import MedicalImage, check_declared_size

# Pillow and tifffile are imported inside the functions that need them.


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
    hides 16-bit colour by reducing it to 8. Every chunk's CRC is checked first: Pillow decodes
    pixel data whose CRC is wrong, libpng refuses it, so such a file shows wm an image that other
    readers do not show at all."""
    data = path.read_bytes()
    head = data[:33]
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise BadInputError(f"{path}: corrupt PNG file (no IHDR header)")
    for chunk in png_chunks(data):
        if not chunk.crc_ok:
            raise BadInputError(f"{path}: corrupt PNG file (chunk {chunk.name!r} fails its CRC check)")
    # PNG defines compression and filter method 0 and interlace 0 or 1: Pillow reads any other
    # interlace byte as Adam7, libpng (ImageMagick, vips, OpenCV) refuses the file.
    if head[26] != 0 or head[27] != 0 or head[28] > 1:
        raise BadInputError(f"{path}: corrupt PNG file (IHDR compression {head[26]}, filter {head[27]}, "
                            f"interlace {head[28]}: methods PNG does not define)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24], head[25]


def read_png(path: Path, max_pixels: int) -> MedicalImage:
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


def read_tiff(path: Path, max_pixels: int) -> MedicalImage:
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
        for index, each in enumerate(tif.pages):
            _check_tiff_layout(path, index, each)
            _check_tiff_jpeg_process(path, index, each, tif.filehandle)
        pixels = tif.series[0].asarray()
    if pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise BadInputError(f"{path}: TIFF sample type {pixels.dtype} is not supported "
                            "(only 8/16-bit integer grayscale)")
    if pixels.ndim < 2:
        raise BadInputError(f"{path}: TIFF image is not two-dimensional")
    pixels = np.ascontiguousarray(pixels.reshape(-1, *pixels.shape[-2:]), dtype=pixels.dtype.newbyteorder("="))
    return _gray_image(path, pixels, "tiff", "MONOCHROME1" if photometric == 0 else "MONOCHROME2")


def _check_tiff_layout(path: Path, index: int, page) -> None:
    """A page stored in strips or in tiles, never both, with one offset and one byte count per
    strip or tile the image needs (TIFF 6.0 §3, §15). Readers disagree on anything else: Pillow
    reads the last of the offsets of a single strip and the strips of a page that has tiles too,
    tifffile and libtiff the first and the tiles, so a forged image there shows in one viewer while
    wm reads and seals the other."""
    tags = page.tags
    strips = [tags.get(code) for code in (273, 279)]  # StripOffsets, StripByteCounts
    tiles = [tags.get(code) for code in (324, 325)]  # TileOffsets, TileByteCounts
    width, length = int(page.imagewidth), int(page.imagelength)
    planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
    if any(strips) and any(tiles):
        problem = "holds both strips and tiles"
    elif any(tiles):
        tile_width, tile_length = int(page.tilewidth), int(page.tilelength)
        needed = None
        if tile_width and tile_length:
            needed = -(-width // tile_width) * -(-length // tile_length) * planes
        problem = _offsets_problem(tiles, needed, "tile")
    else:
        rows = tags.get(278)  # RowsPerStrip: the whole image in one strip when absent
        rows_per_strip = int(rows.value) if rows is not None else 2**32 - 1
        needed = -(-length // rows_per_strip) * planes if rows_per_strip else None
        problem = _offsets_problem(strips, needed, "strip")
    predictor = tags.get(317)
    compression = int(page.compression)
    if predictor is not None and int(predictor.value) != 1 and compression not in _PREDICTED_COMPRESSIONS:
        # tifffile undoes a predictor whatever the compression; libtiff (ImageMagick, vips, OpenCV)
        # and Pillow only for the codecs that define one, and show the raw differences otherwise.
        problem = f"has Predictor {int(predictor.value)} with compression {compression}, which defines none"
    if problem:
        raise BadInputError(f"{path}: TIFF page {index + 1} {problem} (readers would show different images)")


def _check_tiff_jpeg_process(path: Path, index: int, page, filehandle) -> None:
    """A JPEG-compressed page (compression 7) must be DCT-coded (SOF0-SOF2): imagecodecs also
    decodes lossless JPEG (SOF3), which libtiff with its libjpeg refuses, so ImageMagick, vips and
    tiffcp would show nothing where wm read and sealed an image."""
    if int(page.compression) != 7 or not page.dataoffsets or not page.databytecounts:
        return
    filehandle.seek(page.dataoffsets[0])
    found = first_jpeg_header(filehandle.read(min(int(page.databytecounts[0]), 65536)))
    if found is not None and found[0] not in (0xC0, 0xC1, 0xC2):
        raise BadInputError(f"{path}: TIFF page {index + 1} is JPEG-compressed with marker FF{found[0]:02X} "
                            "where libtiff reads DCT only (readers would show different images)")


# Compressions libtiff applies a TIFF Predictor to: LZW, Deflate (Adobe's and the old code),
# LZMA and ZSTD.
_PREDICTED_COMPRESSIONS = frozenset({5, 8, 32946, 34925, 50000})


def _offsets_problem(tags, needed: int | None, unit: str) -> str | None:
    offsets, counts = (len(tag.value) if isinstance(tag.value, tuple) else 1 if tag is not None else 0
                       for tag in tags)
    if needed is None:
        return f"has a {unit} size of 0"
    if offsets != needed or counts != needed:
        return f"lists {offsets} {unit} offsets and {counts} byte counts for the {needed} {unit}(s) it needs"
    return None


def read_jpeg(path: Path, max_pixels: int) -> MedicalImage:
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


def write_tiff(pixels: np.ndarray, photometric: str, fh: BinaryIO, extratags=()) -> None:
    """Uncompressed TIFF; a single frame is written as a plain 2-D image, several as a stack."""
    import tifffile

    data = pixels[0] if pixels.shape[0] == 1 else pixels
    tifffile.imwrite(fh, data, photometric="miniswhite" if photometric == "MONOCHROME1" else "minisblack",
                     extratags=list(extratags))
