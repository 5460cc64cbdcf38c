"""Issue 29: `wm verify` exits 0 only for what was proved, and names every change a reader would see.

Each attack of the issue is repeated on real pydicom-data files marked by `embed_file` (the path
of `wm embed`), the tampering made with pydicom (and the attacker's certificate with openssl), and
checked through the real command line in this process (`run_wm_here`: exit codes and messages).
"""

from __future__ import annotations

import datetime
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import fixed_key, run_wm_here
from watermark_cli.data.clinical import clinical_file
from watermark_cli.integrity.containers import dicom_attach_record, dicom_remove_record
from watermark_cli.integrity.record import open_record, seal
from watermark_cli.io.image import file_record, read_image
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

KEY = fixed_key("issue-29-secret-key")
MESSAGE = b"IS-29"
NOW = datetime.datetime.now(datetime.timezone.utc)


# ---- certificates: a hospital CA and a signer it issued ---------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_identity(folder: Path, stem: str, key, certificate) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _issue(subject: str, issuer_key, issuer: str, *, ca: bool = False, start=NOW - datetime.timedelta(days=1),
           end=NOW + datetime.timedelta(days=30)):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    if ca:
        builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True))
    return key, builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """The hospital's CA, a signer it issued, the recipient, and an attacker's self-made certificate
    (made with openssl, as an attacker would)."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("Hospital CA", None, "Hospital CA", ca=True)
    files = {"ca": _write_identity(folder, "ca", ca_key, ca_cert)[1]}
    files["signer_key"], files["signer"] = _write_identity(folder, "signer", *_issue("Radiology signer", ca_key,
                                                                                     "Hospital CA"))
    files["recipient_key"], files["recipient"] = _write_identity(folder, "recipient", *_issue("Recipient", None,
                                                                                              "Recipient"))
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (it makes the attacker's certificate)")
    files["attacker_key"], files["attacker"] = folder / "attacker.key", folder / "attacker.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["attacker_key"],
                    "-out", files["attacker"], "-days", "30", "-subj", "/CN=Radiology signer"],
                   check=True, capture_output=True, timeout=120)
    return files


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(None)
    return loaded, codec_for(loaded, KEY.encode())


def _mark(source: Path, destination: Path, shipped, key=KEY, **settings) -> Path:
    loaded, _ = shipped
    secret = key.encode() if isinstance(key, str) else key
    embed_file(source, destination, EmbedSettings(MESSAGE, QualityFloor(40.0), key=secret, **settings), loaded,
               codec_for(loaded, secret))
    return destination


def _verify(path: Path, *more) -> tuple[int, dict, str]:
    result = run_wm_here("verify", path, "--json", *more)
    return result.code, json.loads(result.stdout.splitlines()[-1]), result.stderr


def _edited(source: Path, target: Path, change) -> Path:
    ds = pydicom.dcmread(source)
    change(ds)
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def signed_ct(tmp_path_factory, shipped, pki) -> Path:
    """A CT marked under the secret key and signed by the CA-issued signer."""
    folder = tmp_path_factory.mktemp("signed")
    return _mark(clinical_file("CT_small.dcm"), folder / "ct.wm.dcm", shipped,
                 signing=(pki["signer_key"].read_bytes(), pki["signer"].read_bytes()))


@pytest.fixture(scope="module")
def keyed_ct(tmp_path_factory, shipped) -> Path:
    return _mark(clinical_file("CT_small.dcm"), tmp_path_factory.mktemp("keyed") / "ct.wm.dcm", shipped)


# ---- the untouched file --------------------------------------------------------------------------

def test_the_untouched_file_with_a_secret_key_and_a_trusted_signer_is_intact(signed_ct, pki):
    code, report, _ = _verify(signed_ct, "--key", KEY, "--trust", pki["ca"])
    assert code == 0 and report["intact"] and report["status"] == "intact"
    assert report["authenticity"] == "secret key and a signature by a trusted signer"
    assert report["binding"] == "bound" and report["changes"] == []
    assert [(s["valid"], s["trusted"]) for s in report["signatures"]] == [(True, True)]
    # Without --trust the secret-key record pins the signer it was signed by: still proved.
    code, report, _ = _verify(signed_ct, "--key", KEY)
    assert code == 0 and report["authenticity"] == "secret key"


# ---- the signed, secret-key CT -----------------------------------------------------------------

def test_presentation_lut_shape_inverse_is_named(signed_ct, pki, tmp_path):
    tampered = _edited(signed_ct, tmp_path / "inverse.dcm", lambda ds: setattr(ds, "PresentationLUTShape", "INVERSE"))
    code, report, stderr = _verify(tampered, "--key", KEY, "--trust", pki["ca"])
    assert code == 1 and not report["intact"] and report["changed_blocks"] == []
    assert report["changes"] == [{"category": "presentation", "name": "PresentationLUTShape", "change": "added"}]
    assert report["status"] == "tampered: presentation changed: PresentationLUTShape (added)"
    assert [s["valid"] for s in report["signatures"]] == [False]
    assert "PresentationLUTShape" in stderr and len(stderr.strip().splitlines()) == 1


def _add_overlay(ds) -> None:
    """A filled disc in overlay plane 6000 (what dcmtk draws in white over the image)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    y, x = np.mgrid[:rows, :cols]
    disc = ((y - rows / 2) ** 2 + (x - cols / 2) ** 2 < (rows / 4) ** 2).astype(np.uint8).ravel()
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", np.packbits(disc, bitorder="little").tobytes())


def test_an_added_overlay_plane_is_named(signed_ct, pki, tmp_path):
    tampered = _edited(signed_ct, tmp_path / "overlay.dcm", _add_overlay)
    code, report, _ = _verify(tampered, "--key", KEY, "--trust", pki["ca"])
    assert code == 1 and report["changed_blocks"] == []
    named = {change["name"] for change in report["changes"]}
    assert "OverlayData (6000,3000)" in named and "OverlayRows (6000,0010)" in named
    assert {change["category"] for change in report["changes"]} == {"presentation"}
    assert {change["change"] for change in report["changes"]} == {"added"}


