"""What the restoration record binds besides the stored values: everything in a file that changes
what a reader sees or whose image it is (presentation and identity), so that `wm verify` can name
each change made after marking.

A *binding* is a map from the name of each bound item to a digest of its value, computed on the
file as `wm embed` writes it and sealed in the record; `wm verify` computes it again on the file
it is given and names every item whose digest differs, appeared or vanished.

DICOM: every data element, at every depth, is bound, except those listed in ``DICOM_IN_TRANSIT``
(what a legitimate re-write changes without changing the image or its identity: the transfer
syntax and the rest of the file meta, group lengths, the pixel data's encoding — the stored values
are bound by the record's block tags — and the elements `verify` checks on their own: signatures
and wm's record). Values are compared as decoded values, not as bytes, so a re-write in another
transfer syntax, byte order or character set keeps them; a DS or IS text outside DICOM's
syntax ('-1_024', which Python reads as -1024 and dcmtk as -1) is bound as written. Sequences
are bound item by item under one name per path (``SharedFunctionalGroupsSequence > PixelMeasuresSequence > PixelSpacing``), so a
1000-frame enhanced object costs one digest per distinct path, not per frame. Private elements are
named by their creator, not by the block a writer happened to give them; of wm's own block only
the record's two elements are left out. The unused high bits of the pixel data (old overlays; in
signed words, the bits that are not the value's sign) are bound as one more item, and each
element the file holds twice or out of order (readers disagree on which copy counts) as another,
and each standard element written in another VR than the dictionary's (RescaleIntercept as SS,
PatientName as UN: pydicom decodes the same value, dcmtk drops it or shows its bytes), and so
does a file meta whose Media Storage SOP Class or Instance UID is not the data set's, a
preamble that is not zeros (another format's header) and a Specific Character Set outside
DICOM's defined terms (pydicom decodes any codec Python knows, a viewer does not).

PNG: the IHDR fields that decide the image (size, bit depth, colour type; not the interlacing)
and every other chunk but those of ``PNG_UNBOUND_CHUNKS`` (the pixel data, whose values the block
tags bind, the end, the time, wm's record) and the text no reader applies (PNG's registered
keywords, ImageMagick's time stamps); other text is bound (XMP and raw EXIF profiles carry an
orientation, ImageMagick applies keywords such as 'colorspace' and 'page'). TIFF: every tag of
every page except ``TIFF_IN_TRANSIT`` (strip and tile layout, compression, predictor, software
and date: how the samples are stored, not what they mean), wm's record tag included in that list.

Digests: SHA-256 of a canonical serialisation, cut to 64 bits per item (enough to name what
changed), and the full SHA-256 over every item's full digest (what proves nothing else changed).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass

from .compression import decompressed
from .png_chunks import png_chunks

BINDING_VERSION = 1
ITEM_DIGEST_HEX = 16  # 64 bits per named item
HIGH_BITS_NAME = "Overlay bits in the unused high bits of Pixel Data"
# Ends the name of an element a data set holds twice or out of order: readers disagree on which
# copy counts, so it is a presentation change whatever the element.
REPEATED_MARK = " written twice or out of order"
# Ends the name of an element written in a VR DICOM does not define: readers part where it ends,
# and what one reads as its value the other reads as elements (any of them), so it is a
# presentation change whatever the element.
UNDEFINED_VR_MARK = ", a VR DICOM does not define"
# The 128 bytes before 'DICM' that wm writes as zeros: another format's header there (a TIFF's,
# an executable's) makes the file that image or program to its readers, whatever it points at
# (PS3.10 7.5 allows it; CVE-2019-11687). Without it nothing reads Data Set Trailing Padding.
PREAMBLE_NAME = "the file preamble (128 bytes before DICM), not zeros"

#: DICOM elements whose change in transit is allowed (not bound), and why. Keywords or tags.
DICOM_IN_TRANSIT = {
    "file meta (group 0002)": "transfer syntax, implementation and source application of the file that carries it",
    "group lengths (gggg,0000) and Length to End": "encoding bookkeeping; PS3.5 retires them",
    "PixelData (the image's, not a thumbnail's in a sequence item)": "its encoding (native, RLE, JPEG 2000, ...); "
                                                                     "the stored values are bound by the block tags",
    "ExtendedOffsetTable, ExtendedOffsetTableLengths (the image's)": "describe compressed pixel data only (a table "
                                                                     "out of step with the items is refused where "
                                                                     "the pixels are read)",
    "SpecificCharacterSet (DICOM's defined terms)": "values are compared decoded, so a conversion to another "
                                                    "character set keeps them (a name outside DICOM's, such as "
                                                    "utf_7, which pydicom accepts and a viewer does not, is bound)",
    "DataSetTrailingPadding": "padding, read by no DICOM reader (another format's header in the preamble could "
                              "point into it: a preamble that is not zeros is bound)",
    "DigitalSignaturesSequence, MACParametersSequence": "checked on their own (signatures)",
    "the private block WM RESTORATION RECORD 1, and the Encrypted Attributes item of a record sealed for a "
    "recipient (the last)": "the record itself",
}
_PIXEL_DATA, _EXTENDED_OFFSETS = 0x7FE00010, (0x7FE00001, 0x7FE00002)
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNBOUND_DICOM_TAGS = {0x00080001, 0xFFFCFFFC, 0xFFFAFFFA, 0x4FFE0001}
# Unbound in the top-level data set only: the image's pixels are bound by the block tags. Pixel data
# inside a sequence item (an Icon Image Sequence's thumbnail, which a viewer shows for the image)
# has no block tags: it is bound by its bytes, like any other element.
_TOP_LEVEL_ONLY_UNBOUND = {_PIXEL_DATA, *_EXTENDED_OFFSETS}
_ENCRYPTED_ATTRIBUTES = 0x04000500
_RECORD_CREATOR = "WM RESTORATION RECORD 1"  # integrity.containers.RECORD_CREATOR (kept literal: no cycle)
_RECORD_GROUP = 0x0077  # integrity.containers.RECORD_GROUP
_RECORD_ELEMENTS = (0x01, 0x02)  # the record (containers, envelope) and the envelope's record key

#: Names whose change alters whose image it is.
IDENTITY = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence", "OtherPatientIDs",
    "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
    "AccessionNumber", "StudyID", "SeriesNumber", "InstanceNumber", "AcquisitionNumber",
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "SourceImageSequence", "ReferencedImageSequence",
    "Modality", "BodyPartExamined", "InstitutionName", "ReferringPhysicianName",
    # its items replace attributes when a recipient decrypts them (PS3.15 E.1.2 re-identification)
    "EncryptedAttributesSequence",
    # bound only when not one of DICOM's defined terms: then a viewer shows the names otherwise
    "SpecificCharacterSet",
})
#: Names whose change alters what a reader sees or measures (with the overlay groups 60xx).
PRESENTATION = frozenset({
    "PixelData", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
    "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape", "PresentationLUTSequence",
    "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "PixelSpacing", "ImagerPixelSpacing",
    "NominalScannedPixelSpacing", "PixelAspectRatio", "PixelPaddingValue", "PixelPaddingRangeLimit",
    # the pixel value range some viewers window to (red team 10: filed as header, restore kept it)
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
    "SliceThickness", "SpacingBetweenSlices", "SliceLocation", "ImageOrientationPatient",
    "ImagePositionPatient", "PatientOrientation", "PatientPosition", "Laterality", "ImageLaterality",
    "ViewPosition", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "FrameIncrementPointer", "FrameTime", "IconImageSequence", "ImageType", "LossyImageCompression",
    "PixelPresentation", "VolumetricProperties", "EstimatedRadiographicMagnificationFactor",
    "DistanceSourceToDetector", "DistanceSourceToPatient", "ICCProfile", "ColorSpace", "MaskSubtractionSequence",
    "PixelShiftSequence", "FrameTimeVector", "RecommendedDisplayFrameRate", "CineRate", "FrameDelay",
    "ImageRotation", "ZoomFactor", "ZoomCenter", "DisplayedAreaSelectionSequence", "RealWorldValueMappingSequence",
    "PixelSpacingCalibrationType", "PatientOrientationCodeSequence", "ViewCodeSequence", "AnatomicRegionSequence",
    "SoftcopyVOILUTSequence", "FrameVOILUTSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence",
    "PlaneOrientationSequence", "PlanePositionSequence", "FrameContentSequence", "DimensionIndexSequence",
    "RepresentativeFrameNumber", "BurnedInAnnotation", "FrameOfInterestDescription", "FrameOfInterestType",
    "GraphicAnnotationSequence", "GraphicLayerSequence", "PixelDataProviderURL", "FloatPixelData",
    "DoubleFloatPixelData", HIGH_BITS_NAME, PREAMBLE_NAME,
    # PNG and TIFF
    "IHDR", "PLTE", "tRNS", "gAMA", "cHRM", "sRGB", "iCCP", "sBIT", "cICP", "mDCv", "cLLi", "pHYs", "sCAL",
    "pCAL", "oFFs", "eXIf", "bKGD", "acTL", "fcTL", "fdAT", "exIf", "vpAg", "caNv", "orNT", "iDOT", "sTER", "pages",
    "ImageWidth", "ImageLength", "BitsPerSample", "SampleFormat", "SamplesPerPixel", "Orientation",
    "XResolution", "YResolution", "ResolutionUnit", "ColorMap", "TransferFunction", "WhitePoint",
    "PrimaryChromaticities", "InterColorProfile", "ExtraSamples", "MinSampleValue", "MaxSampleValue",
    "SMinSampleValue", "SMaxSampleValue", "GrayResponseCurve", "GrayResponseUnit", "ImageDescription",
})

#: PNG chunks not bound: the pixel data (their values are bound by the block tags), the end, the
#: time, wm's record (containers.PNG_CHUNK, kept literal: no cycle) and the text no reader applies
#: (`_INERT_TEXT_KEYWORDS`). Every other chunk, known or not, is bound: a reader may apply one wm
#: does not know (ImageMagick's canvas vpAg and caNv, Apple's iDOT, the older exIf).
PNG_UNBOUND_CHUNKS = ("IDAT", "IEND", "tIME", "wmRR")
_PNG_TEXT_CHUNKS = ("tEXt", "zTXt", "iTXt")
#: Text keywords no reader applies to the image: PNG's registered keywords (PNG 11.3.4.2) and
#: ImageMagick's time stamps, compared without case. Any other keyword is bound as presentation:
#: XMP and raw profiles carry an EXIF orientation that Pillow and ImageMagick turn the image by,
#: and ImageMagick applies many keywords as image properties ('colorspace' CMY inverts every
#: export, 'exif:Orientation' turns it, 'page' crops it, 'density' rescales it).
_INERT_TEXT_KEYWORDS = frozenset(keyword.casefold() for keyword in (
    "Title", "Author", "Description", "Copyright", "Creation Time", "Software", "Disclaimer", "Warning", "Source",
    "Comment", "date:create", "date:modify", "date:timestamp"))
# Keyword beginnings of display elements: display shutters, alpha and segmented palette tables,
# overlays and curves.
_PRESENTATION_PREFIXES = ("Shutter", "Alpha", "Segmented", "Overlay", "Curve")
# How the names of bound PNG text end (see `png_binding`): all of it is presentation.
_TEXT_NAME_ENDINGS = tuple(f" ({kind})" for kind in _PNG_TEXT_CHUNKS)
#: TIFF tags that may change in transit (how the samples are stored), and wm's record tag.
TIFF_IN_TRANSIT = {254: "NewSubfileType", 255: "SubfileType", 259: "Compression", 266: "FillOrder",
                   273: "StripOffsets", 278: "RowsPerStrip", 279: "StripByteCounts", 284: "PlanarConfiguration",
                   305: "Software", 306: "DateTime", 316: "HostComputer", 317: "Predictor", 322: "TileWidth",
                   323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts", 347: "JPEGTables",
                   65137: "wm restoration record"}


@dataclass(frozen=True)
class BindingChange:
    """One bound item that differs from the record: `how` is 'changed', 'added' or 'removed'."""

    name: str
    how: str

    @property
    def category(self) -> str:
        return category(self.name)

    def as_json(self) -> dict:
        return {"category": self.category, "name": self.name, "change": self.how}


def category(name: str) -> str:
    """'identity', 'presentation' or 'header', from the top-level part of an item's name."""
    top = name.split(" > ")[0]
    keyword = top.split(" (")[0]
    if name.endswith((REPEATED_MARK, UNDEFINED_VR_MARK)):
        return "presentation"
    if keyword in IDENTITY:
        return "identity"
    if (keyword in PRESENTATION or name in PRESENTATION or top.startswith(_PRESENTATION_PREFIXES)
            or "PaletteColorLookupTable" in keyword or "(60" in top or top.endswith(_TEXT_NAME_ENDINGS)):
        return "presentation"
    return "header"


