"""Where a restoration record lives in each file format, and which DICOM elements it keeps.

- DICOM: one private OB element, (0077,xx01) of the private creator ``WM RESTORATION RECORD 1``.
  Private elements are kept by conforming archives and copied by most tools; a tool that strips
  them (an anonymiser) removes the record, and `wm verify` then says "no record".
- PNG: an ancillary, private, unsafe-to-copy chunk ``wmRR`` before IEND. "Unsafe to copy" tells an
  editor that changes the image to drop it, which is what a record of the old pixels should get.
- TIFF: private tag 65137 (UNDEFINED bytes) in the first page.

The record stores no file structure for PNG and TIFF: restoring one gives the original stored
values in a new file of the same format.

A file marked again keeps the earlier record inside the new one, so that each `wm restore` steps
back one marking: DICOM keeps it among the original elements (`dicom_original_elements`), PNG
and TIFF as their only original element (`raster_original_elements`), and restore writes it
back into the restored file's chunk or tag.
"""

from __future__ import annotations

import struct
import zlib

from .png_chunks import png_chunks
from .record import trimmed

RECORD_CREATOR = "WM RESTORATION RECORD 1"
RECORD_GROUP = 0x0077
_RECORD_ELEMENT = 0x01
PNG_CHUNK = b"wmRR"
TIFF_TAG = 65137

#: Top-level elements `wm embed` changes, removes or adds; the record keeps their original values
#: (or notes their absence) so that `wm restore` can put them back. Earlier digital signatures are
#: among them: they no longer match the marked instance, and match the restored one again.
DICOM_CHANGED_ELEMENTS = ("SOPInstanceUID", "ImageType", "DerivationDescription", "SourceImageSequence",
                          "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "DigitalSignaturesSequence",
                          "MACParametersSequence", "EncryptedAttributesSequence")
#: File meta elements the writer sets or fills in.
DICOM_CHANGED_META = ("TransferSyntaxUID", "MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID",
                      "FileMetaInformationVersion", "ImplementationClassUID", "ImplementationVersionName")


# ---- DICOM -----------------------------------------------------------------------------------

