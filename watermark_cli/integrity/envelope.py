"""The restoration record encrypted for a recipient's certificate (`wm embed --recipient CERT.pem`).

Instead of a key both sides share, the record goes into a CMS EnvelopedData (RFC 5652; RSA key
transport, AES-256-CBC content encryption) that only the holder of the certificate's private key
opens. In DICOM it is an item of the standard Encrypted Attributes Sequence (0400,0500), PS3.3
C.12.1.1.4: Encrypted Content Transfer Syntax UID Explicit VR Little Endian, Encrypted Content
the DER of the envelope, whose content is a data set holding

- the Modified Attributes Sequence (0400,0550): one item with the original values of the
  top-level elements the embed changed (SOP Instance UID among them), which any standard tool
  that opens the envelope reads as the standard says;
- two private elements of creator ``WM RESTORATION RECORD 1``: the sealed record (the pixel
  difference, hashes, block tags; integrity.record) and the random 256-bit key it is sealed
  under, written as `wm keygen` writes a key (`new_record_key`).

`openssl cms -decrypt -inform DER -inkey KEY.pem -recip CERT.pem -binary` opens the envelope
and `dcmdump` reads what comes out. PNG and TIFF carry the same envelope in their record chunk
or tag (a DER SEQUENCE there, where a shared-key record starts with its own magic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..keys import generated_key_text
from .containers import RECORD_CREATOR, RECORD_GROUP, dataset_bytes
from .record import trimmed

_BLOB_ELEMENT, _KEY_ELEMENT = 0x01, 0x02


@dataclass(frozen=True)
class Recipient:
    """A recipient's certificate, and its private key where the record must be opened."""

    certificate: object = field(repr=False)  # cryptography x509.Certificate
    private_key: object = field(default=None, repr=False)


def read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadInputError(f"{what} {path}: cannot read it ({error.strerror or 'unreadable'})") from None


def recipient_from_pem(certificate_pem: bytes, where: str = "--recipient") -> Recipient:
    """The recipient of a PEM certificate (an RSA key: CMS key transport)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as error:
        raise BadInputError(f"{where}: not a readable PEM certificate ({_first_line(error)})") from None
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise BadInputError(f"{where}: the recipient's certificate must hold an RSA key (CMS key transport)")
    return Recipient(certificate)


def load_recipient(certificate_path: Path, key_path: Path | None = None) -> Recipient:
    """The certificate (and private key) from PEM files; one-line errors naming the problem."""
    from cryptography.hazmat.primitives import serialization

    certificate = recipient_from_pem(read_pem(certificate_path, "--recipient"),
                                     f"--recipient {certificate_path}").certificate
    private_key = None
    if key_path is not None:
        try:
            private_key = serialization.load_pem_private_key(read_pem(key_path, "--recipient-key"), password=None)
        except (ValueError, TypeError) as error:
            raise BadInputError(f"{key_path}: not a readable unencrypted PEM private key ({_first_line(error)})") from None
        if private_key.public_key().public_numbers() != certificate.public_key().public_numbers():
            raise BadInputError(f"{key_path}: this private key does not belong to {certificate_path}")
    return Recipient(certificate, private_key)


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def new_record_key() -> bytes:
    """256 random bits in the form of a generated key, which every derivation takes as they are:
    as 32 raw bytes they read as a passphrase and were stretched by scrypt (1 GiB and seconds per
    file of a `--recipient` batch, and again per restore) for no strength. Records sealed so
    before stop 46 carry those raw bytes and still open, stretched."""
    return generated_key_text().encode("ascii")


def envelope(record: bytes, record_key: bytes, recipient: Recipient, modified_attributes=None) -> bytes:
    """DER CMS EnvelopedData of the data set described in the module docstring."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.serialization import pkcs7
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    content = Dataset()
    if modified_attributes is not None:
        content.ModifiedAttributesSequence = Sequence([modified_attributes])
    block = content.private_block(RECORD_GROUP, RECORD_CREATOR, create=True)
    block.add_new(_BLOB_ELEMENT, "OB", record)
    block.add_new(_KEY_ELEMENT, "OB", record_key)
    return (pkcs7.PKCS7EnvelopeBuilder().set_data(dataset_bytes(content)).add_recipient(recipient.certificate)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))


def open_envelope(der: bytes, recipient: Recipient | None) -> tuple[bytes, bytes] | None:
    """(sealed record, its key) from an envelope; None when it is not for this recipient or not
    wm's. BadInputError when no private key was given to open it."""
    from io import BytesIO

    from cryptography.hazmat.primitives.serialization import pkcs7
    from pydicom.filereader import read_dataset

    if recipient is None or recipient.private_key is None:
        raise BadInputError("the restoration record is encrypted for a recipient: give --recipient CERT.pem and "
                            "--recipient-key KEY.pem")
    try:
        content = pkcs7.pkcs7_decrypt_der(der, recipient.certificate, recipient.private_key, [])
        dataset = read_dataset(BytesIO(content), is_implicit_VR=False, is_little_endian=True)
        block = dataset.private_block(RECORD_GROUP, RECORD_CREATOR)
        return trimmed(bytes(block[_BLOB_ELEMENT].value)), bytes(block[_KEY_ELEMENT].value)
    except (ValueError, KeyError):
        return None


def is_envelope(blob: bytes) -> bool:
    """A DER SEQUENCE (what a CMS ContentInfo starts with), as opposed to a shared-key record."""
    return blob[:1] == b"\x30"