# ---- the binding itself ----------------------------------------------------------------------

def make_binding(kind: str, items: dict[str, bytes]) -> dict:
    """The sealable binding of `items` (name -> canonical bytes)."""
    full = {name: hashlib.sha256(value).hexdigest() for name, value in items.items()}
    overall = hashlib.sha256("\n".join(f"{name}\t{full[name]}" for name in sorted(full)).encode()).hexdigest()
    return {"version": BINDING_VERSION, "format": kind, "sha256": overall,
            "items": {name: digest[:ITEM_DIGEST_HEX] for name, digest in full.items()}}


def pack(binding: dict) -> bytes:
    """The binding as the record's compressed section (names repeat, so they compress well): zstd,
    smaller than xz here and some twenty times faster (xz spent ~1.5 ms of every embed setting
    up its dictionary for a few kB)."""
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(json.dumps(binding, sort_keys=True).encode("utf-8"))


# The largest binding unpacked (a bound is kept on what a damaged or hostile record may expand to).
_LARGEST_BINDING = 64 * 2**20
_XZ_MAGIC = b"\xfd7zXZ\x00"


def unpack(data: bytes) -> dict:
    """The binding `pack` made; records sealed before zstd hold it in xz, read all the same. A
    damaged one raises ValueError, UnicodeDecodeError or one of `decompression_errors()`."""
    raw = decompressed("xz" if data.startswith(_XZ_MAGIC) else "zstd", data, _LARGEST_BINDING)
    return json.loads(raw.decode("utf-8"))


