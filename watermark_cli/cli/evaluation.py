"""`wm evaluate`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import BadInputError, CheckFailedError
from .app import app, emit_json, open_model, progress_bar, stderr, stdout
from .options import (ATTACK_NAMES, Device, DeviceOption, JsonOption, KeyFileOption, KeyOption, ModelOption,
                      PsnrDomain, PsnrDomainOption, PsnrOption, PsnrPeak, PsnrPeakOption, ThreadsOption, WindowOption,
                      examples, key_for_reading, parse_window, quality_floor)


@app.command(epilog=examples(
    ("wm data clinical held_out/ --split held_out && wm evaluate held_out/ --report report/",
     "the default attack suite on real DICOMs; report/report.html"),
    ("wm evaluate held_out/ --attacks identity,jpeg:80,crop:0.7 --messages 1", "a quick look"),
    ("wm evaluate les_held/ --classifier clf --labels les_held/labels.csv",
     "does a classifier score marked images as it scores the originals?"),
    ("wm evaluate les_held/ --classifier model.onnx --classifier-card card.yaml --labels les_held/labels.csv",
     "the same check with your own model (TorchScript .pt/.ts, torch.export .pt2 or ONNX)"),
))
def evaluate(
    data: Annotated[list[Path], typer.Argument(help="Files or folders of images (held-out!).")],
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    psnr_min: PsnrOption = 40.0,
    psnr_domain: PsnrDomainOption = PsnrDomain.view,
    psnr_peak: PsnrPeakOption = PsnrPeak.nominal,
    window: WindowOption = None,
    attacks: Annotated[str, typer.Option(
        "--attacks", help=f"default (the full graded suite) | none | NAME[:STRENGTH],... (A+B: B after A), NAME one "
                          f"of {', '.join(ATTACK_NAMES)}.")] = "default",
    messages: Annotated[int, typer.Option("--messages", min=1, help="Fixed messages per image.")] = 3,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    report: Annotated[Path, typer.Option("--report", help="Report folder.")] = Path("wm_report"),
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="The diagnostic check's classifier: a folder from `wm classifier train`, or your model file (TorchScript .pt/.ts, torch.export .pt2, ONNX .onnx) with --classifier-card.")] = None,
    classifier_card: Annotated[Optional[Path], typer.Option("--classifier-card", help="YAML card of a model file: input_size, channels (1|3), intensity (nominal | range | {window: [C, W]}), normalize {mean, std}, output (logits|probabilities), labels.")] = None,
    control: Annotated[Optional[str], typer.Option("--control", help="The check's positive control, the same images harmed on purpose: mark:DB (the mark scaled towards DB dB; default: 20 dB below the floor, mark:20 at 40 dB) or blur:SIGMA (input pixels). A pass counts only if the control fails.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels for the check: CSV path,label (paths relative to the CSV) or a folder of class subfolders.")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Non-inferiority margin on ΔAUROC (the check fails if the CI's lower bound is below −margin).")] = 0.01,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Measure a model: quality in every view, recovery under attacks, false positives.

    With --classifier and --labels, also whether a diagnostic classifier scores watermarked images
    as it scores the originals. Writes report.json, per_image.csv, report.html and plots."""
    from ..attacks.codecs import parse_attack_list
    from ..io.discovery import collect_image_files
    from ..evaluation.run import ClassifierCheck, EvaluationOptions, evaluate as run_evaluation

    floor = quality_floor(psnr_min, psnr_peak, psnr_domain, None)
    attack_list = parse_attack_list(attacks)
    if (classifier is None) != (labels is None):
        raise BadInputError("the classifier check needs both --classifier and --labels")
    if classifier is None and (classifier_card is not None or control is not None):
        raise BadInputError(f"{'--classifier-card' if classifier_card is not None else '--control'} goes with "
                            "--classifier and --labels")
    if not (math.isfinite(margin) and 0 <= margin < 1):
        raise BadInputError("--margin must be between 0 and 1")
    n_files = len(collect_image_files(data))
    check = None
    if classifier is not None:
        from ..diagnostic.control import default_control, parse_control
        from ..diagnostic.external import open_classifier
        from ..diagnostic.labels import read_labels

        positive_control = parse_control(control) if control else default_control(psnr_min)
        if positive_control.kind == "mark" and not positive_control.strength < psnr_min:
            raise BadInputError(f"--control {control}: the mark's control must lie below the {psnr_min:g} dB floor")
        check = ClassifierCheck(open_classifier(classifier, classifier_card, device.value), read_labels(labels),
                                margin, seed, positive_control, psnr_min)
    from ..marking.threads import default_threads
    from ..model.device import model_device

    networks_on = model_device(device.value)
    loaded = open_model(model, "cpu")  # the networks go to `networks_on` in `threads.in_workers`
    options = EvaluationOptions(floor=floor, attacks=attack_list, messages=messages, key=key_for_reading(key, key_file),
                                seed=seed,
                                window=parse_window(window))
    with progress_bar(not json_output) as progress:
        task = progress.add_task("evaluating", total=n_files) if progress else None
        summary = run_evaluation(list(data), loaded, options, report,
                                 (lambda _: progress.advance(task)) if progress else None,
                                 on_marked=check.on_marked if check else None,
                                 finish=check.finish if check else None,
                                 at_once=default_threads(n_files, threads, on_gpu=networks_on != "cpu"),
                                 device=networks_on)
    if json_output:
        emit_json(summary)
    else:
        _print_evaluation(summary, report)
    problems = []
    if summary["below_floor"]:
        problems.append(f"{summary['below_floor']} frame(s) below the {psnr_min:g} dB floor")
    from ..diagnostic.check import checked_readings

    for reading, block in checked_readings(summary["classifier"]) if summary.get("classifier") else []:
        if block["verdict"] == "inconclusive":
            problems.append(f"the classifier check ({reading}) is inconclusive: {block['reason']}")
        elif not block["non_inferior"]:
            problems.append(f"the classifier check ({reading}) failed its −{margin:g} ΔAUROC margin")
    if problems:
        raise CheckFailedError("; ".join(problems))


