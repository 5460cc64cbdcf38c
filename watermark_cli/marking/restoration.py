"""`wm restore`: the original back from a marked file and its restoration record, bit-exactly.

The stored values come back exactly (original = marked + the recorded difference) and are
checked against the record's SHA-256 of the original before anything is written; the SOP
Instance UID and every other element the embed changed get their original values back, and
every other element stays as it is in the marked file (so a correction made after marking, say
to a description, is kept and named). A change since marking to what a reader sees or whose image
it is (the record's binding, as `wm verify` names it) is not passed off as the original: nothing
is written unless the caller keeps such changes knowingly (`keep_header_changes`). The restored
file is written atomically and read back first.

A file marked more than once holds the earlier marking's record inside its own: restoring it
gives the file as it was before the last marking, record included, and the next restore (with
that marking's key) goes one step further back. DICOM, PNG and TIFF alike.

The DICOM preamble is written as 128 zero bytes (io.dicom.write_dicom_file), whatever the
marked or the original file held there: "bit-exact" covers the stored pixel values (the very
pixel-data words of a native original) and the elements the record keeps, not the preamble.

Transfer syntax: a native little-endian original is restored in its own syntax, and so is a
deflated one; RLE Lossless and JPEG 2000 Lossless originals are re-encoded with their own
syntax (the same stored values; the codestream's bytes may differ from the original encoder's);
anything else (big endian, lossy JPEG, JPEG-LS, JPEG lossless) is restored as Explicit VR Little
Endian: the decoded values are identical, the compressed bytes are not kept.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..errors import BadInputError, CheckFailedError
from ..hashing import pixel_sha256
from ..integrity.binding import changes, describe
from ..integrity.containers import (UnknownOriginalElementsError, dicom_envelopes, dicom_remove_record,
                                    dicom_restore_elements, raster_earlier_record)
from ..integrity.envelope import is_envelope, open_envelope
from ..integrity.record import RecordNotAuthenticError, RestorationRecord, changed_blocks, open_record
from ..integrity.signature import TrustAnchors, signatures_problem, trusted_signature, verify_signatures
from ..io.dicom import DICOM_COMPRESSIONS, compress_losslessly, set_native_pixel_data, write_dicom_file
from ..io.image import check_writable, file_record, read_image, write_image
from ..io.writing import write_atomically
from ..keys import key_kind
from .marked_binding import written_binding


class NoRecordError(CheckFailedError):
    """The file holds no restoration record (exit 1)."""


def opened_record(image, key, recipient=None) -> tuple[RestorationRecord, bytes, str]:
    """The file's record, opened, its block-tag key, and how it was sealed ('key' or 'recipient'):
    NoRecordError when there is none, RecordNotAuthenticError when it was not sealed with `key`
    (or for `recipient`, an envelope.Recipient with its private key) or was changed. A record for
    a recipient is confidential, not authentic: anyone with the certificate can make one (a
    signature, --sign, is what proves who did)."""
    blob = file_record(image)
    if blob is None:
        where = "a JPEG export carries no record" if image.kind == "jpeg" else \
            "marked with --no-restore-record, or a tool removed it"
        raise NoRecordError(f"{image.path}: no restoration record ({where})")
    if not is_envelope(blob):
        return (*open_record(blob, key), "key")
    for der in dicom_envelopes(image.source) if image.kind == "dicom" else [blob]:
        opened = open_envelope(der, recipient)
        if opened is not None:
            return (*open_record(*opened), "recipient")
    raise RecordNotAuthenticError(f"{image.path}: the restoration record is not encrypted for this recipient "
                                  "(or it was changed)")


def unproven_record(image, key, sealing: str, record: RestorationRecord, trust: TrustAnchors | None) -> str:
    """Why the record does not prove what the original was ('' when it does): anyone can seal a
    record under the public default key, or for a recipient with the recipient's certificate;
    only a signature by a trusted signer over the file (`trust`) vouches for the latter."""
    if sealing == "key":
        return "the record is under the public default key, which anyone can seal" if key_kind(key) == "default" else ""
    checks = verify_signatures(image.source, trust) if image.kind == "dicom" else []
    if trusted_signature(checks, record.signer_sha256, bool(trust)):
        return ""
    problem = signatures_problem(checks, record.signer_sha256, bool(trust)) if checks else "the file is not signed"
    return ("the record is sealed for a recipient, which anyone with the recipient's certificate can do, and no "
            f"signature by a trusted signer (--trust) vouches for it: {problem}")


def restore_file(marked: Path, out: Path, key, overwrite: bool = False, recipient=None,
                 keep_header_changes: bool = False, trust: TrustAnchors | None = None,
                 accept_unproven: bool = False) -> dict:
    """Write the original of `marked` to `out`; the figures of what was restored, with the bound
    items changed since marking (`header_changes`: header ones are kept; identity or presentation
    ones refuse the restore unless `keep_header_changes`). A record that proves nothing
    (`unproven_record`) refuses the restore unless `accept_unproven`: what it calls the original
    is then only what its sealer says (`proved` false in the figures)."""
    image = read_image(marked)
    out = check_writable(image, out, overwrite)
    record, tag_key, sealing = opened_record(image, key, recipient)
    unproven = unproven_record(image, key, sealing, record, trust)
    if unproven and not accept_unproven:
        raise CheckFailedError(f"{marked}: the original is unproven: {unproven}; nothing written (--accept-unproven "
                               "to restore what the record describes)")
    original = record.original_pixels(image.pixels)
    if pixel_sha256(image.pixels) != record.marked_pixels_sha256:
        changed = changed_blocks(record, image.pixels, tag_key)
        frame, row, col = changed[0] if changed else (0, 0, 0)
        raise CheckFailedError(f"{marked}: the pixels changed since marking ({len(changed)} block(s), the first at "
                               f"frame {frame}, row {row}, column {col}); the original cannot be restored exactly")
    if pixel_sha256(original) != record.original_pixels_sha256:
        raise CheckFailedError(f"{marked}: the restored pixels do not match the record's SHA-256 of the original; "
                               "nothing written")
    since_marking = changes(record.binding, written_binding(image)) if record.binding is not None else []
    seen = [change for change in since_marking if change.category != "header"]
    if seen and not keep_header_changes:
        raise CheckFailedError(f"{marked}: changed since marking ({describe(seen)}); the original cannot be "
                               "restored under that header; nothing written (--keep-header-changes to restore "
                               "the pixels and keep the changes)")

    earlier_record = None
    if image.kind != "dicom":
        try:
            earlier_record = raster_earlier_record(record.original_elements)
        except UnknownOriginalElementsError as error:
            raise CheckFailedError(f"{marked}: {error}; nothing written") from None

    def check_restored(temporary: Path) -> None:
        back = read_image(temporary)
        if pixel_sha256(back.pixels) != record.original_pixels_sha256:
            raise CheckFailedError(f"{marked}: the restored file does not read back as the original; nothing written")
        if image.kind != "dicom" and file_record(back) != earlier_record:
            raise CheckFailedError(f"{marked}: the restored file does not hold the earlier marking's record; "
                                   "nothing written")

    transfer_syntax = None
    if image.kind == "dicom":
        ds, transfer_syntax = _restored_dataset(image, original, record)

        def writer(handle) -> None:
            write_dicom_file(handle, ds)

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(f"{out.parent}: cannot create folder ({exc.strerror or exc})") from exc
        write_atomically(out, writer, overwrite=overwrite, verify=check_restored)
    else:
        write_image(image, original, out, derivation="", overwrite=overwrite, verify=check_restored,
                    record=earlier_record)
    return {"input": str(marked), "output": str(out), "restored": True, "proved": not unproven, "unproven": unproven,
            "pixels_sha256": record.original_pixels_sha256,
            "sop_instance_uid": record.original_sop_instance_uid, "transfer_syntax": transfer_syntax,
            "header_bound": record.binding is not None,
            "header_changes": [change.as_json() for change in since_marking],
            "header_changes_described": describe(since_marking)}


def _restored_dataset(image, original, record: RestorationRecord):
    """The marked dataset with the original pixel data and the original changed elements."""
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             UID)

    ds = copy.deepcopy(image.source)
    set_native_pixel_data(ds, original)  # the marked file's high bits, where it has native data
    if record.high_bits is not None:  # the original's own, from the record (a compressed copy has none)
        bits, word = int(ds.get("BitsStored", ds.BitsAllocated)), f"<u{int(ds.BitsAllocated) // 8}"  # 8 or 16
        words = (record.high_bits.astype("<u2") << bits) | (original.astype("<u2") & ((1 << bits) - 1))
        ds.PixelData = words.astype(word).tobytes()
    dicom_remove_record(ds)
    for keyword in ("DigitalSignaturesSequence", "MACParametersSequence"):  # the marker's, if any
        if keyword in ds:
            del ds[keyword]
    dicom_restore_elements(ds, record.original_elements, record.added_elements)
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        pass  # native little endian: the pixel data set above is written in it
    elif syntax in DICOM_COMPRESSIONS.values():
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        compress_losslessly(ds, syntax, image.path)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds, UID(str(ds.file_meta.TransferSyntaxUID)).name