def changes(sealed: dict, now: dict) -> list[BindingChange]:
    """Every bound item that differs; an item whose ancestor is itself reported is left out (an
    added functional group is one change, not one per element in it). A difference that no item
    shows (impossible unless a 64-bit digest collides) is still reported."""
    before, after = sealed.get("items", {}), now.get("items", {})
    found = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            found.append(BindingChange(name, "removed"))
        elif name not in before:
            found.append(BindingChange(name, "added"))
        elif before[name] != after[name]:
            found.append(BindingChange(name, "changed"))
    names = {change.name for change in found}
    found = [change for change in found if not any(ancestor in names for ancestor in _ancestors(change.name))]
    if not found and (sealed.get("sha256") != now.get("sha256") or sealed.get("format") != now.get("format")):
        found.append(BindingChange("(an item not named)", "changed"))
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(" > ")
    return [" > ".join(parts[:end]) for end in range(1, len(parts))]


def describe(found: list[BindingChange], limit: int = 6) -> str:
    """'identity changed: PatientName; presentation changed: PresentationLUTShape (added)'."""
    by_category: dict[str, list[str]] = {}
    for change in found:
        by_category.setdefault(change.category, []).append(
            change.name + ("" if change.how == "changed" else f" ({change.how})"))
    parts = []
    for name in ("identity", "presentation", "header"):
        if name in by_category:
            listed = by_category[name]
            more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
            parts.append(f"{name} changed: {', '.join(listed[:limit])}{more}")
    return "; ".join(parts)


