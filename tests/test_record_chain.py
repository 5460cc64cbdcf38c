"""A file marked again keeps the earlier restoration record inside the new one (issue 29), in
DICOM, PNG and TIFF alike: one `wm restore` gives back the file as it was before the last
marking, record included, and a second one the original. And every DICOM file wm writes has a
zeroed preamble, whatever the input held there (CVE-2019-11687).

Real files throughout: a slice of pydicom-data's 693_UNCR CT, marked with the shipped model;
PNG and TIFF outputs are read back with Pillow and tifffile, DICOM with pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import ct_slice_file, fixed_key, run_wm_here, stored_values
from watermark_cli.data.clinical import clinical_file
from watermark_cli.integrity.containers import (PNG_CHUNK, UnknownOriginalElementsError, raster_earlier_record,
                                                raster_original_elements)
from watermark_cli.io.image import file_record, read_image
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.marking.restoration import restore_file
from watermark_cli.marking.verification import verify_image
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

FIRST_KEY, SECOND_KEY = fixed_key("chain-first-key").encode(), fixed_key("chain-second-key").encode()


@pytest.fixture(scope="module")
def loaded():
    return load_model(None)


def mark(source: Path, destination: Path, loaded, key: bytes, message: bytes) -> None:
    embed_file(source, destination, EmbedSettings(message, QualityFloor(40.0), key=key), loaded,
               codec_for(loaded, key))


def png_chunk_kinds(path: Path) -> list[bytes]:
    data, offset, kinds = path.read_bytes(), 8, []
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kinds.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return kinds


def one_line_failure(result) -> bool:
    return result.code == 1 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("suffix,dtype,second_key", [
    (".png", np.uint8, SECOND_KEY), (".png", np.uint16, FIRST_KEY),
    (".tif", np.uint8, FIRST_KEY), (".tif", np.uint16, SECOND_KEY),
], ids=["png8-two-keys", "png16-same-key", "tif8-same-key", "tif16-two-keys"])
def test_png_and_tiff_marked_twice_restore_twice_to_the_original(suffix, dtype, second_key, loaded, tmp_path):
    source, original = ct_slice_file(tmp_path, suffix, dtype)
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    mark(source, first, loaded, FIRST_KEY, b"FIRST")
    mark(first, second, loaded, second_key, b"SECOND")
    first_record = file_record(read_image(first))
    assert first_record is not None and file_record(read_image(second)) not in (None, first_record)
    if suffix == ".png":
        assert png_chunk_kinds(second).count(PNG_CHUNK) == 1  # the earlier record is inside, not beside

    back_to_first = tmp_path / f"back1{suffix}"
    restore_file(second, back_to_first, second_key)
    assert np.array_equal(stored_values(back_to_first), stored_values(first))
    assert file_record(read_image(back_to_first)) == first_record
    assert back_to_first.read_bytes() == first.read_bytes()  # the same writer, the same record: the same file
    assert verify_image(read_image(back_to_first), FIRST_KEY, loaded, codec_for(loaded, FIRST_KEY)).intact

    back_to_original = tmp_path / f"back0{suffix}"
    restore_file(back_to_first, back_to_original, FIRST_KEY)
    restored = stored_values(back_to_original)
    assert restored.dtype == original.dtype and np.array_equal(restored, original)
    assert file_record(read_image(back_to_original)) is None  # the original had no record


def test_a_chained_record_opens_with_its_own_key_only_and_fails_in_one_line(loaded, tmp_path):
    source, _ = ct_slice_file(tmp_path, ".png", np.uint8)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    mark(source, first, loaded, FIRST_KEY, b"FIRST")
    mark(first, second, loaded, SECOND_KEY, b"SECOND")

    for wrong in (fixed_key("not the key"), FIRST_KEY.decode()):  # the inner record's key does not open the outer one
        out = tmp_path / "never.png"
        result = run_wm_here("restore", second, "--key", wrong, "-o", out)
        assert one_line_failure(result), (result.code, result.stderr)
        assert "not authentic" in result.stderr
        assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    step = tmp_path / "step.png"
    assert run_wm_here("restore", second, "--key", SECOND_KEY.decode(), "-o", step).code == 0
    result = run_wm_here("restore", step, "--key", SECOND_KEY.decode(), "-o", tmp_path / "never.png")
    assert one_line_failure(result) and not (tmp_path / "never.png").exists()
    assert run_wm_here("restore", step, "--key", FIRST_KEY.decode(), "-o", tmp_path / "original.png").code == 0
    assert np.array_equal(stored_values(tmp_path / "original.png"), stored_values(source))


def test_a_record_sealed_for_a_recipient_chains_under_a_keyed_one(loaded, tmp_path):
    """The chain keeps the earlier record's bytes as stored, so a CMS envelope survives as well."""
    from test_restore_verify import rsa_identity
    from watermark_cli.integrity.envelope import load_recipient

    key_path, cert_path = rsa_identity(tmp_path, "recipient")
    source, original = ct_slice_file(tmp_path, ".tif", np.uint16)
    first, second = tmp_path / "first.tif", tmp_path / "second.tif"
    embed_file(source, first, EmbedSettings(b"FIRST", QualityFloor(40.0), recipient=cert_path.read_bytes()),
               loaded, codec_for(loaded, None))
    mark(first, second, loaded, SECOND_KEY, b"SECOND")

    back_to_first = tmp_path / "back1.tif"
    restore_file(second, back_to_first, SECOND_KEY)
    assert file_record(read_image(back_to_first)) == file_record(read_image(first))
    back_to_original = tmp_path / "back0.tif"
    restore_file(back_to_first, back_to_original, None, recipient=load_recipient(cert_path, key_path),
                 accept_unproven=True)  # no signature: the chain's bytes, not who sealed them, are tested here
    assert np.array_equal(stored_values(back_to_original), original)