def test_overlay_bits_in_the_unused_high_bits_are_bound(shipped, tmp_path):
    ds = pydicom.dcmread(clinical_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))  # 12 of 16 bits
    assert int(ds.BitsStored) < int(ds.BitsAllocated)
    marked = _mark(clinical_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), tmp_path / "mr.wm.dcm", shipped)

    def draw_in_bit_15(ds) -> None:
        words = np.frombuffer(ds.PixelData, dtype="<u2").copy()
        words[: words.size // 4] |= 0x8000  # stored values (bits 0-11) untouched
        ds.PixelData = words.tobytes()

    code, report, _ = _verify(_edited(marked, tmp_path / "bits.dcm", draw_in_bit_15), "--key", KEY)
    assert code == 1 and report["changed_blocks"] == []
    assert [c["name"] for c in report["changes"]] == ["Overlay bits in the unused high bits of Pixel Data"]


def test_the_unused_high_bit_of_8_bit_words_is_bound(shipped, tmp_path):
    """8 bits allocated, 7 stored: a viewer that ignores BitsStored shows bit 7 too."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(clinical_file("image_dfl.dcm"))  # a real 8-bit 512² image (deflated)
    seven_bit = (ds.pixel_array >> 1).astype(np.uint8)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsStored, ds.HighBit, ds.PixelData = 7, 6, seven_bit.tobytes()
    source = tmp_path / "seven.dcm"
    ds.save_as(source, enforce_file_format=True)
    marked = _mark(source, tmp_path / "seven.wm.dcm", shipped)
    assert _verify(marked, "--key", KEY)[0] == 0

    def draw_in_bit_7(ds) -> None:
        words = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(512, 512).copy()
        words[100:180, 100:180] |= 0x80  # the stored values (bits 0-6) untouched
        ds.PixelData = words.tobytes()

    code, report, _ = _verify(_edited(marked, tmp_path / "bits.dcm", draw_in_bit_7), "--key", KEY)
    assert code == 1 and report["changed_blocks"] == []
    assert [c["name"] for c in report["changes"]] == ["Overlay bits in the unused high bits of Pixel Data"]


def test_bits_above_a_signed_value_that_are_not_its_sign_are_bound(shipped, tmp_path):
    ds = pydicom.dcmread(clinical_file("693_UNCR.dcm"))  # signed, 14 of 16 bits
    assert int(ds.PixelRepresentation) == 1 and int(ds.BitsStored) == 14
    marked = _mark(clinical_file("693_UNCR.dcm"), tmp_path / "ct.wm.dcm", shipped)
    assert _verify(marked, "--key", KEY)[0] == 0  # sign-extended words are what wm writes: intact

    def flip_bits_14_and_15(ds) -> None:  # the values pydicom and dcmtk read (bits 0-13, sign) stay
        words = np.frombuffer(ds.PixelData, dtype="<u2").reshape(512, 512).copy()
        words[200:260, 200:260] ^= 0xC000
        ds.PixelData = words.tobytes()

    code, report, _ = _verify(_edited(marked, tmp_path / "bits.dcm", flip_bits_14_and_15), "--key", KEY)
    assert code == 1 and report["changed_blocks"] == []
    assert [c["name"] for c in report["changes"]] == ["Overlay bits in the unused high bits of Pixel Data"]


def test_an_element_written_twice_is_named_whichever_copy_a_reader_keeps(keyed_ct, tmp_path):
    """pydicom keeps an element's last copy and dcmtk its first: a forged copy placed before the
    genuine one shows in a viewer while wm reads the genuine one."""
    data = keyed_ct.read_bytes()
    ds = pydicom.dcmread(keyed_ct)
    assert not ds.file_meta.TransferSyntaxUID.is_implicit_VR and ds.file_meta.TransferSyntaxUID.is_little_endian
    genuine = data.find(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    assert genuine > 0
    forged_name = b"Someone^Else"
    forged = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", len(forged_name)) + forged_name
    tampered = tmp_path / "twice.dcm"
    tampered.write_bytes(data[:genuine] + forged + data[genuine:])
    assert pydicom.dcmread(tampered).PatientName == ds.PatientName  # what wm reads is unchanged
    code, report, stderr = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": "presentation", "name": "PatientName (0010,0010) written twice or out of order",
                                  "change": "added"}]
    assert "PatientName (0010,0010) written twice" in stderr
    # Nor is such a file marked: wm would mark what one reader shows and another would not.
    out = tmp_path / "twice.wm.dcm"
    refused = run_wm_here("embed", tampered, "again", "-o", out, "--key", KEY)
    assert refused.code == 2 and not out.exists() and len(refused.stderr.strip().splitlines()) == 1
    assert "PatientName (0010,0010) is written twice or out of order" in refused.stderr


def _retyped(data: bytes, tag: int, old_vr: bytes, new_vr: bytes, value: bytes) -> bytes:
    """The Explicit VR Little Endian file `data` with the (short-form) element `tag` of VR
    `old_vr` written instead as `new_vr` holding `value`: what a byte editor makes in a minute."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + old_vr
    at = data.find(head)
    assert at > 0 and data.find(head, at + 1) < 0
    end = at + 8 + struct.unpack("<H", data[at + 6:at + 8])[0]
    long_form = new_vr in (b"OB", b"OW", b"UN", b"UT", b"SQ")
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + new_vr + \
        (b"\0\0" + struct.pack("<I", len(value)) if long_form else struct.pack("<H", len(value)))
    return data[:at] + header + value + data[end:]


@pytest.mark.parametrize("keyword, tag, old_vr, new_vr, value, category", [
    # pydicom decodes the same -1024; dcmtk ignores a rescale not written as DS: every HU off by 1024
    ("RescaleIntercept", 0x00281052, b"DS", b"SS", struct.pack("<h", -1024), "presentation"),
    ("RescaleIntercept", 0x00281052, b"DS", b"FL", struct.pack("<f", -1024.0), "presentation"),
    ("PatientName", 0x00100010, b"PN", b"UN", None, "identity"),  # dcmtk shows the name's bytes in hex
])
def test_an_element_written_in_another_vr_is_named(keyed_ct, tmp_path, keyword, tag, old_vr, new_vr, value,
                                                   category):
    """A standard element written in another VR than the dictionary's: pydicom reads the marked
    value, a viewer another (or none)."""
    marked = pydicom.dcmread(keyed_ct)
    data = keyed_ct.read_bytes()
    if value is None:  # the same bytes, under another VR
        value = marked[keyword].value.original_string if hasattr(marked[keyword].value, "original_string") \
            else str(marked[keyword].value).encode()
        value = value + b" " * (len(value) % 2)
    tampered = tmp_path / f"{keyword}-{new_vr.decode()}.dcm"
    tampered.write_bytes(_retyped(data, tag, old_vr, new_vr, value))
    assert pydicom.dcmread(tampered)[keyword].value == marked[keyword].value  # the same value to pydicom
    code, report, stderr = _verify(tampered, "--key", KEY)
    name = f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) written as {new_vr.decode()}, not {old_vr.decode()}"
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": category, "name": name, "change": "added"}]
    # The unmarked original so written: not marked (wm would guard the value one reader shows, not
    # the other's), but for UN, which wm writes in the dictionary's VR (no reader shows bytes).
    original = tmp_path / f"original-{new_vr.decode()}.dcm"
    original.write_bytes(_retyped(clinical_file("CT_small.dcm").read_bytes(), tag, old_vr, new_vr, value))
    out = tmp_path / "marked.dcm"
    marking = run_wm_here("embed", original, "m", "-o", out, "--key", KEY)
    if new_vr != b"UN":
        assert marking.code == 2 and not out.exists() and len(marking.stderr.strip().splitlines()) == 1
        assert name in marking.stderr
    else:
        from watermark_cli.io.dicom import elements_read_two_ways

        assert marking.code == 0 and not elements_read_two_ways(out)
        assert pydicom.dcmread(out)[keyword].value == marked[keyword].value
        assert _verify(out, "--key", KEY)[1]["status"] == "intact"


def _with_smuggled_elements(data: bytes, before: int, hidden: bytes) -> bytes:
    """`data` (Explicit VR Little Endian) with a group length of `before`'s group inserted before
    it, written in the undefined VR 'ZZ': pydicom reads a 2-byte length and takes `hidden` as the
    group length's value, dcmtk reads a 4-byte length of 0 and then `hidden` as elements."""
    at = data.find(struct.pack("<HH", before >> 16, before & 0xFFFF), 132)
    assert at > 0
    smuggler = struct.pack("<HH2sHI", before >> 16, 0x0000, b"ZZ", 4 + len(hidden), 0) + hidden
    return data[:at] + smuggler + data[at:]