# ---- DICOM -----------------------------------------------------------------------------------

def dicom_binding(ds, repeated: list[int] = (), record_in_last_envelope: bool = False,
                  other_vr: list[tuple[int, str]] = ()) -> dict:
    """The binding of a DICOM data set (see the module docstring). `repeated`: the tags its file
    holds twice or out of order, `other_vr`: (tag, VR) of the standard elements it writes in
    another VR than the dictionary's (both from `io.dicom.elements_read_two_ways`), one item
    each: no file wm writes has one, so each reads as added. `record_in_last_envelope`: the last item of
    the Encrypted Attributes Sequence is wm's record for a recipient (not bound: it holds the
    binding); every other item is, since a recipient who decrypts one applies its attributes."""
    collected: dict[str, list] = {}
    _collect_dataset(ds, "", (), collected, _read_little_endian(ds), record_in_last_envelope)
    items = {name: json.dumps(occurrences, separators=(",", ":")).encode("utf-8")
             for name, occurrences in collected.items()}
    for tag in repeated:
        items[_repeated_name(tag)] = b"repeated"
    for tag, vr in other_vr:
        items[other_vr_name(tag, vr)] = vr.encode("ascii", "replace")
    items.update(_meta_disagreements(ds))
    preamble = getattr(ds, "preamble", None)
    if preamble and any(preamble):
        items[PREAMBLE_NAME] = bytes(preamble)
    high_bits = _high_bits_digest(ds)
    if high_bits is not None:
        items[HIGH_BITS_NAME] = high_bits
    return make_binding("dicom", items)


