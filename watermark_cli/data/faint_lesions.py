"""The faint-lesion brain task: small, faint SYNTHETIC lesions on real brain slices, split by slice.

A diagnostic check is only as strong as the classifier behind it: one that cannot see the
finding cannot be hurt by the mark. This task is the hard case a reviewer tried against
`wm classifier train` (issue 15): 8-bit 256² brain slices, about half with one faint blurred
bright blob (radius 4-10 px, peak contrast 12-30 % of full scale) inside the brain. What is real
is the anatomy under the blob; the blob is drawn by the program.

- backgrounds: the real brain MR and CT slices on this machine — dipy's S0 volume (ten axial
  b = 0 slices), dipy's anisotropic-voxel brain volume (its twenty slices that hold brain), one
  slice of dipy's PIESNO test volume and dipy's T1 coronal slice, and the held-out head CT of
  pydicom-data (ct-693, in its brain window). Each slice is stretched to its own volume's
  99.5th percentile and brought to 256²;
- split by slice, fixed here: every fourth slice of each volume (and the T1 slice) is held out,
  so no held-out background was ever seen in training in any variant;
- images come in pairs: one variant of one slice — a random flip, rotation (±12°), scale
  (0.9-1.1), shift (±8 px) and gamma (0.8-1.25) — with and without the blob, so the label says
  nothing about the background: a classifier must find the blob;
- the blob is a disc of radius r blurred with a Gaussian of sd r/3, added (and clipped at white)
  at a random point of the brain mask eroded by r + 2 px, so the whole lesion lies in brain.

labels.csv: `path,label,group` (1 = lesion; group = the slice, which `wm classifier train`
keeps on one side of its validation split); manifest.csv records every variant's parameters
and the lesion's centre, radius and contrast; README.txt says the lesions are synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.image import read_image
from ..io.writing import csv_text, png_bytes, write_atomically
from ..views import VoiView, reader_views
from .clinical import clinical_file
from .slices import dipy_file, dipy_volume, to_side

SIDE = 256
LESION_RADIUS = (4.0, 10.0)  # pixels at 256²
LESION_CONTRAST = (0.12, 0.30)  # peak, as a fraction of full scale
_HELD_OUT_EVERY = 4  # slice k of a volume is held out when k % 4 == 3
_SPLIT_STREAM = {"train": 0, "held_out": 1}
_TASK_STREAM = 15  # keeps these random streams apart from the other lesion task's


@dataclass(frozen=True)
class FaintLesionConfig:
    split: str = "train"
    n: int = 400
    seed: int = 0
    lesion_radius: tuple[float, float] = LESION_RADIUS
    lesion_contrast: tuple[float, float] = LESION_CONTRAST


@dataclass(frozen=True)
class BrainSlice:
    group: str  # e.g. "dipy-aniso slice 07": the unit of the split
    source: str  # the file it was cut from
    display: np.ndarray  # (SIDE, SIDE) float32 in [0, 1]


def _volume_slices(label: str, name: str, keep: range) -> list[tuple[int, BrainSlice]]:
    """Slices `keep` of a dipy volume, stretched to its 99.5th percentile, upright, at SIDE²."""
    volume = dipy_volume(name)
    top = float(np.percentile(volume, 99.5))
    return [(k, BrainSlice(f"{label} slice {k:02d}", name, to_side(np.rot90(volume[:, :, k]) / top, SIDE)))
            for k in keep]


def _head_ct() -> BrainSlice:
    """pydicom-data's head CT in its brain window (the view a reader uses for a brain lesion)."""
    path = clinical_file("693_UNCR.dcm")
    image = read_image(path)
    windows = [view for view in reader_views(image, 0) if isinstance(view, VoiView) and "brain" in view.name]
    if not windows:
        raise BadInputError(f"{path.name}: no brain window")
    return BrainSlice("ct-693 brain window", path.name, to_side(windows[0].display(image.pixels[0]), SIDE))


