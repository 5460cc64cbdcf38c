"""Seeds made from real files, and structured mutators that damage them.

Seeds: small DICOMs of pydicom's test data and the pydicom-data package (native, RLE Lossless,
JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, multi-frame, 8/16-bit, signed, big endian,
deflated, colour), plus DICOM, PNG, TIFF and JPEG files written here from their real pixel data.

Every mutator is a function `(rng, seed) -> bytes` and is deterministic given its
`random.Random`; `generate(family, seeds, run_seed, index)` picks seed and mutator from
`random.Random(f"{run_seed}:{family}:{index}")`, so any input of a run can be rebuilt from
its index alone (that is how the harness saves the input a dead child was reading).
"""

from __future__ import annotations

import contextlib
import functools
import io
import random
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

FAMILIES = ("dicom", "png", "tiff", "jpeg")
SUFFIXES = {"dicom": ".dcm", "png": ".png", "tiff": ".tif", "jpeg": ".jpg"}
MAGIC = {"dicom": b"\x00" * 128 + b"DICM", "png": b"\x89PNG\r\n\x1a\n", "tiff": b"II*\x00",
         "jpeg": b"\xff\xd8\xff"}


@dataclass(frozen=True)
class Seed:
    name: str  # file name, suffix included
    data: bytes


@dataclass(frozen=True)
class Mutant:
    family: str
    mutator: str
    seed: str
    suffix: str
    data: bytes


# ----------------------------------------------------------------------------------------------
# Seeds

#: pydicom test files used as DICOM seeds as they are (all below 120 KB).
DICOM_SEED_FILES = (
    "MR_small.dcm",                     # native 16-bit signed, explicit VR LE
    "CT_small.dcm",                     # native 16-bit signed 128x128
    "MR_small_bigendian.dcm",           # explicit VR big endian
    "MR_small_implicit.dcm",            # implicit VR LE
    "emri_small.dcm",                   # native multi-frame (10 frames) 16-bit unsigned
    "image_dfl.dcm",                    # deflated explicit VR LE, 8-bit
    "MR_small_RLE.dcm",                 # RLE Lossless 16-bit signed
    "emri_small_RLE.dcm",               # RLE Lossless multi-frame
    "JPGExtended.dcm",                  # JPEG extended 12-bit
    "JPEG-LL.dcm",                      # JPEG lossless 16-bit signed (pydicom-data)
    "MR_small_jpeg_ls_lossless.dcm",    # JPEG-LS lossless
    "MR_small_jp2klossless.dcm",        # JPEG 2000 lossless
    "JPEG2000.dcm",                     # JPEG 2000 (lossy syntax)
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 multi-frame
    "693_J2KI.dcm",                     # JPEG 2000 512x512
    "SC_rgb_rle.dcm",                   # colour RLE
    "SC_rgb_jpeg_dcmtk.dcm",            # colour JPEG baseline
    "SC_rgb.dcm",                       # colour native
)


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return str(path)


def _dcm_bytes(ds) -> bytes:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _real_arrays() -> dict[str, np.ndarray]:
    """Pixel data of real DICOMs, small: the raw material of the non-DICOM seeds."""
    import pydicom

    mr = pydicom.dcmread(_testdata("MR_small.dcm")).pixel_array  # int16 64x64
    ct = pydicom.dcmread(_testdata("CT_small.dcm")).pixel_array  # int16 128x128
    emri = pydicom.dcmread(_testdata("emri_small.dcm")).pixel_array  # uint16 10x64x64
    us8 = pydicom.dcmread(_testdata("JPGLosslessP14SV1_1s_1f_8b.dcm")).pixel_array  # uint8 768x1024
    rgb = pydicom.dcmread(_testdata("SC_rgb.dcm")).pixel_array  # uint8 100x100x3
    ct_u16 = (ct.astype(np.int32) - ct.min()).astype(np.uint16)
    lo, hi = np.percentile(ct, (1, 99))
    ct_u8 = np.clip((ct - lo) * 255.0 / max(hi - lo, 1), 0, 255).astype(np.uint8)
    return {
        "mr_u16": (mr.astype(np.int32) - mr.min()).astype(np.uint16),
        "ct_u16": ct_u16, "ct_i16": ct.astype(np.int16), "ct_u8": ct_u8,
        "us_u8": np.ascontiguousarray(us8[300:396, 400:528]),  # 96x128 crop
        "emri_u16": np.ascontiguousarray(emri[:3, :32, :32]),
        "rgb_u8": np.ascontiguousarray(rgb),
    }