def _meta_disagreements(ds) -> dict[str, bytes]:
    """The file meta is not bound (a re-write makes it anew), but its Media Storage SOP Class and
    Instance UIDs must name the data set's own: a sender or a media reader that takes the file's
    identity from the meta (as DICOMDIR references do) would file it as another instance. wm
    writes them equal, so each disagreement is an item (identity) that reads as added."""
    meta = getattr(ds, "file_meta", None)
    found = {}
    for meta_tag, tag in ((0x00020002, 0x00080016), (0x00020003, 0x00080018)):  # class, instance
        told = str(meta.get(meta_tag).value or "").strip(" \x00") if meta is not None and meta_tag in meta else ""
        own = str(ds[tag].value or "").strip(" \x00") if tag in ds else ""
        if told and told != own:
            found[f"{element_label(tag)} and the file meta's {element_label(meta_tag)} differ"] = \
                told.encode("ascii", "replace")
    return found


def _repeated_name(tag: int) -> str:
    return element_label(tag) + REPEATED_MARK


def other_vr_name(tag: int, vr: str) -> str:
    """'RescaleIntercept (0028,1052) written as SS, not DS': the item of an element whose VR
    readers read two ways (`io.dicom.dictionary_vr_differs`); 'element (0010,0000) written as
    'ZZ', a VR DICOM does not define'."""
    from pydicom.datadict import dictionary_VR

    if vr not in DICOM_VRS:
        written = vr if vr.isascii() and vr.isprintable() else vr.encode("latin-1", "replace").hex()
        return f"{element_label(tag)} written as {written!r}{UNDEFINED_VR_MARK}"
    expected = "UL" if tag & 0xFFFF == 0 else dictionary_VR(tag)
    return f"{element_label(tag)} written as {vr}, not {expected}"


#: The value representations DICOM defines (PS3.5 6.2).
DICOM_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
                       "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US",
                       "UT", "UV"})


def element_label(tag: int) -> str:
    """'PatientName (0010,0010)': an element named by keyword and tag."""
    from pydicom.datadict import keyword_for_tag

    return f"{keyword_for_tag(tag) or 'element'} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _read_little_endian(ds) -> bool:
    """Whether the data set's words were read little endian (a big-endian copy is compared by value)."""
    encoding = getattr(ds, "original_encoding", (None, None))
    return encoding[1] is not False


def _collect_dataset(dataset, prefix: str, where: tuple, collected: dict, little_endian: bool,
                     record_in_last_envelope: bool = False) -> None:
    creators = _private_creators(dataset)
    top_level = not where and not prefix
    for element in _elements(dataset):
        tag = int(element.tag)
        if not _bound_tag(tag, creators, top_level) or _unbound_value(element):
            continue
        name = prefix + _element_name(element, creators)
        if element.VR == "SQ":
            items = list(element.value or [])
            if tag == _ENCRYPTED_ATTRIBUTES and record_in_last_envelope:
                items = items[:-1]  # the record's own item (the sequence is bound as if it were not there)
                if not items:
                    continue
            collected.setdefault(name, []).append([list(where), len(items)])
            for index, item in enumerate(items):
                _collect_dataset(item, name + " > ", (*where, index), collected, little_endian)
        else:
            collected.setdefault(name, []).append([list(where), _canonical_value(element, little_endian)])


