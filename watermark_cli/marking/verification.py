"""`wm verify`: is the mark there, is the record there and authentic, are the pixels as marked,
has anything else a reader sees or that says whose image it is changed, do the file's signatures
hold and are they by trusted signers.

The answers are independent: the robust mark survives exports and attacks, the record and its
block tags prove the stored values unchanged (exact hashes, so an untouched file never raises a
false alarm), the record's binding (integrity.binding) names every change to the presentation
and identity, and a DICOM signature covers the header as well. A file is *intact* only when all
of them hold *and* something proves it: a secret key (the record cannot be re-sealed without it),
or, for a record sealed for a recipient (which anyone holding the recipient's certificate can
write), a valid signature by a trusted signer (`--trust`). The public default key proves nothing:
a file under it is never intact. Without a record (a JPEG export, a stripped file) the pixels'
integrity is *unknown*; with a record written before the binding existed, the presentation and
identity are *not bound*: neither is ever "intact".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..integrity.binding import BindingChange, changes, describe
from ..integrity.containers import pixel_interpretation
from ..integrity.record import RecordNotAuthenticError, block_grid, changed_blocks
from ..integrity.signature import TrustAnchors, signatures_problem, trusted_signature, verify_signatures
from ..io.writing import write_atomically
from ..keys import key_kind
from ..payload import bytes_to_text
from .image import read_any_mark
from .marked_binding import written_binding
from .restoration import NoRecordError, opened_record


@dataclass
class Verification:
    input: str
    mark_found: bool
    message: str | None
    record_found: bool = False
    record_authentic: bool = False
    record_problem: str = ""  # why the record could not be used, when it could not
    changed_blocks: list[tuple[int, int, int]] = field(default_factory=list)
    block_size: int | None = None
    n_blocks: int | None = None
    size_changed: bool = False
    signatures: list = field(default_factory=list)  # signature.SignatureCheck
    sealing: str | None = None  # how the record was sealed: 'key', 'default key' or 'recipient'
    expected_signer_sha256: str | None = None  # the certificate the record says the file was signed with
    reading_changed: list = field(default_factory=list)  # pixel-interpretation elements changed since marking
    # Whether the record binds the presentation and identity (False: a record older than the binding).
    bound: bool = False
    binding_changes: list[BindingChange] = field(default_factory=list)
    # Whether the mark found protects anything: a keyed model's, under a secret key (an unkeyed
    # model's mark or one under the public default key anyone can read, strip or copy).
    mark_protected: bool = False
    # Whether the mark found is a small frame's fragile mark (`marking.fragile`): lossless copies only.
    mark_fragile: bool = False
    trust_given: bool = False  # --trust (or WM_TRUST) named trusted signers
    # Where no mark is found: the message of a mark read but refused for not covering the image
    # (`image.mark_fits`: a copy from another image, or much of the image changed), a lead only.
    mark_lead: str | None = None

    def counts(self, check) -> bool:
        """Whether a valid signature's signer counts: trusted (--trust), or, when no trusted
        signers are named, the signer a secret-key record pins (only the key holder wrote that)."""
        if check.trusted:
            return True
        return (not self.trust_given and self.sealing == "key" and bool(self.expected_signer_sha256)
                and check.certificate_sha256 == self.expected_signer_sha256)

    @property
    def signer_problem(self) -> str:
        """Why the signatures do not hold ('' when they do)."""
        return signatures_problem(self.signatures, self.expected_signer_sha256, self.trust_given, self.counts)

    @property
    def trusted_signature(self) -> bool:
        return trusted_signature(self.signatures, self.expected_signer_sha256, self.trust_given, self.counts)

    @property
    def authenticity(self) -> str:
        """What stands behind an 'intact': a secret key, a trusted signature, or nothing."""
        if self.sealing == "recipient":
            return ("signature by a trusted signer" if self.trusted_signature
                    else "none (recipient record without a trusted signature)")
        if self.sealing == "key":
            return "secret key" + (" and a signature by a trusted signer" if self.trusted_signature else "")
        return {"default key": "none (public default key)"}.get(self.sealing or "", "none")

    @property
    def proved(self) -> bool:
        return not self.authenticity.startswith("none")

    @property
    def intact(self) -> bool:
        return (self.mark_found and self.record_authentic and not self.changed_blocks and not self.size_changed
                and self.bound and not self.binding_changes and not self.reading_changed
                and not self.signer_problem and self.proved)

    @property
    def status(self) -> str:
        """One phrase: what a reader should conclude."""
        if not self.record_authentic:
            if not self.record_found:
                if self.mark_found:
                    return "mark present, integrity unknown (no record)"
                if self.mark_lead is not None:
                    return (f"no authentic mark, no record: a mark of {self.mark_lead!r} does not cover this image "
                            "(copied from another image, or much of it changed)")
                return "no mark, no record"
            return "record not authentic (wrong key, or the record was changed)"
        if self.size_changed:
            return "tampered: the image size changed since marking"
        if self.changed_blocks:
            return f"tampered: {len(self.changed_blocks)} block(s) changed since marking"
        if self.binding_changes:
            return f"tampered: {describe(self.binding_changes)}"
        if self.reading_changed:
            return f"tampered: how the pixels are read changed since marking ({', '.join(self.reading_changed)})"
        if self.signer_problem:
            return f"tampered: {self.signer_problem}" if "untrusted" not in self.signer_problem and \
                "not valid" not in self.signer_problem else f"unproven: {self.signer_problem}"
        if not self.bound:
            return ("pixels as marked, but presentation and identity not bound (older record): "
                    "mark the original again to prove them")
        if self.sealing == "default key":
            return ("pixels and header as marked, but proves nothing: the record is under the public default "
                    "key, which anyone can re-seal (mark with a secret key)")
        if not self.proved:
            return ("pixels and header as marked, but unproven: anyone with the recipient's certificate can write "
                    "such a record; it counts only with a signature by a trusted signer (--trust)")
        if not self.mark_found:
            return "pixels as marked, but the mark is not found (wrong key?)"
        return "intact"

    def as_json(self) -> dict:
        return {
            "input": self.input, "mark_found": self.mark_found, "message": self.message,
            **({"mark_lead": self.mark_lead} if self.mark_lead is not None else {}),
            "mark_protected": self.mark_protected, "mark_fragile": self.mark_fragile,
            "record_found": self.record_found, "record_authentic": self.record_authentic,
            "intact": self.intact, "status": self.status, "authenticity": self.authenticity,
            "changed_blocks": [{"frame": f, "row": r, "col": c} for f, r, c in self.changed_blocks],
            "binding": None if not self.record_authentic else ("bound" if self.bound else "not bound (older record)"),
            "changes": [change.as_json() for change in self.binding_changes],
            "pixel_reading_changed": self.reading_changed, "block_size": self.block_size, "n_blocks": self.n_blocks,
            "size_changed": self.size_changed,
            "signatures": [{"uid": s.uid, "signer": s.signer, "valid": s.valid, "reason": s.reason,
                            "certificate_sha256": s.certificate_sha256, "trusted": s.trusted,
                            "trust_problem": s.trust_problem} for s in self.signatures],
        }


def verify_image(image, key, loaded, codec, recipient=None, older=(), trust: TrustAnchors | None = None) -> Verification:
    """Every check on one read image (see the module docstring). `older`: the unkeyed models
    whose marks are read too (`image.older_readers`); `trust`: the signers whose signatures count."""
    decoded, unprotected = read_any_mark(loaded, codec, image, older)
    result = Verification(str(image.path), decoded.found, bytes_to_text(decoded.message) if decoded.found else None,
                          mark_protected=decoded.found and unprotected is None and key_kind(key) == "custom",
                          mark_fragile=decoded.found and decoded.fragile,
                          mark_lead=(bytes_to_text(decoded.unfitted_message)
                                     if not decoded.found and decoded.unfitted_message is not None else None),
                          trust_given=bool(trust))
    try:
        record, tag_key, sealing = opened_record(image, key, recipient)
    except NoRecordError:
        pass
    except RecordNotAuthenticError as error:
        result.record_found, result.record_problem = True, str(error)
    else:
        result.record_found = result.record_authentic = True
        result.sealing = "default key" if sealing == "key" and key_kind(key) == "default" else sealing
        result.expected_signer_sha256 = record.signer_sha256
        result.block_size = record.block_size
        frames, block_rows, block_cols = block_grid(record.shape, record.block_size)
        result.n_blocks = frames * block_rows * block_cols
        if tuple(image.pixels.shape) != record.shape:
            result.size_changed = True
        else:
            result.changed_blocks = changed_blocks(record, image.pixels, tag_key)
        if record.binding is not None:
            result.bound = True
            result.binding_changes = changes(record.binding, written_binding(image))
        elif image.kind == "dicom" and record.interpretation:  # an older record: what it kept
            now = pixel_interpretation(image.source)
            result.reading_changed = sorted(k for k in set(now) | set(record.interpretation)
                                            if now.get(k) != record.interpretation.get(k))
    if image.kind == "dicom":
        result.signatures = verify_signatures(image.source, trust)
    return result


def write_change_map(image, verification: Verification, path: Path) -> Path:
    """A PNG of the frames with changed blocks (the first frame when none changed), each in its
    own data range, changed blocks tinted red and outlined; frames stacked top to bottom."""
    path = Path(path)
    if path.exists():  # never the input, never any other file: a map is always new
        raise BadInputError(f"--map {path}: already exists; give a new file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInputError(f"--map {path}: cannot create its folder ({error.strerror or error})") from None
    size = verification.block_size or 32
    frames = sorted({frame for frame, _, _ in verification.changed_blocks}) or [0]
    tiles = []
    for frame in frames:
        values = image.pixels[frame].astype(np.float64)
        low, high = float(values.min()), float(values.max())
        gray = (values - low) / (high - low) if high > low else np.zeros_like(values)
        if image.photometric == "MONOCHROME1":
            gray = 1.0 - gray
        rgb = np.repeat((gray * 255.0)[..., np.newaxis], 3, axis=2)
        for changed_frame, row, col in verification.changed_blocks:
            if changed_frame == frame:
                block = rgb[row:row + size, col:col + size]
                block[...] = 0.5 * block + 0.5 * np.array([255.0, 0.0, 0.0])
                block[[0, -1], :] = block[:, [0, -1]] = (255.0, 0.0, 0.0)
        tiles.append(rgb)
    picture = np.concatenate(tiles, axis=0).round().astype(np.uint8)

    def writer(handle) -> None:
        from PIL import Image

        Image.fromarray(picture, mode="RGB").save(handle, format="PNG")

    return write_atomically(path, writer, overwrite=False)

