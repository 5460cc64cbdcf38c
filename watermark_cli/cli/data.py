"""`wm data`: the image sets wm makes or ships with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BadInputError
from .app import app, emit_json, stdout
from .options import JsonOption, LesionTask, Split


data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthetic images, the real clinical DICOMs and held-out slices.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the images and labels.csv into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 500,
    size: Annotated[int, typer.Option("--size", help="Side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    lesion_fraction: Annotated[float, typer.Option("--lesion-fraction")] = 0.5,
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16")] = 16,
    fmt: Annotated[str, typer.Option("--format", help="png or tiff")] = "png",
    json_output: JsonOption = False,
) -> None:
    """Write CT-, MR- and radiograph-like synthetic images (with and without synthetic lesions)."""
    from ..data.synthetic import write_synthetic_dataset

    labels = write_synthetic_dataset(out, n, size=size, seed=seed, lesion_fraction=lesion_fraction,
                                     bit_depth=bit_depth, fmt=fmt)
    if json_output:
        emit_json({"output": str(out), "n": n, "labels": str(labels)})
    else:
        stdout.print(f"wrote {n} synthetic images ({size}×{size}, {bit_depth}-bit {fmt}) and {labels}")


@data_app.command("clinical")
def data_clinical(
    out: Annotated[Path, typer.Argument(help="Folder to copy the split's DICOM files into.")],
    split: Annotated[Split, typer.Option("--split")] = Split.held_out,
    json_output: JsonOption = False,
) -> None:
    """Copy the real clinical DICOMs of pydicom-data for one split (fixed, split by image, not by file)."""
    from ..data.clinical import write_clinical_split

    split = split.value
    written = write_clinical_split(out, split)
    if json_output:
        emit_json({"output": str(out), "split": split, "files": [str(p) for p in written]})
    else:
        stdout.print(f"copied {len(written)} {split} clinical DICOM file(s) to {out}")


@data_app.command("slices")
def data_slices(
    out: Annotated[Path, typer.Argument(help="Folder to write the slices (8-bit PNG) and a README into.")],
    json_output: JsonOption = False,
) -> None:
    """Write 256² 8-bit slices with a mostly black background from held-out real images.

    From pydicom-data's held-out split in its windows and dipy's MR volume: the hardest everyday
    case, never used in training."""
    from ..data.slices import write_slices

    written = write_slices(out)
    if json_output:
        emit_json({"output": str(out), "slices": [str(p) for p in written]})
    else:
        stdout.print(f"wrote {len(written)} held-out 256² 8-bit slices to {out} (sources in README.txt there)")


@data_app.command("lesions")
def data_lesions(
    out: Annotated[Path, typer.Argument(help="Folder to write the images, labels.csv, manifest.csv and README.txt into.")],
    task: Annotated[LesionTask, typer.Option("--task", help="nodules: 16-bit nodules on clinical crops and phantoms; faint-brain: faint 4-10 px blobs on real 8-bit brain slices.")] = LesionTask.nodules,
    split: Annotated[Split, typer.Option("--split", help="Which real images give the backgrounds (train and held_out never share one).")] = Split.train,
    n: Annotated[int, typer.Option("--n", help="Number of images (half with a lesion).")] = 400,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", help="Side in pixels (nodules; faint-brain is 256).")] = 256,
    real_fraction: Annotated[float, typer.Option("--real-fraction", help="Share of images on real clinical backgrounds (nodules).")] = 0.5,
    json_output: JsonOption = False,
) -> None:
    """Labelled images for the diagnostic classifier check. THE LESIONS ARE SYNTHETIC.

    nodules: a small blurred nodule drawn by the program on half of the images; the backgrounds are crops of the real pydicom-data clinical images of one split (crops without anatomy rejected) and the synthetic CT/MR/radiograph phantoms; 16-bit PNG.

    faint-brain: one faint blurred bright blob (radius 4-10 px, peak 12-30 % of full scale) inside the brain on half of the images; the backgrounds are flipped, rotated, scaled and gamma-changed variants of the real brain slices of dipy and pydicom-data, split by slice; 8-bit 256² PNG.

    Images come in pairs sharing a background, one with the lesion and one without. Writes labels.csv (path,label,group; label 1 = lesion, group = the background), manifest.csv and a README.txt that says the lesions are synthetic.
    """  # one line per paragraph: the help output wraps them to the terminal
    split, task = split.value, task.value
    if task == "faint-brain":
        from ..data.faint_lesions import SIDE, FaintLesionConfig, write_faint_lesion_dataset

        if size != SIDE:
            raise BadInputError(f"faint-brain images are {SIDE} pixels a side; --size applies to the nodules task")
        depth = 8
        labels = write_faint_lesion_dataset(out, FaintLesionConfig(split=split, n=n, seed=seed))
    else:
        from ..data.lesions import LesionDatasetConfig, write_lesion_dataset

        depth = 16
        labels = write_lesion_dataset(out, LesionDatasetConfig(split=split, n=n, size=size, seed=seed,
                                                               real_fraction=real_fraction))
    if json_output:
        emit_json({"output": str(out), "task": task, "split": split, "n": n, "size": size, "bit_depth": depth,
                   "labels": str(labels), "lesions": "synthetic"})
    else:
        stdout.print(f"wrote {n} {task} images ({size}×{size}, {depth}-bit PNG; {split} backgrounds) and {labels}; "
                     "[bold]the lesions are synthetic[/] (see README.txt there)")
