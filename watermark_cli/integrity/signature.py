"""DICOM digital signatures: the Creator RSA Digital Signature Profile (PS3.15 C.2) with SHA-256.

A signature lets anyone holding the file check that the signed data elements are the bytes the
signer saw, and who the signer was (the X.509 certificate travels in the file). The data model is
the Digital Signatures Macro of PS3.3 C.12.1.1.3: a MAC Parameters Sequence (4FFE,0001) item that
names the MAC algorithm, the transfer syntax of the hashed bytes and the Data Elements Signed, and
a Digital Signatures Sequence (FFFA,FFFA) item with the signer's certificate and the RSA signature.

What is hashed (PS3.3 C.12.1.1.3.1.1, and what dcmtk's dcmsign computes and checks):

* every top-level data element listed in Data Elements Signed, in data set (tag) order, encoded
  in the MAC Calculation Transfer Syntax (Explicit VR Little Endian, or the data set's own
  encapsulated transfer syntax when the pixel data are compressed) exactly as stored: tag, VR,
  length, value;
* a sequence as its tag and VR with no length, then per item the Item tag (FFFE,E000) with no
  length followed by the item's signable elements (nested sequences the same way), no Item
  Delimitation, and finally the Sequence Delimitation tag (FFFE,E0DD) with no length;
  encapsulated Pixel Data likewise: tag and OB, then each fragment as Item tag plus its bytes;
* then, from the Digital Signatures Sequence item, every element except Certificate of Signer,
  Signature, Certified Timestamp Type and Certified Timestamp, in tag order, the same way.

Never signed: group lengths (element 0000), Length to End, groups below 0008 (the file meta
group 0002 included), group FFFA, the MAC Parameters Sequence, Data Set Trailing Padding,
delimitation items, elements whose VR is UN and sequences holding a UN element at any depth
(PS3.3 excludes them: a reader that learns their VR re-encodes them, and the bytes change).
Private elements with a known VR are signed.

The RSA signature is PKCS #1 v1.5 over the MAC (DigestInfo with the MAC algorithm), the
certificate is stored DER-encoded with Certificate Type X509_1993_SIG (PS3.15 C.1).

The bytes are taken from pydicom's own Explicit VR Little Endian encoding of the data set, so the
MAC covers exactly what `pydicom.dcmwrite` will store; a data set read from an Implicit VR file is
switched to Explicit VR Little Endian when signed, so that a checker reading the file sees the
same VRs the signer hashed.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from ..errors import BadInputError

MAC_PARAMETERS_SEQUENCE = 0x4FFE0001
DIGITAL_SIGNATURES_SEQUENCE = 0xFFFAFFFA
MAC_ID_NUMBER = 0x04000005
MAC_CALCULATION_TRANSFER_SYNTAX_UID = 0x04000010
MAC_ALGORITHM = 0x04000015
DATA_ELEMENTS_SIGNED = 0x04000020
DIGITAL_SIGNATURE_UID = 0x04000100
DIGITAL_SIGNATURE_DATETIME = 0x04000105
CERTIFICATE_TYPE = 0x04000110
CERTIFICATE_OF_SIGNER = 0x04000115
SIGNATURE = 0x04000120
CERTIFIED_TIMESTAMP_TYPE = 0x04000305
CERTIFIED_TIMESTAMP = 0x04000310
DIGITAL_SIGNATURE_PURPOSE_CODE_SEQUENCE = 0x04000401

PIXEL_DATA = 0x7FE00010
ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

X509_CERTIFICATE_TYPE = "X509_1993_SIG"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

# The Creator profile cannot be met without these (PS3.15 C.2 items 1 and 3).
CREATOR_REQUIRED = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}

# Signature purpose (CID 7007, ASTM E1762): the creator vouches for the data it produced.
SOURCE_SIGNATURE_PURPOSE = ("14", "ASTM-sigpurpose", "Source Signature")

# Elements of the Digital Signatures Sequence item that are not part of the MAC: the certificate
# (carried, not vouched for), the signature itself, and the timestamp that is added afterwards.
NOT_IN_SIGNATURE_MAC = {CERTIFICATE_OF_SIGNER, SIGNATURE, CERTIFIED_TIMESTAMP_TYPE, CERTIFIED_TIMESTAMP}

# The MAC algorithms accepted on verification. MD5, SHA1 and RIPEMD160 are defined terms too, but
# MD5 and SHA-1 admit collisions (a forged data set could carry a genuine signature) and
# RIPEMD-160 is not offered by the cryptography library.
MAC_ALGORITHMS = {"SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
SIGNING_MAC = "SHA256"

# Explicit VR encoding: these VRs have two reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@dataclass(frozen=True)
class Signer:
    """An RSA private key and the X.509 certificate of its public key."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def certificate_sha256(self) -> str:
        return certificate_sha256(self.certificate)