def test_elements_hidden_behind_an_undefined_vr_are_named(keyed_ct, tmp_path):
    """A forged Patient Name and ID hidden in a group length written in a VR DICOM does not define:
    pydicom reads the marked ones, dcmtk (which keeps the first copy) the forged ones."""
    forged = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 12) + b"EVIL^PATIENT" + \
        struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 4) + b"X999"
    tampered = tmp_path / "smuggled.dcm"
    tampered.write_bytes(_with_smuggled_elements(keyed_ct.read_bytes(), 0x00100010, forged))
    marked, read = pydicom.dcmread(keyed_ct), pydicom.dcmread(tampered)
    assert (read.PatientName, read.PatientID) == (marked.PatientName, marked.PatientID)  # what wm reads
    code, report, _ = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": "presentation", "change": "added",
                                  "name": "element (0010,0000) written as 'ZZ', a VR DICOM does not define"}]
    original = tmp_path / "original.dcm"
    original.write_bytes(_with_smuggled_elements(clinical_file("CT_small.dcm").read_bytes(), 0x00100010, forged))
    refused = run_wm_here("embed", original, "m", "-o", tmp_path / "out.dcm", "--key", KEY)
    assert refused.code == 2 and not (tmp_path / "out.dcm").exists()
    assert "written as 'ZZ', a VR DICOM does not define" in refused.stderr


def test_only_vrs_readers_read_two_ways_count():
    """A number's VR (DS, IS, binary) and UN count; one text VR for another does not (a Protocol
    Name as SH, as older dictionaries had it: every reader shows the same text), nor an ambiguous
    element's other choice, a private element or implicit VR."""
    from watermark_cli.io.dicom import dictionary_vr_differs

    counted = [(0x00281052, "SS"), (0x00281052, "LO"), (0x00281050, "IS"), (0x00100010, "UN"), (0x7FE00010, "UN"),
               (0x00280030, "FD"), (0x00100000, "ZZ"), (0x00091010, "ZZ"), (0x00100000, "OB"), (0x00020010, "\0\0")]
    not_counted = [(0x00181030, "SH"), (0x00080018, "LO"), (0x00280120, "SS"), (0x00280120, "US"),
                   (0x7FE00010, "OB"), (0x00091010, "SS"), (0x00281052, None), (0x00281052, "DS"), (0x00100000, "UL")]
    assert [dictionary_vr_differs(tag, vr) for tag, vr in counted] == [True] * len(counted)
    assert [dictionary_vr_differs(tag, vr) for tag, vr in not_counted] == [False] * len(not_counted)


def test_what_readers_decode_two_ways_is_refused_where_read(tmp_path):
    """A body encoded otherwise than its file meta says (pydicom reads what it finds, dcmtk what the
    meta says, and fails), and 16-bit words of a big-endian file written as OB (pydicom swaps
    them, dcmtk does not: another image). Neither is read, so neither is marked nor called intact."""
    explicit = clinical_file("CT_small.dcm").read_bytes()
    syntax = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 20) + b"1.2.840.10008.1.2.1\0"
    assert explicit.count(syntax) == 1
    implicit = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 18) + b"1.2.840.10008.1.2\0"
    meta_length = struct.unpack("<I", explicit[140:144])[0]
    told_implicit = (explicit[:140] + struct.pack("<I", meta_length - 2) + explicit[144:]).replace(syntax, implicit)
    big_endian = clinical_file("MR_small_bigendian.dcm").read_bytes()
    assert big_endian.count(b"\x7f\xe0\x00\x10OW") == 1
    cases = {"told-implicit.dcm": (told_implicit, "encoded Explicit VR Little Endian, its transfer syntax says Implicit"),
             "big-endian-ob.dcm": (big_endian.replace(b"\x7f\xe0\x00\x10OW", b"\x7f\xe0\x00\x10OB"),
                                   "16-bit pixel data of a big-endian file written as OB")}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert pydicom.dcmread(path).pixel_array.size  # pydicom reads it without complaint
        for command in (["verify", path, "--key", KEY], ["embed", path, "m", "-o", tmp_path / "out.dcm", "--key", KEY]):
            result = run_wm_here(*command)
            assert result.code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out.dcm").exists()


@pytest.mark.parametrize("keyword, text", [
    ("RescaleIntercept", "-1_024"),  # -1024 to Python's float(), -1 to dcmtk: every HU off by 1023
    ("PixelSpacing", ["6.61468e-0_1", "0.661468"]),  # the same spacing to pydicom, ten times less to dcmtk
])
def test_a_number_readers_read_two_ways_is_named(keyed_ct, tmp_path, keyword, text):
    """A DS or IS text outside DICOM's syntax that Python still reads as the marked value: the
    decoded values agree, what a viewer shows does not."""
    marked = pydicom.dcmread(keyed_ct)
    tampered = _edited(keyed_ct, tmp_path / f"{keyword}.dcm", lambda ds: setattr(ds, keyword, text))
    assert [float(v) for v in np.atleast_1d(pydicom.dcmread(tampered)[keyword].value)] == \
        [float(v) for v in np.atleast_1d(marked[keyword].value)]  # the same value to pydicom
    code, report, stderr = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": "presentation", "name": keyword, "change": "changed"}]
    # Nor is such a file marked: wm would guard the value one reader shows, not the other's.
    out = tmp_path / "again.wm.dcm"
    refused = run_wm_here("embed", tampered, "again", "-o", out, "--key", KEY)
    assert refused.code == 2 and not out.exists() and len(refused.stderr.strip().splitlines()) == 1
    assert f"{keyword} (0028," in refused.stderr and "not written as DICOM writes numbers" in refused.stderr


