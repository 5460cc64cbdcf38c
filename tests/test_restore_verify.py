"""Restore and verify (issue 16) on real pydicom-data files and on 8/16-bit PNG and TIFF.

Each case is marked through `embed_file` (the path of `wm embed`, restoration record on by
default) with the shipped model, then checked independently of wm's own reader where it
matters: pydicom decodes the restored file, its pixel data bytes are compared with the
original's, and a pixel is changed by editing the file with pydicom (or Pillow/tifffile).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from conftest import ct_slice_file, fixed_key, run_wm, stored_values
from watermark_cli.data.clinical import clinical_file
from watermark_cli.errors import CheckFailedError
from watermark_cli.hashing import pixel_sha256
from watermark_cli.integrity.containers import dicom_remove_record
from watermark_cli.integrity.record import BLOCK, RecordNotAuthenticError
from watermark_cli.io.image import file_record, read_image
from watermark_cli.marking.files import EmbedResult, EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.marking.restoration import NoRecordError, restore_file
from watermark_cli.marking.verification import verify_image, write_change_map
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

KEY = fixed_key("restore-test-key").encode()
OTHER_KEY = fixed_key("other key").encode()
MESSAGE = b"REC-0016"

DICOM_CASES = [
    ("693_UNCR.dcm", "CT 512², signed, BitsStored 14"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR 484², 12 of 16 bits, overlays in the high bits"),
    ("RG3_UNCR.dcm", "CR 1760², MONOCHROME1, 10 bit"),
    ("JPEG2000_UNC.dcm", "NM 1024x256, signed 16 bit"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US 8 bit, lossless JPEG input"),
    ("eCT_Supplemental.dcm", "enhanced CT, 2 frames"),
    ("693_J2KR.dcm", "CT, JPEG 2000 lossless input"),
    ("JPEG-LL.dcm", "NM, lossless JPEG process 14 input"),
]


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(None)
    return loaded, codec_for(loaded, KEY)


def mark(source: Path, destination: Path, shipped, **settings) -> EmbedResult:
    loaded, codec = shipped
    return embed_file(source, destination, EmbedSettings(MESSAGE, QualityFloor(40.0), key=KEY, **settings),
                      loaded, codec)


def flip_one_dicom_pixel(path: Path, out: Path, frame: int, row: int, col: int) -> None:
    """The lowest bit of one stored value flipped, by pydicom (native data rewritten as read)."""
    ds = pydicom.dcmread(path)
    words = np.frombuffer(ds.PixelData, dtype=np.uint8 if int(ds.BitsAllocated) == 8 else "<u2").copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    words.reshape(frames, int(ds.Rows), int(ds.Columns))[frame, row, col] ^= 1
    ds.PixelData = words.tobytes()
    ds.save_as(out, enforce_file_format=True)


# The 1760² CR takes seconds: it runs with the slow lane.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "RG3_UNCR.dcm" else name
                                  for name, _ in DICOM_CASES])
def test_dicom_restore_is_bit_exact_and_one_changed_pixel_is_localised(name, shipped, tmp_path):
    source = clinical_file(name)
    marked = tmp_path / "marked.dcm"
    result = mark(source, marked, shipped)
    assert 0 < result.restoration_record_bytes
    original = pydicom.dcmread(source)
    original_pixels = read_image(source).pixels

    restored = tmp_path / "restored.dcm"
    restore_file(marked, restored, KEY)
    back = pydicom.dcmread(restored)
    assert back.SOPInstanceUID == original.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
    assert np.array_equal(back.pixel_array.reshape(original_pixels.shape), original_pixels)
    if not original.file_meta.TransferSyntaxUID.is_compressed:
        assert back.PixelData == original.PixelData  # the very words, high bits (overlays) included
    for keyword in ("ImageType", "SourceImageSequence", "DerivationDescription"):
        assert (keyword in back) == (keyword in original)
        if keyword in original:
            assert back[keyword].value == original[keyword].value, keyword
    assert file_record(read_image(restored)) is None

    loaded, codec = shipped
    untouched = verify_image(read_image(marked), KEY, loaded, codec)
    assert untouched.intact and untouched.changed_blocks == [] and untouched.message == MESSAGE.decode()

    frames, rows, cols = original_pixels.shape
    frame, row, col = frames - 1, rows // 2 + 3, cols // 3 + 5
    tampered = tmp_path / "tampered.dcm"
    flip_one_dicom_pixel(marked, tampered, frame, row, col)
    report = verify_image(read_image(tampered), KEY, loaded, codec)
    assert not report.intact
    assert report.changed_blocks == [(frame, row // BLOCK * BLOCK, col // BLOCK * BLOCK)]
    with pytest.raises(CheckFailedError, match="changed since marking"):
        restore_file(tampered, tmp_path / "never.dcm", KEY)
    assert not (tmp_path / "never.dcm").exists()


@pytest.mark.parametrize("suffix,dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8),
                                           (".tif", np.uint16)])
def test_png_and_tiff_restore_is_bit_exact_and_a_changed_pixel_is_localised(suffix, dtype, shipped, tmp_path):
    source, values = ct_slice_file(tmp_path, suffix, dtype)
    marked = tmp_path / f"marked{suffix}"
    mark(source, marked, shipped)
    assert file_record(read_image(marked)) is not None

    restored = tmp_path / f"restored{suffix}"
    restore_file(marked, restored, KEY)
    assert np.array_equal(stored_values(restored), values)

    loaded, codec = shipped
    assert verify_image(read_image(marked), KEY, loaded, codec).intact
    edited = read_image(marked).pixels[0].copy()
    edited[100, 200] ^= 1
    tampered = tmp_path / f"tampered{suffix}"
    if suffix == ".png":  # a re-save by an editor drops the unsafe-to-copy record chunk...
        Image.fromarray(edited).save(tampered)
        report = verify_image(read_image(tampered), KEY, loaded, codec)
        assert not report.record_found and not report.intact
        # ...so put the marked file's chunk back to see the block found.
        from watermark_cli.integrity.containers import png_with_record

        tampered.write_bytes(png_with_record(tampered.read_bytes(), file_record(read_image(marked))))
    else:
        tifffile.imwrite(tampered, edited, extratags=[(65137, 7, len(rec := file_record(read_image(marked))), rec, True)])
    report = verify_image(read_image(tampered), KEY, loaded, codec)
    assert not report.intact and report.changed_blocks == [(0, 96, 192)]
    change_map = write_change_map(read_image(tampered), report, tmp_path / "map.png")
    picture = np.asarray(Image.open(change_map))
    assert picture.shape == (*values.shape, 3)
    assert tuple(picture[96, 200]) == (255, 0, 0) and tuple(picture[10, 10])[0] == tuple(picture[10, 10])[1]


def test_wrong_key_and_stripped_record_give_the_documented_answers(shipped, tmp_path):
    source = clinical_file("693_UNCR.dcm")
    marked = tmp_path / "marked.dcm"
    mark(source, marked, shipped)
    loaded, codec = shipped

    with pytest.raises(RecordNotAuthenticError):
        restore_file(marked, tmp_path / "out.dcm", OTHER_KEY)
    wrong = verify_image(read_image(marked), OTHER_KEY, loaded, codec_for(loaded, OTHER_KEY))
    assert wrong.record_found and not wrong.record_authentic and not wrong.mark_found and not wrong.intact

    ds = pydicom.dcmread(marked)
    dicom_remove_record(ds)
    stripped = tmp_path / "stripped.dcm"
    ds.save_as(stripped, enforce_file_format=True)
    with pytest.raises(NoRecordError):
        restore_file(stripped, tmp_path / "out.dcm", KEY)
    report = verify_image(read_image(stripped), KEY, loaded, codec)
    assert report.mark_found and not report.record_found and not report.intact
    assert report.status == "mark present, integrity unknown (no record)"

    # A record changed by one byte is not authentic (AES-GCM), and says so.
    blob = bytearray(file_record(read_image(marked)))
    blob[len(blob) // 2] ^= 0x01
    ds = pydicom.dcmread(marked)
    dicom_remove_record(ds)
    from watermark_cli.integrity.containers import dicom_attach_record

    dicom_attach_record(ds, bytes(blob))
    forged = tmp_path / "forged.dcm"
    ds.save_as(forged, enforce_file_format=True)
    assert not verify_image(read_image(forged), KEY, loaded, codec).record_authentic


def test_legitimate_rewrites_keep_the_pixels_intact(shipped, tmp_path):
    """Re-encoding to another transfer syntax, compressing losslessly or re-writing with another
    tool keeps every stored value: the block tags report the pixels unchanged. The signature is
    stricter, as PS3.15 means it to be: it survives dcmtk's re-write in Explicit VR Little Endian,
    and breaks under Implicit VR (the private record element's VR is lost: UN cannot be signed)
    and under RLE (the pixel data's encoding changed) — dcmsign agrees on each."""
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    source = clinical_file("693_UNCR.dcm")
    marked = tmp_path / "marked.dcm"
    key_path, cert_path = rsa_identity(tmp_path, "signer")
    mark(source, marked, shipped, signing=(key_path.read_bytes(), cert_path.read_bytes()))
    loaded, codec = shipped
    rewrites = {}
    ds = pydicom.dcmread(marked)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(rewrites.setdefault("implicit", tmp_path / "implicit.dcm"), enforce_file_format=True)
    ds = pydicom.dcmread(marked)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(rewrites.setdefault("rle", tmp_path / "rle.dcm"), enforce_file_format=True)
    # dcmtk's writer: its own element encoding, group lengths added.
    rewrites["dcmtk"] = tmp_path / "dcmtk.dcm"
    subprocess.run(["dcmconv", "+g", "+te", str(marked), str(rewrites["dcmtk"])], check=True)
    signature_holds = {"implicit": False, "rle": False, "dcmtk": True}
    for name, path in rewrites.items():
        report = verify_image(read_image(path), KEY, loaded, codec)
        assert report.record_authentic and report.changed_blocks == [] and not report.size_changed, name
        assert [check.valid for check in report.signatures] == [signature_holds[name]], name
        assert report.intact == signature_holds[name], name
        assert (dcmsign_verify(path, cert_path).returncode == 0) == signature_holds[name], name
        restored = tmp_path / f"{name}.restored.dcm"
        restore_file(path, restored, KEY)
        assert pixel_sha256(read_image(restored).pixels) == pixel_sha256(read_image(source).pixels), name


def test_no_restore_record_omits_it(shipped, tmp_path):
    result = mark(clinical_file("693_UNCR.dcm"), tmp_path / "plain.dcm", shipped, restore_record=False)
    assert result.restoration_record_bytes is None
    assert file_record(read_image(tmp_path / "plain.dcm")) is None


@pytest.mark.slow
def test_restore_and_verify_command_lines(tmp_path):
    source = clinical_file("693_UNCR.dcm")
    marked = tmp_path / "ct.wm.dcm"
    embedded = run_wm("embed", source, "cli-16", "--key", fixed_key("k1"), "-o", marked, "--json")
    assert embedded.code == 0, embedded.stderr

    verified = run_wm("verify", marked, "--key", fixed_key("k1"), "--json")
    assert verified.code == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["intact"] and report["mark_found"] and report["message"] == "cli-16" and report["record_found"]
    assert report["mark_protected"]  # the keyed default model, a secret key

    restored = run_wm("restore", marked, "--key", fixed_key("k1"))
    assert restored.code == 0, restored.stderr
    assert pydicom.dcmread(tmp_path / "ct.restored.dcm").SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    again = run_wm("restore", marked, "--key", fixed_key("k1"))
    assert again.code == 2 and "already exists" in again.stderr

    wrong = run_wm("restore", marked, "--key", fixed_key("k2"), "-o", tmp_path / "x.dcm")
    assert wrong.code == 1 and "not authentic" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.dcm").exists()

    tampered = tmp_path / "tampered.dcm"
    flip_one_dicom_pixel(marked, tampered, 0, 300, 40)
    changed = run_wm("verify", tampered, "--key", fixed_key("k1"), "--json", "--map", tmp_path / "m.png")
    assert changed.code == 1
    report = json.loads(changed.stdout)
    assert not report["intact"] and report["changed_blocks"] == [{"frame": 0, "row": 288, "col": 32}]
    assert (tmp_path / "m.png").is_file()

    missing = run_wm("verify", tmp_path / "nothing.dcm")
    assert missing.code == 2 and "no such file" in missing.stderr


def rsa_identity(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh RSA-2048 key and self-signed certificate (PEM files), made for the test."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_a_recipient_record_key_is_random_and_never_stretched(shipped, tmp_path, monkeypatch):
    """The record of a `--recipient` mark is sealed under 256 random bits, which need no
    stretching: as 32 raw bytes they read as a passphrase and cost scrypt's 1 GiB and seconds
    per marked file and again per restore."""
    from watermark_cli import keys
    from watermark_cli.integrity.envelope import load_recipient, new_record_key

    assert new_record_key() != new_record_key()
    key_path, cert_path = rsa_identity(tmp_path, "recipient")
    monkeypatch.setattr(keys.hashlib, "scrypt", lambda *args, **kwargs: pytest.fail("a random key was stretched"))
    marked = tmp_path / "marked.dcm"
    mark(clinical_file("CT_small.dcm"), marked, shipped, recipient=cert_path.read_bytes())
    result = restore_file(marked, tmp_path / "restored.dcm", None, recipient=load_recipient(cert_path, key_path),
                          accept_unproven=True)
    assert result["proved"] is False
    assert pixel_sha256(read_image(tmp_path / "restored.dcm").pixels) == \
        pixel_sha256(read_image(clinical_file("CT_small.dcm")).pixels)


def test_a_record_sealed_under_the_older_raw_record_key_still_opens(monkeypatch):
    """Recipient records sealed before stop 46 carry 32 raw random bytes as their key, which the
    derivation stretches like a passphrase: they still open (scrypt made cheap for the test)."""
    import os

    from watermark_cli import keys
    from watermark_cli.integrity.record import open_record, seal

    monkeypatch.setitem(keys.STRETCH, "n", 2**10)
    stretched = []
    scrypt = keys.hashlib.scrypt
    monkeypatch.setattr(keys.hashlib, "scrypt", lambda *args, **kwargs: stretched.append(1) or scrypt(*args, **kwargs))
    original = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    marked = original + np.uint16(1)
    raw_key = os.urandom(32)
    record, _ = open_record(seal(original, marked, raw_key), raw_key)
    assert stretched and record.original_pixels_sha256 == pixel_sha256(original)
    with pytest.raises(RecordNotAuthenticError):
        open_record(seal(original, marked, raw_key), os.urandom(32))


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "png"])
def test_record_for_a_recipient_opens_with_its_private_key_only(name, shipped, tmp_path):
    from watermark_cli.errors import BadInputError
    from watermark_cli.integrity.envelope import load_recipient

    key_path, cert_path = rsa_identity(tmp_path, "recipient")
    other_key, other_cert = rsa_identity(tmp_path, "other")
    if name == "png":
        source, _ = ct_slice_file(tmp_path, ".png", np.uint8)
    else:
        source = clinical_file(name)
    marked = tmp_path / f"marked{source.suffix}"
    mark(source, marked, shipped, recipient=cert_path.read_bytes())
    recipient = load_recipient(cert_path, key_path)

    restored = tmp_path / f"restored{source.suffix}"
    with pytest.raises(CheckFailedError, match="the original is unproven"):  # unsigned: anyone could have sealed it
        restore_file(marked, restored, None, recipient=recipient)
    assert not restored.exists()
    result = restore_file(marked, restored, None, recipient=recipient, accept_unproven=True)
    assert result["proved"] is False
    assert pixel_sha256(read_image(restored).pixels) == pixel_sha256(read_image(source).pixels)
    loaded, codec = shipped
    # Confidential, not authentic: anyone with the certificate could have written the record.
    unsigned = verify_image(read_image(marked), KEY, loaded, codec, recipient)
    assert unsigned.record_authentic and unsigned.changed_blocks == [] and not unsigned.intact
    assert unsigned.authenticity == "none (recipient record without a trusted signature)"
    with pytest.raises(BadInputError, match="encrypted for a recipient"):
        restore_file(marked, tmp_path / f"x{source.suffix}", KEY)
    with pytest.raises(RecordNotAuthenticError):
        restore_file(marked, tmp_path / f"x{source.suffix}", None, recipient=load_recipient(other_cert, other_key))

    if name != "png":
        ds = pydicom.dcmread(marked)
        assert "WM RESTORATION RECORD 1" not in [str(e.value) for e in ds if e.tag.is_private]
        item = ds.EncryptedAttributesSequence[-1]
        assert item.EncryptedContentTransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        if shutil.which("openssl"):  # a standard tool opens the envelope with the private key
            (tmp_path / "envelope.der").write_bytes(bytes(item.EncryptedContent))
            opened = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "envelope.der",
                                     "-inkey", key_path, "-recip", cert_path, "-binary"], capture_output=True, check=True)
            from io import BytesIO

            from pydicom.filereader import read_dataset

            content = read_dataset(BytesIO(opened.stdout), is_implicit_VR=False, is_little_endian=True)
            modified = content.ModifiedAttributesSequence[0]
            assert modified.SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID


