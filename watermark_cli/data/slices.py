"""256² 8-bit slices with a mostly black background, from real images nobody trained on.

The most common MR matrix is 256², most exports are 8-bit, and an axial head slice is mostly
black around the anatomy: few pixels carry the mark, and the black ones cannot carry a signed
one. So this is the hardest everyday case, and the benchmarks measure it apart. The slices are
cut from the held-out split of pydicom-data (`data.clinical`), each shown in its own declared
window (a CT that declares none in the brain preset), and from the real MR volume that ships
with dipy (`S0_10slices.nii.gz`, ten 128² axial slices brought to 256²). None of them is used in training
or tuning: the training split of pydicom-data holds other acquisitions, and dipy's volumes are
read elsewhere only for the classifier check's lesion images. `check_slices` is a further set
for checking a reader change made after looking at these.

Each source frame gives the whole frame brought to 256² and, for frames larger than 256², the
256² tiles (half overlapping) of the frame brought to 512²; a slice is kept when at least 30 %
of it is black (≤ 8 of 255) and at least 10 % is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..io.medical_image import MedicalImage
from ..io.writing import png_bytes, write_atomically
from ..views import VoiView, reader_views
from .clinical import clinical_files

SIDE = 256
# A slice is kept when at least these shares of its pixels are black and not black.
_BLACK_LEVEL = 8
_LEAST_BLACK = 0.3
_LEAST_ANATOMY = 0.1
DIPY_VOLUME = "S0_10slices.nii.gz"


@dataclass(frozen=True)
class Slice:
    name: str  # e.g. "ct-693 brain whole", "dipy S0 slice 3"
    source: str  # where it was cut from
    pixels: np.ndarray  # (SIDE, SIDE) uint8


def to_side(display: np.ndarray, side: int) -> np.ndarray:
    """A [0, 1] display brought to side × side with Pillow's antialiased bicubic."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(display, dtype=np.float32), mode="F")
    return np.clip(np.asarray(image.resize((side, side), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _eight_bit(display: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(display, 0.0, 1.0) * 255.0).astype(np.uint8)


def _mostly_black(pixels: np.ndarray) -> bool:
    black = float(np.mean(pixels <= _BLACK_LEVEL))
    return black >= _LEAST_BLACK and 1.0 - black >= _LEAST_ANATOMY


def _cut(name: str, source: str, display: np.ndarray) -> list[Slice]:
    candidates = [Slice(f"{name} whole", source, _eight_bit(to_side(display, SIDE)))]
    if min(display.shape) > SIDE:
        double = _eight_bit(to_side(display, 2 * SIDE))
        for top in range(0, SIDE + 1, SIDE // 2):
            for left in range(0, SIDE + 1, SIDE // 2):
                tile = np.ascontiguousarray(double[top : top + SIDE, left : left + SIDE])
                candidates.append(Slice(f"{name} tile {top},{left}", source, tile))
    return [item for item in candidates if _mostly_black(item.pixels)]


def dicom_slices(split: str) -> list[Slice]:
    """The CT and MR frames of one split of `data.clinical` ('held_out', 'train'), in each
    declared window (a CT without one: the brain preset), as 8-bit 256² slices."""
    slices: list[Slice] = []
    for group, path in clinical_files(split):
        if group.modality not in ("CT", "MR"):
            continue
        image = read_image(path)
        windows = [view for view in reader_views(image, 0) if isinstance(view, VoiView)]
        declared = [view for view in windows if view.voi.origin == "declared"]
        for view in declared or [view for view in windows if "brain" in view.name]:
            slices += _cut(f"{group.name} {view.name}", path.name, view.display(image.pixels[0]))
    return slices


def dipy_file(name: str = DIPY_VOLUME) -> Path:
    """One of the real data files that ship inside dipy (nothing is downloaded)."""
    try:
        import dipy
    except ImportError:
        raise BadInputError(f"dipy is not installed (pip install 'wm[slices]'): it ships the real MR data {name}") from None
    path = Path(dipy.__file__).parent / "data" / "files" / name
    if not path.is_file():
        raise BadInputError(f"dipy's {name} is missing from {path.parent}")
    return path


def dipy_volume(name: str = DIPY_VOLUME) -> np.ndarray:
    """A dipy volume as float64 (rows, cols, slices), any further axes folded into the slices."""
    try:
        import nibabel
    except ImportError:
        raise BadInputError("nibabel is not installed (pip install 'wm[slices]'): it reads dipy's MR volumes") from None
    volume = np.asarray(nibabel.load(str(dipy_file(name))).get_fdata(), dtype=np.float64)
    return volume.reshape(volume.shape[0], volume.shape[1], -1)


def dipy_slices() -> list[Slice]:
    """The ten axial slices of dipy's S0 volume (128², b = 0 MR), each stretched to its volume's
    99.5th percentile, turned upright and brought to 256²."""
    volume = dipy_volume(DIPY_VOLUME)
    top = float(np.percentile(volume, 99.5))
    return [Slice(f"dipy S0 slice {k}", DIPY_VOLUME, _eight_bit(to_side(np.rot90(volume[:, :, k]) / top, SIDE)))
            for k in range(volume.shape[2])]


def held_out_slices() -> list[Slice]:
    return dicom_slices("held_out") + dipy_slices()


#: A second real volume that ships with dipy (96² diffusion MR, 14 slices); elsewhere only the
#: classifier check's faint lesions read it (data.faint_lesions), never marking or reading.
PIESNO_VOLUME = "test_piesno.nii.gz"


def check_slices() -> list[Slice]:
    """Slices for checking a reader change made after looking at the held-out sets' failures
    (they are no longer untouched for it): the training split's CT and MR cut as the held-out
    ones are (the model saw those files, the reader change did not), and every other slice of
    dipy's `test_piesno` volume, stretched and brought to 256² as the S0 slices are."""
    volume = dipy_volume(PIESNO_VOLUME)
    top = float(np.percentile(volume, 99.5))
    piesno = [Slice(f"piesno slice {k}", PIESNO_VOLUME, _eight_bit(to_side(np.rot90(volume[:, :, k]) / top, SIDE)))
              for k in range(0, volume.shape[2], 2)]
    return dicom_slices("train") + piesno


def write_slices(out: Path) -> list[Path]:
    """Write every held-out slice as an 8-bit PNG, plus a README saying where each came from."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    lines = ["256² 8-bit slices from held-out real images (wm data slices); never used in training.", ""]
    for index, item in enumerate(held_out_slices()):
        path = out / f"slice_{index:03d}.png"
        write_atomically(path, png_bytes(item.pixels))
        written.append(path)
        lines.append(f"{path.name}: {item.name} (from {item.source})")
    write_atomically(out / "README.txt", "\n".join(lines) + "\n")
    return written


def slice_image(item: Slice):
    """A slice as the `MedicalImage` of an 8-bit PNG (viewed as stored, peak 255)."""
    return MedicalImage(pixels=item.pixels[None].copy(), kind="png", path=Path(item.name), bits_stored=8,
                        stored_min=0, stored_max=255, photometric="MONOCHROME2", modality=None)
