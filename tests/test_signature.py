"""DICOM digital signatures (Creator RSA profile, SHA-256): our signer and checker against dcmtk.

dcmtk's `dcmsign` is the independent checker: it must accept what we sign (including its Creator
profile check, +rc) and reject it once a signed element changes, and our checker must accept
what dcmsign signs. Keys and certificates are made here, never checked in.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from watermark_cli.data.clinical import clinical_file
from watermark_cli.errors import BadInputError
from watermark_cli.integrity.signature import (
    load_signer,
    sign_dataset,
    verify_signatures,
)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SUBJECT = "O=Example Imaging,CN=wm test signer"

# A 16-bit CT, multi-frame enhanced MR and CT (the CT with functional group sequences), an 8-bit
# image, and JPEG 2000 (encapsulated pixel data).
SIGNED_FILES = ["CT_small.dcm", "emri_small.dcm", "eCT_Supplemental.dcm", "vlut_04.dcm", "693_J2KR.dcm"]
NEVER_SIGNED = (0xFFFAFFFA, 0x4FFE0001, 0xFFFCFFFC)  # the signature sequences, trailing padding


@dataclass(frozen=True)
class KeyFiles:
    key_pem: Path
    cert_pem: Path


def _make_key_files(folder: Path, common_name: str = "wm test signer") -> KeyFiles:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Imaging"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = KeyFiles(folder / "key.pem", folder / "cert.pem")
    files.key_pem.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    files.cert_pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> KeyFiles:
    return _make_key_files(tmp_path_factory.mktemp("signer"))


@pytest.fixture(scope="module")
def signer(key_files):
    return load_signer(key_files.key_pem.read_bytes(), key_files.cert_pem.read_bytes())


@pytest.fixture(scope="module")
def signed_files(tmp_path_factory, signer) -> dict[str, tuple[Path, str]]:
    """Each test file signed once and written as a DICOM file: name -> (path, signature UID)."""
    folder = tmp_path_factory.mktemp("signed")
    signed = {}
    for name in SIGNED_FILES:
        ds = pydicom.dcmread(clinical_file(name))
        uid = sign_dataset(ds, signer)
        path = folder / name
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        signed[name] = (path, uid)
    return signed


def _dcmsign(*args: str | Path) -> subprocess.CompletedProcess:
    if shutil.which("dcmsign") is None:
        pytest.fail("dcmtk's dcmsign is not installed; scripts/setup_env.sh installs it (apt-get install dcmtk)")
    return subprocess.run(
        ["dcmsign", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _dcmsign_verify(path: Path, key_files: KeyFiles) -> subprocess.CompletedProcess:
    # +cf trusts our self-signed certificate (dcmsign otherwise fails the chain check);
    # +rg fails a file without signatures; +rc requires a signature meeting the Creator profile.
    return _dcmsign("--verify", "+cf", key_files.cert_pem, "+rg", "+rc", path)


def _tamper(source: Path, target: Path, change) -> Path:
    ds = pydicom.dcmread(source)
    change(ds)
    pydicom.dcmwrite(target, ds, enforce_file_format=True)
    return target


def _flip_one_pixel_bit(ds) -> None:
    pixels = bytearray(ds.PixelData)
    pixels[len(pixels) // 2] ^= 0x01
    ds.PixelData = bytes(pixels)


# --- our own checker ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED_FILES)
def test_signed_file_verifies(signed_files, name):
    path, uid = signed_files[name]
    ds = pydicom.dcmread(path)
    checks = verify_signatures(ds)
    assert [(check.uid, check.signer, check.valid, check.reason) for check in checks] == [
        (uid, SUBJECT, True, "")
    ]
    assert len(ds.MACParametersSequence) == 1


@pytest.mark.parametrize("name", SIGNED_FILES)
def test_signature_records_the_creator_profile(signed_files, name):
    path, _ = signed_files[name]
    ds = pydicom.dcmread(path)
    parameters = ds.MACParametersSequence[0]
    signature = ds.DigitalSignaturesSequence[0]
    assert parameters.MACAlgorithm == "SHA256"
    assert parameters.MACIDNumber == signature.MACIDNumber
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    expected_syntax = ds.file_meta.TransferSyntaxUID if encapsulated else EXPLICIT_VR_LITTLE_ENDIAN
    assert parameters.MACCalculationTransferSyntaxUID == expected_syntax
    assert signature.CertificateType == "X509_1993_SIG"
    assert x509.load_der_x509_certificate(signature.CertificateOfSigner).subject.rfc4514_string() == SUBJECT
    purpose = signature.DigitalSignaturePurposeCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("14", "ASTM-sigpurpose")
    assert signature.DigitalSignatureDateTime.endswith("+0000")

    signed = [int(tag) for tag in parameters.DataElementsSigned]
    assert signed == sorted(signed), "Data Elements Signed must be in data set order"
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "Rows", "Columns", "BitsAllocated", "PixelData", "PatientName"):
        assert pydicom.datadict.tag_for_keyword(keyword) in signed, keyword
    for tag in signed:
        assert tag >> 16 >= 0x0008 and tag & 0xFFFF != 0, f"{tag:08X} must not be signed"
        assert tag not in NEVER_SIGNED
    # Everything else at the top level is signed (nothing in these files is UN).
    assert set(signed) == {
        int(tag) for tag in ds.keys()
        if tag >> 16 >= 0x0008 and tag & 0xFFFF != 0 and tag not in NEVER_SIGNED
    }


@pytest.mark.parametrize("change, reason", [
    (lambda ds: setattr(ds, "PatientName", "Someone^Else"), "data elements changed since signing"),
    (_flip_one_pixel_bit, "data elements changed since signing"),
    (lambda ds: delattr(ds, "PatientName"), "signed data element (0010,0010) is missing"),
])
def test_changed_file_is_rejected(signed_files, tmp_path, change, reason):
    path, uid = signed_files["CT_small.dcm"]
    tampered = pydicom.dcmread(_tamper(path, tmp_path / "tampered.dcm", change))
    assert [(check.uid, check.valid, check.reason) for check in verify_signatures(tampered)] == [
        (uid, False, reason)
    ]


def test_in_memory_change_is_rejected_and_dataset_untouched(signed_files):
    ds = pydicom.dcmread(signed_files["eCT_Supplemental.dcm"][0])
    # A value inside a functional group sequence item: nested items are covered too.
    ds.PerFrameFunctionalGroupsSequence[1].FrameContentSequence[0].FrameAcquisitionNumber = 99
    before = ds.to_json_dict(bulk_data_threshold=1 << 30)
    checks = verify_signatures(ds)
    assert [(check.valid, check.reason) for check in checks] == [(False, "data elements changed since signing")]
    assert ds.to_json_dict(bulk_data_threshold=1 << 30) == before


def test_signing_again_replaces_the_signature(signed_files, tmp_path):
    path, first_uid = signed_files["CT_small.dcm"]
    other_files = _make_key_files(tmp_path / "other", "second signer")
    other = load_signer(other_files.key_pem.read_bytes(), other_files.cert_pem.read_bytes())
    ds = pydicom.dcmread(path)
    second_uid = sign_dataset(ds, other)
    resigned = tmp_path / "resigned.dcm"
    pydicom.dcmwrite(resigned, ds, enforce_file_format=True)
    ds = pydicom.dcmread(resigned)
    assert second_uid != first_uid
    assert len(ds.DigitalSignaturesSequence) == 1 and len(ds.MACParametersSequence) == 1
    assert [(c.uid, c.signer, c.valid) for c in verify_signatures(ds)] == [
        (second_uid, "O=Example Imaging,CN=second signer", True)
    ]


def test_implicit_vr_input_is_signed_as_explicit_vr(signer, tmp_path):
    ds = pydicom.dcmread(clinical_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    pydicom.dcmwrite(implicit, ds, enforce_file_format=True)
    ds = pydicom.dcmread(implicit)
    sign_dataset(ds, signer)
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    signed = tmp_path / "signed.dcm"
    pydicom.dcmwrite(signed, ds, enforce_file_format=True)
    assert [c.valid for c in verify_signatures(pydicom.dcmread(signed))] == [True]


def test_weak_mac_algorithm_is_not_accepted(signed_files):
    ds = pydicom.dcmread(signed_files["CT_small.dcm"][0])
    ds.MACParametersSequence[0].MACAlgorithm = "MD5"
    assert [(c.valid, c.reason) for c in verify_signatures(ds)] == [(False, "unsupported MAC algorithm MD5")]


def test_certificate_must_be_valid_when_signed(signer, tmp_path):
    ds = pydicom.dcmread(clinical_file("CT_small.dcm"))
    sign_dataset(ds, signer, now=datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc))
    assert ds.DigitalSignaturesSequence[0].DigitalSignatureDateTime.startswith("20010101000000")
    checks = verify_signatures(ds)
    assert [(c.valid, c.reason) for c in checks] == [
        (False, "the signer's certificate was not valid at the signature date and time")
    ]


def test_unsigned_dataset_has_no_signatures():
    assert verify_signatures(pydicom.dcmread(clinical_file("CT_small.dcm"))) == []


def test_dataset_without_sop_class_cannot_be_signed(signed_files, signer):
    ds = pydicom.dcmread(signed_files["CT_small.dcm"][0])
    del ds.SOPClassUID
    with pytest.raises(BadInputError, match="SOPClassUID is missing"):
        sign_dataset(ds, signer)
    # Refused before anything changed: the earlier signature is still there.
    assert len(ds.DigitalSignaturesSequence) == 1 and len(ds.MACParametersSequence) == 1


# --- loading keys ---------------------------------------------------------------------------------


def test_key_not_matching_certificate_is_refused(key_files, tmp_path):
    other = _make_key_files(tmp_path / "other")
    with pytest.raises(BadInputError, match="does not match the certificate"):
        load_signer(other.key_pem.read_bytes(), key_files.cert_pem.read_bytes())


def test_unusable_keys_and_certificates_are_refused(key_files):
    cert_pem = key_files.cert_pem.read_bytes()
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadInputError, match="not RSA"):
        load_signer(ec_key, cert_pem)
    with pytest.raises(BadInputError, match="private key cannot be read"):
        load_signer(b"not a key", cert_pem)
    with pytest.raises(BadInputError, match="certificate cannot be read"):
        load_signer(key_files.key_pem.read_bytes(), b"not a certificate")
    key = serialization.load_pem_private_key(key_files.key_pem.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(BadInputError, match="encrypted"):
        load_signer(encrypted, cert_pem)
    assert load_signer(encrypted, cert_pem, password=b"secret").subject == SUBJECT


# --- dcmtk as the independent checker -------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED_FILES)
def test_dcmsign_accepts_our_signature(signed_files, key_files, name):
    result = _dcmsign_verify(signed_files[name][0], key_files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Signature Verification : OK" in output
    assert signed_files[name][1] in output


@pytest.mark.parametrize("change", [
    lambda ds: setattr(ds, "PatientName", "Someone^Else"),
    _flip_one_pixel_bit,
])
def test_dcmsign_rejects_a_changed_file(signed_files, key_files, tmp_path, change):
    tampered = _tamper(signed_files["CT_small.dcm"][0], tmp_path / "tampered.dcm", change)
    result = _dcmsign_verify(tampered, key_files)
    output = result.stdout + result.stderr
    assert result.returncode == 101, output  # dcmsign: signature verification failed
    assert "signature is invalid (document corrupted)" in output


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KR.dcm"])
def test_we_accept_a_dcmsign_signature(key_files, tmp_path, name):
    signed = tmp_path / name
    result = _dcmsign(
        "--sign", key_files.key_pem, key_files.cert_pem, "--null-passwd", "--profile-creator",
        "--mac-sha256", "--sig-purpose", "14", clinical_file(name), signed,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checks = verify_signatures(pydicom.dcmread(signed))
    assert [(c.signer, c.valid, c.reason) for c in checks] == [(SUBJECT, True, "")]