def test_an_encrypted_attributes_item_added_to_a_key_only_file_is_named(keyed_ct, tmp_path):
    """Anyone can encrypt attributes to a recipient's public certificate, and a recipient who
    re-identifies (PS3.15 E.1.2) puts them in place of the file's own: only the record's own item
    (for a recipient, the last) is left unbound."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    def add_item(ds) -> None:
        item = Dataset()
        item.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
        item.EncryptedContent = b"\x30\x03\x02\x01\x00"  # stands for a CMS envelope of forged attributes
        ds.EncryptedAttributesSequence = [item]

    code, report, stderr = _verify(_edited(keyed_ct, tmp_path / "encrypted.dcm", add_item), "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": "identity", "name": "EncryptedAttributesSequence", "change": "added"}]


def test_a_file_meta_naming_another_instance_is_named(keyed_ct, tmp_path):
    """The file meta is made anew by every re-write and is not bound, but a reader that files the
    instance by its Media Storage SOP Instance UID (a DICOMDIR reference) would file it as another."""
    ds = pydicom.dcmread(keyed_ct)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.save_as(tmp_path / "meta.dcm")  # as it is (pydicom's enforced file format would set it back)
    assert pydicom.dcmread(tmp_path / "meta.dcm").file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    code, report, _ = _verify(tmp_path / "meta.dcm", "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{
        "category": "identity", "change": "added",
        "name": "SOPInstanceUID (0008,0018) and the file meta's MediaStorageSOPInstanceUID (0002,0003) differ"}]


def _items(*fragments: bytes) -> bytes:
    """Encapsulated pixel data: an empty Basic Offset Table, then one item per fragment."""
    return b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(f)) + f for f in (b"", *fragments))


def test_an_offset_table_pointing_past_a_forged_frame_is_refused(keyed_ct, tmp_path):
    """The Extended Offset Table points pydicom at the genuine compressed frame; dcmtk, which reads
    the items in order, shows a forged frame placed first. Not read, so never intact."""
    from pydicom.encaps import generate_fragments
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(keyed_ct)
    forged_pixels = ds.pixel_array.copy()
    forged_pixels[40:80, 40:80] = forged_pixels.max()
    ds.compress(RLELossless, generate_instance_uid=False)
    genuine = list(generate_fragments(ds.PixelData))[-1]
    ds.compress(RLELossless, forged_pixels, generate_instance_uid=False)
    forged = list(generate_fragments(ds.PixelData))[-1]
    ds.PixelData = _items(forged, genuine)
    ds.ExtendedOffsetTable = struct.pack("<Q", 8 + len(forged))
    ds.ExtendedOffsetTableLengths = struct.pack("<Q", len(genuine))
    tampered = tmp_path / "offsets.dcm"
    ds.save_as(tampered, enforce_file_format=True)
    assert np.array_equal(pydicom.dcmread(tampered).pixel_array, pydicom.dcmread(keyed_ct).pixel_array)
    result = run_wm_here("verify", tampered, "--key", KEY)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Extended Offset Table does not list the frames" in result.stderr
    # A Basic Offset Table that skips the forged item is refused the same way.
    del ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    ds.PixelData = _items(forged, genuine).replace(struct.pack("<HHI", 0xFFFE, 0xE000, 0),
                                                   struct.pack("<HHII", 0xFFFE, 0xE000, 4, 8 + len(forged)), 1)
    ds.save_as(tampered, enforce_file_format=True)
    result = run_wm_here("verify", tampered, "--key", KEY)
    assert result.code == 2 and "Basic Offset Table does not point at the frames" in result.stderr


def test_nothing_rides_unbound_under_wm_s_private_creator(keyed_ct, tmp_path):
    def add_blocks(ds) -> None:
        ds.private_block(0x0011, "WM RESTORATION RECORD 1", create=True).add_new(0x01, "LO", "attacker text")
        ds.private_block(0x0077, "WM RESTORATION RECORD 1").add_new(0x50, "LT", "more in wm's own block")
        ds.add_new(0x007700F0, "LO", "WM RESTORATION RECORD 1")  # a second block of that name
        ds.add_new(0x0077F001, "OB", b"not the record")

    code, report, _ = _verify(_edited(keyed_ct, tmp_path / "blocks.dcm", add_blocks), "--key", KEY)
    assert code == 1 and report["record_authentic"] and report["changed_blocks"] == []
    assert sorted(c["name"] for c in report["changes"]) == [
        "private WM RESTORATION RECORD 1 (0011,xx01)", "private WM RESTORATION RECORD 1 (0077,xx01)",
        "private WM RESTORATION RECORD 1 (0077,xx50)"]


def _with_icon(source: Path, target: Path) -> Path:
    """`source` with a 64x64 8-bit thumbnail of its image in an Icon Image Sequence item."""
    def add_icon(ds) -> None:
        image = ds.pixel_array[::2, ::2][:64, :64].astype(float)
        icon = Dataset()
        icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.Rows, icon.Columns = 1, "MONOCHROME2", 64, 64
        icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
        icon.PixelData = ((image - image.min()) / np.ptp(image) * 255).astype(np.uint8).tobytes()
        icon["PixelData"].VR = "OB"
        ds.IconImageSequence = Sequence([icon])

    return _edited(source, target, add_icon)


def test_a_thumbnail_s_pixels_are_bound(shipped, tmp_path):
    # The image's own pixel data is bound by the block tags; a thumbnail's in a sequence item has
    # none, and a viewer shows it for the image (an inverted thumbnail verified intact before).
    original = _with_icon(clinical_file("CT_small.dcm"), tmp_path / "icon.dcm")
    marked = _mark(original, tmp_path / "icon.wm.dcm", shipped)
    code, report, _ = _verify(marked, "--key", KEY)
    assert code == 0 and report["changes"] == []

    def invert_centre(ds) -> None:
        thumbnail = np.frombuffer(ds.IconImageSequence[0].PixelData, np.uint8).reshape(64, 64).copy()
        thumbnail[16:48, 16:48] = 255 - thumbnail[16:48, 16:48]
        ds.IconImageSequence[0].PixelData = thumbnail.tobytes()

    tampered = _edited(marked, tmp_path / "inverted.dcm", invert_centre)
    code, report, _ = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": "presentation", "name": "IconImageSequence > PixelData",
                                  "change": "changed"}]
    def hide_in_the_item(ds) -> None:  # wm's record block in an item is not the record: bound
        ds.IconImageSequence[0].private_block(0x0077, "WM RESTORATION RECORD 1", create=True).add_new(
            0x01, "OB", b"not the record")

    code, report, _ = _verify(_edited(marked, tmp_path / "hidden.dcm", hide_in_the_item), "--key", KEY)
    assert code == 1 and [c["name"] for c in report["changes"]] == [
        "IconImageSequence > private WM RESTORATION RECORD 1 (0077,xx01)"]
    refused = run_wm_here("restore", tampered, "-o", tmp_path / "restored.dcm", "--key", KEY)
    assert refused.code == 1 and "IconImageSequence > PixelData" in refused.stderr
    assert not (tmp_path / "restored.dcm").exists()
    restored = run_wm_here("restore", marked, "-o", tmp_path / "restored.dcm", "--key", KEY)
    assert restored.code == 0
    assert (pydicom.dcmread(tmp_path / "restored.dcm").IconImageSequence[0].PixelData
            == pydicom.dcmread(original).IconImageSequence[0].PixelData)


def _rle_frame(planes: list[bytes], middle: bytes = b"") -> bytes:
    """One RLE frame of literal runs (every decoder reads them alike), `middle` put into each
    segment halfway."""
    def literals(data: bytes) -> bytes:
        return b"".join(bytes([len(data[at:at + 128]) - 1]) + data[at:at + 128] for at in range(0, len(data), 128))

    segments = [literals(plane[:len(plane) // 2]) + middle + literals(plane[len(plane) // 2:]) for plane in planes]
    offsets = np.cumsum([64] + [len(segment) for segment in segments[:-1]]).tolist()
    frame = struct.pack("<16I", len(segments), *offsets, *[0] * (15 - len(segments))) + b"".join(segments)
    return frame + b"\0" * (len(frame) % 2)


def test_rle_runs_that_decoders_read_two_ways_are_refused(keyed_ct, tmp_path):
    # PS3.5 G.3.1 makes the run header -128 'output nothing' (pydicom), dcmtk repeats the next byte
    # 129 times: pairs of it in a re-encoded marked CT gave pydicom the marked values (intact) and
    # a viewer a black band with the anatomy shifted down.
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from watermark_cli.io.encapsulated import _rle_frame_problem

    words = pydicom.dcmread(keyed_ct).pixel_array.astype("<u2").ravel()
    planes = [(words >> 8).astype(np.uint8).tobytes(), (words & 0xFF).astype(np.uint8).tobytes()]

    def re_encoded(name: str, frame: bytes) -> Path:
        def as_rle(ds) -> None:
            ds.file_meta.TransferSyntaxUID = RLELossless
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"

        return _edited(keyed_ct, tmp_path / f"{name}.dcm", as_rle)

    code, report, _ = _verify(re_encoded("literal", _rle_frame(planes)), "--key", KEY)
    assert (code, report["status"]) == (0, "intact")  # a plain re-encoding stays intact
    result = run_wm_here("verify", re_encoded("no-op", _rle_frame(planes, b"\x80\x80" * 12)), "--key", KEY)
    assert result.code == 2 and "a run header -128" in result.stderr and "Traceback" not in result.stderr
    pixels = len(planes[0])
    assert "3 segments" in _rle_frame_problem(_rle_frame([*planes, planes[0]]), pixels, 2)
    assert "crosses the end" in _rle_frame_problem(_rle_frame(planes, b"\xfe\x00"), pixels, 2)  # 3 bytes too many
    assert "ends after" in _rle_frame_problem(_rle_frame([planes[0], planes[1][:-200]]), pixels, 2)


def test_another_format_s_header_in_the_preamble_is_named(keyed_ct, tmp_path):
    # PS3.10 leaves the preamble free: a TIFF header there, its strip in Data Set Trailing Padding,
    # made the marked CT a forged 128² TIFF to Pillow while verify said intact (so would an
    # executable's header: CVE-2019-11687). CT_small is itself such a dual file (its padding holds
    # the TIFF directory): wm writes the preamble as zeros, and the padding, which no DICOM reader
    # reads and nothing then points at, stays unbound.
    ds = pydicom.dcmread(keyed_ct)
    assert not any(ds.preamble) and any(ds.DataSetTrailingPadding)
    ds.DataSetTrailingPadding = bytes(range(256)) * 8
    ds.save_as(tmp_path / "padding.dcm", enforce_file_format=True)
    assert _verify(tmp_path / "padding.dcm", "--key", KEY)[0] == 0
    ds.preamble = b"II*\0" + struct.pack("<I", 8) + bytes(120)
    ds.save_as(tmp_path / "polyglot.dcm", enforce_file_format=True)
    code, report, stderr = _verify(tmp_path / "polyglot.dcm", "--key", KEY)
    assert code == 1 and report["changed_blocks"] == []
    assert report["changes"] == [{"category": "presentation", "change": "added",
                                  "name": "the file preamble (128 bytes before DICM), not zeros"}]


def test_a_character_set_dicom_does_not_define_is_named(keyed_ct, tmp_path):
    # pydicom decodes any codec Python knows ('utf_7' keeps ASCII names byte for byte, so the
    # decoded values were equal: intact); dcmtk and a PACS show the names in UTF-7's base64.
    tampered = _edited(keyed_ct, tmp_path / "utf7.dcm", lambda ds: setattr(ds, "SpecificCharacterSet", "utf_7"))
    code, report, _ = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changes"] == [{"category": "identity", "name": "SpecificCharacterSet",
                                                "change": "added"}]
    latin1 = _edited(keyed_ct, tmp_path / "latin1.dcm", lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"))
    assert _verify(latin1, "--key", KEY)[0] == 0  # a DICOM term with the same decoded values


@pytest.mark.parametrize("keyword, value", [
    ("ShutterShape", "RECTANGULAR"), ("ICCProfile", b"\0" * 128), ("FrameTimeVector", [0, 40]),
    ("GreenPaletteColorLookupTableDescriptor", [256, 0, 16]), ("ImageRotation", 90),
    ("SmallestImagePixelValue", 0), ("LargestImagePixelValue", 40),  # a range some viewers window to
])
def test_display_elements_are_presentation_so_restore_refuses_them(keyed_ct, tmp_path, keyword, value):
    def add(ds) -> None:
        setattr(ds, keyword, value)
        if ds[keyword].VR == "US or SS":
            ds[keyword].VR = "US"

    tampered = _edited(keyed_ct, tmp_path / f"{keyword}.dcm", add)
    code, report, _ = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changes"] == [{"category": "presentation", "name": keyword, "change": "added"}]
    refused = run_wm_here("restore", tampered, "-o", tmp_path / "restored.dcm", "--key", KEY)
    assert refused.code == 1 and not (tmp_path / "restored.dcm").exists()


# ---- key-only files ------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword, value, category", [
    ("ImageOrientationPatient", [-1, 0, 0, 0, -1, 0], "presentation"),  # flipped
    ("PatientName", "Someone^Else", "identity"),
    ("SliceThickness", 1.25, "presentation"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1", "identity"),
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.2", "identity"),
])
def test_key_only_header_changes_are_named(keyed_ct, tmp_path, keyword, value, category):
    tampered = _edited(keyed_ct, tmp_path / f"{keyword}.dcm", lambda ds: setattr(ds, keyword, value))
    code, report, stderr = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changed_blocks"] == [] and not report["intact"]
    assert report["changes"] == [{"category": category, "name": keyword, "change": "changed"}]
    assert f"{category} changed: {keyword}" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("path, change", [
    ("SharedFunctionalGroupsSequence > PixelValueTransformationSequence > RescaleSlope",
     lambda ds: setattr(ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0], "RescaleSlope", 2)),
    ("SharedFunctionalGroupsSequence > FrameVOILUTSequence > WindowCenter",
     lambda ds: setattr(ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0], "WindowCenter", 900)),
    ("SharedFunctionalGroupsSequence > PixelMeasuresSequence > PixelSpacing",
     lambda ds: setattr(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0], "PixelSpacing", [2, 2])),
])
def test_an_enhanced_ct_functional_group_change_is_named(shipped, tmp_path_factory, path, change):
    folder = tmp_path_factory.mktemp("enhanced")
    marked = _mark(clinical_file("eCT_Supplemental.dcm"), folder / "ect.wm.dcm", shipped)
    code, report, _ = _verify(_edited(marked, folder / "tampered.dcm", change), "--key", KEY)
    assert code == 1 and report["changed_blocks"] == []
    assert report["changes"] == [{"category": "presentation", "name": path, "change": "changed"}]


def _png_with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with one chunk inserted right after IHDR (where gAMA belongs)."""
    end_of_ihdr = 8 + 12 + 13
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def test_a_png_gamma_chunk_is_named(shipped, tmp_path):
    source = tmp_path / "slice.png"
    ct = pydicom.dcmread(clinical_file("CT_small.dcm")).pixel_array.astype(np.float64)
    Image.fromarray(np.clip((ct - ct.min()) * 255 / np.ptp(ct), 0, 255).astype(np.uint8)).save(source)
    marked = _mark(source, tmp_path / "slice.wm.png", shipped)
    assert _verify(marked, "--key", KEY)[0] == 0
    tampered = tmp_path / "gamma.png"
    tampered.write_bytes(_png_with_chunk(marked.read_bytes(), b"gAMA", struct.pack(">I", 45455 * 3)))
    assert np.array_equal(read_image(tampered).pixels, read_image(marked).pixels)  # the values are the same
    code, report, _ = _verify(tampered, "--key", KEY)
    assert code == 1 and report["changes"] == [{"category": "presentation", "name": "gAMA", "change": "added"}]
    # A second IHDR (the same one: decoders either refuse it or read the image again) is named too.
    data = marked.read_bytes()
    twice = tmp_path / "ihdr_twice.png"
    twice.write_bytes(data[:33] + data[8:33] + data[33:])  # signature (8), IHDR (25)
    code, report, _ = _verify(twice, "--key", KEY)
    assert code == 1 and report["changes"] == [{"category": "presentation", "name": "IHDR", "change": "changed"}]
    # Chunks a reader applies though wm does not know them, and text a reader applies: all named.
    exif_rotated = b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    for kind, body, name in (
            (b"vpAg", struct.pack(">IIB", 512, 512, 0), "vpAg"),  # ImageMagick's canvas
            (b"exIf", exif_rotated, "exIf"),  # the older EXIF chunk ImageMagick still applies
            (b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp, "XML:com.adobe.xmp (iTXt)"),
            (b"tEXt", b"Raw profile type exif\x00\nexif\n      26\n" + exif_rotated.hex().encode() + b"\n",
             "Raw profile type exif (tEXt)")):
        tampered.write_bytes(_png_with_chunk(marked.read_bytes(), kind, body))
        code, report, _ = _verify(tampered, "--key", KEY)
        assert code == 1 and report["changes"] == [{"category": "presentation", "name": name, "change": "added"}], name
    # ImageMagick applies text keywords as image properties: 'colorspace' CMY inverts every export,
    # 'exif:Orientation' turns it, 'page' crops it (red-team round 8). Text is bound but for the
    # keywords no reader applies.
    for keyword, value in ((b"colorspace", b"CMY"), (b"exif:Orientation", b"6"), (b"page", b"64x64+10+10")):
        tampered.write_bytes(_png_with_chunk(marked.read_bytes(), b"tEXt", keyword + b"\x00" + value))
        code, report, _ = _verify(tampered, "--key", KEY)
        name = f"{keyword.decode()} (tEXt)"
        assert code == 1 and report["changes"] == [{"category": "presentation", "name": name, "change": "added"}]
    for text in (b"Comment\x00read by no viewer", b"date:modify\x002026-12-05T18:00:00+00:00"):
        tampered.write_bytes(_png_with_chunk(marked.read_bytes(), b"tEXt", text))
        assert _verify(tampered, "--key", KEY)[0] == 0  # text no reader applies may change in transit
    # An interlace method PNG does not define: Pillow reads it as Adam7, libpng refuses the file.
    data = bytearray(marked.read_bytes())
    data[28] = 2
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    odd_interlace = tmp_path / "interlace2.png"
    odd_interlace.write_bytes(bytes(data))
    result = run_wm_here("verify", odd_interlace, "--key", KEY)
    assert result.code == 2 and "interlace 2: methods PNG does not define" in result.stderr
    # Pixel data whose CRC is wrong: Pillow decodes them, libpng refuses the file. Refused here too.
    data = bytearray(marked.read_bytes())
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4:idat])
    data[idat + 4 + length] ^= 0x01  # the stored CRC, the pixel data as they were
    crc_broken = tmp_path / "crc.png"
    crc_broken.write_bytes(bytes(data))
    result = run_wm_here("verify", crc_broken, "--key", KEY)
    assert result.code == 2 and "chunk 'IDAT' fails its CRC check" in result.stderr