def polyglot_ct(folder: Path) -> Path:
    """The CT with "MZ" and junk in its preamble: a file that is DICOM and looks like a Windows
    executable (CVE-2019-11687)."""
    ds = pydicom.dcmread(clinical_file("693_UNCR.dcm"))
    ds.preamble = b"MZ" + bytes(range(0x80, 0x80 + 126))  # "MZ", then junk
    path = folder / "polyglot.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.read_bytes()[:2] == b"MZ"
    return path


def assert_zero_preamble(path: Path) -> None:
    head = path.read_bytes()[:132]
    assert head[:128] == bytes(128) and head[128:] == b"DICM", path.name


def test_a_dicom_marked_twice_with_one_key_restores_twice_and_no_preamble_survives(loaded, tmp_path):
    source = polyglot_ct(tmp_path)
    original = pydicom.dcmread(source)
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    mark(source, first, loaded, FIRST_KEY, b"FIRST")
    mark(first, second, loaded, FIRST_KEY, b"SECOND")
    back_to_first, back_to_original = tmp_path / "back1.dcm", tmp_path / "back0.dcm"
    restore_file(second, back_to_first, FIRST_KEY)
    restore_file(back_to_first, back_to_original, FIRST_KEY)

    for written in (first, second, back_to_first, back_to_original):
        assert_zero_preamble(written)
    assert pydicom.dcmread(back_to_first).PixelData == pydicom.dcmread(first).PixelData
    assert file_record(read_image(back_to_first)) == file_record(read_image(first))
    restored = pydicom.dcmread(back_to_original)
    assert restored.PixelData == original.PixelData
    assert restored.SOPInstanceUID == original.SOPInstanceUID
    assert file_record(read_image(back_to_original)) is None

    wrong = run_wm_here("restore", second, "--key", fixed_key("not the key"), "-o", tmp_path / "never.dcm")
    assert one_line_failure(wrong) and not (tmp_path / "never.dcm").exists()


def test_the_earlier_record_of_a_png_or_tiff_is_kept_in_a_labelled_layout():
    assert raster_original_elements(None) == b""
    assert raster_earlier_record(b"") is None  # no earlier record, or a record made before chaining
    earlier = bytes(range(256)) * 3
    assert raster_earlier_record(raster_original_elements(earlier)) == earlier
    with pytest.raises(UnknownOriginalElementsError):
        raster_earlier_record(b"something a later wm might keep")