def brain_slices(split: str) -> list[BrainSlice]:
    """The split's brain slices, in a fixed order."""
    if split not in _SPLIT_STREAM:
        raise BadInputError(f"unknown split {split!r} (train or held_out)")
    by_volume = (_volume_slices("dipy-S0", "S0_10slices.nii.gz", range(10))
                 + _volume_slices("dipy-aniso", "aniso_vox.nii.gz", range(2, 22)))
    chosen = [item for k, item in by_volume if (k % _HELD_OUT_EVERY == _HELD_OUT_EVERY - 1) == (split == "held_out")]
    if split == "train":
        piesno = _volume_slices("dipy-piesno", "test_piesno.nii.gz", range(2, 3))
        chosen += [item for _, item in piesno] + [_head_ct()]
    else:
        t1 = np.load(dipy_file("t1_coronal_slice.npy")).astype(np.float64)
        chosen.append(BrainSlice("dipy-t1 coronal", "t1_coronal_slice.npy",
                                 to_side(t1 / float(np.percentile(t1, 99.5)), SIDE)))
    return chosen


def brain_mask(display: np.ndarray) -> np.ndarray:
    """The head's largest bright connected region with its holes filled (ventricles and sulci
    are inside the brain), from the smoothed slice above a fifth of its 99th percentile."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(display.astype(np.float32), 3.0)
    mask = smooth > 0.2 * float(np.percentile(smooth, 99))
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labelled, index=range(1, count + 1))
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(sizes)))


def _draw_motion(rng: np.random.Generator) -> dict:
    """A random flip, rotation, scale, shift and gamma for one variant of a slice."""
    shift = rng.uniform(-8.0, 8.0, size=2)
    return {"flip": bool(rng.random() < 0.5), "rotation_deg": round(float(rng.uniform(-12.0, 12.0)), 2),
            "scale": round(float(rng.uniform(0.9, 1.1)), 3), "shift_rows": round(float(shift[0]), 2),
            "shift_cols": round(float(shift[1]), 2),
            "gamma": round(float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))), 3)}


def _move(image: np.ndarray, motion: dict, order: int = 3) -> np.ndarray:
    """The slice (or its mask, with order 0) flipped, rotated and scaled about its centre and
    shifted, as `motion` says; outside the slice is black."""
    from scipy import ndimage

    image = image[:, ::-1] if motion["flip"] else image
    theta = np.deg2rad(motion["rotation_deg"])
    inverse = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / motion["scale"]
    centre = (np.array(image.shape) - 1) / 2.0
    offset = centre - inverse @ (centre + np.array([motion["shift_rows"], motion["shift_cols"]]))
    moved = ndimage.affine_transform(np.ascontiguousarray(image, dtype=np.float32), inverse, offset=offset,
                                     order=order, mode="constant", cval=0.0)
    return np.clip(moved, 0.0, 1.0)


def add_bright_blob(image: np.ndarray, mask: np.ndarray, radius: float, contrast: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """A disc of `radius` px blurred with a Gaussian of sd radius/3, peak `contrast` (of full
    scale), added at a random point of `mask` eroded by radius + 2 px and clipped at white.
    Returns the image and the centre (row, col)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=int(np.ceil(radius)) + 2)
    sites = np.argwhere(inner if inner.any() else mask)
    if len(sites) == 0:
        raise BadInputError("no brain in this slice to place a lesion in")
    row, col = (int(v) for v in sites[int(rng.integers(len(sites)))])
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    disc = ((yy - row) ** 2 + (xx - col) ** 2 <= radius * radius).astype(np.float32)
    blob = ndimage.gaussian_filter(disc, radius / 3.0)
    blob *= contrast / max(float(blob.max()), 1e-6)
    return np.clip(image + blob, 0.0, 1.0), (row, col)


