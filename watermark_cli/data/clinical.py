"""The real clinical images that ship with pydicom-data, and their fixed train / held-out split.

Several files in pydicom-data are the same acquisition in different encodings (uncompressed,
lossless and lossy JPEG 2000, ...), so the split is by *image group*, never by file, and never
by crop: a held-out figure must come from pixels the model never saw in any encoding. The split
is fixed here so that every model card and benchmark names the same files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError


@dataclass(frozen=True)
class ImageGroup:
    name: str
    modality: str
    files: tuple[str, ...]  # the first is the one used when a single copy is wanted
    split: str  # "train" or "held_out"


CLINICAL_GROUPS: tuple[ImageGroup, ...] = (
    # Training split
    ImageGroup("ct-small", "CT", ("CT_small.dcm",), "train"),
    ImageGroup("ct-explicit-un", "CT", ("explicit_VR-UN.dcm",), "train"),
    ImageGroup("ct-enhanced", "CT", ("eCT_Supplemental.dcm",), "train"),
    ImageGroup("ot-mlut", "OT", ("mlut_18.dcm",), "train"),
    ImageGroup("mr-small", "MR", ("MR_small.dcm",), "train"),
    ImageGroup("mr-siemens", "MR", ("MR-SIEMENS-DICOM-WithOverlays.dcm",), "train"),
    ImageGroup("mr-overlay", "MR", ("examples_overlay.dcm",), "train"),
    ImageGroup("mr-enhanced", "MR", ("emri_small.dcm",), "train"),
    ImageGroup("cr-rg1", "CR", ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm", "RG1_J2KI.dcm"), "train"),
    ImageGroup("ot-vlut", "OT", ("vlut_04.dcm",), "train"),
    ImageGroup("ot-deflated", "OT", ("image_dfl.dcm",), "train"),
    # Held-out split: one or more per modality, never seen in training in any encoding
    ImageGroup("ct-693", "CT", ("693_UNCR.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_J2KI.dcm"), "held_out"),
    ImageGroup("ct-bad-sequence", "CT", ("bad_sequence.dcm",), "held_out"),
    ImageGroup("mr-mr2", "MR", ("MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm", "MR2_J2KI.dcm"), "held_out"),
    ImageGroup("cr-rg3", "CR", ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_UNCI.dcm", "RG3_J2KI.dcm"), "held_out"),
    ImageGroup("nm", "NM", ("JPEG2000_UNC.dcm", "JPEG-LL.dcm", "JPEG2000.dcm", "JPGExtended.dcm"), "held_out"),
    ImageGroup("us-8bit", "US", ("JPGLosslessP14SV1_1s_1f_8b.dcm",), "held_out"),
)

SPLITS = ("train", "held_out")


def clinical_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    # download=False: nothing may be fetched at run time; pydicom-data ships these files.
    path = get_testdata_file(name, download=False)
    if path is None:
        raise BadInputError(f"pydicom-data file {name} is not installed (pip install pydicom-data)")
    return Path(path)


def clinical_files(split: str, all_encodings: bool = False) -> list[tuple[ImageGroup, Path]]:
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r} (train or held_out)")
    chosen = []
    for group in CLINICAL_GROUPS:
        if group.split != split:
            continue
        names = group.files if all_encodings else group.files[:1]
        chosen.extend((group, clinical_file(name)) for name in names)
    return chosen


def write_clinical_split(out: Path, split: str) -> list[Path]:
    """Copy one file per image group of a split into `out/MODALITY_group.dcm`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group, source in clinical_files(split):
        target = out / f"{group.modality.lower()}_{group.name}.dcm"
        shutil.copyfile(source, target)
        written.append(target)
    return written