def _print_evaluation(summary: dict, report: Path) -> None:
    psnr = summary["psnr"]
    stdout.print(
        f"[bold]{summary['n_images']} images[/] ({summary['n_frames_marked']} marked frames), model {summary['model']}; "
        f"PSNR in the binding view min {psnr['min']:.2f} dB, median {psnr['median']:.2f} dB (binding views: "
        f"{summary['psnr_peak']}); "
        f"below floor: [bold]{summary['below_floor']}[/]; guard acted on {summary['guard_acted']}"
    )
    table = Table(title="message recovery per attack")
    table.add_column("attack")
    table.add_column("bit accuracy", justify="right")
    table.add_column("payload recovery", justify="right")
    table.add_column("n", justify="right")
    for name, figures in summary["attacks"].items():
        table.add_row(name, f"{figures['bit_accuracy']:.4%}", f"{figures['payload_recovery']:.1%}", str(figures["n"]))
    stdout.print(table)
    if summary.get("fragile_marks"):
        stdout.print(f"{summary['fragile_marks']} marked image(s) × message(s) carry the fragile mark (small frames "
                     "whose robust mark does not read back): lossless copies only, any other attack removes it")
    detection = summary["detection"]
    stdout.print(
        f"false positives on unmarked originals: {detection['false_positives']} of {detection['n_clean']} "
        f"(95 % upper bound {detection['false_positive_rate_upper_95']:.3g}); report: {report}"
    )
    from ..diagnostic.check import checked_readings

    for reading, block in checked_readings(summary["classifier"]) if summary.get("classifier") else []:
        ci = block["delta_auroc_ci95"]
        interval = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else "undefined"
        verdict = ("[green]non-inferior[/]" if block["non_inferior"] else
                   "[yellow]inconclusive[/]" if block["verdict"] == "inconclusive" else "[red]shown inferior[/]")
        stdout.print(
            f"classifier check {reading} ({block['n_images']} labelled images): AUROC {block['auroc_clean']:.4f} → "
            f"{block['auroc_watermarked']:.4f}, Δ {block['delta_auroc']:+.4f}, 95 % CI {interval}, margin "
            f"−{block['margin']:g}: {verdict}; flip rate {block['flip_rate']:.4f} ({block['flips_mcnemar']['made_wrong']} "
            f"made wrong, {block['flips_mcnemar']['made_right']} made right, McNemar p = "
            f"{block['flips_mcnemar']['p_value']:.3g})", highlight=False)
        control, power = block.get("control"), block.get("power")
        if control:
            ci = control["delta_auroc_ci95"]
            interval = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else "undefined"
            stdout.print(f"  positive control ({control['description']}): AUROC {control['auroc']:.4f}, "
                         f"Δ {control['delta_auroc']:+.4f}, 95 % CI {interval}: {control['verdict']}"
                         + (f"; with {power['n_images']} images a drop of {power['detectable_drop']:.3f} or more "
                            f"would be shown with {power['power']:.0%} power" if power else ""), highlight=False)
        if block["verdict"] == "inconclusive":
            stdout.print(f"  [yellow]inconclusive[/]: {block['reason']}", highlight=False)
    quality = summary.get("quality") or {}
    parts = []
    for name, digits in (("psnr_data_range", 2), ("psnr_window", 2), ("psnr_voi_lut", 2), ("psnr_stored", 2),
                         ("psnr_nominal", 2), ("ssim", 4)):
        stats = quality.get(name)
        if stats:  # over the images that have this view: in a mixed folder, the PNGs have no window
            covers = stats["n_images"]
            share = "" if covers == summary["n_images"] else f" ({covers} of {summary['n_images']} images)"
            parts.append(f"{name} median {stats['median']:.{digits}f}{share}")
    if parts:
        stdout.print("quality per marked image: " + ", ".join(parts) +
                     f"; report.html in {report}", highlight=False)
    for item in summary["skipped"]:
        stderr.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}", highlight=False)