_README = """\
Faint synthetic lesions on real brain slices ({split} split), written by `wm data lesions --task faint-brain`.

THE LESIONS ARE SYNTHETIC. Every image labelled 1 in labels.csv holds one faint blurred bright
blob (radius {r_low:g}-{r_high:g} px, peak contrast {c_low:.0%}-{c_high:.0%} of full scale) inside the brain, drawn by the
program, not found by a radiologist. The images are for demonstrating and testing the
diagnostic classifier check of `wm evaluate`; they are not for any clinical use.

The backgrounds are real brain slices ({slices} in this split: dipy's MR volumes and pydicom-data's
head CT; every fourth slice of a volume is held out), each image a randomly flipped, rotated,
scaled, shifted and gamma-changed variant of one slice; images come in pairs, the same variant
with and without the blob. labels.csv: path,label,group (label 1 = lesion, group = the slice);
manifest.csv: each image's pair, slice, variant parameters and the lesion's centre, radius and
contrast. 8-bit grayscale PNG, {side}x{side}. Seed {seed}; {n} images.
"""


def write_faint_lesion_dataset(out_dir: Path, config: FaintLesionConfig) -> Path:
    """Write the images, labels.csv, manifest.csv and README.txt; return labels.csv's path.

    Images 2j and 2j + 1 are one pair: variant j // S of slice j % S (S slices in the split, so
    the slices are used evenly), one of the two at random with the blob. Pair j depends only on
    (seed, split, j); with an odd n the last pair has one image.
    """
    if config.split not in _SPLIT_STREAM:
        raise BadInputError(f"unknown split {config.split!r} (train or held_out)")
    if config.n < 2:
        raise BadInputError(f"the number of images must be at least 2, got {config.n}")
    if config.seed < 0:
        raise BadInputError(f"seed must be zero or positive, got {config.seed}")
    r_low, r_high = config.lesion_radius
    c_low, c_high = config.lesion_contrast
    if not 1.0 <= r_low <= r_high <= SIDE / 8:
        raise BadInputError(f"lesion radius must be 1 <= low <= high <= {SIDE // 8} px, got {config.lesion_radius}")
    if not 0.0 < c_low <= c_high <= 1.0:
        raise BadInputError(f"lesion contrast must be 0 < low <= high <= 1, got {config.lesion_contrast}")

    slices = brain_slices(config.split)
    masks = [brain_mask(item.display) for item in slices]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_rows, manifest_rows = [], []
    for i in range(int(config.n)):
        pair, member = divmod(i, 2)
        which, variant = pair % len(slices), pair // len(slices)
        item = slices[which]
        rng = np.random.default_rng([config.seed, _SPLIT_STREAM[config.split], _TASK_STREAM, pair])
        motion = _draw_motion(rng)
        radius = float(rng.uniform(r_low, r_high))
        contrast = float(rng.uniform(c_low, c_high))
        label = int(member == int(rng.integers(2)))
        image = _move(item.display, motion) ** motion["gamma"]
        centre: tuple[int | str, int | str] = ("", "")
        if label:
            mask = _move(masks[which].astype(np.float32), motion, order=0) > 0.5
            image, centre = add_bright_blob(image, mask, radius, contrast, rng)
        file_name = f"brain_{i:05d}.png"
        write_atomically(out / file_name, png_bytes(np.rint(image * 255.0).astype(np.uint8), compress_level=1))
        label_rows.append((file_name, label, item.group))
        manifest_rows.append((file_name, label, f"pair{pair:05d}", item.group, item.source, variant,
                              *motion.values(), *centre, round(radius, 2) if label else "",
                              round(contrast, 3) if label else ""))

    labels_path = out / "labels.csv"
    write_atomically(labels_path, csv_text(["path", "label", "group"], label_rows))
    write_atomically(out / "manifest.csv", csv_text(
        ["path", "label", "pair", "slice", "source_file", "variant", "flip", "rotation_deg", "scale", "shift_rows",
         "shift_cols", "gamma", "lesion_row", "lesion_col", "lesion_radius_px", "lesion_contrast"], manifest_rows))
    write_atomically(out / "README.txt", _README.format(
        split=config.split, r_low=r_low, r_high=r_high, c_low=c_low, c_high=c_high, slices=len(slices),
        side=SIDE, seed=config.seed, n=config.n))
    return labels_path
