"""`wm classifier`: the diagnostic classifier of `wm evaluate --classifier`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import BadInputError
from .app import app, emit_json, print_summary_table, progress_bar
from .options import Architecture, Device, JsonOption


classifier_app = typer.Typer(no_args_is_help=True, help="The diagnostic classifier used by `wm evaluate --classifier`.")
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train(
    data: Annotated[Path, typer.Argument(help="Folder of labelled images (its labels.csv or class subfolders), or use --labels.")],
    out: Annotated[Path, typer.Option("--out", help="Classifier folder to write (weights.safetensors + card.yaml).")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="CSV path,label (0/1) or path,FINDING,...; paths relative to the CSV's folder; an optional group column (e.g. patient) keeps a group on one side of the validation split.")] = None,
    arch: Annotated[Architecture, typer.Option("--arch", help="small runs on a CPU; resnet18 and densenet121 want a GPU.")] = Architecture.small,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local pretrained weights to start from (safetensors or torch state dict).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs (default: 40).")] = None,
    input_size: Annotated[Optional[int], typer.Option("--input-size", min=32, help="Network input side in pixels (default: the images' own side, at most 256).")] = None,
    device: Annotated[Device, typer.Option("--device")] = Device.auto,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Train a diagnostic classifier from scratch on clean (never watermarked) training images."""
    from ..diagnostic.labels import read_labels
    from ..diagnostic.training import ClassifierTrainingConfig, train_classifier

    if not data.exists():
        raise BadInputError(f"no such file or folder: {data}")
    labelled = read_labels(labels) if labels is not None else read_labels(data)
    if labels is not None:
        labelled = labelled.within(data)
    defaults = ClassifierTrainingConfig()
    arch, device = arch.value, device.value
    config = ClassifierTrainingConfig(arch=arch, input_size=input_size, epochs=epochs or defaults.epochs,
                                      seed=seed, device=device, weights=weights)
    with progress_bar(not json_output) as progress:
        task = progress.add_task("training", total=config.epochs) if progress else None

        def report(figures) -> None:
            if progress:
                auroc = "–" if figures.validation_auroc is None else f"{figures.validation_auroc:.3f}"
                progress.update(task, advance=1, description=(
                    f"epoch {figures.epoch}: loss {figures.train_loss:.3f}, validation AUROC {auroc}"))

        result = train_classifier(labelled, out, config, report, data_description=str(data))
    card = result.card
    summary = {
        "output": str(out), "arch": arch, "task": card["task"], "labels": card["label_names"],
        "seconds": card["training"]["seconds"], "device": card["training"]["device"], "epochs": config.epochs,
        "input_size": card["architecture"]["input_size"], "epochs_run": card["training"]["epochs_run"],
        "selected_epoch": card["training"]["selected_epoch"], "n_train": card["training"]["n_train"],
        "n_validation": card["training"]["n_validation"],
        "validation_auroc": card["validation"]["auroc_macro"], "validation_auroc_per_label": card["validation"]["auroc"],
    }
    if json_output:
        emit_json(summary)
        return
    if len(card["label_names"]) == 1:
        del summary["validation_auroc_per_label"]  # the same figure as the macro AUROC
    print_summary_table(f"wm classifier train ({arch}) → {out}", summary)