def _unbound_value(element) -> bool:
    """Elements unbound for their value: a character set DICOM defines (values are compared decoded)."""
    if int(element.tag) == _SPECIFIC_CHARACTER_SET:
        from pydicom.charset import python_encoding

        value = element.value
        terms = [value] if isinstance(value, (str, bytes)) or value is None else list(value)
        return all((term.decode("latin-1") if isinstance(term, bytes) else str(term or "")).strip() in python_encoding
                   for term in terms)
    return False


def _elements(dataset):
    """The data set's elements, parsed (a raw element becomes a DataElement with its VR)."""
    for tag in list(dataset.keys()):
        try:
            yield dataset[tag]
        except Exception:  # an element pydicom cannot parse: bound by its raw bytes
            raw = dataset.get_item(tag)
            if raw is not None:
                yield raw


def _private_creators(dataset) -> dict[tuple[int, int], str]:
    """(group, block) -> creator name of every private block in the data set."""
    creators = {}
    for tag in dataset.keys():
        group, number = tag >> 16, tag & 0xFFFF
        if group % 2 == 1 and 0x10 <= number <= 0xFF:
            value = dataset.get_item(tag).value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            creators[(group, number)] = str(value or "").strip(" \x00")
    return creators


def _bound_tag(tag: int, creators: dict, top_level: bool) -> bool:
    group, number = tag >> 16, tag & 0xFFFF
    if group == 0x0002 or number == 0x0000 or tag in _UNBOUND_DICOM_TAGS:
        return False
    if top_level and tag in _TOP_LEVEL_ONLY_UNBOUND:
        return False
    if group % 2 == 1:
        if number < 0x0100:  # a private creator element: named through its block's elements
            return False
        # wm's record is the top-level block (a block of that name in an item is bound like any other)
        return not (top_level and group == _RECORD_GROUP and number >> 8 == _record_block(creators)
                    and number & 0xFF in _RECORD_ELEMENTS)
    return True


def _record_block(creators: dict) -> int | None:
    """The block of wm's record in its group: the first of its creator's, the one wm reads (any
    other block of that name, or any other element in it, is bound like any private element)."""
    blocks = [block for (group, block), name in creators.items() if group == _RECORD_GROUP and name == _RECORD_CREATOR]
    return min(blocks) if blocks else None


def _element_name(element, creators: dict) -> str:
    tag = int(element.tag)
    group, number = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        creator = creators.get((group, number >> 8), "no creator")
        return f"private {creator} ({group:04X},xx{number & 0xFF:02X})"
    keyword = element.keyword if hasattr(element, "keyword") else ""
    if not keyword:
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(tag)
    if 0x5000 <= group <= 0x60FF and group & 0xFF00 in (0x5000, 0x6000):  # repeating groups: one per plane
        return f"{keyword or 'Overlay'} ({group:04X},{number:04X})"
    return keyword or f"({group:04X},{number:04X})"


