"""What the robustness benchmarks share: the held-out images, the attacks, the targets (issue 11).

Two sets, never used in training or tuning:
- `files`: one whole file per held-out image group of pydicom-data (CT 693, CT bad_sequence, MR
  MR2, CR RG3, NM, US), as `wm embed` reads them;
- `slices`: 256² 8-bit slices with a mostly black background, from the held-out CT and MR files
  in their windows and from dipy's real MR volume (`watermark_cli.data.slices`).
And one more, `check_slices` (`data.slices.check_slices`): the training split's slices and dipy's
`test_piesno` volume, for checking a reader change made after looking at the held-out sets.

Every mark is budgeted by default `wm embed` (the view floor), and every attack acts in the view
each frame was budgeted in (its binding view): `window8` and `jpeg` export through that view to
8 bits, `noise:0.01` adds σ = 1 % of that view's peak.
"""

from __future__ import annotations

from functools import partial

from watermark_cli.data.clinical import clinical_files
from watermark_cli.evaluation.run import upper_bound_95
from watermark_cli.io.image import read_image
from watermark_cli.data.slices import check_slices, held_out_slices, slice_image

def textured_cuts(frame, side: int, count: int, rng, tries: int = 400) -> list:
    """Up to `count` `side`² cuts of `frame` at random places (`rng`: top, then left, per try)
    whose sd is at least 2 % of the frame's 1st..99th percentile span: anatomy, not a flat
    corner; at most `tries` places are tried in all. Small frames as nuclear medicine, PET and
    cine series write them (`small_frames.py`, `attacks_keyless.py --crop`)."""
    import numpy as np

    low, high = np.percentile(frame, [1, 99])
    cuts = []
    for _ in range(tries):
        if len(cuts) == count:
            break
        top = int(rng.integers(0, frame.shape[0] - side + 1))
        left = int(rng.integers(0, frame.shape[1] - side + 1))
        cut = frame[top : top + side, left : left + side]
        if cut.std() >= 0.02 * max(high - low, 1):
            cuts.append(cut)
    return cuts


# A cut with at least this share of its pixels at one value is nearly flat: a black corner with a
# few annotation strokes (the held-out ultrasound's), a nuclear-medicine background with a speck.
# Its sd can pass `textured_cuts`' rule on the strokes' contrast alone.
NEARLY_FLAT_SHARE = 0.9


def most_common_share(pixels) -> float:
    """The share of `pixels` that hold their most common value (1.0: one value throughout)."""
    import numpy as np

    _, counts = np.unique(np.asarray(pixels), return_counts=True)
    return float(counts.max() / max(counts.sum(), 1))


#: Real grayscale images in neither split (`data.clinical`): never trained on, never tuned on. pydicom
#: ships the CT; dipy the MR volume (`data.slices.DIPY_VOLUME`: its slices are held-out slices
#: elsewhere, brought to 256² in 8 bits; here each is a 128² frame of its own 12-bit values) and a
#: T1 coronal slice (256², stored by dipy as floats 0..1: here as 12-bit values, as an MR is
#: stored). pydicom-data's other images (two ultrasounds) are palette colour, which wm does not mark.
UNSEEN_DICOM = ("J2K_pixelrep_mismatch.dcm",)
UNSEEN_T1_SLICE = "t1_coronal_slice.npy"


def unseen_images() -> list:
    """(label, MedicalImage) of every image of the sets above: the DICOM as `wm embed` reads it,
    dipy's slices as a 16-bit PNG of them reads (`io.image`)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from watermark_cli.data.clinical import clinical_file
    from watermark_cli.data.slices import DIPY_VOLUME, dipy_file, dipy_volume
    from watermark_cli.io.writing import png_bytes

    images = [(f"CT {name}", read_image(clinical_file(name))) for name in UNSEEN_DICOM]
    volume = dipy_volume(DIPY_VOLUME)
    slices = [(f"MR dipy {DIPY_VOLUME} slice {k}", np.rot90(volume[:, :, k])) for k in range(volume.shape[2])]
    t1 = np.load(dipy_file(UNSEEN_T1_SLICE))
    slices.append((f"MR dipy {UNSEEN_T1_SLICE}", t1 / max(float(t1.max()), 1e-12) * 4095.0))
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, values) in enumerate(slices):
            path = Path(folder) / f"{index}.png"
            path.write_bytes(png_bytes(np.rint(values).astype(np.uint16)))
            images.append((label, read_image(path)))
    return images


#: The sets never trained on; `check_slices` is the training split's, for checking a reader change.
HELD_OUT_SETS = ("files", "slices")
SETS = (*HELD_OUT_SETS, "check_slices")

ATTACKS = (
    "identity,png16,jpeg2000,window8,jpeg:95,jpeg:90,jpeg:80,jpeg:70,jpeg:50,"
    "noise:0.005,noise:0.01,noise:0.02,blur:0.5,blur:1.0,contrast:0.2,"
    "resize:0.75,resize:0.5,crop:0.9,crop:0.7,crop:0.5,rotate:1,rotate:2"
)

# Exact-recovery targets for 8-byte messages (issue 11): identity 100 %, the usual handling ≥ 99 %,
# JPEG q50 ≥ 95 %.
TARGETS = {
    "identity": 1.0, "window8": 0.99, "jpeg:80": 0.99, "noise:0.01": 0.99, "resize:0.75": 0.99,
    "crop:0.7": 0.99, "rotate:2": 0.99, "jpeg:50": 0.95,
}


def sources(name: str) -> list:
    """(label, loader) pairs for `evaluation.evaluate_images`."""
    if name == "files":
        return [(f"{group.modality} {path.name}", partial(read_image, path)) for group, path in clinical_files("held_out")]
    if name in ("slices", "check_slices"):
        items = held_out_slices() if name == "slices" else check_slices()
        return [(item.name, partial(slice_image, item)) for item in items]
    raise SystemExit(f"unknown image set {name!r} (choose from {', '.join(SETS)})")


def recovery_with_bound(recovered: int, trials: int) -> tuple[float, float]:
    """The exact-recovery rate and its one-sided 95 % lower bound (Clopper–Pearson)."""
    return recovered / trials, 1.0 - upper_bound_95(trials - recovered, trials)


def verdict(attack: str, rate: float, lower: float) -> str:
    target = TARGETS.get(attack)
    if target is None:
        return ""
    if lower >= target:
        return f"≥ {target:.0%}: met (bound)"
    return f"≥ {target:.0%}: " + ("met (rate; bound below)" if rate >= target else "MISSED")