def _tiff(entries: list[tuple[int, int, list[int]]], blobs: list[bytes]) -> bytes:
    """A little-endian TIFF of one page: `entries` (tag, type 3 SHORT or 4 LONG, values; a value
    ('blob', i) stands for the offset of blobs[i]) and the blobs they point at."""
    header = 8
    blob_at, at = [], header
    for blob in blobs:
        blob_at.append(at)
        at += len(blob)
    ifd_at = at
    count = len(entries)
    extra_at = ifd_at + 2 + 12 * count + 4
    ifd, extra = b"", b""
    for tag, kind, values in sorted(entries):
        values = [blob_at[v[1]] if isinstance(v, tuple) else v for v in values]
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            ifd += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra))
            extra += packed
    return b"II*\x00" + struct.pack("<I", ifd_at) + b"".join(blobs) + struct.pack("<H", count) + ifd + \
        b"\x00" * 4 + extra


def test_a_tiff_page_whose_strips_or_tiles_readers_read_differently_is_refused(tmp_path):
    """Pillow reads the last offset of a single strip, and the strips of a page that has tiles too;
    tifffile and libtiff read the first, and the tiles. A genuine image for one, a forged one for
    the other: refused where it is read, so never intact."""
    height = width = 64
    genuine = np.arange(height * width, dtype="<u2").reshape(height, width)
    forged = genuine.copy()
    forged[20:40, 20:40] = 65535
    blobs = [genuine.tobytes(), forged.tobytes()]
    size = len(blobs[0])
    page = [(256, 3, [width]), (257, 3, [height]), (258, 3, [16]), (259, 3, [1]), (262, 3, [1]), (277, 3, [1])]
    layouts = {
        "two_offsets.tif": [(273, 4, [("blob", 0), ("blob", 1)]), (278, 4, [height]), (279, 4, [size, size])],
        "strips_and_tiles.tif": [(273, 4, [("blob", 1)]), (278, 4, [height]), (279, 4, [size]), (322, 3, [width]),
                                 (323, 3, [height]), (324, 4, [("blob", 0)]), (325, 4, [size])],
        "too_few_strips.tif": [(273, 4, [("blob", 0)]), (278, 4, [16]), (279, 4, [size])],
        # tifffile undoes a Predictor on uncompressed data, libtiff and Pillow show the differences
        "predictor_uncompressed.tif": [(273, 4, [("blob", 0)]), (278, 4, [height]), (279, 4, [size]),
                                       (317, 3, [2])],
    }
    plain = tmp_path / "plain.tif"
    plain.write_bytes(_tiff(page + [(273, 4, [("blob", 0)]), (278, 4, [height]), (279, 4, [size])], blobs[:1]))
    assert np.array_equal(read_image(plain).pixels[0], genuine)  # the writer makes a TIFF readers agree on
    for name, layout in layouts.items():
        path = tmp_path / name
        path.write_bytes(_tiff(page + layout, blobs))
        result = run_wm_here("verify", path, "--key", KEY)
        assert result.code == 2 and "(readers would show different images)" in result.stderr, name
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_tiff_re_saved_with_lzw_and_a_predictor_stays_intact(shipped, tmp_path):
    """Compression and predictor may change in transit where every reader applies them alike:
    LZW and Deflate with the horizontal predictor (libtiff, and tifffile through imagecodecs); a
    JPEG process libtiff does not decode is refused."""
    import tifffile

    ct = pydicom.dcmread(clinical_file("CT_small.dcm")).pixel_array.astype(np.int64)
    tifffile.imwrite(tmp_path / "ct.tif", (ct - ct.min()).astype(np.uint16), photometric="minisblack")
    marked = _mark(tmp_path / "ct.tif", tmp_path / "ct.wm.tif", shipped)
    with tifffile.TiffFile(marked) as tif:
        tag = tif.pages[0].tags[65137]
        record = (65137, tag.dtype, tag.count, tag.value, False)
        values = tif.pages[0].asarray()
    for compression in ("lzw", "zlib"):
        resaved = tmp_path / f"{compression}.tif"
        tifffile.imwrite(resaved, values, photometric="minisblack", compression=compression, predictor=True,
                         extratags=[record])
        with tifffile.TiffFile(resaved) as tif:
            assert int(tif.pages[0].compression) in (5, 8) and int(tif.pages[0].predictor) == 2
        code, report, _ = _verify(resaved, "--key", KEY)
        assert (code, report["status"]) == (0, "intact"), compression
    # Lossless JPEG in a TIFF: imagecodecs decodes it (the marked values), libtiff refuses SOF3 and
    # ImageMagick, vips and tiffcp show nothing (red-team round 8).
    eight_bit = (values >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "jpeg.tif", eight_bit, photometric="minisblack", compression="jpeg",
                     compressionargs={"lossless": True})
    result = run_wm_here("verify", tmp_path / "jpeg.tif", "--key", KEY)
    assert result.code == 2 and "JPEG-compressed with marker FFC3 where libtiff reads DCT only" in result.stderr