_NUMBER_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "DS", "IS", "AT", "US or SS", "US or OW",
               "US or SS or OW"}


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _canonical_value(element, little_endian: bool = True):
    """A JSON-able value that survives re-encoding: decoded text, numbers, or hex of raw bytes.

    Private elements keep their bytes whatever VR a reader gives them (an Implicit VR copy reads
    them as UN): their little-endian encoding, without trailing padding."""
    value = element.value
    if int(element.tag) >> 16 & 1:
        return _encoded_bytes(element).rstrip(b" \x00").hex()
    vr = element.VR
    if value is None or value == "":
        return None
    values = list(value) if _is_multi(value) else [value]
    if vr in _DICOM_NUMBER_TEXT:
        texts = number_texts(element)
        if not all(is_dicom_number_text(vr, text) for text in texts):  # bound as written: readers disagree
            return [NOT_DICOM_NUMBER_TEXT, *texts]
    if vr in ("DS", "FL", "FD"):
        return [_number(v) for v in values]
    if vr in _NUMBER_VRS or all(isinstance(v, int) for v in values):
        return [int(v) if isinstance(v, int) else _number(v) for v in values]
    if isinstance(value, (bytes, bytearray)):
        size = _WORD_SIZES.get(vr, 1)
        if not little_endian and size > 1:  # words of a big-endian copy, compared as little endian
            import numpy as np

            value = np.frombuffer(bytes(value)[:len(value) // size * size], dtype=f">u{size}").astype(f"<u{size}")
            return value.tobytes().hex()
        return bytes(value).hex()
    return [str(v).rstrip(" \x00") for v in values]


# PS3.5 6.2: the text of a Decimal String and of an Integer String. Python's float() and int()
# read more than that ('-1_024', 'nan', '\u0661\u0662', ...), a C reader such as dcmtk's stops at
# the first character it does not know: such a text shows wm one value and a viewer another
# (RescaleIntercept '-1_024': -1024 to wm, -1 to dcmtk).
_DICOM_NUMBER_TEXT = {"DS": re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *", re.ASCII),
                      "IS": re.compile(r" *[+-]?[0-9]+ *", re.ASCII)}
NOT_DICOM_NUMBER_TEXT = "not a DICOM number"


def is_dicom_number_text(vr: str, text: str) -> bool:
    """Whether `text` is one value of a DICOM DS or IS as PS3.5 writes it (an empty one too)."""
    return text.strip(" \x00") == "" or _DICOM_NUMBER_TEXT[vr].fullmatch(text.rstrip("\x00")) is not None


def number_texts(element) -> list[str]:
    """The values of a DS or IS element as the file writes them (pydicom keeps each one's text)."""
    value = element.value
    if isinstance(value, (bytes, bytearray)):  # a value pydicom could not convert
        return bytes(value).decode("latin-1").split("\\")
    values = list(value) if _is_multi(value) else [value]
    return [str(getattr(v, "original_string", None) or ("" if v is None else v)) for v in values]


def numbers_not_in_dicom_syntax(ds) -> list[int]:
    """The tags of the DS and IS elements, at any depth, holding a value that is not DICOM's text."""
    found = []
    for element in _elements(ds):
        if element.VR == "SQ":
            for item in element.value or []:
                found += numbers_not_in_dicom_syntax(item)
        elif element.VR in _DICOM_NUMBER_TEXT and element.value not in (None, ""):
            if not all(is_dicom_number_text(element.VR, text) for text in number_texts(element)):
                found.append(int(element.tag))
    return found


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (MultiValue, list, tuple))


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    return int(number) if number.is_integer() else repr(number)


def _encoded_bytes(element) -> bytes:
    """An element's value as pydicom writes it in Explicit VR Little Endian (raw bytes as they are)."""
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        return b""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True  # implicit: a fixed 8-byte header
    try:
        write_data_element(buffer, element)
    except Exception:
        return str(value).encode("utf-8", "replace")
    return buffer.getvalue()[8:]


def _high_bits_digest(ds) -> bytes | None:
    """The bits above BitsStored of native words (old overlays), or None when there are none (a
    compressed copy carries none: the codestream holds BitsStored bits). Signed words: the bits
    that differ from the value's sign extension (readers that mask them show the same value;
    one that does not shows another)."""
    found = bits_above_stored(ds)
    if found is None:
        return None
    high, sign_extension = found
    high = (high ^ sign_extension).astype("<u2")
    return high.tobytes() if high.any() else None


def bits_above_stored(ds):
    """(the bits above BitsStored of each native 8- or 16-bit word, what a sign extension puts
    there: all ones above a negative signed value, else 0), as uint16 arrays in the words' order;
    None where the pixel data have no such bits (all bits stored, compressed)."""
    import numpy as np

    if _PIXEL_DATA not in ds:
        return None
    try:
        allocated = int(ds.get("BitsAllocated", 0) or 0)
        stored = int(ds.get("BitsStored", allocated) or allocated)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    except (TypeError, ValueError):
        return None
    syntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if allocated not in (8, 16) or not 1 <= stored < allocated or (syntax is not None and syntax.is_compressed):
        return None
    raw = ds.PixelData
    if not isinstance(raw, (bytes, bytearray)):
        return None
    size = allocated // 8
    big_endian = syntax is not None and not syntax.is_little_endian
    words = np.frombuffer(bytes(raw)[:len(raw) // size * size],
                          dtype=f"{'>' if big_endian else '<'}u{size}").astype(np.uint16)
    high = words >> stored
    ones = np.uint16((1 << (allocated - stored)) - 1)
    sign_extension = ((words >> (stored - 1)) & 1) * ones if signed else np.zeros_like(high)
    return high, sign_extension


# ---- PNG -------------------------------------------------------------------------------------

def png_binding(data: bytes) -> dict:
    """The binding of a PNG file's bytes (see the module docstring)."""
    items: dict[str, bytes] = {}
    for chunk in png_chunks(data):
        kind, body = chunk.name, chunk.body
        if kind == "IHDR" and len(body) >= 13:
            # width, height, bit depth, colour type, compression, filter; not interlace. Every copy:
            # a second IHDR is read by some decoders and refused by others.
            items["IHDR"] = items.get("IHDR", b"") + body[:12]
        elif kind == "iCCP":
            items[kind] = items.get(kind, b"") + _icc_profile(body)
        elif kind in _PNG_TEXT_CHUNKS:
            keyword, text = _png_text(kind, body)
            if keyword.casefold() not in _INERT_TEXT_KEYWORDS:
                name = f"{keyword} ({kind})"
                items[name] = items.get(name, b"") + struct.pack(">I", len(text)) + text
        elif kind not in PNG_UNBOUND_CHUNKS:
            items[kind] = items.get(kind, b"") + struct.pack(">I", len(body)) + body
    return make_binding("png", items)


def _png_text(kind: str, body: bytes) -> tuple[str, bytes]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk, the text decompressed (a re-save may
    recompress it); a text that does not decompress is bound as stored."""
    keyword, _, rest = body.partition(b"\x00")
    compressed = kind == "zTXt" or (kind == "iTXt" and rest[:1] == b"\x01")
    if kind == "zTXt":
        rest = rest[1:]  # the compression method
    elif kind == "iTXt":  # flag, method, language tag, translated keyword, then the text
        language_and_more = rest[2:].split(b"\x00", 2)
        rest = language_and_more[2] if len(language_and_more) == 3 else rest
    if compressed:
        try:
            rest = zlib.decompressobj().decompress(rest, 64 * 2**20)
        except zlib.error:
            pass
    return keyword.decode("latin-1"), rest


def _icc_profile(body: bytes) -> bytes:
    """An iCCP chunk's profile name and decompressed profile (a re-save may recompress it)."""
    name, _, rest = body.partition(b"\x00")
    try:
        profile = zlib.decompressobj().decompress(rest[1:], 64 * 2**20)
    except zlib.error:
        profile = rest
    return name + b"\x00" + profile


# ---- TIFF ------------------------------------------------------------------------------------

def tiff_binding(source) -> dict:
    """The binding of a TIFF file (a path or a binary file object): its tags, page by page."""
    import tifffile

    collected: dict[str, list] = {}
    with tifffile.TiffFile(source) as tif:
        pages = list(tif.pages)
        collected["pages"] = [len(pages)]
        for index, page in enumerate(pages):
            for tag in page.tags.values():
                if tag.code in TIFF_IN_TRANSIT:
                    continue
                collected.setdefault(_tiff_tag_name(tag), []).append([index, _tiff_value(tag.value)])
    return make_binding("tiff", {name: json.dumps(value, separators=(",", ":")).encode("utf-8")
                                 for name, value in collected.items()})


def _tiff_tag_name(tag) -> str:
    name = tag.name
    return name if name and not name.isdigit() else f"tag {tag.code}"


def _tiff_value(value):
    import enum

    import numpy as np

    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return int(value.value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_tiff_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _tiff_value(item) for key, item in sorted(value.items(), key=lambda pair: str(pair[0]))}
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)