def dataset_bytes(ds) -> bytes:
    """A data set (no preamble, no file meta) encoded as Explicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def dicom_original_elements(ds):
    """The original values of the elements embed changes (a Dataset; file meta elements in it
    keep their group 0002 tags), and the keywords of those the original lacks (restore removes them)."""
    from pydicom.dataset import Dataset

    kept, absent = Dataset(), []
    meta = getattr(ds, "file_meta", None)
    for keyword in DICOM_CHANGED_ELEMENTS:
        if keyword in ds:
            kept[keyword] = ds[keyword]
        else:
            absent.append(keyword)
    for keyword in DICOM_CHANGED_META:
        if meta is not None and keyword in meta:
            kept[keyword] = meta[keyword]
        else:
            absent.append(keyword)
    # An input marked before carries its own record: embed removes it (it would not match), and
    # restore puts it back, so that the first marked file, and through it the original, return.
    for tag in _record_tags(ds):
        kept[tag] = ds[tag]
    return kept, tuple(absent)


def _record_tags(ds) -> list:
    try:
        block = ds.private_block(RECORD_GROUP, RECORD_CREATOR)
    except KeyError:
        return []
    creator = (RECORD_GROUP << 16) | (block.block_start >> 8)
    return [tag for tag in (creator, block.get_tag(_RECORD_ELEMENT)) if tag in ds]


#: What decides how a reader turns stored values into what it shows and measures: a change to any
#: of them changes the image without changing a stored value, so the record keeps them.
PIXEL_INTERPRETATION = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
                        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
                        "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth",
                        "VOILUTFunction", "VOILUTSequence", "PixelSpacing", "ImagerPixelSpacing",
                        "PixelAspectRatio", "PixelPaddingValue", "PixelPaddingRangeLimit")


def pixel_interpretation(ds) -> dict:
    """The PIXEL_INTERPRETATION elements present, as text (sequences by their SHA-256)."""
    import hashlib

    values = {}
    for keyword in PIXEL_INTERPRETATION:
        if keyword in ds:
            value = ds[keyword].value
            text = str(value) if ds[keyword].VR != "SQ" else hashlib.sha256(str(value).encode()).hexdigest()
            values[keyword] = text
    return values


def modified_attributes_item(kept):
    """The Modified Attributes Sequence item of an Encrypted Attributes envelope: the original
    top-level values (file meta elements do not belong in a data set's attributes)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    for element in kept:
        if element.tag.group != 0x0002:
            item[element.tag] = element
    return item


def dicom_restore_elements(ds, original_elements: bytes, absent: tuple[str, ...]) -> None:
    """Put the original values (and absences) of the changed elements back into `ds`, in place."""
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    kept = read_dataset(BytesIO(original_elements), is_implicit_VR=False, is_little_endian=True)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    for element in kept:
        target = ds.file_meta if element.tag.group == 0x0002 else ds
        target[element.tag] = element
    for keyword in absent:
        for target in (ds, ds.file_meta):
            if keyword in target:
                del target[keyword]


def dicom_attach_record(ds, record: bytes) -> None:
    block = ds.private_block(RECORD_GROUP, RECORD_CREATOR, create=True)
    block.add_new(_RECORD_ELEMENT, "OB", record)


def dicom_attach_envelope(ds, der: bytes) -> None:
    """An item of the Encrypted Attributes Sequence (PS3.3 C.12.1.1.4) holding a CMS envelope."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    item = Dataset()
    item.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
    item.add_new(0x04000520, "OB", der)  # Encrypted Content
    if "EncryptedAttributesSequence" not in ds:
        ds.EncryptedAttributesSequence = Sequence()
    ds.EncryptedAttributesSequence.append(item)


def dicom_envelopes(ds) -> list[bytes]:
    """The Encrypted Content of every Encrypted Attributes item, the last first (wm appends)."""
    items = ds.get("EncryptedAttributesSequence") or []
    return [der_trimmed(bytes(item.EncryptedContent)) for item in reversed(list(items)) if "EncryptedContent" in item]


def dicom_record(ds) -> bytes | None:
    """The shared-key record if the file has one, else the last CMS envelope, else None."""
    try:
        block = ds.private_block(RECORD_GROUP, RECORD_CREATOR)
        value = block[_RECORD_ELEMENT].value
    except KeyError:
        envelopes = dicom_envelopes(ds)
        return envelopes[0] if envelopes else None
    if not isinstance(value, (bytes, bytearray)):
        return None
    return trimmed(bytes(value))  # DICOM pads an odd-length value with one zero byte


def dicom_remove_record(ds) -> None:
    for tag in _record_tags(ds):
        del ds[tag]


def der_trimmed(blob: bytes) -> bytes:
    """The DER value without the padding a container added after it (DICOM pads to even length)."""
    if len(blob) < 2 or blob[1] < 0x80:
        return blob[:2 + blob[1]] if len(blob) >= 2 else blob
    size = blob[1] & 0x7F
    return blob[:2 + size + int.from_bytes(blob[2:2 + size], "big")]


# ---- PNG and TIFF: the earlier record ----------------------------------------------------------

# PNG and TIFF files get their record's `original_elements` from here: empty when the input
# carried no record, else this label and the earlier record's bytes as stored (a shared-key
# record or a CMS envelope alike). The label lets a later wm tell this layout from another.
_EARLIER_RECORD_LABEL = b"wm earlier record 1\n"


class UnknownOriginalElementsError(ValueError):
    """A PNG or TIFF record keeps original elements in a layout this wm does not know."""


def raster_original_elements(earlier_record: bytes | None) -> bytes:
    """What a PNG or TIFF record keeps of the input besides its pixels: the input's own record,
    if it was marked before (embed replaces it, restore puts it back)."""
    return b"" if earlier_record is None else _EARLIER_RECORD_LABEL + earlier_record


def raster_earlier_record(original_elements: bytes) -> bytes | None:
    """The earlier record a PNG or TIFF record keeps (None when the input had none; records
    written before chaining keep none either)."""
    if not original_elements:
        return None
    if not original_elements.startswith(_EARLIER_RECORD_LABEL):
        raise UnknownOriginalElementsError("the record keeps the original file's metadata in a layout this wm "
                                           "does not know (made by a newer wm?)")
    return original_elements[len(_EARLIER_RECORD_LABEL):]


# ---- PNG -------------------------------------------------------------------------------------

def png_with_record(png: bytes, record: bytes) -> bytes:
    """`png` with a `wmRR` chunk holding `record` inserted before IEND."""
    end = png.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    chunk = struct.pack(">I", len(record)) + PNG_CHUNK + record
    chunk += struct.pack(">I", zlib.crc32(PNG_CHUNK + record) & 0xFFFFFFFF)
    return png[:end] + chunk + png[end:]


def png_record(data: bytes) -> bytes | None:
    """The `wmRR` chunk's data (CRC checked), or None."""
    for chunk in png_chunks(data):
        if chunk.kind == PNG_CHUNK:
            return chunk.body if chunk.crc_ok else None
    return None


# ---- TIFF ------------------------------------------------------------------------------------

def tiff_record_tag(record: bytes) -> tuple:
    """The record as a tifffile `extratags` entry (code, type UNDEFINED, count, value, write once)."""
    return (TIFF_TAG, 7, len(record), record, True)