def _made_dicom_seeds(arrays: dict[str, np.ndarray]) -> list[Seed]:
    """8-bit native, 8-bit RLE, JPEG baseline and MONOCHROME1 DICOMs from real pixel data."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid
    from PIL import Image

    def ds_from(template: str, pixels: np.ndarray):
        ds = pydicom.dcmread(_testdata(template))
        ds.Rows, ds.Columns = pixels.shape[-2:]
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                del ds[keyword]
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[template, str(pixels.shape), str(bits)])
        return ds

    seeds = []
    us8 = arrays["us_u8"]
    ds = ds_from("MR_small.dcm", us8)
    seeds.append(Seed("made_native_u8.dcm", _dcm_bytes(ds)))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    seeds.append(Seed("made_rle_u8.dcm", _dcm_bytes(ds)))

    ds = ds_from("MR_small.dcm", arrays["emri_u16"])
    ds.NumberOfFrames = arrays["emri_u16"].shape[0]
    ds.compress(RLELossless, encoding_plugin="pydicom")
    seeds.append(Seed("made_rle_u16_3frames.dcm", _dcm_bytes(ds)))

    ds = ds_from("MR_small.dcm", us8)
    buf = io.BytesIO()
    Image.fromarray(us8, mode=None).save(buf, format="JPEG", quality=90)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    seeds.append(Seed("made_jpeg_baseline_u8.dcm", _dcm_bytes(ds)))

    ds = ds_from("CT_small.dcm", arrays["ct_u16"][:64, :64].copy())
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (arrays["ct_u16"][:64, :64] & 0x0FFF).astype(np.uint16).tobytes()
    seeds.append(Seed("made_mono1_12bit.dcm", _dcm_bytes(ds)))
    return seeds


def _png_seeds(arrays: dict[str, np.ndarray]) -> list[Seed]:
    from PIL import Image

    def save(img, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG", **kw)
        return buf.getvalue()

    u8 = arrays["ct_u8"]
    rgb_gray = np.repeat(u8[..., None], 3, axis=2)
    return [
        Seed("ct_u8.png", save(Image.fromarray(u8))),
        Seed("mr_u16.png", save(Image.fromarray(arrays["mr_u16"]))),
        Seed("us_u8_interlaced.png", save(Image.fromarray(arrays["us_u8"][:64, :64]), interlace=1)),
        Seed("ct_u8_as_rgb.png", save(Image.fromarray(rgb_gray[:64, :64]))),
        Seed("ct_u8_palette.png", save(Image.fromarray(u8[:64, :64]).convert("P"))),
        Seed("ct_u8_gray_alpha.png", save(Image.fromarray(u8[:48, :48]).convert("LA"))),
        Seed("rgb_colour.png", save(Image.fromarray(arrays["rgb_u8"]))),
        Seed("ct_1bit.png", save(Image.fromarray(u8[:64, :64]).convert("1"))),
    ]


def _tiff_seeds(arrays: dict[str, np.ndarray]) -> list[Seed]:
    import tifffile

    def save(data, **kw) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, data, **kw)
        return buf.getvalue()

    return [
        Seed("ct_u8.tif", save(arrays["ct_u8"], photometric="minisblack")),
        Seed("mr_u16.tif", save(arrays["mr_u16"], photometric="minisblack")),
        Seed("ct_i16.tif", save(arrays["ct_i16"][:64, :64], photometric="minisblack")),
        Seed("mr_u16_bigendian.tif", save(arrays["mr_u16"], photometric="minisblack", byteorder=">")),
        Seed("ct_u16_deflate.tif", save(arrays["ct_u16"], photometric="minisblack", compression="zlib")),
        Seed("ct_u16_deflate_predictor.tif", save(arrays["ct_u16"][:64, :64], photometric="minisblack",
                                                  compression="zlib", predictor=True)),
        Seed("us_u8_lzma.tif", save(arrays["us_u8"][:64, :64], photometric="minisblack", compression="lzma")),
        Seed("mr_u16_tiled.tif", save(arrays["mr_u16"], photometric="minisblack", tile=(16, 16))),
        Seed("emri_stack.tif", save(arrays["emri_u16"], photometric="minisblack")),
        Seed("us_u8_strips.tif", save(arrays["us_u8"][:64, :64], photometric="minisblack", rowsperstrip=8)),
        Seed("ct_u8_miniswhite.tif", save(arrays["ct_u8"][:64, :64], photometric="miniswhite")),
        Seed("rgb_colour.tif", save(arrays["rgb_u8"][:48, :48], photometric="rgb")),
    ]


def _jpeg_seeds(arrays: dict[str, np.ndarray]) -> list[Seed]:
    from PIL import Image

    def save(img, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **kw)
        return buf.getvalue()

    u8 = Image.fromarray(arrays["ct_u8"])
    us = Image.fromarray(arrays["us_u8"])
    return [
        Seed("ct_u8.jpg", save(u8, quality=90)),
        Seed("us_u8_progressive.jpg", save(us, quality=75, progressive=True)),
        Seed("ct_u8_optimized.jpg", save(u8.crop((0, 0, 64, 64)), quality=60, optimize=True)),
        Seed("ct_u8_as_rgb.jpg", save(u8.crop((0, 0, 64, 64)).convert("RGB"), quality=95, subsampling=0)),
        Seed("rgb_colour.jpg", save(Image.fromarray(arrays["rgb_u8"]), quality=80)),
        Seed("rgb_colour_420.jpg", save(Image.fromarray(arrays["rgb_u8"]), quality=50, subsampling=2)),
        Seed("us_u8_cmyk.jpg", save(us.crop((0, 0, 32, 32)).convert("CMYK"), quality=80)),
    ]


def build_seeds() -> dict[str, list[Seed]]:
    """Seeds per image family, built from the installed test data (deterministic content)."""
    arrays = _real_arrays()
    dicom = []
    for name in DICOM_SEED_FILES:
        with open(_testdata(name), "rb") as fh:
            dicom.append(Seed(name, fh.read()))
    dicom += _made_dicom_seeds(arrays)
    return {"dicom": dicom, "png": _png_seeds(arrays), "tiff": _tiff_seeds(arrays),
            "jpeg": _jpeg_seeds(arrays)}


# ----------------------------------------------------------------------------------------------
# Generic byte-level damage


def _flip(rng: random.Random, data: bytes, start: int = 0, end: int | None = None, n: int | None = None) -> bytes:
    end = len(data) if end is None else min(end, len(data))
    if end <= start:
        return data
    out = bytearray(data)
    for _ in range(n or rng.choice((1, 1, 2, 3, 4, 8, 16))):
        i = rng.randrange(start, end)
        how = rng.random()
        if how < 0.4:
            out[i] ^= 1 << rng.randrange(8)
        elif how < 0.8:
            out[i] = rng.randrange(256)
        else:
            out[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80))
    return bytes(out)


def _truncate(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    start = min(max(start, 0), len(data))
    return data[: rng.randrange(start, len(data))] if len(data) > start else data[: len(data) // 2]


def _insert_delete(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    i = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:i] + rng.randbytes(rng.choice((1, 2, 4, 7, 64))) + data[i:]
    return data[:i] + data[i + rng.choice((1, 2, 4, 7, 64)):]


def random_bytes(rng: random.Random, family: str) -> bytes:
    """Noise with the family's suffix, sometimes behind the format's magic bytes."""
    body = rng.randbytes(rng.choice((0, 1, 3, 16, 132, 512, 4096, rng.randrange(8192))))
    return MAGIC[family] + body if rng.random() < 0.6 else body


def _interesting_int(rng: random.Random, original: int, bits: int) -> int:
    top = (1 << bits) - 1
    choices = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 64, 255, 256, top, top - 1, top // 2,
               top // 2 + 1, original + 1, original - 1, original * 2, original // 2, rng.randrange(top + 1)]
    return rng.choice(choices) & top


# ----------------------------------------------------------------------------------------------
# DICOM


@contextlib.contextmanager
def _lenient_pydicom_writes():
    """Let pydicom store values that break the standard (the point of a lie) without warnings."""
    import warnings

    from pydicom import config

    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.writing_validation_mode = previous


_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.8.1", "1.2.3.4", "", "1.2.840.10008.1.2.4.50\x00junk",
)
_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR",
                "YBR_ICT", "YBR_RCT", "", "MONOCHROME3", "monochrome2", "MONOCHROME2\\RGB")


def _header_lie(rng: random.Random, ds) -> str:
    """Change one pixel-module (or file meta) element to a lie; returns the keyword changed."""
    keyword = rng.choice(("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "NumberOfFrames",
                          "PhotometricInterpretation", "PixelRepresentation", "SamplesPerPixel",
                          "PlanarConfiguration", "TransferSyntaxUID", "delete"))
    if keyword in ("Rows", "Columns"):
        setattr(ds, keyword, _interesting_int(rng, int(ds.get(keyword, 64) or 64), 16))
    elif keyword == "BitsAllocated":
        ds.BitsAllocated = rng.choice((0, 1, 7, 8, 12, 16, 24, 32, 64, 255, 65535))
    elif keyword == "BitsStored":
        ba = int(ds.get("BitsAllocated", 16) or 16)
        ds.BitsStored = rng.choice((0, 1, ba - 1, ba, ba + 1, 17, 255, 65535)) & 0xFFFF
    elif keyword == "HighBit":
        bs = int(ds.get("BitsStored", 16) or 16)
        ds.HighBit = rng.choice((0, bs - 2, bs, bs + 5, 31, 65535)) & 0xFFFF
    elif keyword == "NumberOfFrames":
        value = rng.choice(("0", "-1", "2", "3", "11", "1000", "10000", "2147483648", "abc", "1.5", "", " 2 "))
        try:
            ds.NumberOfFrames = value
        except ValueError:  # not a number: stored as text, so that the reader meets it
            ds.add_new(0x00280008, "LO", value)
    elif keyword == "PhotometricInterpretation":
        ds.PhotometricInterpretation = rng.choice(_PHOTOMETRIC)
    elif keyword == "PixelRepresentation":
        ds.PixelRepresentation = rng.choice((0, 1, 2, 65535))
    elif keyword == "SamplesPerPixel":
        ds.SamplesPerPixel = rng.choice((0, 1, 2, 3, 4, 65535))
    elif keyword == "PlanarConfiguration":
        ds.PlanarConfiguration = rng.choice((0, 1, 2))
    elif keyword == "TransferSyntaxUID":
        ds.file_meta.TransferSyntaxUID = rng.choice(_TRANSFER_SYNTAXES)
    else:
        keyword = rng.choice(("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                              "PhotometricInterpretation", "SamplesPerPixel", "PixelData"))
        if keyword in ds:
            del ds[keyword]
        keyword = "delete" + keyword
    return keyword


def _dicom_elements(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """One to three header lies, written back with pydicom as the original was encoded."""
    import pydicom

    with _lenient_pydicom_writes():
        ds = pydicom.dcmread(io.BytesIO(seed.data), force=True)
        changed = [_header_lie(rng, ds) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        buf = io.BytesIO()
        try:
            pydicom.dcmwrite(buf, ds, enforce_file_format=False)
        except Exception:  # a lie pydicom cannot encode (e.g. a TS it cannot write): byte-level instead
            return "lie-unwritable", _dicom_flip_header(rng, seed.data)
    return "lie-" + "+".join(changed), buf.getvalue()


def _dicom_pixel_length(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Native pixel data shorter or longer than the header says, via pydicom."""
    import pydicom

    with _lenient_pydicom_writes():
        ds = pydicom.dcmread(io.BytesIO(seed.data), force=True)
        if "PixelData" not in ds or ds["PixelData"].is_undefined_length:
            return _pixel_stream_damage(rng, seed)
        raw = ds.PixelData
        if rng.random() < 0.5:
            ds.PixelData = raw[: rng.choice((0, 2, len(raw) // 2 & ~1, len(raw) - 2, len(raw) - 1))]
            how = "short"
        else:
            ds.PixelData = raw + rng.randbytes(rng.choice((1, 2, len(raw) // 8 * 2, len(raw))))
            how = "long"
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return f"pixel-{how}", buf.getvalue()


def _pixel_element(data: bytes) -> tuple[int, int, int] | None:
    """(length field offset, value offset, length) of the top-level Pixel Data element, found
    at the byte level (little or big endian, explicit or implicit VR); None if not found."""
    for tag, order in ((b"\xe0\x7f\x10\x00", "<"), (b"\x7f\xe0\x00\x10", ">")):
        i = data.rfind(tag)
        if i < 0:
            continue
        if data[i + 4:i + 6] in (b"OB", b"OW", b"UN", b"OF"):
            return i + 8, i + 12, struct.unpack(order + "I", data[i + 8:i + 12])[0]
        if len(data) >= i + 8:
            return i + 4, i + 8, struct.unpack(order + "I", data[i + 4:i + 8])[0]
    return None


_ITEM, _SEQ_DELIM = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"


def _items(data: bytes, start: int) -> tuple[list[tuple[int, int]], int | None]:
    """Encapsulated items [(tag offset, length)] from `start`, and the delimiter's offset."""
    items, p = [], start
    while p + 8 <= len(data):
        tag, length = data[p:p + 4], struct.unpack("<I", data[p + 4:p + 8])[0]
        if tag == _SEQ_DELIM:
            return items, p
        if tag != _ITEM:
            break
        items.append((p, length))
        p += 8 + length
    return items, None


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value & 0xFFFFFFFF) + data[offset + 4:]


def _pixel_stream_damage(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Damage inside the pixel stream or its encapsulation, at the byte level."""
    data = seed.data
    element = _pixel_element(data)
    if element is None:  # deflated syntax: the element is inside the compressed dataset
        return "stream-flip-anywhere", _flip(rng, data, 132)
    length_at, value_at, length = element
    if length != 0xFFFFFFFF:  # native
        choice = rng.random()
        if choice < 0.5:
            return "native-flip", _flip(rng, data, value_at)
        value = rng.choice((0, 1, 2, length - 1, length + 2, length * 2, len(data), 0xFFFFFFFE, 0xFFFFFFFF))
        return "native-length-field", _set_u32(data, length_at, value)

    items, delim = _items(data, value_at)
    if len(items) < 1:
        return "encaps-flip", _flip(rng, data, value_at)
    bot, fragments = items[0], items[1:]
    choice = rng.random()
    if fragments and choice < 0.40:
        p, n = rng.choice(fragments)
        start = p + 8
        if rng.random() < 0.5:  # the codec header (RLE header: 64 bytes; JPEG markers) is where it hurts
            return "fragment-flip-head", _flip(rng, data, start, start + min(n, 64))
        return "fragment-flip", _flip(rng, data, start, start + n)
    if fragments and choice < 0.50 and rng.random() < 0.08:
        lied = _codestream_size_lie(rng, data, fragments)
        if lied is not None:
            return lied
    if fragments and choice < 0.50 and seed.name.upper().find("RLE") >= 0:
        p, n = rng.choice(fragments)
        start = p + 8
        field = rng.randrange(16)
        if field == 0:
            value = rng.choice((0, 1, 2, 3, 4, 15, 16, 255, 0xFFFFFFFF))
        else:
            value = rng.choice((0, 1, 63, 64, 65, n - 1, n, n + 1, n * 4, 0x7FFFFFFF, 0xFFFFFFFF,
                                rng.randrange(max(n, 1))))
        return f"rle-header-{'count' if field == 0 else 'offset'}", _set_u32(data, start + 4 * field, value)
    if choice < 0.60:
        p, _ = rng.choice(items)
        tag = rng.choice((b"\xfe\xff\x0d\xe0", _SEQ_DELIM, b"\x00\x00\x00\x00", rng.randbytes(4),
                          b"\xff\xfe\xe0\x00"))
        return "item-tag", data[:p] + tag + data[p + 4:]
    if choice < 0.72:
        p, n = rng.choice(items)
        value = rng.choice((0, 1, 3, n - 1, n + 1, n - 2, n + 2, n * 2, len(data), 0xFFFFFFFF, 0xFFFFFFFE))
        return "item-length", _set_u32(data, p + 4, value)
    if choice < 0.80:
        if delim is not None:
            if rng.random() < 0.5:
                return "no-delimiter", data[:delim] + data[delim + 8:]
            return "delimiter-damaged", data[:delim] + rng.randbytes(8) + data[delim + 8:]
        return "no-delimiter-truncate", data[: len(data) - 8]
    if choice < 0.88:  # the basic offset table
        p, n = bot
        if n >= 4 and rng.random() < 0.5:
            cut = rng.choice((1, 2, 3, n // 2))
            return "bot-truncated", _set_u32(data, p + 4, n - cut)
        if n >= 4:
            at = p + 8 + 4 * rng.randrange(n // 4)
            return "bot-offset", _set_u32(data, at, rng.choice((1, 3, 0xFFFFFFFF, len(data), rng.randrange(1 << 20))))
        bogus = struct.pack("<" + "I" * 3, 0, rng.randrange(1 << 16), 0xFFFFFFF0)
        return "bot-invented", data[:p + 4] + struct.pack("<I", len(bogus)) + bogus + data[p + 8:]
    if fragments and choice < 0.94:
        p, n = rng.choice(fragments)
        if rng.random() < 0.5:  # shorter fragment, consistent length field
            keep = rng.randrange(0, max(n, 1)) & ~1
            return "fragment-short", data[:p + 4] + struct.pack("<I", keep) + data[p + 8:p + 8 + keep] + data[p + 8 + n:]
        extra = rng.randbytes(rng.choice((2, 64, 1024)))
        return "fragment-long", data[:p + 4] + struct.pack("<I", n + len(extra)) + data[p + 8:p + 8 + n] + extra + data[p + 8 + n:]
    if fragments:
        p, n = rng.choice(fragments)
        return "fragment-duplicated", data[:p + 8 + n] + data[p:p + 8 + n] + data[p + 8 + n:]
    return "encaps-truncate", _truncate(rng, data, value_at)


def _codestream_size_lie(rng: random.Random, data: bytes, fragments) -> tuple[str, bytes] | None:
    """The image size inside a compressed frame (JPEG 2000 SIZ, JPEG SOF) made to lie: the DICOM
    header keeps the true size, so only a check of the codestream itself catches it."""
    p, n = fragments[0]
    body = data[p + 8:p + 8 + n]
    siz = body.find(b"\xff\x51")
    if siz >= 0 and siz + 14 <= len(body):  # SIZ: marker, Lsiz, Rsiz, Xsiz, Ysiz (u32, big endian)
        at = p + 8 + siz + 6
        w, h = rng.choice(((30_000, 30_000), (65_536, 65_536), (2**31, 2**31), (100_000, 10), (1, 2**30)))
        return "j2k-siz-size", data[:at] + struct.pack(">II", w, h) + data[at + 8:]
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc3", b"\xff\xc2"):
        sof = body.find(marker)
        if sof >= 0 and sof + 9 <= len(body):  # SOF: marker, Lf, P, Y (u16), X (u16)
            at = p + 8 + sof + 5
            h, w = rng.choice(((65535, 65535), (60000, 60000), (1, 65535), (0, 64)))
            return "jpeg-sof-size", data[:at] + struct.pack(">HH", h, w) + data[at + 4:]
    return None


def _dicom_flip_header(rng: random.Random, data: bytes) -> bytes:
    element = _pixel_element(data)
    end = element[0] if element else len(data)
    return _flip(rng, data, 128, end)


def _dicom_truncate(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    element = _pixel_element(seed.data)
    start = element[1] if element and rng.random() < 0.7 else 0
    return "truncate", _truncate(rng, seed.data, start)


def dicom_mutators() -> list[tuple[float, Callable]]:
    return [
        (0.30, _dicom_elements),
        (0.08, _dicom_pixel_length),
        (0.40, _pixel_stream_damage),
        (0.08, lambda rng, seed: ("header-flip", _dicom_flip_header(rng, seed.data))),
        (0.08, _dicom_truncate),
        (0.03, lambda rng, seed: ("insert-delete", _insert_delete(rng, seed.data))),
        (0.03, lambda rng, seed: ("flip-anywhere", _flip(rng, seed.data))),
    ]


# ----------------------------------------------------------------------------------------------
# PNG


def _png_chunks(data: bytes) -> list[list]:
    """[[type, data, crc_ok]] of a well-formed PNG (our seeds)."""
    chunks, p = [], 8
    while p + 8 <= len(data):
        n = struct.unpack(">I", data[p:p + 4])[0]
        kind, body = data[p + 4:p + 8], data[p + 8:p + 8 + n]
        chunks.append([kind, body, None])  # None: compute the right CRC on writing
        p += 12 + n
    return chunks


def _png_join(chunks: list[list]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for chunk in chunks:
        kind, body, crc = chunk[0], chunk[1], chunk[2]
        length = chunk[3] if len(chunk) > 3 else len(body)
        crc = zlib.crc32(kind + body) if crc is None else crc
        out.append(struct.pack(">I", length & 0xFFFFFFFF) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF))
    return b"".join(out)


def _png_raw(chunks: list[list]) -> bytes:
    return zlib.decompress(b"".join(c[1] for c in chunks if c[0] == b"IDAT"))


def _png_with_raw(chunks: list[list], raw: bytes) -> list[list]:
    first = next(i for i, c in enumerate(chunks) if c[0] == b"IDAT")
    rest = [c for c in chunks if c[0] != b"IDAT"]
    rest.insert(first, [b"IDAT", zlib.compress(raw, 9), None])
    return rest


def png_bomb(width: int = 100_000, height: int = 100_000, bit_depth: int = 8, colour_type: int = 0,
             raw_bytes: int = 1 << 20) -> bytes:
    """A PNG declaring width x height whose IDAT is `raw_bytes` of zeros compressed (a few KB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return _png_join([[b"IHDR", ihdr, None], [b"IDAT", zlib.compress(bytes(raw_bytes), 9), None],
                      [b"IEND", b"", None]])


@functools.lru_cache(maxsize=1)
def _ztxt_bomb() -> bytes:
    """A zTXt chunk body whose text inflates to 50 MB."""
    return b"Comment\x00\x00" + zlib.compress(bytes(50 << 20), 9)


def _png_mutate(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    chunks = _png_chunks(seed.data)
    choice = rng.random()
    if choice < 0.25:
        ihdr = chunks[0]
        w, h, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", ihdr[1])
        field = rng.choice(("width", "height", "size", "depth", "colour", "compression", "filter", "interlace"))
        if field == "width":
            w = _interesting_int(rng, w, 32)
        elif field == "height":
            h = _interesting_int(rng, h, 32)
        elif field == "size":
            w, h = h, w
        elif field == "depth":
            depth = rng.choice((0, 1, 2, 3, 4, 8, 16, 32, 255))
        elif field == "colour":
            ctype = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255))
        elif field == "compression":
            comp = rng.choice((1, 8, 255))
        elif field == "filter":
            filt = rng.choice((1, 4, 255))
        else:
            inter = rng.choice((0, 1, 2, 255))
        ihdr[1] = struct.pack(">IIBBBBB", w, h, depth, ctype, comp, filt, inter)
        if rng.random() < 0.15:
            ihdr[2] = rng.randrange(1 << 32)
        return f"ihdr-{field}", _png_join(chunks)
    if choice < 0.33:
        chunk = rng.choice(chunks)
        chunk[2] = zlib.crc32(chunk[0] + chunk[1]) ^ (1 << rng.randrange(32))
        return "crc-broken", _png_join(chunks)
    if choice < 0.40:
        chunk = rng.choice(chunks)
        chunk.append(rng.choice((0, 1, len(chunk[1]) - 1, len(chunk[1]) + 1, 0x7FFFFFFF, 0xFFFFFFFF)))
        return "chunk-length", _png_join(chunks)
    if choice < 0.55:
        idats = [c for c in chunks if c[0] == b"IDAT"]
        chunk = rng.choice(idats)
        chunk[1] = _flip(rng, chunk[1])
        return "idat-flip", _png_join(chunks)
    if choice < 0.67:
        raw = _png_raw(chunks)
        how = rng.choice(("filter", "short", "long", "flip"))
        if how == "filter":
            raw = bytearray(raw)
            for _ in range(rng.choice((1, 4, 16))):
                raw[rng.randrange(len(raw))] = rng.choice((5, 6, 127, 255))
            raw = bytes(raw)
        elif how == "short":
            raw = raw[: rng.randrange(len(raw))]
        elif how == "long":
            raw = raw + rng.randbytes(rng.choice((1, 100, len(raw))))
        else:
            raw = _flip(rng, raw)
        return f"raw-{how}", _png_join(_png_with_raw(chunks, raw))
    if choice < 0.77:
        how = rng.choice(("drop", "duplicate", "swap", "insert", "ztxt-bomb", "no-iend", "plte", "trns"))
        if how == "drop":
            del chunks[rng.randrange(len(chunks))]
        elif how == "duplicate":
            i = rng.randrange(len(chunks))
            chunks.insert(rng.randrange(len(chunks) + 1), list(chunks[i][:3]))
        elif how == "swap" and len(chunks) > 1:
            i, j = rng.sample(range(len(chunks)), 2)
            chunks[i], chunks[j] = chunks[j], chunks[i]
        elif how == "insert":
            kind = rng.choice((b"tEXt", b"zTXt", b"iCCP", b"sBIT", b"gAMA", b"pHYs", b"acTL", b"fcTL", b"eXIf", b"abcd"))
            chunks.insert(1, [kind, rng.randbytes(rng.choice((0, 1, 13, 100))), None])
        elif how == "ztxt-bomb":
            chunks.insert(1, [b"zTXt", _ztxt_bomb(), None])
        elif how == "no-iend":
            chunks = [c for c in chunks if c[0] != b"IEND"]
        elif how == "plte":
            chunks.insert(1, [b"PLTE", rng.randbytes(rng.choice((0, 3, 4, 768, 771))), None])
        else:
            chunks.insert(len(chunks) - 1, [b"tRNS", rng.randbytes(rng.choice((0, 1, 2, 6, 300))), None])
        return f"chunks-{how}", _png_join(chunks)
    if choice < 0.80:
        huge = rng.choice(((100_000, 100_000), (2**31 - 1, 1), (1, 2**31 - 1), (65535, 65535), (20_000, 20_000)))
        return "bomb", png_bomb(*huge, bit_depth=rng.choice((8, 16)), raw_bytes=rng.choice((1 << 10, 1 << 20)))
    if choice < 0.90:
        return "truncate", _truncate(rng, seed.data, 8)
    if choice < 0.95:
        return "insert-delete", _insert_delete(rng, seed.data)
    return "flip-anywhere", _flip(rng, seed.data)


# ----------------------------------------------------------------------------------------------
# TIFF

_TIFF_TAGS = {256: "width", 257: "length", 258: "bits", 259: "compression", 262: "photometric",
              273: "strip-offsets", 277: "samples", 278: "rows-per-strip", 279: "strip-counts",
              284: "planar", 317: "predictor", 322: "tile-width", 323: "tile-length", 324: "tile-offsets",
              325: "tile-counts", 339: "sample-format"}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}


def _tiff_entries(data: bytes) -> tuple[str, list[tuple[int, int, int, int, int]], int]:
    """Byte order, the first IFD's entries [(entry offset, tag, type, count, value offset)] and
    the offset of its next-IFD field. Classic TIFF only (our seeds)."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    n = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    entries = []
    for k in range(n):
        e = ifd + 2 + 12 * k
        tag, typ, count = struct.unpack(order + "HHI", data[e:e + 8])
        size = _TYPE_SIZES.get(typ, 1) * count
        value_at = e + 8 if size <= 4 else struct.unpack(order + "I", data[e + 8:e + 12])[0]
        entries.append((e, tag, typ, count, value_at))
    return order, entries, ifd + 2 + 12 * n


def _put(data: bytes, at: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    mask = (1 << (8 * size)) - 1
    return data[:at] + struct.pack(fmt, value & mask) + data[at + size:]


def tiff_bomb(width: int = 100_000, height: int = 100_000, bits: int = 16) -> bytes:
    """A little-endian TIFF declaring width x height with one 16-byte strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd_at = 8
    strip_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = strip_at if tag == 273 else value
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + bytes(16)
    return bytes(out)


def _tiff_mutate(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    data = seed.data
    order, entries, next_at = _tiff_entries(data)
    choice = rng.random()
    known = [e for e in entries if e[1] in _TIFF_TAGS]
    if choice < 0.40:
        e, tag, typ, count, value_at = rng.choice(known)
        k = rng.randrange(count) if count else 0
        size = _TYPE_SIZES.get(typ, 4)
        at = value_at + k * size
        fmt = order + {1: "B", 3: "H", 4: "I"}.get(typ, "I")
        if at + struct.calcsize(fmt) > len(data):
            return "ifd-flip", _flip(rng, data, 8, next_at + 4)
        original = struct.unpack(fmt, data[at:at + struct.calcsize(fmt)])[0]
        bits = 8 * struct.calcsize(fmt)
        if tag == 259:
            value = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34712, 50000, 65535))
        elif tag == 262:
            value = rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 32844, 65535))
        elif tag == 339:
            value = rng.choice((0, 1, 2, 3, 4, 5, 6, 65535))
        elif tag == 258:
            value = rng.choice((0, 1, 2, 4, 7, 8, 12, 16, 24, 32, 64, 65535))
        else:
            value = _interesting_int(rng, original, bits)
        return f"ifd-{_TIFF_TAGS[tag]}", _put(data, at, fmt, value)
    if choice < 0.48:
        e, tag, typ, count, value_at = rng.choice(entries)
        if rng.random() < 0.5:
            return "ifd-type", _put(data, e + 2, order + "H", rng.choice((0, 1, 2, 5, 7, 13, 16, 17, 99, 65535)))
        return "ifd-count", _put(data, e + 4, order + "I", rng.choice((0, count + 1, count * 1000, 2**28, 2**32 - 1)))
    if choice < 0.54:
        ifd = struct.unpack(order + "I", data[4:8])[0]
        if rng.random() < 0.5:
            return "ifd-entry-count", _put(data, ifd, order + "H", rng.choice((0, 1, len(entries) + 1, 4096, 65535)))
        return "ifd-offset", _put(data, 4, order + "I", rng.choice((0, 1, 7, len(data), len(data) - 2, 2**31)))
    if choice < 0.60:
        ifd = struct.unpack(order + "I", data[4:8])[0]
        target = rng.choice((ifd, 8, len(data) + 16, 1, next_at - 12))
        return "next-ifd-loop", _put(data, next_at, order + "I", target)
    if choice < 0.72:
        strips = [e for e in entries if e[1] in (273, 324)]
        counts = [e for e in entries if e[1] in (279, 325)]
        if strips and counts:
            _, _, styp, scount, soff = strips[0]
            _, _, ctyp, _, coff = counts[0]
            k = rng.randrange(scount)
            ssize, csize = _TYPE_SIZES.get(styp, 4), _TYPE_SIZES.get(ctyp, 4)
            start = struct.unpack(order + ("I" if ssize == 4 else "H"), data[soff + k * ssize:soff + k * ssize + ssize])[0]
            n = struct.unpack(order + ("I" if csize == 4 else "H"), data[coff + k * csize:coff + k * csize + csize])[0]
            return "strip-flip", _flip(rng, data, start, start + n)
    if choice < 0.76:
        huge = rng.choice(((100_000, 100_000), (2**31 - 1, 2**31 - 1), (65536, 65536), (1, 2**32 - 1), (30_000, 30_000)))
        return "bomb", tiff_bomb(*huge, bits=rng.choice((8, 16)))
    if choice < 0.88:
        return "truncate", _truncate(rng, data, 8)
    if choice < 0.94:
        return "insert-delete", _insert_delete(rng, data)
    return "flip-anywhere", _flip(rng, data)


# ----------------------------------------------------------------------------------------------
# JPEG


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Marker segments before the first scan [(offset, marker, length)], and the scan's data offset."""
    segments, p = [], 2
    while p + 4 <= len(data) and data[p] == 0xFF:
        marker = data[p + 1]
        length = struct.unpack(">H", data[p + 2:p + 4])[0]
        segments.append((p, marker, length))
        p += 2 + length
        if marker == 0xDA:
            return segments, p
    return segments, p


def jpeg_with_size(seed: bytes, width: int, height: int) -> bytes:
    """`seed` (a JPEG) with the frame header's size replaced: a tiny file declaring a huge image."""
    segments, _ = _jpeg_segments(seed)
    p = next(off for off, marker, _ in segments if marker in (0xC0, 0xC1, 0xC2))
    return seed[:p + 5] + struct.pack(">HH", height, width) + seed[p + 9:]


def _jpeg_mutate(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    data = seed.data
    segments, scan = _jpeg_segments(data)
    sof = [s for s in segments if s[1] in (0xC0, 0xC1, 0xC2)]
    choice = rng.random()
    if choice < 0.25 and sof:
        p = sof[0][0]
        field = rng.choice(("height", "width", "precision", "components", "sampling", "qtable", "huge"))
        if field == "height":
            return "sof-height", _put(data, p + 5, ">H", _interesting_int(rng, 64, 16))
        if field == "width":
            return "sof-width", _put(data, p + 7, ">H", _interesting_int(rng, 64, 16))
        if field == "precision":
            return "sof-precision", _put(data, p + 4, ">B", rng.choice((0, 1, 2, 7, 9, 12, 16, 255)))
        if field == "components":
            return "sof-components", _put(data, p + 9, ">B", rng.choice((0, 2, 3, 4, 5, 255)))
        if field == "sampling":
            return "sof-sampling", _put(data, p + 11, ">B", rng.choice((0x00, 0x11, 0x22, 0x44, 0x0F, 0xF0, 0xFF)))
        if field == "qtable":
            return "sof-qtable", _put(data, p + 12, ">B", rng.choice((1, 3, 4, 7, 255)))
        w, h = rng.choice(((65535, 65535), (65500, 65500), (30000, 30000), (1, 65535), (65535, 1)))
        return "sof-huge", jpeg_with_size(data, w, h)
    if choice < 0.35:
        p, marker, length = rng.choice(segments)
        return "segment-length", _put(data, p + 2, ">H", rng.choice((0, 1, 2, 3, length - 1, length + 1, 65535)))
    if choice < 0.45:
        p, marker, length = rng.choice(segments)
        return f"segment-{marker:02X}-flip", _flip(rng, data, p + 4, p + 2 + length)
    if choice < 0.53:
        p, marker, length = rng.choice(segments)
        how = rng.choice(("drop", "duplicate"))
        if how == "drop":
            return f"segment-{marker:02X}-drop", data[:p] + data[p + 2 + length:]
        return f"segment-{marker:02X}-dup", data[:p] + data[p:p + 2 + length] + data[p:]
    if choice < 0.57:
        dri = b"\xff\xdd\x00\x04" + struct.pack(">H", rng.choice((1, 2, 255, 65535)))
        return "dri-without-rst", data[:2] + dri + data[2:]
    if choice < 0.72:
        return "entropy-flip", _flip(rng, data, scan, len(data) - 2)
    if choice < 0.76:
        return "no-eoi", data[:-2]
    if choice < 0.88:
        return "truncate", _truncate(rng, data, 2)
    if choice < 0.94:
        return "insert-delete", _insert_delete(rng, data)
    return "flip-anywhere", _flip(rng, data)


# ----------------------------------------------------------------------------------------------
# Dispatch

_MUTATORS = {
    "png": [(1.0, _png_mutate)],
    "tiff": [(1.0, _tiff_mutate)],
    "jpeg": [(1.0, _jpeg_mutate)],
}

#: Share of inputs of each image family that are plain noise (with the family's suffix).
RANDOM_SHARE = 0.04


def generate(family: str, seeds: dict[str, list[Seed]], run_seed: int, index: int) -> Mutant:
    """Input `index` of a run: deterministic from (run_seed, family, index)."""
    rng = random.Random(f"{run_seed}:{family}:{index}")
    suffix = SUFFIXES[family]
    if rng.random() < RANDOM_SHARE:
        return Mutant(family, "random-bytes", "-", suffix, random_bytes(rng, family))
    seed = rng.choice(seeds[family])
    table = dicom_mutators() if family == "dicom" else _MUTATORS[family]
    weights = [w for w, _ in table]
    mutator = rng.choices([m for _, m in table], weights)[0]
    name, data = mutator(rng, seed)
    return Mutant(family, name, seed.name, suffix, data)


# ----------------------------------------------------------------------------------------------
# The item-2 limit files (headers that promise far more than the file holds)


def limit_files(seeds: dict[str, list[Seed]]) -> dict[str, bytes]:
    """Small files whose headers declare enormous images: each must be refused quickly."""
    import pydicom

    out = {
        "png_bomb_100000x100000.png": png_bomb(100_000, 100_000, 8, 0, 1 << 20),
        "png_bomb_16bit_65535x65535.png": png_bomb(65535, 65535, 16, 0, 1 << 16),
        "tiff_bomb_100000x100000.tif": tiff_bomb(100_000, 100_000, 16),
        "tiff_bomb_2g_x_2g.tif": tiff_bomb(2**31 - 1, 2**31 - 1, 8),
    }
    jpeg_seed = next(s for s in seeds["jpeg"] if s.name == "ct_u8.jpg").data
    out["jpeg_sof_65535x65535.jpg"] = jpeg_with_size(jpeg_seed, 65535, 65535)
    out["jpeg_sof_60000x60000.jpg"] = jpeg_with_size(jpeg_seed, 60000, 60000)
    for name, rows, frames in (("MR_small.dcm", 65535, 10000), ("MR_small_RLE.dcm", 65535, 10000),
                               ("MR_small_jp2klossless.dcm", 65535, 1)):
        with _lenient_pydicom_writes():
            ds = pydicom.dcmread(io.BytesIO(next(s for s in seeds["dicom"] if s.name == name).data))
            ds.Rows = ds.Columns = rows
            ds.NumberOfFrames = str(frames)
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=False)
        stem = name[:-4]
        out[f"dicom_{stem}_{rows}x{rows}x{frames}.dcm"] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------------------------
# Messages and keys

_TEXT_PIECES = ("hello", "ÄÖÜ", "患者", "\U0001F600", "\x00", "\x1b[2J", "\r\n", "\t", "\x7f", "\u202e",
                "\ufeff", "\udcff", "\udc80", "\ud800", "\udfff", "\\", "'", '"', " ", "%s", "{}", "0", "ff")


def message_input(rng: random.Random) -> tuple[str, str, bool]:
    """(mutator, message text, hex?) for `message_bytes`."""
    how = rng.choice(("pieces", "surrogateescape", "control", "long", "empty", "hex-odd", "hex-good",
                      "hex-junk", "hex-long", "nul"))
    if how == "pieces":
        return how, "".join(rng.choice(_TEXT_PIECES) for _ in range(rng.randrange(1, 8))), False
    if how == "surrogateescape":  # what Python makes of undecodable argv bytes
        return how, rng.randbytes(rng.randrange(1, 24)).decode("utf-8", "surrogateescape"), False
    if how == "control":
        return how, "".join(chr(rng.randrange(32)) for _ in range(rng.randrange(1, 16))), False
    if how == "long":
        return how, rng.choice("ab\x00é") * rng.choice((17, 1000, 10**6)), False
    if how == "empty":
        return how, "", rng.random() < 0.5
    if how == "hex-odd":
        return how, rng.randbytes(rng.randrange(0, 16)).hex() + "a", True
    if how == "hex-good":
        return how, rng.randbytes(rng.randrange(0, 24)).hex(), True
    if how == "hex-junk":
        return how, rng.choice(("zz", "0x41", "41 42", "４１", "\udcff\udcff", "41\x0042", "\u0660\u0661")), True
    if how == "hex-long":
        return how, "00" * rng.choice((17, 10**5, 5 * 10**5)), True
    return how, "a\x00b", False


def key_input(rng: random.Random) -> tuple[str, str | None, bytes | str | None]:
    """(mutator, --key text or None, key-file content / 'missing' / 'folder' or None)."""
    how = rng.choice(("text", "surrogateescape", "empty", "long", "file-text", "file-empty", "file-newline",
                      "file-binary", "file-huge", "file-missing", "file-folder", "file-crlf"))
    if how == "text":
        return how, "".join(rng.choice(_TEXT_PIECES) for _ in range(rng.randrange(1, 6))), None
    if how == "surrogateescape":
        return how, rng.randbytes(rng.randrange(1, 16)).decode("utf-8", "surrogateescape"), None
    if how == "empty":
        return how, "", None
    if how == "long":
        return how, "k" * 10**6, None
    if how == "file-text":
        return how, None, "secret".encode() + rng.randbytes(4).hex().encode()
    if how == "file-empty":
        return how, None, b""
    if how == "file-newline":
        return how, None, rng.choice((b"\n", b"\r\n", b"\n\n", b"k\n"))
    if how == "file-crlf":
        return how, None, b"key\r\n"
    if how == "file-binary":
        return how, None, rng.randbytes(rng.choice((1, 32, 4096)))
    if how == "file-huge":
        return how, None, b"h" * (20 << 20)
    return how, None, "missing" if how == "file-missing" else "folder"