def certificate_sha256(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint (of its DER), hex: what names a signer exactly."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class SignatureCheck:
    uid: str  # Digital Signature UID
    signer: str  # the certificate's subject, RFC 4514 string ('' when it cannot be read)
    valid: bool
    reason: str  # '' when valid, else one short line
    certificate_sha256: str = ""  # the signer certificate's fingerprint ('' when it cannot be read)
    # Whether the signer is one the verifier trusts (`TrustAnchors`), and why not when it is not.
    trusted: bool = False
    trust_problem: str = "no trusted signers were given (--trust)"


# --- trusted signers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustAnchors:
    """The certificates whose signatures count (`wm verify --trust`): CA certificates, under which
    a signer's certificate must chain, or signers' own certificates, pinned exactly."""

    certificates: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.certificates)


def load_trust(pem_files: list[tuple[str, bytes]]) -> TrustAnchors:
    """Every certificate of each PEM file or bundle (name, bytes); a file holding none is bad input."""
    certificates = []
    for name, pem in pem_files:
        try:
            found = x509.load_pem_x509_certificates(pem)
        except ValueError:
            found = []
        if not found:
            raise BadInputError(f"--trust {name}: holds no readable PEM certificate")
        certificates.extend(found)
    return TrustAnchors(tuple(certificates))


def trust_problem(certificate: x509.Certificate, signed_at: datetime, anchors: TrustAnchors,
                  now: datetime | None = None) -> str:
    """'' when `certificate` is trusted: one of `anchors` itself, or issued under one of them (a
    CA: basic constraints and key usage checked by cryptography's X.509 path validation), the
    whole chain valid both at the signature's date and time and now. The signing time is what the
    signer wrote, not a trusted timestamp: a certificate that has expired or is not yet valid
    today is not trusted whatever date a signature claims. Else why not, in one line."""
    from cryptography.x509 import verification

    if not anchors:
        return "no trusted signers were given (--trust)"
    now = now or datetime.now(timezone.utc)
    for moment, when in ((signed_at, "at the signature's date"), (now, "now")):
        if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
            return f"the signer's certificate is not valid {when} (valid {_period(certificate)})"
    pinned = certificate_sha256(certificate)
    if any(certificate_sha256(anchor) == pinned for anchor in anchors.certificates):
        return ""
    # The signer's certificate is the only one a DICOM signature carries: intermediate CAs are
    # trusted by naming them in --trust. Any extended key usage is accepted (document signing
    # certificates carry various ones); the CA side follows the Web PKI profile.
    store = verification.Store(list(anchors.certificates))
    for moment, problem in ((now, "signed by an untrusted signer"),
                            (signed_at, "the chain to a trusted certificate was not valid at the signature's date")):
        policy = (verification.PolicyBuilder().store(store).time(moment)
                  .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                      ee_policy=verification.ExtensionPolicy.permit_all()))
        try:
            policy.build_client_verifier().verify(certificate, [])
        except verification.VerificationError:
            return problem
    return ""