def dcmsign_verify(path: Path, cert: Path) -> subprocess.CompletedProcess:
    """dcmtk's independent check: +cf trusts the test's self-signed certificate, +rg fails a file
    without a signature, +rc requires the Creator RSA profile."""
    if shutil.which("dcmsign") is None:
        pytest.fail("dcmtk's dcmsign is not installed; scripts/setup_env.sh installs it (apt-get install dcmtk)")
    return subprocess.run(["dcmsign", "--verify", "+cf", cert, "+rg", "+rc", path], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_signed_embed_passes_dcmsign_and_verify_sees_a_changed_header(tmp_path):
    key_path, cert_path = rsa_identity(tmp_path, "signer")
    marked = tmp_path / "signed.wm.dcm"
    for name in ("693_UNCR.dcm", "JPEG2000_UNC.dcm"):
        marked = tmp_path / f"{name}.wm.dcm"
        result = run_wm("embed", clinical_file(name), "signed-16", "--key", fixed_key("k1"),
                        "--sign", key_path, "--cert", cert_path, "-o", marked, "--json")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["signed"] is True
        checked = dcmsign_verify(marked, cert_path)
        assert checked.returncode == 0 and "Signature Verification : OK" in checked.stderr, checked.stderr

    verified = run_wm("verify", marked, "--key", fixed_key("k1"), "--json")
    report = json.loads(verified.stdout)
    assert verified.code == 0 and report["intact"]
    assert [s["valid"] for s in report["signatures"]] == [True] and "signer" in report["signatures"][0]["signer"]

    changed = tmp_path / "renamed.dcm"
    ds = pydicom.dcmread(marked)
    ds.PatientName = "Someone^Else"
    ds.save_as(changed, enforce_file_format=True)
    assert dcmsign_verify(changed, cert_path).returncode != 0
    verified = run_wm("verify", changed, "--key", fixed_key("k1"), "--json")
    report = json.loads(verified.stdout)
    assert verified.code == 1 and not report["intact"] and report["changed_blocks"] == []
    assert report["status"] == "tampered: identity changed: PatientName"  # the record names it
    assert [s["valid"] for s in report["signatures"]] == [False]  # and the signature breaks

    refused = run_wm("embed", clinical_file("693_UNCR.dcm"), "x", "--sign", key_path,
                     "-o", tmp_path / "never.dcm")
    assert refused.code == 2 and "--cert" in refused.stderr and not (tmp_path / "never.dcm").exists()


def test_an_earlier_signature_is_removed_on_embed_and_back_after_restore(shipped, tmp_path):
    from watermark_cli.integrity.signature import load_signer, sign_dataset, verify_signatures

    key_path, cert_path = rsa_identity(tmp_path, "original-signer")
    ds = pydicom.dcmread(clinical_file("693_UNCR.dcm"))
    sign_dataset(ds, load_signer(key_path.read_bytes(), cert_path.read_bytes()))
    signed = tmp_path / "signed.dcm"
    pydicom.dcmwrite(signed, ds, enforce_file_format=True)

    marked = tmp_path / "marked.dcm"
    mark(signed, marked, shipped)
    assert "DigitalSignaturesSequence" not in pydicom.dcmread(marked)  # it would no longer match
    restored = tmp_path / "restored.dcm"
    restore_file(marked, restored, KEY)
    back = pydicom.dcmread(restored)
    assert [check.valid for check in verify_signatures(back)] == [True]
    assert dcmsign_verify(restored, cert_path).returncode == 0


def test_odd_length_records_survive_dicom_padding(tmp_path):
    """DICOM pads odd-length values with a zero byte; both kinds of record carry their own length."""
    from watermark_cli.integrity.containers import dicom_attach_envelope, dicom_attach_record, dicom_envelopes
    from watermark_cli.integrity.record import seal

    values = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    marked = values.copy()
    marked[1, 7, 9] += 3
    record = seal(values, marked, KEY)
    record = record if len(record) % 2 else seal(values, marked, KEY, creator="x")  # an odd length
    assert len(record) % 2 == 1
    envelope = bytes([0x30, 0x81, 130]) + bytes(range(130))  # a DER SEQUENCE of 133 bytes
    for attach, read, blob in ((dicom_attach_record, file_record, record), (dicom_attach_envelope, None, envelope)):
        ds = pydicom.dcmread(clinical_file("CT_small.dcm"))
        attach(ds, blob)
        path = tmp_path / "padded.dcm"
        ds.save_as(path, enforce_file_format=True)
        again = pydicom.dcmread(path)
        stored = file_record(read_image(path)) if read else dicom_envelopes(again)[0]
        assert stored == blob


def test_what_stands_behind_intact_signer_removed_replaced_or_default_key(shipped, tmp_path):
    from watermark_cli.integrity.signature import load_signer, sign_dataset

    key_path, cert_path = rsa_identity(tmp_path, "marker")
    other_key, other_cert = rsa_identity(tmp_path, "someone-else")
    marked = tmp_path / "signed.dcm"
    mark(clinical_file("693_UNCR.dcm"), marked, shipped, signing=(key_path.read_bytes(), cert_path.read_bytes()))
    loaded, codec = shipped
    signed = verify_image(read_image(marked), KEY, loaded, codec)
    assert signed.intact and signed.authenticity == "secret key"

    ds = pydicom.dcmread(marked)
    del ds.DigitalSignaturesSequence, ds.MACParametersSequence
    ds.save_as(tmp_path / "stripped.dcm", enforce_file_format=True)
    stripped = verify_image(read_image(tmp_path / "stripped.dcm"), KEY, loaded, codec)
    assert not stripped.intact and stripped.status == "tampered: the signature made at marking is gone"

    ds.PatientName = "Changed^Name"
    sign_dataset(ds, load_signer(other_key.read_bytes(), other_cert.read_bytes()))
    ds.save_as(tmp_path / "resigned.dcm", enforce_file_format=True)
    resigned = verify_image(read_image(tmp_path / "resigned.dcm"), KEY, loaded, codec)
    assert resigned.signatures[0].valid and not resigned.intact
    assert resigned.status == "tampered: identity changed: PatientName"
    assert resigned.signer_problem == "signed by another certificate than at marking"

    public = tmp_path / "public.dcm"
    loaded, _ = shipped
    embed_file(clinical_file("693_UNCR.dcm"), public, EmbedSettings(MESSAGE, QualityFloor(40.0)), loaded,
               codec_for(loaded, None))
    report = verify_image(read_image(public), None, loaded, codec_for(loaded, None))
    # Untouched, but the public default key proves nothing: never intact (issue 29).
    assert not report.intact and report.authenticity == "none (public default key)" and "default key" in report.status
    assert report.changed_blocks == [] and report.bound and report.binding_changes == []


def _twelve_of_16_bits_with_overlays():
    ds = pydicom.dcmread(clinical_file("MR2_UNCR.dcm"))  # 12 of 16 bits
    words = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    words |= (np.random.default_rng(16).integers(0, 16, words.size, dtype=np.uint16) << 12)
    ds.PixelData = words.tobytes()
    return ds


def _seven_of_8_bits_with_an_overlay():
    """8-bit words: restore once wrote them back as 16-bit words (twice the pixel data the header
    holds) and refused its own output."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(clinical_file("image_dfl.dcm"))  # a real 8-bit 512² image (deflated)
    words = (ds.pixel_array >> 1).astype(np.uint8)
    words[:64, :64] |= 0x80
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsStored, ds.HighBit, ds.PixelData = 7, 6, words.tobytes()
    return ds


@pytest.mark.parametrize("original", [pytest.param(_twelve_of_16_bits_with_overlays, marks=pytest.mark.slow),
                                      _seven_of_8_bits_with_an_overlay])
def test_restore_gives_back_the_high_bits_even_from_a_compressed_copy(shipped, tmp_path, original):
    """Unused high bits (old overlays) are the original's too: a native marked copy keeps them, a
    compressed one cannot, and the record brings them back either way."""
    ds = original()
    source = tmp_path / "high_bits.dcm"
    ds.save_as(source, enforce_file_format=True)
    for compression in ("none", "rle"):
        marked = tmp_path / f"{compression}.wm.dcm"
        mark(source, marked, shipped, compression=compression)
        restored = tmp_path / f"{compression}.restored.dcm"
        restore_file(marked, restored, KEY)
        assert pydicom.dcmread(restored).PixelData == ds.PixelData, compression


def test_a_signed_original_s_bits_that_are_not_its_sign_come_back_and_stay_bound(shipped, tmp_path):
    """Signed words hold their sign above BitsStored; an original with other bits there gets them
    back from the record, and the marked copy (written sign-extended) is intact as marked."""
    ds = pydicom.dcmread(clinical_file("693_UNCR.dcm"))  # signed, 14 of 16 bits
    words = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    words[:5000] ^= 0x4000
    ds.PixelData = words.tobytes()
    source = tmp_path / "signed_high_bits.dcm"
    ds.save_as(source, enforce_file_format=True)
    marked = tmp_path / "marked.dcm"
    mark(source, marked, shipped)
    loaded, codec = shipped
    report = verify_image(read_image(marked), KEY, loaded, codec)
    assert report.intact and report.binding_changes == []
    restore_file(marked, tmp_path / "restored.dcm", KEY)
    assert pydicom.dcmread(tmp_path / "restored.dcm").PixelData == ds.PixelData


def test_a_marked_file_marked_again_restores_step_by_step(shipped, tmp_path):
    source = clinical_file("693_UNCR.dcm")
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    mark(source, first, shipped)
    loaded, _ = shipped
    embed_file(first, second, EmbedSettings(b"SECOND", QualityFloor(36.0), key=OTHER_KEY), loaded,
               codec_for(loaded, OTHER_KEY))
    assert verify_image(read_image(second), OTHER_KEY, loaded, codec_for(loaded, OTHER_KEY)).intact
    back_to_first = tmp_path / "back1.dcm"
    restore_file(second, back_to_first, OTHER_KEY)
    assert pydicom.dcmread(back_to_first).PixelData == pydicom.dcmread(first).PixelData
    back_to_original = tmp_path / "back0.dcm"
    restore_file(back_to_first, back_to_original, KEY)
    assert pydicom.dcmread(back_to_original).PixelData == pydicom.dcmread(source).PixelData
    assert pydicom.dcmread(back_to_original).SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID

    plain = tmp_path / "plain.dcm"
    embed_file(first, plain, EmbedSettings(b"PLAIN", QualityFloor(36.0), key=fixed_key("k3").encode(), restore_record=False),
               loaded, codec_for(loaded, fixed_key("k3").encode()))
    assert file_record(read_image(plain)) is None  # the first marking's record no longer matches: gone


@pytest.mark.slow
def test_the_map_never_replaces_a_file_and_a_bloated_record_is_refused(shipped, tmp_path):
    import lzma

    from watermark_cli.errors import BadInputError
    from watermark_cli.integrity.containers import dicom_attach_record
    from watermark_cli.integrity.record import seal

    marked = tmp_path / "marked.dcm"
    mark(clinical_file("693_UNCR.dcm"), marked, shipped)
    loaded, codec = shipped
    report = verify_image(read_image(marked), KEY, loaded, codec)
    before = marked.read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        write_change_map(read_image(marked), report, marked)
    assert marked.read_bytes() == before
    assert write_change_map(read_image(marked), report, tmp_path / "new" / "map.png").is_file()

    # A record whose difference inflates far beyond its declared shape is damaged, not a memory bomb.
    import watermark_cli.integrity.record as record_module

    values = read_image(marked).pixels
    original_compress = record_module._compress_difference
    import zstandard

    for bomb in (("xz", lzma.compress(bytes(256 * 2**20))),  # records before zstd, and today's
                 ("zstd", zstandard.ZstdCompressor(level=3).compress(bytes(256 * 2**20)))):
        record_module._compress_difference = lambda d: bomb
        try:
            bloated = seal(values, values, KEY)
        finally:
            record_module._compress_difference = original_compress
        ds = pydicom.dcmread(marked)
        dicom_remove_record(ds)
        dicom_attach_record(ds, bloated)
        ds.save_as(tmp_path / "bloated.dcm", enforce_file_format=True)
        with pytest.raises(RecordNotAuthenticError, match="damaged"):
            restore_file(tmp_path / "bloated.dcm", tmp_path / "x.dcm", KEY)


def test_a_change_to_how_the_pixels_are_read_is_tampering(shipped, tmp_path):
    """Rescale or photometric changes alter what a reader sees without touching a stored value."""
    marked = tmp_path / "marked.dcm"
    mark(clinical_file("693_UNCR.dcm"), marked, shipped)
    loaded, codec = shipped
    ds = pydicom.dcmread(marked)
    ds.RescaleIntercept = -3000
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "reread.dcm", enforce_file_format=True)
    report = verify_image(read_image(tmp_path / "reread.dcm"), KEY, loaded, codec)
    assert report.changed_blocks == [] and not report.intact
    assert [(c.category, c.name, c.how) for c in report.binding_changes] == [
        ("presentation", "PhotometricInterpretation", "changed"), ("presentation", "RescaleIntercept", "changed")]
    assert report.status == "tampered: presentation changed: PhotometricInterpretation, RescaleIntercept"


@pytest.mark.parametrize("wide_share", [0.0, 0.01, 1 / 32, 0.2])
def test_a_difference_comes_back_exactly_whichever_way_it_was_packed(wide_share):
    """Nearly all values within a byte: bytes plus escapes ('zstd-escapes'); more wide values,
    or a difference that is bytes already: plain zstd. Either way the very values come back, and
    so do those of records written with xz before (the same packing, 'xz' and 'xz-escapes')."""
    import lzma

    import zstandard

    from watermark_cli.integrity import record as record_module

    rng = np.random.default_rng(int(wide_share * 1000))
    difference = rng.integers(-40, 41, (2, 64, 96)).astype(np.int16)
    wide = rng.choice(difference.size, int(wide_share * difference.size), replace=False)
    difference.ravel()[wide] = rng.choice([-32768, -900, -129, -128, 128, 731, 32767], len(wide))
    codec, packed = record_module._compress_difference(difference)
    assert codec == ("zstd-escapes" if wide_share <= 1 / 32 else "zstd")
    assert np.array_equal(record_module._decompress_difference(codec, packed, "<i2", difference.shape), difference)
    as_xz = lzma.compress(zstandard.ZstdDecompressor().decompress(packed))
    assert np.array_equal(record_module._decompress_difference(codec.replace("zstd", "xz"), as_xz, "<i2",
                                                               difference.shape), difference)
    small = difference.clip(-127, 127).astype(np.int8)
    assert record_module._compress_difference(small)[0] == "zstd"
    if codec == "zstd-escapes":  # escapes that do not match the bytes are a damaged record, not wrong pixels
        raw = bytearray(zstandard.ZstdDecompressor().decompress(packed))
        raw[0] = 0x80 if raw[0] != 0x80 else 0x00
        for compressor, compress in (("zstd", zstandard.ZstdCompressor().compress), ("xz", lzma.compress)):
            with pytest.raises(RecordNotAuthenticError):
                record_module._decompress_difference(f"{compressor}-escapes", compress(bytes(raw)), "<i2",
                                                     difference.shape)


def test_a_binding_comes_back_whichever_way_it_was_packed():
    """Bindings are packed with zstd; records sealed before hold them in xz and read the same.
    One that inflates past the bound, or is not a binding at all, is a damaged record."""
    import json
    import lzma

    import zstandard

    from watermark_cli.integrity import record as record_module
    from watermark_cli.integrity.binding import pack, unpack

    binding = {"version": 1, "format": "dicom", "sha256": "ab" * 32,
               "items": {f"Element{i} > Item{i % 7}": f"{i:016x}" for i in range(300)}}
    packed = pack(binding)
    assert packed.startswith(b"\x28\xb5\x2f\xfd") and unpack(packed) == binding
    as_xz = lzma.compress(json.dumps(binding, sort_keys=True).encode("utf-8"), preset=6)
    assert unpack(as_xz) == binding
    assert len(packed) < len(as_xz)
    for damaged in (zstandard.ZstdCompressor(level=3).compress(bytes(80 * 2**20)),  # past the bound
                    lzma.compress(bytes(80 * 2**20)), b"\x28\xb5\x2f\xfd" + bytes(40), pack({"items": []})):
        with pytest.raises(RecordNotAuthenticError, match="binding"):
            record_module._unpacked_binding(damaged)


def test_restore_refuses_a_header_changed_since_marking_unless_kept_knowingly(shipped, tmp_path):
    """A forged Patient Name (identity) or window (presentation) is not passed off as the original's;
    a change to a description is kept, and named."""
    marked = tmp_path / "ct.wm.dcm"
    mark(clinical_file("CT_small.dcm"), marked, shipped)
    for keyword, value, category in (("PatientName", "Someone^Else", "identity"),
                                     ("WindowCenter", 900, "presentation")):
        ds = pydicom.dcmread(marked)
        setattr(ds, keyword, value)
        tampered = tmp_path / f"{keyword}.dcm"
        ds.save_as(tampered, enforce_file_format=True)
        out = tmp_path / f"{keyword}.restored.dcm"
        with pytest.raises(CheckFailedError, match=f"{category} changed: {keyword}.*nothing written"):
            restore_file(tampered, out, KEY)
        assert not out.exists()
        result = restore_file(tampered, out, KEY, keep_header_changes=True)
        assert [(c["category"], c["name"]) for c in result["header_changes"]] == [(category, keyword)]
        back = pydicom.dcmread(out)
        assert back.PixelData == pydicom.dcmread(clinical_file("CT_small.dcm")).PixelData
        assert str(getattr(back, keyword)) == str(getattr(ds, keyword))  # kept, as asked
    ds = pydicom.dcmread(marked)
    ds.StudyDescription = "corrected after marking"
    ds.save_as(tmp_path / "described.dcm", enforce_file_format=True)
    result = restore_file(tmp_path / "described.dcm", tmp_path / "described.restored.dcm", KEY)
    assert result["header_changes"] == [{"category": "header", "name": "StudyDescription", "change": "changed"}]
    assert pydicom.dcmread(tmp_path / "described.restored.dcm").StudyDescription == "corrected after marking"
    assert restore_file(marked, tmp_path / "untouched.restored.dcm", KEY)["header_changes"] == []