# ---- the recipient forgery and trusted signers ---------------------------------------------------

def test_a_forged_recipient_record_with_a_self_made_certificate_is_not_intact(shipped, pki, tmp_path):
    """A never-marked image, a mark as good as copied (made with the very key: the worst case), a
    recipient record anyone with the recipient's certificate can write, and a signature by a
    certificate the attacker made with openssl under the genuine signer's name."""
    forged = _mark(clinical_file("CT_small.dcm"), tmp_path / "forged.dcm", shipped,
                   recipient=pki["recipient"].read_bytes(),
                   signing=(pki["attacker_key"].read_bytes(), pki["attacker"].read_bytes()))
    opening = ("--key", KEY, "--recipient", pki["recipient"], "--recipient-key", pki["recipient_key"])
    code, report, stderr = _verify(forged, *opening)
    assert code == 1 and not report["intact"] and report["mark_found"] and report["changes"] == []
    assert report["authenticity"] == "none (recipient record without a trusted signature)"
    assert "signed by an untrusted signer (CN=Radiology signer)" in report["status"]
    code, report, _ = _verify(forged, *opening, "--trust", pki["ca"])
    assert code == 1 and report["signatures"][0]["trust_problem"] == "signed by an untrusted signer"


def test_a_genuine_recipient_record_is_intact_only_with_its_signer_trusted(shipped, pki, tmp_path):
    opening = ("--key", KEY, "--recipient", pki["recipient"], "--recipient-key", pki["recipient_key"])
    genuine = _mark(clinical_file("CT_small.dcm"), tmp_path / "genuine.dcm", shipped,
                    recipient=pki["recipient"].read_bytes(),
                    signing=(pki["signer_key"].read_bytes(), pki["signer"].read_bytes()))
    assert _verify(genuine, *opening)[0] == 1  # no trusted signer named: unproven
    code, report, _ = _verify(genuine, *opening, "--trust", pki["ca"])
    assert code == 0 and report["authenticity"] == "signature by a trusted signer"
    code, report, _ = _verify(genuine, *opening, "--trust", pki["signer"])  # the signer itself, pinned
    assert code == 0