def _period(certificate: x509.Certificate) -> str:
    return (f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def load_signer(key_pem: bytes, cert_pem: bytes, password: bytes | None = None) -> Signer:
    """Read a PEM RSA private key and the PEM certificate of its public key."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except TypeError:
        # cryptography raises TypeError for a missing or superfluous password.
        if password is None:
            raise BadInputError("the private key is encrypted: give its password") from None
        raise BadInputError("a password was given but the private key is not encrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadInputError(
            "the private key cannot be read (not a PEM private key, or a wrong password)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInputError(
            f"the private key is {type(key).__name__.lstrip('_')}, not RSA "
            "(the Creator RSA signature profile needs an RSA key)"
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BadInputError("the certificate cannot be read (not a PEM X.509 certificate)") from None
    certified_key = certificate.public_key()
    if (
        not isinstance(certified_key, rsa.RSAPublicKey)
        or certified_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise BadInputError("the private key does not match the certificate's public key")
    return Signer(private_key=key, certificate=certificate)


def sign_dataset(ds, signer: Signer, *, now: datetime | None = None) -> str:
    """Add one Creator RSA signature (SHA-256 MAC) over `ds`, in place; return its UID.

    Earlier top-level signatures are removed first: once this signature's elements are added
    their MACs would no longer match. The file meta Transfer Syntax UID is set to Explicit VR
    Little Endian when it was Implicit VR (see the module docstring), and elements stored as UN
    whose tag pydicom knows get their real VR so that they can be signed. Write the data set with
    `pydicom.dcmwrite(..., enforce_file_format=True)` afterwards: the MAC covers the bytes that
    pydicom writes. Raises BadInputError, leaving `ds` as it was, when `ds` lacks an attribute the
    Creator profile must sign or its transfer syntax is big endian or unknown.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    # Refuse what cannot be signed before anything in `ds` changes.
    mac_transfer_syntax, switch_to_explicit_vr = _mac_transfer_syntax(ds)
    for tag, keyword in CREATOR_REQUIRED.items():
        if tag not in ds:
            raise BadInputError(f"cannot sign: {keyword} is missing (the Creator RSA profile signs it)")

    if switch_to_explicit_vr:
        _set_explicit_vr_little_endian(ds)
    for tag in (DIGITAL_SIGNATURES_SEQUENCE, MAC_PARAMETERS_SEQUENCE):
        if tag in ds:
            del ds[tag]
    _resolve_unknown_vrs(ds)

    signed = [element for element in _parse(_encode(ds)) if _is_signable(element)]
    signed_tags = {element.tag for element in signed}
    for tag, keyword in CREATOR_REQUIRED.items():
        if tag not in signed_tags:
            raise BadInputError(f"cannot sign: {keyword} has VR UN (the Creator RSA profile signs it)")
    pixel_data = [element for element in signed if element.tag == PIXEL_DATA]
    if pixel_data and (pixel_data[0].fragments is not None) != (mac_transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN):
        raise BadInputError(
            "cannot sign: the pixel data encapsulation does not match the transfer syntax "
            f"{mac_transfer_syntax}"
        )

    mac_id = 0  # every earlier signature was removed, so the first MAC ID is free
    signature_uid = generate_uid()
    signature_item = Dataset()
    signature_item.add_new(MAC_ID_NUMBER, "US", mac_id)
    signature_item.add_new(DIGITAL_SIGNATURE_UID, "UI", signature_uid)
    signature_item.add_new(DIGITAL_SIGNATURE_DATETIME, "DT", _format_datetime(now))
    signature_item.add_new(CERTIFICATE_TYPE, "CS", X509_CERTIFICATE_TYPE)
    signature_item.add_new(
        CERTIFICATE_OF_SIGNER, "OB", signer.certificate.public_bytes(serialization.Encoding.DER)
    )
    purpose = Dataset()
    code_value, scheme, meaning = SOURCE_SIGNATURE_PURPOSE
    purpose.add_new(0x00080100, "SH", code_value)
    purpose.add_new(0x00080102, "SH", scheme)
    purpose.add_new(0x00080104, "LO", meaning)
    signature_item.add_new(DIGITAL_SIGNATURE_PURPOSE_CODE_SEQUENCE, "SQ", Sequence([purpose]))

    algorithm = MAC_ALGORITHMS[SIGNING_MAC]()
    digest = _mac(signed, _parse(_encode(signature_item)), algorithm)
    signature = signer.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
    signature_item.add_new(SIGNATURE, "OB", signature)

    mac_parameters = Dataset()
    mac_parameters.add_new(MAC_ID_NUMBER, "US", mac_id)
    mac_parameters.add_new(MAC_CALCULATION_TRANSFER_SYNTAX_UID, "UI", mac_transfer_syntax)
    mac_parameters.add_new(MAC_ALGORITHM, "CS", SIGNING_MAC)
    mac_parameters.add_new(DATA_ELEMENTS_SIGNED, "AT", [element.tag for element in signed])

    ds.add_new(MAC_PARAMETERS_SEQUENCE, "SQ", Sequence([mac_parameters]))
    ds.add_new(DIGITAL_SIGNATURES_SEQUENCE, "SQ", Sequence([signature_item]))
    return signature_uid


def verify_signatures(ds, trust: TrustAnchors | None = None, now: datetime | None = None) -> list[SignatureCheck]:
    """Check every top-level signature of `ds`; [] when it has none. `ds` is not modified. Each
    valid one is judged against `trust` (see `trust_problem`)."""
    checks = _verify_signatures(ds)
    judged = []
    for check, item in zip(checks, _signature_items(ds)):
        if check.valid:
            certificate, _ = _certificate_of_signer(item)
            signed_at = _parse_datetime(_text(item, DIGITAL_SIGNATURE_DATETIME))
            problem = trust_problem(certificate, signed_at, trust or TrustAnchors(), now)
            check = replace(check, trusted=not problem, trust_problem=problem)
        judged.append(check)
    return judged


def signatures_problem(checks: list[SignatureCheck], expected_signer_sha256: str | None, trust_given: bool,
                       counts: Callable[[SignatureCheck], bool] = lambda check: check.trusted) -> str:
    """Why a file's signatures do not hold ('' when they do): one does not verify, the signer the
    record pinned at marking is gone or replaced, or a signer does not count (`counts`: trusted,
    by default; named by its trust problem when trusted signers were given)."""
    if not all(check.valid for check in checks):
        return "a digital signature does not verify"
    if expected_signer_sha256 and not any(check.certificate_sha256 == expected_signer_sha256 for check in checks):
        return "the signature made at marking is gone" if not checks else "signed by another certificate than at marking"
    untrusted = [check for check in checks if not counts(check)]
    if untrusted:
        check = untrusted[0]
        problem = check.trust_problem if trust_given else "signed by an untrusted signer"
        return f"{problem} ({check.signer or 'unnamed'})"
    return ""


def trusted_signature(checks: list[SignatureCheck], expected_signer_sha256: str | None, trust_given: bool,
                      counts: Callable[[SignatureCheck], bool] = lambda check: check.trusted) -> bool:
    """Whether a trusted signer vouches for the file: a signature, all of them holding (see
    `signatures_problem`), one of them trusted."""
    return (bool(checks) and not signatures_problem(checks, expected_signer_sha256, trust_given, counts)
            and any(check.trusted for check in checks))


def _signature_items(ds) -> list:
    signatures = ds.get(DIGITAL_SIGNATURES_SEQUENCE)
    return list(signatures.value) if signatures is not None and signatures.VR == "SQ" and signatures.value else []


def _verify_signatures(ds) -> list[SignatureCheck]:
    signatures = ds.get(DIGITAL_SIGNATURES_SEQUENCE)
    if signatures is None or signatures.VR != "SQ" or not signatures.value:
        return []
    # Encoding may resolve VRs and parse elements in place; keep the caller's data set as it is.
    try:
        stored = _parse(_encode(copy.deepcopy(ds)))
    except BadInputError as problem:
        return [
            SignatureCheck(uid=_text(item, DIGITAL_SIGNATURE_UID), signer="", valid=False, reason=str(problem))
            for item in signatures.value
        ]
    stored_by_tag = {element.tag: element for element in stored}
    stored_signature_items = stored_by_tag[DIGITAL_SIGNATURES_SEQUENCE].items or []
    mac_parameters = ds.get(MAC_PARAMETERS_SEQUENCE)
    mac_items = list(mac_parameters.value) if mac_parameters is not None and mac_parameters.VR == "SQ" else []
    return [
        _check_signature(item, stored_item, mac_items, stored, stored_by_tag)
        for item, stored_item in zip(signatures.value, stored_signature_items)
    ]


# --- checking one signature ---------------------------------------------------------------------


def _check_signature(item, stored_item, mac_items, stored, stored_by_tag) -> SignatureCheck:
    uid = _text(item, DIGITAL_SIGNATURE_UID)
    certificate, problem = _certificate_of_signer(item)
    signer = certificate.subject.rfc4514_string() if certificate is not None else ""
    fingerprint = certificate_sha256(certificate) if certificate is not None else ""

    def invalid(reason: str) -> SignatureCheck:
        return SignatureCheck(uid=uid, signer=signer, valid=False, reason=reason, certificate_sha256=fingerprint)

    if certificate is None:
        return invalid(problem)
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return invalid("the signer's certificate does not hold an RSA key")

    mac_id = item.get(MAC_ID_NUMBER)
    if mac_id is None or mac_id.value in (None, ""):
        return invalid("MAC ID Number is missing")
    parameters = [
        entry for entry in mac_items if MAC_ID_NUMBER in entry and entry[MAC_ID_NUMBER].value == mac_id.value
    ]
    if not parameters:
        return invalid(f"no MAC Parameters item has MAC ID Number {mac_id.value}")
    parameters = parameters[0]

    algorithm_name = _text(parameters, MAC_ALGORITHM)
    if algorithm_name not in MAC_ALGORITHMS:
        return invalid(f"unsupported MAC algorithm {algorithm_name or '(missing)'}")
    algorithm = MAC_ALGORITHMS[algorithm_name]()

    problem = _transfer_syntax_problem(_text(parameters, MAC_CALCULATION_TRANSFER_SYNTAX_UID), stored_by_tag)
    if problem:
        return invalid(problem)

    listed = _tag_list(parameters.get(DATA_ELEMENTS_SIGNED))
    if not listed:
        return invalid("Data Elements Signed is missing or empty")
    for tag in listed:
        if tag not in stored_by_tag:
            return invalid(f"signed data element {_tag_text(tag)} is missing")
        if not _is_signable(stored_by_tag[tag]):
            return invalid(f"signed data element {_tag_text(tag)} cannot be signed (VR UN or a reserved tag)")

    listed_set = set(listed)
    # The MAC covers the listed elements only: an element added afterwards (a Presentation LUT
    # Shape, an overlay plane) leaves it valid. The Creator profile signs every signable element,
    # so one that is not listed was added since signing.
    added = [element.tag for element in stored if _is_signable(element) and element.tag not in listed_set
             and element.tag != DIGITAL_SIGNATURES_SEQUENCE]
    if added:
        return invalid("data elements added since signing: " + ", ".join(_tag_name(tag) for tag in added[:6])
                       + (f" and {len(added) - 6} more" if len(added) > 6 else ""))
    digest = _mac([element for element in stored if element.tag in listed_set], stored_item, algorithm)

    signature_element = item.get(SIGNATURE)
    signature = signature_element.value if signature_element is not None else None
    if not signature:
        return invalid("the Signature is missing")
    try:
        recovered = public_key.recover_data_from_signature(bytes(signature), padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError):
        return invalid("the signature was not made with the key of the signer's certificate")
    if recovered != digest:
        return invalid("data elements changed since signing")
    try:
        public_key.verify(bytes(signature), digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
    except InvalidSignature:
        return invalid("the signature was not made with the key of the signer's certificate")

    signed_at = _parse_datetime(_text(item, DIGITAL_SIGNATURE_DATETIME))
    if signed_at is None:
        return invalid("Digital Signature DateTime is missing or malformed")
    if not certificate.not_valid_before_utc <= signed_at <= certificate.not_valid_after_utc:
        return invalid("the signer's certificate was not valid at the signature date and time")
    return SignatureCheck(uid=uid, signer=signer, valid=True, reason="", certificate_sha256=fingerprint)


def _certificate_of_signer(item) -> tuple[x509.Certificate | None, str]:
    certificate_type = _text(item, CERTIFICATE_TYPE)
    if certificate_type != X509_CERTIFICATE_TYPE:
        return None, f"unsupported Certificate Type {certificate_type or '(missing)'}"
    element = item.get(CERTIFICATE_OF_SIGNER)
    if element is None or not element.value:
        return None, "the Certificate of Signer is missing"
    der = bytes(element.value)
    try:
        return x509.load_der_x509_certificate(der), ""
    except ValueError:
        # An odd-length DER certificate is stored with one pad byte.
        if der.endswith(b"\x00"):
            try:
                return x509.load_der_x509_certificate(der[:-1]), ""
            except ValueError:
                pass
    return None, "the Certificate of Signer cannot be read"


def _transfer_syntax_problem(uid: str, stored_by_tag) -> str:
    from pydicom.uid import UID

    if not uid:
        return "MAC Calculation Transfer Syntax UID is missing"
    syntax = UID(uid)
    if not syntax.is_transfer_syntax or syntax.is_implicit_VR or not syntax.is_little_endian:
        return f"unsupported MAC Calculation Transfer Syntax {uid}"
    pixel_data = stored_by_tag.get(PIXEL_DATA)
    encapsulated = pixel_data is not None and pixel_data.fragments is not None
    if pixel_data is not None and encapsulated != bool(syntax.is_encapsulated):
        held = "encapsulated" if encapsulated else "native"
        return f"the pixel data are {held} but were signed in transfer syntax {uid}"
    return ""


# --- transfer syntax, encoding and parsing -------------------------------------------------------


def _mac_transfer_syntax(ds) -> tuple[str, bool]:
    """The MAC Calculation Transfer Syntax UID for `ds`, and whether its file meta must switch to
    Explicit VR Little Endian first (it is Implicit VR, or not given)."""
    from pydicom.uid import UID

    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return EXPLICIT_VR_LITTLE_ENDIAN, True
    syntax = UID(syntax)
    if not syntax.is_transfer_syntax:
        raise BadInputError(f"cannot sign: unknown transfer syntax {syntax}")
    if not syntax.is_little_endian:
        raise BadInputError("cannot sign: the data set is big endian; convert it to Explicit VR Little Endian first")
    if syntax.is_encapsulated:
        # Compressed pixel data are signed in their encapsulated form (PS3.3 C.12.1.1.3): the MAC
        # is computed in the data set's own transfer syntax, which is explicit VR little endian.
        return str(syntax), False
    # Deflated Explicit VR Little Endian hashes the same bytes as Explicit VR Little Endian.
    return EXPLICIT_VR_LITTLE_ENDIAN, bool(syntax.is_implicit_VR)


def _set_explicit_vr_little_endian(ds) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)


def _resolve_unknown_vrs(dataset) -> None:
    """Give UN elements whose tag pydicom knows their real VR, at every depth, in place.

    An element stored as UN cannot be signed, and pydicom copies an unparsed element's VR as it
    was read; parsing it applies the dictionary VR (pydicom's `replace_un_with_known_vr`), so the
    element is written, and signed, with its real VR.
    """
    from pydicom.datadict import dictionary_has_tag

    for tag in list(dataset.keys()):
        stored = dataset.get_item(tag)
        if stored is None:
            continue
        if stored.VR == "UN" and (dictionary_has_tag(tag) or tag.is_private):
            stored = dataset[tag]
        if stored.VR == "SQ":
            for item in dataset[tag].value or ():
                _resolve_unknown_vrs(item)


def _encode(dataset) -> bytes:
    """The data set (without file meta) as pydicom writes it in Explicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    try:
        write_dataset(buffer, dataset)
    except (ValueError, TypeError, NotImplementedError, OverflowError, struct.error) as problem:
        first_line = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        raise BadInputError(f"the data set cannot be encoded as Explicit VR Little Endian: {first_line}") from None
    return buffer.getvalue()


@dataclass
class _Element:
    """One data element as stored: exactly one of value, items or fragments is set, unless the
    element is a UN of undefined length (a sequence of unknown VR), which keeps none."""

    tag: int
    vr: str
    header: bytes  # tag, VR, reserved bytes and length exactly as stored
    value: bytes | None = None
    items: list[list[_Element]] | None = None
    fragments: list[bytes] | None = None


def _parse(data: bytes) -> list[_Element]:
    elements, _ = _parse_elements(memoryview(data), 0, len(data), inside_undefined_item=False)
    return elements


def _parse_elements(buf, pos: int, end: int, *, inside_undefined_item: bool) -> tuple[list[_Element], int]:
    elements: list[_Element] = []
    while pos < end:
        group, number = struct.unpack_from("<HH", buf, pos)
        tag = (group << 16) | number
        if tag == ITEM_DELIMITATION and inside_undefined_item:
            return elements, pos + 8
        vr = bytes(buf[pos + 4 : pos + 6]).decode("ascii", "replace")
        if vr in LONG_LENGTH_VRS:
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            header_size = 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            header_size = 8
        element = _Element(tag=tag, vr=vr, header=bytes(buf[pos : pos + header_size]))
        pos += header_size
        if vr == "SQ":
            element.items, pos = _parse_items(buf, pos, length)
        elif length == UNDEFINED_LENGTH:
            if vr == "UN":
                pos = _skip_implicit_sequence(buf, pos)
            else:
                element.fragments, pos = _parse_fragments(buf, pos)
        else:
            element.value = bytes(buf[pos : pos + length])
            pos += length
        elements.append(element)
    if inside_undefined_item:
        raise BadInputError("the data set has an item without an Item Delimitation")
    return elements, pos


def _parse_items(buf, pos: int, length: int) -> tuple[list[list[_Element]], int]:
    items: list[list[_Element]] = []
    end = len(buf) if length == UNDEFINED_LENGTH else pos + length
    while pos < end:
        group, number, item_length = struct.unpack_from("<HHL", buf, pos)
        tag = (group << 16) | number
        pos += 8
        if tag == SEQUENCE_DELIMITATION:
            break
        if tag != ITEM:
            raise BadInputError(f"the data set has {_tag_text(tag)} where a sequence item was expected")
        if item_length == UNDEFINED_LENGTH:
            elements, pos = _parse_elements(buf, pos, len(buf), inside_undefined_item=True)
        else:
            elements, pos = _parse_elements(buf, pos, pos + item_length, inside_undefined_item=False)
        items.append(elements)
    return items, pos


def _parse_fragments(buf, pos: int) -> tuple[list[bytes], int]:
    fragments: list[bytes] = []
    while pos < len(buf):
        group, number, length = struct.unpack_from("<HHL", buf, pos)
        tag = (group << 16) | number
        pos += 8
        if tag == SEQUENCE_DELIMITATION:
            return fragments, pos
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise BadInputError("the encapsulated pixel data are malformed")
        fragments.append(bytes(buf[pos : pos + length]))
        pos += length
    raise BadInputError("the encapsulated pixel data have no Sequence Delimitation")


def _skip_implicit_sequence(buf, pos: int) -> int:
    """Skip a UN element of undefined length: its content is implicit VR little endian."""
    while pos < len(buf):
        group, number, length = struct.unpack_from("<HHL", buf, pos)
        tag = (group << 16) | number
        pos += 8
        if tag in (SEQUENCE_DELIMITATION, ITEM_DELIMITATION):
            return pos
        if length == UNDEFINED_LENGTH:
            pos = _skip_implicit_sequence(buf, pos)
        else:
            pos += length
    raise BadInputError("the data set has a sequence of unknown VR without a delimitation")


# --- the bytes that enter the MAC ----------------------------------------------------------------


def _tag_is_signable(tag: int) -> bool:
    group, number = tag >> 16, tag & 0xFFFF
    return not (
        number == 0x0000  # group lengths
        or tag == 0x00080001  # Length to End
        or group < 0x0008  # file meta and command groups
        or group == 0xFFFA  # Digital Signatures Sequence
        or tag == MAC_PARAMETERS_SEQUENCE
        or tag == 0xFFFCFFFC  # Data Set Trailing Padding
        or tag in (ITEM_DELIMITATION, SEQUENCE_DELIMITATION)
    )


def _holds_unknown_vr(element: _Element) -> bool:
    if element.vr == "UN":
        return True
    return any(_holds_unknown_vr(child) for item in element.items or () for child in item)


def _is_signable(element: _Element) -> bool:
    return _tag_is_signable(element.tag) and not _holds_unknown_vr(element)


def _mac_bytes(element: _Element, out: bytearray) -> None:
    tag = element.header[:4]
    if element.items is not None:
        out += tag + b"SQ\x00\x00"
        for item in element.items:
            out += struct.pack("<HH", ITEM >> 16, ITEM & 0xFFFF)
            for child in item:
                if _is_signable(child):
                    _mac_bytes(child, out)
        out += struct.pack("<HH", SEQUENCE_DELIMITATION >> 16, SEQUENCE_DELIMITATION & 0xFFFF)
    elif element.fragments is not None:
        out += tag + b"OB\x00\x00"
        for fragment in element.fragments:
            out += struct.pack("<HH", ITEM >> 16, ITEM & 0xFFFF) + fragment
        out += struct.pack("<HH", SEQUENCE_DELIMITATION >> 16, SEQUENCE_DELIMITATION & 0xFFFF)
    else:
        out += element.header
        out += element.value or b""


def _mac(data_elements: list[_Element], signature_item: list[_Element], algorithm) -> bytes:
    """The MAC over the signed data elements followed by the signature item's own elements."""
    context = hashes.Hash(algorithm)
    for element in data_elements:
        chunk = bytearray()
        _mac_bytes(element, chunk)
        context.update(bytes(chunk))
    for element in signature_item:
        if element.tag not in NOT_IN_SIGNATURE_MAC and _is_signable(element):
            chunk = bytearray()
            _mac_bytes(element, chunk)
            context.update(bytes(chunk))
    return context.finalize()


# --- small value helpers -------------------------------------------------------------------------


def _format_datetime(now: datetime | None) -> str:
    """A DICOM DT with its UTC offset, which the Digital Signature DateTime requires."""
    moment = now if now is not None else datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # a naive time is taken as UTC
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _parse_datetime(text: str) -> datetime | None:
    from pydicom.valuerep import DT

    if not text:
        return None
    try:
        moment = DT(text)
    except ValueError:
        return None
    moment = datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
        moment.microsecond, tzinfo=moment.tzinfo or timezone.utc,
    )
    return moment.astimezone(timezone.utc)


def _text(dataset, tag: int) -> str:
    element = dataset.get(tag)
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip(" \x00")


def _tag_list(element) -> list[int]:
    if element is None or element.value is None:
        return []
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        # An AT element of unknown VR: little endian (group, element) pairs.
        pairs = struct.iter_unpack("<HH", bytes(value)[: len(value) // 4 * 4])
        return [(group << 16) | number for group, number in pairs]
    if isinstance(value, int):
        return [int(value)]
    return [int(tag) for tag in value]


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or _tag_text(tag)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
