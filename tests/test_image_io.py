"""io.image on real files: pydicom's bundled test images and the clinical images of pydicom-data.

No mocks: every check reads and writes real files, and written DICOM is checked again with
pydicom itself (an independent decoder of what we wrote).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from watermark_cli.errors import BadInputError
from watermark_cli.io.dicom import DICOM_ELEMENTS_CHANGED_ON_WRITE
from watermark_cli.io.discovery import is_image_file, iter_image_files
from watermark_cli.io.image import read_image, write_image
from watermark_cli.io.medical_image import SUPPORTED_SUFFIXES, MedicalImage


def data_file(name: str) -> Path:
    """A pydicom/pydicom-data test file; never downloads (the test machine is offline)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    assert str(path) in message


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------------------------
# DICOM round trips

ROUND_TRIP_DICOM = [
    # (file, what it covers)
    ("CT_small.dcm", "CT, signed 16 bit, explicit VR LE, private OB elements, trailing padding"),
    ("693_UNCR.dcm", "CT 512², signed, BitsStored 14 < BitsAllocated 16"),
    ("MR_small.dcm", "MR, signed 16 bit"),
    ("MR2_UNCR.dcm", "MR 1024², 12 bit, non-unit RescaleSlope"),
    ("RG3_UNCR.dcm", "CR 1760², MONOCHROME1, BitsStored 10"),
    ("emri_small.dcm", "enhanced MR, 10 frames, BitsStored 12"),
    ("eCT_Supplemental.dcm", "enhanced CT, 2 frames 512², functional groups"),
    ("MR_small_bigendian.dcm", "explicit VR big endian"),
    ("emri_small_big_endian.dcm", "big endian multi-frame"),
    ("MR_small_implicit.dcm", "implicit VR little endian"),
    ("image_dfl.dcm", "deflated explicit VR LE, 8 bit"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    ("MR_small_RLE.dcm", "RLE lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    ("693_J2KR.dcm", "CT JPEG 2000 lossless 512²"),
    ("emri_small_jpeg_2k_lossless.dcm", "JPEG 2000 lossless, multi-frame"),
    ("JPEG-LL.dcm", "NM, JPEG lossless process 14"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US 8 bit, JPEG lossless"),
    ("RG3_J2KI.dcm", "CR JPEG 2000 lossy: lossy flags must be kept"),
]


def assert_same_elements(original: pydicom.Dataset, written: pydicom.Dataset) -> None:
    """Every element outside DICOM_ELEMENTS_CHANGED_ON_WRITE is present with an equal value, both ways."""
    changed = set(DICOM_ELEMENTS_CHANGED_ON_WRITE)

    def kept(element: pydicom.DataElement) -> bool:
        if element.tag.element == 0 and element.tag.group > 2:  # retired group length
            return "GroupLength" not in changed
        return element.keyword not in changed

    for before, after in ((original.file_meta, written.file_meta), (original, written)):
        tags_before = {e.tag for e in before if kept(e)}
        tags_after = {e.tag for e in after if kept(e)}
        assert tags_before == tags_after
        for tag in sorted(tags_before):
            assert after[tag].value == before[tag].value, f"{tag} {before[tag].keyword} changed"


@pytest.mark.parametrize("name", [n for n, _ in ROUND_TRIP_DICOM])
def test_dicom_round_trip_keeps_pixels_and_every_other_element(name, tmp_path):
    source = data_file(name)
    digest = sha256(source)
    image = read_image(source)
    assert image.kind == "dicom" and image.pixels.ndim == 3
    assert image.pixels.dtype.isnative

    out = write_image(image, image.pixels.copy(), tmp_path / "out.dcm", derivation="wm test round trip")
    assert out == tmp_path / "out.dcm" and leftovers(tmp_path) == []
    assert sha256(source) == digest  # the original is never touched

    back = read_image(out)
    assert back.pixels.dtype == image.pixels.dtype
    assert np.array_equal(back.pixels, image.pixels)
    for attribute in ("bits_stored", "stored_min", "stored_max", "window", "photometric", "modality"):
        assert getattr(back, attribute) == getattr(image, attribute), attribute

    original = pydicom.dcmread(source)
    written = pydicom.dcmread(out)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(pixel_array(written).reshape(image.pixels.shape), image.pixels)
    assert_same_elements(original, written)

    assert written.SOPInstanceUID != original.SOPInstanceUID
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert written.ImageType[0] == "DERIVED"
    if "ImageType" in original and len(original.ImageType) > 1:
        assert list(written.ImageType[1:]) == list(original.ImageType[1:])
    assert written.DerivationDescription == "wm test round trip"
    reference = written.SourceImageSequence[-1]
    assert reference.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == original.SOPClassUID
    if "LossyImageCompression" in original:
        assert written.LossyImageCompression == original.LossyImageCompression


def test_signed_ct_with_modified_pixels_survives_bit_exactly(tmp_path):
    """BitsStored 14 signed: extremes of the stored range and ±1 changes must come back exactly."""
    image = read_image(data_file("693_UNCR.dcm"))
    assert (image.bits_stored, image.stored_min, image.stored_max) == (14, -8192, 8191)
    assert image.pixels.dtype == np.int16 and image.pixels.min() < 0

    marked = image.pixels.astype(np.int32)
    marked[0, 100:200:3, 100:200:5] += 1
    marked[0, 300:400:2, 50:450:7] -= 1
    marked[0, 0, :8] = image.stored_min
    marked[0, 1, :8] = image.stored_max
    marked = np.clip(marked, image.stored_min, image.stored_max)
    out = write_image(image, marked, tmp_path / "marked.dcm", derivation="marked")

    assert np.array_equal(read_image(out).pixels, marked)
    written = pydicom.dcmread(out)
    assert np.array_equal(pixel_array(written), marked[0])  # pydicom agrees
    raw = np.frombuffer(written.PixelData, dtype="<i2").reshape(marked.shape)
    assert np.array_equal(raw, marked)  # two's complement, sign-extended within BitsAllocated


def test_unsigned_multiframe_with_modified_pixels(tmp_path):
    image = read_image(data_file("emri_small.dcm"))
    assert image.pixels.shape == (10, 64, 64) and image.stored_max == 4095
    marked = image.pixels.copy()
    marked[3] = np.clip(marked[3].astype(np.int32) + 2, 0, 4095)
    marked[9, :4, :4] = 4095
    out = write_image(image, marked, tmp_path / "marked", derivation="marked")  # no suffix: still DICOM
    written = pydicom.dcmread(out)
    assert int(written.NumberOfFrames) == 10
    assert np.array_equal(read_image(out).pixels, marked)


def test_big_endian_binary_words_are_converted_not_copied(tmp_path):
    """OW values other than the image's pixel data (an overlay, a thumbnail's pixel data) must be
    byte-swapped for little endian. (The thumbnail's was copied: the written file's check then
    refused every big-endian file with an Icon Image Sequence, red team 9.)"""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    pixels = pixel_array(ds)
    words = (np.arange(256, dtype=np.uint16) * 257 + 1).astype(np.uint16)
    ds.add_new(0x60000010, "US", 64)  # OverlayRows
    ds.add_new(0x60000011, "US", 64)  # OverlayColumns
    ds.add_new(0x60003000, "OW", words.astype(">u2").tobytes())  # OverlayData, big endian words
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 16, 16, 16, 16, 15
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.PixelRepresentation = 1, "MONOCHROME2", 0
    icon.add_new("PixelData", "OW", words.astype(">u2").tobytes())
    ds.IconImageSequence = [icon]
    ds.PixelData = pixels.astype(">i2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    source = tmp_path / "big.dcm"
    pydicom.dcmwrite(source, ds, enforce_file_format=True)

    image = read_image(source)
    assert np.array_equal(image.pixels[0], pixels)
    written = pydicom.dcmread(write_image(image, image.pixels, tmp_path / "out.dcm", derivation="x"))
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(np.frombuffer(written[0x60003000].value, dtype="<u2"), words)
    assert np.array_equal(np.frombuffer(written.IconImageSequence[0].PixelData, dtype="<u2"), words)
    assert np.array_equal(pixel_array(written), pixels)


def test_dicom_without_preamble_is_read_and_written_as_a_proper_file(tmp_path):
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    ds.preamble = None
    del ds.file_meta
    bare = tmp_path / "bare.dcm"
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"

    image = read_image(bare)
    assert np.array_equal(image.pixels, read_image(data_file("MR_small.dcm")).pixels)
    out = write_image(image, image.pixels, tmp_path / "out.dcm", derivation="x")
    assert out.read_bytes()[128:132] == b"DICM"
    assert pydicom.dcmread(out).file_meta.MediaStorageSOPClassUID == ds.SOPClassUID


@pytest.mark.parametrize("compression", ["none", "rle"])
def test_a_preamble_holding_an_executable_header_is_written_as_zeros(compression, tmp_path):
    """PS3.10 lets the 128-byte preamble hold anything, so a DICOM file can also be a Windows
    executable (CVE-2019-11687). wm never copies those bytes: every DICOM file it writes starts
    with 128 zero bytes and 'DICM'."""
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.preamble = b"MZ" + bytes(range(1, 127))  # a PE header's magic, then junk
    polyglot = tmp_path / "polyglot.dcm"
    ds.save_as(polyglot, enforce_file_format=True)
    assert polyglot.read_bytes()[:2] == b"MZ"

    image = read_image(polyglot)
    out = write_image(image, image.pixels, tmp_path / "out.dcm", derivation="x", compression=compression)
    written = out.read_bytes()
    assert written[:128] == bytes(128) and written[128:132] == b"DICM"
    assert np.array_equal(read_image(out).pixels, image.pixels)


# --------------------------------------------------------------------------------------------
# Header-derived fields


def test_window_is_converted_to_stored_units():
    ct = read_image(data_file("693_UNCR.dcm"))  # WC 40, WW 100, intercept -1024
    assert ct.window == (1064.0, 100.0)
    assert ct.modality == "CT" and ct.photometric == "MONOCHROME2"

    ds = pydicom.dcmread(data_file("MR2_UNCR.dcm"), stop_before_pixels=True)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert slope != 1
    mr = read_image(data_file("MR2_UNCR.dcm"))
    assert mr.window == pytest.approx(((float(ds.WindowCenter) - intercept) / slope, float(ds.WindowWidth) / slope))

    enhanced = read_image(data_file("eCT_Supplemental.dcm"))  # window in the functional groups
    assert enhanced.window == (49.0 + 1024.0, 102.0)

    assert read_image(data_file("MR_small.dcm")).window == (600.0, 1600.0)  # no rescale
    assert read_image(data_file("emri_small.dcm")).window is None


def test_monochrome1_is_reported_not_inverted():
    image = read_image(data_file("RG3_UNCR.dcm"))
    ds = pydicom.dcmread(data_file("RG3_UNCR.dcm"))
    assert image.photometric == "MONOCHROME1" and image.modality == "CR"
    assert np.array_equal(image.pixels[0], ds.pixel_array)
    assert (image.bits_stored, image.stored_max, image.nominal_peak) == (10, 1023, 1023.0)
    assert (image.n_frames, image.rows, image.cols) == (1, 1760, 1760)


# --------------------------------------------------------------------------------------------
# PNG / TIFF / JPEG


@pytest.fixture(scope="module")
def gray16() -> np.ndarray:
    """A real 12-bit MR crop in uint16, with both ends of the 16-bit range forced in."""
    frame = read_image(data_file("MR2_UNCR.dcm")).pixels[0, 300:428, 200:360].astype(np.uint16) * 16
    frame[0, 0], frame[0, 1] = 0, 65535
    return frame


@pytest.fixture(scope="module")
def gray8() -> np.ndarray:
    frame = read_image(data_file("JPGLosslessP14SV1_1s_1f_8b.dcm")).pixels[0, 200:328, 300:460].copy()
    frame[0, 0], frame[0, 1] = 0, 255
    return frame


@pytest.mark.parametrize("depth", [8, 16])
def test_png_round_trip_is_bit_exact(depth, gray8, gray16, tmp_path):
    frame = gray8 if depth == 8 else gray16
    source = tmp_path / "in.png"
    Image.fromarray(frame).save(source)
    image = read_image(source)
    assert image.kind == "png" and image.pixels.shape == (1, *frame.shape)
    assert image.pixels.dtype == frame.dtype and np.array_equal(image.pixels[0], frame)
    assert (image.bits_stored, image.stored_min, image.stored_max) == (depth, 0, 2**depth - 1)
    assert image.nominal_peak == 2**depth - 1 and image.window is None and image.source is None

    marked = image.pixels.astype(np.int64)
    marked[0, 10:20, 10:20] ^= 1
    out = write_image(image, marked, tmp_path / "out.png", derivation="ignored for PNG")
    header = out.read_bytes()[:33]
    assert (header[24], header[25]) == (depth, 0)  # bit depth, colour type gray
    with Image.open(out) as check:  # independent reader
        assert np.array_equal(np.asarray(check), marked[0])
    assert np.array_equal(read_image(out).pixels, marked)

    tiff = write_image(image, marked, tmp_path / "out.tif", derivation="x")  # PNG -> TIFF keeps depth
    assert np.array_equal(tifffile.imread(tiff), marked[0].astype(frame.dtype))
    import skimage.io  # a third reader, as users of the outputs would load them

    for written in (out, tiff):
        seen = skimage.io.imread(written)
        assert seen.dtype == frame.dtype and np.array_equal(seen, marked[0])


@pytest.mark.parametrize("depth", [8, 16])
def test_tiff_round_trip_is_bit_exact(depth, gray8, gray16, tmp_path):
    frame = gray8 if depth == 8 else gray16
    source = tmp_path / "in.tiff"
    tifffile.imwrite(source, frame, photometric="minisblack")
    image = read_image(source)
    assert image.kind == "tiff" and image.bits_stored == depth and np.array_equal(image.pixels[0], frame)

    marked = image.pixels.copy()
    marked[0, ::7, ::5] = frame.max()
    out = write_image(image, marked, tmp_path / "sub" / "out.tiff", derivation="x")
    assert np.array_equal(tifffile.imread(out), marked[0])
    assert np.array_equal(read_image(out).pixels, marked)


def test_tiff_stack_is_frames_and_miniswhite_is_kept(tmp_path):
    frames = read_image(data_file("emri_small.dcm")).pixels
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, frames, photometric="miniswhite")
    image = read_image(source)
    assert image.pixels.shape == (10, 64, 64) and image.photometric == "MONOCHROME1"
    out = write_image(image, image.pixels, tmp_path / "out.tif", derivation="x")
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISWHITE
        assert np.array_equal(tif.series[0].asarray(), frames)
    with pytest.raises(BadInputError, match="PNG holds one"):
        write_image(image, image.pixels, tmp_path / "out.png", derivation="x")


def test_gray_looking_rgb_png_is_accepted_and_colour_refused(gray8, tmp_path):
    rgb = np.repeat(gray8[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "gray_rgb.png")
    assert np.array_equal(read_image(tmp_path / "gray_rgb.png").pixels[0], gray8)

    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(BadInputError, match="colour") as excinfo:
        read_image(tmp_path / "colour.png")
    assert_one_line_error(excinfo, tmp_path / "colour.png")


def test_jpeg_is_read_only(gray8, tmp_path):
    Image.fromarray(gray8).save(tmp_path / "gray.jpg", quality=90)
    image = read_image(tmp_path / "gray.jpg")
    assert image.kind == "jpeg" and image.pixels.dtype == np.uint8 and image.pixels.shape == (1, *gray8.shape)
    assert np.abs(image.pixels[0].astype(int) - gray8).mean() < 3

    colour = np.stack([gray8, gray8 // 2, 255 - gray8], axis=2)
    Image.fromarray(colour).save(tmp_path / "colour.jpeg")
    assert read_image(tmp_path / "colour.jpeg").pixels.shape == (1, *gray8.shape)  # luminance

    with pytest.raises(BadInputError, match="JPEG"):
        write_image(image, image.pixels, tmp_path / "out.jpg", derivation="x")
    assert np.array_equal(read_image(write_image(image, image.pixels, tmp_path / "o.png", derivation="x")).pixels,
                          image.pixels)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name, match", [
    ("SC_rgb.dcm", "colour"),  # RGB
    ("SC_ybr_full_uncompressed.dcm", "colour"),  # YBR
    ("US1_J2KR.dcm", "colour"),  # YBR_RCT in JPEG 2000
    ("examples_palette.dcm", "colour"),  # PALETTE COLOR, one sample per pixel
    ("MR_truncated.dcm", "pixel data"),
    ("rtplan.dcm", "no pixel data"),
    ("liver_1frame.dcm", "1-bit"),
    ("rtdose_1frame.dcm", "32-bit"),
])
def test_unusable_dicom_is_refused_with_one_line(name, match):
    path = data_file(name)
    with pytest.raises(BadInputError, match=match) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path)


def test_missing_corrupt_and_misnamed_files(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        tmp_path / "missing.dcm": None,
        tmp_path / "random.dcm": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        tmp_path / "random": rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        tmp_path / "notes.png": b"this is a text file, not a PNG\n",
        tmp_path / "notes.tif": b"neither a TIFF\n",
        tmp_path / "notes.jpg": b"nor a JPEG\n",
        tmp_path / "truncated.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
        tmp_path / "empty.dcm": b"",
    }
    good_png = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(good_png)
    cases[tmp_path / "cut.png"] = good_png.read_bytes()[:60]
    for path, content in cases.items():
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(BadInputError) as excinfo:
            read_image(path)
        assert_one_line_error(excinfo, path)

    with pytest.raises(BadInputError, match="folder"):
        read_image(tmp_path)


# --------------------------------------------------------------------------------------------
# Write safety


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    image = read_image(data_file("MR_small.dcm"))
    out = tmp_path / "out.dcm"
    out.write_bytes(b"precious")
    with pytest.raises(BadInputError, match="exists") as excinfo:
        write_image(image, image.pixels, out, derivation="x")
    assert_one_line_error(excinfo, out)
    assert out.read_bytes() == b"precious" and leftovers(tmp_path) == []

    write_image(image, image.pixels, out, derivation="x", overwrite=True)
    assert np.array_equal(read_image(out).pixels, image.pixels) and leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_never_writes_onto_the_original(tmp_path):
    original = tmp_path / "orig.dcm"
    shutil.copy(data_file("MR_small.dcm"), original)
    digest = sha256(original)
    image = read_image(original)
    link = tmp_path / "link.dcm"
    link.symlink_to(original)
    for target in (original, tmp_path / "." / "orig.dcm", link):
        with pytest.raises(BadInputError, match="original"):
            write_image(image, image.pixels + 1, target, derivation="x", overwrite=True)
    assert sha256(original) == digest and leftovers(tmp_path) == []

    png = tmp_path / "orig.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(png)
    with pytest.raises(BadInputError, match="original"):
        write_image(read_image(png), np.zeros((1, 64, 64)), png, derivation="x", overwrite=True)


def test_failed_write_leaves_no_temporary_or_partial_file(tmp_path):
    image = read_image(data_file("CT_small.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.source.Rows = "not a number"  # pydicom cannot encode this: fails mid-write
    out = tmp_path / "out.dcm"
    with pytest.raises(BadInputError, match="cannot write") as excinfo:
        write_image(image, image.pixels, out, derivation="x")
    assert_one_line_error(excinfo, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_invalid_pixels_are_programming_errors(tmp_path):
    image = read_image(data_file("693_UNCR.dcm"))
    out = tmp_path / "out.dcm"
    too_high = image.pixels.astype(np.int32)
    too_high[0, 0, 0] = image.stored_max + 1  # fits int16, but not 14 bits
    for bad in (too_high, image.pixels[:, :10], image.pixels + 0.5):
        with pytest.raises(ValueError):
            write_image(image, bad, out, derivation="x")
    assert not out.exists() and leftovers(tmp_path) == []
    # integral floats are fine (the guard may hand back float arrays of whole numbers)
    write_image(image, image.pixels.astype(np.float64), out, derivation="x")
    assert np.array_equal(read_image(out).pixels, image.pixels)


def test_derivation_and_image_type_details(tmp_path):
    image = read_image(data_file("MR_small.dcm"))
    out = write_image(image, image.pixels, tmp_path / "a" / "b" / "out.dcm", derivation="d" * 5000)
    written = pydicom.dcmread(out)
    assert len(written.DerivationDescription) == 1024
    again = write_image(read_image(out), image.pixels, tmp_path / "again.dcm", derivation="second")
    chain = pydicom.dcmread(again).SourceImageSequence
    assert [item.ReferencedSOPInstanceUID for item in chain] == [image.source.SOPInstanceUID, written.SOPInstanceUID]


# --------------------------------------------------------------------------------------------
# Discovery


def test_iter_image_files_finds_images_recursively_and_sorted(tmp_path):
    mr = data_file("MR_small.dcm")
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    shutil.copy(mr, tmp_path / "b" / "deep" / "IM0001")  # no suffix, DICM preamble
    shutil.copy(mr, tmp_path / "1.2.840.5")  # UID-named, suffix '.5'
    shutil.copy(mr, tmp_path / "a.DCM")
    shutil.copy(mr, tmp_path / ".hidden.dcm")
    shutil.copy(mr, tmp_path / ".git" / "x.dcm")
    shutil.copy(mr, tmp_path / "DICOMDIR")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "b" / "z.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no suffix, not DICOM")

    found = iter_image_files(tmp_path)
    expected = [tmp_path / "1.2.840.5", tmp_path / "a.DCM", tmp_path / "b" / "deep" / "IM0001", tmp_path / "b" / "z.png"]
    assert found == sorted(expected)
    assert all(read_image(path).n_frames == 1 for path in found)
    assert not is_image_file(tmp_path / "notes.txt") and not is_image_file(tmp_path / "README")
    assert not is_image_file(tmp_path / "b")
    assert {".dcm", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ""} <= set(SUPPORTED_SUFFIXES)
    with pytest.raises(BadInputError):
        iter_image_files(tmp_path / "notes.txt")


def test_medical_image_properties():
    image = read_image(data_file("emri_small.dcm"))
    assert isinstance(image, MedicalImage)
    assert (image.n_frames, image.rows, image.cols) == (10, 64, 64)
    assert image.nominal_peak == 4095.0
    assert "source" not in repr(image)


def test_a_high_bit_other_than_bits_stored_minus_one_is_refused(tmp_path):
    """PS3.5 8.1.1. A 12-bit MR with High Bit 15 (its values in the top 12 bits of each word) is
    another image to pydicom (the low 12 bits: 0..4080 in steps of 16) than to dcmtk (the bits
    below High Bit): wm marked pydicom's (red team 9). Now refused in one line; no file of
    pydicom's or pydicom-data's 244 has such a header."""
    ds = pydicom.dcmread(data_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    pixels = pixel_array(ds).astype(np.uint16)
    ds.HighBit = 15
    ds.PixelData = (pixels << 4).astype("<u2").tobytes()
    path = tmp_path / "high_bit.dcm"
    ds.save_as(path)
    with pytest.raises(BadInputError, match=r"HighBit 15 is not BitsStored - 1 \(11\)"):
        read_image(path)