def test_restore_writes_a_recipient_s_original_only_with_a_trusted_signature(shipped, pki, tmp_path):
    """Anyone with the recipient's certificate can seal a record for it: here an attacker replaces
    the genuine record with one whose 'original' is the image upside down with a forged lesion.
    `restore` writes a recipient's original only when a trusted signer vouches for the file; the
    signature does not survive the swap."""
    from watermark_cli.integrity import containers
    from watermark_cli.integrity.envelope import envelope, new_record_key, recipient_from_pem
    from watermark_cli.marking.marked_binding import written_binding

    genuine = _mark(clinical_file("CT_small.dcm"), tmp_path / "genuine.dcm", shipped,
                    recipient=pki["recipient"].read_bytes(),
                    signing=(pki["signer_key"].read_bytes(), pki["signer"].read_bytes()))
    opening = ("--recipient", pki["recipient"], "--recipient-key", pki["recipient_key"])
    unproven = run_wm_here("restore", genuine, *opening, "-o", tmp_path / "never.dcm")
    assert unproven.code == 1 and not (tmp_path / "never.dcm").exists()
    assert "the original is unproven" in unproven.stderr and "--trust" in unproven.stderr
    proved = run_wm_here("restore", genuine, *opening, "--trust", pki["ca"], "-o", tmp_path / "original.dcm", "--json")
    assert proved.code == 0 and json.loads(proved.stdout)["proved"] is True
    assert np.array_equal(pydicom.dcmread(tmp_path / "original.dcm").pixel_array,
                          pydicom.dcmread(clinical_file("CT_small.dcm")).pixel_array)

    image = read_image(genuine)  # the attacker: the certificate only
    forged_original = image.pixels.copy()
    forged_original[0] = forged_original[0][::-1]
    forged_original[0, 40:60, 40:60] = 2000
    kept, absent = containers.dicom_original_elements(image.source)
    record_key = new_record_key()
    record = seal(forged_original, image.pixels, record_key, original_elements=containers.dataset_bytes(kept),
                  added_elements=absent, original_sop_instance_uid="1.2.3.4", creator="wm", binding=written_binding(image))
    ds = pydicom.dcmread(genuine)
    ds.EncryptedAttributesSequence[-1].EncryptedContent = envelope(
        record, record_key, recipient_from_pem(pki["recipient"].read_bytes()), containers.modified_attributes_item(kept))
    forged = tmp_path / "forged.dcm"
    ds.save_as(forged, enforce_file_format=True)
    refused = run_wm_here("restore", forged, *opening, "--trust", pki["ca"], "-o", tmp_path / "forged-original.dcm")
    assert refused.code == 1 and not (tmp_path / "forged-original.dcm").exists()
    assert "a digital signature does not verify" in refused.stderr
    taken = run_wm_here("restore", forged, *opening, "--accept-unproven", "-o", tmp_path / "as-told.dcm")
    assert taken.code == 0 and "as the record describes the original (unproven" in taken.stdout


def test_untrusted_and_expired_signers_are_not_intact(signed_ct, pki, tmp_path, monkeypatch):
    from watermark_cli.integrity.signature import load_signer, sign_dataset

    code, report, _ = _verify(signed_ct, "--key", KEY, "--trust", pki["attacker"])  # another signer trusted
    assert code == 1 and report["status"] == "unproven: signed by an untrusted signer (CN=Radiology signer)"

    ca_key = serialization.load_pem_private_key((pki["ca"].parent / "ca.key").read_bytes(), None)
    old_key, old_cert = _issue("Retired signer", ca_key, "Hospital CA", start=NOW - datetime.timedelta(days=60),
                               end=NOW - datetime.timedelta(days=30))
    resigned = tmp_path / "expired.dcm"
    ds = pydicom.dcmread(signed_ct)
    sign_dataset(ds, load_signer(*(p.read_bytes() for p in _write_identity(tmp_path, "old", old_key, old_cert))),
                 now=NOW - datetime.timedelta(days=45))  # valid when it signed, expired now
    ds.save_as(resigned, enforce_file_format=True)
    code, report, _ = _verify(resigned, "--key", KEY, "--trust", pki["ca"])
    assert code == 1 and report["signatures"][0]["valid"]
    assert report["signatures"][0]["trust_problem"].startswith("the signer's certificate is not valid now")

    monkeypatch.setenv("WM_TRUST", str(pki["ca"]))  # the setting, when --trust is not given
    assert _verify(signed_ct, "--key", KEY)[1]["signatures"][0]["trusted"]


