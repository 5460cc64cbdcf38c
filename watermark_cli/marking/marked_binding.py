"""The binding (integrity.binding) of a marked file as `wm embed` will write it, known before it is
written so that the record sealed into it can carry it.

DICOM: the input's header with the elements the writer changes (io.dicom's
DICOM_ELEMENTS_CHANGED_ON_WRITE) set as it sets them — the new SOP Instance UID chosen here, the
DERIVED ImageType, the Derivation Description, the Source Image Sequence's new item — and the
unused high bits the written words keep (a compressed output keeps none). PNG and TIFF: the
binding of the very bytes the writer makes for the marked values (the record travels beside them
and is not bound). `embed` reads the written file back and refuses to move it into place when its
binding differs from the sealed one (`check_written_binding`): a freshly marked file always
verifies.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np

from ..errors import CheckFailedError
from ..integrity import containers
from ..integrity.binding import changes, describe, dicom_binding, png_binding, tiff_binding
from ..integrity.envelope import is_envelope
from ..io.dicom import _derived_image_type, elements_read_two_ways
from ..io.image import PNG_SUFFIXES
from ..io.raster import write_tiff
from ..io.writing import png_bytes


def new_instance_uid(image) -> str | None:
    """The SOP Instance UID the marked DICOM file will have (None for PNG and TIFF)."""
    from pydicom.uid import generate_uid

    return generate_uid() if image.kind == "dicom" else None


def binding_as_written(image, marked: np.ndarray, destination: Path, derivation: str,
                       sop_instance_uid: str | None, compression: str = "none") -> dict:
    """The binding of the file `write_image` writes for `marked` (see the module docstring)."""
    if image.kind == "dicom":
        return dicom_binding(_marked_header(image.source, derivation, sop_instance_uid, compression == "none"))
    if Path(destination).suffix.lower() in PNG_SUFFIXES:
        return png_binding(png_bytes(marked[0], compress_level=0))  # the chunks do not depend on the level
    buffer = io.BytesIO()
    write_tiff(marked, image.photometric, buffer)
    buffer.seek(0)
    return tiff_binding(buffer)


def _marked_header(source, derivation: str, sop_instance_uid: str, native: bool):
    """The input's data set with the header edits of io.dicom.write_dicom; its pixel data only
    where the output keeps their high bits (native, unsigned: the original's words' own)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    header = Dataset()
    for element in source:  # a shallow walk: the pixel data are not copied
        if element.tag != 0x7FE00010:
            header.add(copy.deepcopy(element))
    if getattr(source, "file_meta", None) is not None:
        header.file_meta = copy.deepcopy(source.file_meta)
    header.set_original_encoding(*source.original_encoding)
    if native and "PixelData" in source and int(source.get("PixelRepresentation", 0) or 0) == 0:
        header.add(source["PixelData"])  # signed words are written sign-extended: no high bits to keep
    reference = Dataset()
    if source.get("SOPClassUID"):
        reference.ReferencedSOPClassUID = source.SOPClassUID
    if source.get("SOPInstanceUID"):
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    header.SOPInstanceUID = sop_instance_uid
    if getattr(header, "file_meta", None) is not None:
        header.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid  # as write_dicom sets it
    header.ImageType = _derived_image_type(source.get("ImageType"))
    header.DerivationDescription = derivation[:1024]  # ST, as write_dicom cuts it
    header.SourceImageSequence = Sequence([*copy.deepcopy(list(source.get("SourceImageSequence") or [])),
                                           reference])
    for keyword in ("DigitalSignaturesSequence", "MACParametersSequence"):  # removed on write
        if keyword in header:
            del header[keyword]
    return header


def written_binding(written) -> dict:
    """The binding of a file as read (a MedicalImage of DICOM, PNG or TIFF)."""
    if written.kind == "dicom":
        record = containers.dicom_record(written.source)
        two_ways = elements_read_two_ways(Path(written.path))
        return dicom_binding(written.source, two_ways.repeated, other_vr=two_ways.other_vr,
                             record_in_last_envelope=record is not None and is_envelope(record))
    if written.kind == "png":
        return png_binding(Path(written.path).read_bytes())
    return tiff_binding(written.path)


def check_written_binding(written, sealed: dict, source: Path) -> None:
    """Refuse a written file whose binding is not the one its record carries."""
    found = changes(sealed, written_binding(written))
    if found:
        raise CheckFailedError(f"{source}: the written file's header differs from what its restoration record binds "
                               f"({describe(found)}); nothing written")