def test_a_bad_trust_file_is_bad_input(signed_ct, tmp_path):
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    for given in (tmp_path / "empty.pem", tmp_path / "missing.pem"):
        result = run_wm_here("verify", signed_ct, "--key", KEY, "--trust", given)
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---- the public default key, older records, and what may change in transit ---------------------

def test_a_default_key_file_never_exits_0(shipped, tmp_path):
    loaded, _ = shipped
    public = tmp_path / "public.dcm"
    embed_file(clinical_file("CT_small.dcm"), public, EmbedSettings(MESSAGE, QualityFloor(40.0)), loaded,
               codec_for(loaded, None))
    code, report, _ = _verify(public)
    assert code == 1 and report["changed_blocks"] == [] and report["changes"] == []
    assert report["authenticity"] == "none (public default key)" and "public default key" in report["status"]

    # The attack of the issue: pixels changed, the record re-sealed under the public key.
    ds = pydicom.dcmread(public)
    record, _ = open_record(file_record(read_image(public)), None)
    words = np.frombuffer(ds.PixelData, dtype="<i2").copy()
    words[100] += 50
    ds.PixelData = words.tobytes()
    changed = read_image(public).pixels.copy()
    changed.reshape(-1)[100] += 50
    dicom_remove_record(ds)
    dicom_attach_record(ds, seal(record.original_pixels(read_image(public).pixels), changed, None,
                                 binding=record.binding))
    ds.save_as(tmp_path / "resealed.dcm", enforce_file_format=True)
    code, report, _ = _verify(tmp_path / "resealed.dcm")
    assert report["changed_blocks"] == [] and code == 1 and not report["intact"]


def test_an_older_record_without_binding_is_never_intact(keyed_ct, tmp_path):
    ds = pydicom.dcmread(keyed_ct)
    record, _ = open_record(file_record(read_image(keyed_ct)), KEY)
    marked = read_image(keyed_ct).pixels
    dicom_remove_record(ds)
    dicom_attach_record(ds, seal(record.original_pixels(marked), marked, KEY, signer_sha256=None))  # no binding
    ds.save_as(tmp_path / "older.dcm", enforce_file_format=True)
    code, report, _ = _verify(tmp_path / "older.dcm", "--key", KEY)
    assert code == 1 and report["binding"] == "not bound (older record)" and report["changed_blocks"] == []
    assert "not bound (older record)" in report["status"]


def test_what_may_change_in_transit_keeps_a_key_only_file_intact(keyed_ct, tmp_path):
    """Another transfer syntax (Implicit VR, big endian, RLE), dcmtk's re-write with group lengths, and
    a conversion of the character set: nothing a reader sees changed, so still intact."""
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    rewrites = {"implicit": _edited(keyed_ct, tmp_path / "implicit.dcm", lambda ds: setattr(
        ds.file_meta, "TransferSyntaxUID", ImplicitVRLittleEndian))}
    ds = pydicom.dcmread(keyed_ct)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(rewrites.setdefault("rle", tmp_path / "rle.dcm"), enforce_file_format=True)
    from pydicom.encaps import encapsulate_extended, generate_fragments

    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        [list(generate_fragments(ds.PixelData))[-1]])  # a table that agrees with the items
    ds.save_as(rewrites.setdefault("extended offsets", tmp_path / "eot.dcm"), enforce_file_format=True)
    if shutil.which("dcmconv"):
        for name, flags in (("dcmtk", ["+g", "+te"]), ("big-endian", ["+tb"]), ("utf8", ["--convert-to-utf8"])):
            rewrites[name] = tmp_path / f"{name}.dcm"
            subprocess.run(["dcmconv", *flags, str(keyed_ct), str(rewrites[name])], check=True, timeout=60)
    for name, path in rewrites.items():
        code, report, _ = _verify(path, "--key", KEY)
        assert (code, report["changes"], report["status"]) == (0, [], "intact"), name


def test_no_real_file_trips_the_checks_for_what_readers_read_two_ways():
    """Every DICOM file pydicom and pydicom-data ship (real scanners' and toolkits' files, compressed
    ones with Basic and Extended Offset Tables among them): none holds a DS or IS text outside
    DICOM's syntax but the one file made to hold a bad IS ('1A' in badVR.dcm); none an offset
    table out of step with its items; none a standard element in another VR than the dictionary's
    but UN (which wm re-writes in the dictionary's VR); none a body encoded otherwise than its
    transfer syntax says, or big-endian words written as OB, but pydicom's own colour test files
    (refused as colour before that check); every RLE frame read alike by every decoder; every
    grayscale JPEG, JPEG-LS and JPEG 2000 frame (over twenty files) but JPEG-lossy.dcm's, whose scan
    is not sequential DCT's (libjpeg, hence pydicom, refuses it as well)."""
    import data_store
    import pydicom.data

    from watermark_cli.integrity.binding import numbers_not_in_dicom_syntax
    from pydicom.uid import RLELossless

    from watermark_cli.io.dicom import _check_encoding, body_encoding, elements_read_two_ways
    from watermark_cli.io.encapsulated import check_frame_tables, check_jpeg_frames, check_rle_segments

    folders = [Path(pydicom.data.__file__).parent, Path(data_store.__file__).parent]
    odd_numbers, refused, compressed, rle, other_vr, odd_encoding, grayscale = [], [], 0, 0, [], [], 0
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, force=True)
            ds.file_meta.TransferSyntaxUID  # noqa: B018 (a file without one is no image here)
        except Exception:
            continue
        encoding = body_encoding(ds)
        if numbers_not_in_dicom_syntax(ds):
            odd_numbers.append(path.name)
        other_vr += [(path.name, tag, vr) for tag, vr in elements_read_two_ways(path).other_vr if vr != "UN"]
        if "PixelData" in ds:
            try:
                _check_encoding(path, ds, int(ds.get("BitsAllocated", 8) or 8), encoding)
            except Exception:
                odd_encoding.append(path.name)
        if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
            compressed += 1
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                check_frame_tables(path, ds, frames)
                check_rle_segments(path, ds, frames, int(ds.Rows) * int(ds.Columns),
                                    int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8)
                rle += ds.file_meta.TransferSyntaxUID == RLELossless
                if int(ds.get("SamplesPerPixel", 1) or 1) == 1:  # wm reads grayscale only
                    check_jpeg_frames(path, ds, frames)
                    grayscale += ds.file_meta.TransferSyntaxUID != RLELossless
            except Exception as error:
                refused.append(f"{path.name}: {error}")
    assert compressed >= 50 and rle >= 10 and grayscale >= 19
    assert [line.split(": ")[0] for line in refused] == ["JPEG-lossy.dcm"]
    assert "a sequential DCT scan with other than the full spectrum" in refused[0]
    with pytest.raises(RuntimeError, match="scan start must be zero"):
        pydicom.dcmread(pydicom.data.get_testdata_file("JPEG-lossy.dcm")).pixel_array  # noqa: B018
    assert odd_numbers == ["badVR.dcm"]
    assert other_vr == []
    assert all(name.startswith("SC_rgb_") for name in odd_encoding) and len(odd_encoding) == 5
