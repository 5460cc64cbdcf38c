"""`wm train`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import BadInputError
from .app import GracefulStop, app, emit_json, print_summary_table, progress_bar, state, stderr
from .options import (Device, DualOptimizer, JsonOption, Method, PenaltyShape, Preset, TauSchedule, TauScope, examples,
                      value_of)


@app.command(epilog=examples(
    ("wm data synth synthetic/ --n 300 && wm train synthetic/ --preset quick --out my_model",
     "a model in a few CPU-minutes"),
    ("wm train data/ --preset standard --psnr-min 42 --device cuda --out my_model", "longer, on a GPU"),
    ("wm train --resume my_model --epochs 80", "continue a stopped run, bit-exactly"),
))
def train(
    data: Annotated[Optional[list[Path]], typer.Argument(
        help="Files or folders of DICOM/PNG/TIFF images (or `data:` in --config).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Model folder to write (default: runs/model).")] = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML file of training options (any --set key, plus data, out, preset); "
                         "flags given here override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this folder from its last checkpoint (bit-exact); "
                         "only --epochs and --device may change.")] = None,
    preset: Annotated[Optional[Preset], typer.Option("--preset", help="Default: quick.")] = None,
    psnr_min: Annotated[Optional[float], typer.Option("--psnr-min", help="PSNR floor in dB (default: 40).")] = None,
    bits: Annotated[Optional[int], typer.Option("--bits", help="Raw bits the model carries (multiple of 8).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    steps_per_epoch: Annotated[Optional[int], typer.Option("--steps-per-epoch")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Per process.")] = None,
    method: Annotated[Optional[Method], typer.Option("--method", help="Default: sequential.")] = None,
    fixed_weight: Annotated[Optional[float], typer.Option("--fixed-weight", help="λ of --method fixed.")] = None,
    penalty_shape: Annotated[Optional[PenaltyShape], typer.Option("--penalty-shape", help="Default: hinge.")] = None,
    tau_scope: Annotated[Optional[TauScope], typer.Option("--tau-scope", help="Default: global.")] = None,
    tau_schedule: Annotated[Optional[TauSchedule], typer.Option("--tau-schedule", help="Default: open-loop.")] = None,
    dual_optimizer: Annotated[Optional[DualOptimizer], typer.Option("--dual-optimizer", help="Lagrangian methods; default: sgd.")] = None,
    device: Annotated[Optional[Device], typer.Option("--device", help="Default: auto.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: 0).")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Any training option as KEY=VALUE (repeatable), e.g. --set tau_growth=1.5")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train an encoder/decoder pair under PSNR_i >= floor for every training image."""
    import os

    from ..training import (TrainingInterrupted, config_for_preset, parse_assignments, read_config_file,
                            resume_config, train as run_training, validate_config)

    method, penalty_shape, tau_scope, tau_schedule, dual_optimizer, device, preset = map(
        value_of, (method, penalty_shape, tau_scope, tau_schedule, dual_optimizer, device, preset))
    flags = {"psnr_min": psnr_min, "n_bits": bits, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
             "batch_size": batch_size, "method": method, "fixed_weight": fixed_weight,
             "penalty_shape": penalty_shape, "tau_scope": tau_scope, "tau_schedule": tau_schedule,
             "dual_optimizer": dual_optimizer, "device": device, "seed": seed}
    if resume is not None:
        given = [name for name, value in flags.items() if value is not None and name not in ("epochs", "device")]
        if data or out is not None or config_file is not None or preset is not None or assignments or given:
            raise BadInputError("--resume continues a run with its own data and configuration; "
                                "only --epochs and --device may be given with it")
        config, data = resume_config(resume, epochs=epochs, device=device)
        out = resume
    else:
        from_file = read_config_file(config_file) if config_file is not None else None
        options = dict(from_file.options) if from_file else {}
        options.update(parse_assignments(assignments or []))
        options.update({name: value for name, value in flags.items() if value is not None})
        preset = preset or (from_file.preset if from_file else None) or "quick"
        config = config_for_preset(preset, **options)
        data = data or (from_file.data if from_file else None)
        out = out or (from_file.out if from_file else None) or Path("runs/model")
        if not data:
            raise BadInputError("no training data given (DATA arguments, or `data:` in --config)")
        if out.exists() and any(out.iterdir()):
            raise BadInputError(f"{out} exists and is not empty; choose another --out (or --resume {out})")
    validate_config(config)  # before the progress bar, so that a bad option is one clean line
    # Under torchrun every process runs this command; only rank 0 talks.
    speaks = int(os.environ.get("RANK", "0")) == 0
    stop = GracefulStop("stopping after this training step; the best model so far will be written "
                        "(Ctrl-C again to stop now)", signal_names=("SIGINT", "SIGTERM"), speaks=speaks)
    # A terminal gets the live bar; anywhere else (a job scheduler, nohup, CI) the bar would show
    # nothing until the end, so each epoch is one plain line a log keeps. --json changes only stdout.
    live = stderr.is_terminal and not stderr.is_dumb_terminal
    with stop, progress_bar(speaks and live and not json_output) as progress:
        task = progress.add_task("training", total=config.epochs) if progress else None
        symbol = "λ" if "lagrangian" in config.method else "τ"

        def report(metrics) -> None:
            if progress:
                progress.update(task, completed=metrics.epoch, description=(
                    f"epoch {metrics.epoch}: bits {metrics.val_bit_accuracy:.4f}, "
                    f"floor met {metrics.val_fraction_satisfied:.0%}, {symbol} {metrics.coefficient_mean:.3g}"))
            elif speaks and not live:
                stderr.print(_epoch_line(metrics, config.epochs, symbol), markup=False, emoji=False, highlight=False,
                             soft_wrap=True)

        try:
            result = run_training(config, list(data), out, report, resume=resume is not None,
                                  stop_requested=stop.requested)
        except TrainingInterrupted as error:
            raise KeyboardInterrupt from error  # nothing was written: the usual "interrupted" line
    stopped = result.stopped_after_epoch is not None
    if speaks:
        _print_training_summary(config, result, out, json_output)
        if stopped:
            stderr.print(f"stopped after epoch {result.stopped_after_epoch} of {config.epochs}: the best model so far "
                         f"is in {out}; continue with: wm train --resume {out}", highlight=False, soft_wrap=True)
    if stopped:
        state["stopped_gracefully"] = True  # the line above says what happened; no "interrupted"
        raise typer.Exit(130)


def _epoch_line(metrics, epochs: int, symbol: str) -> str:
    """One epoch as a log line: its coefficient (τ or λ, mean over samples; none for projection),
    the held-out figures, and the run's elapsed time (as metrics.csv records them)."""
    coefficient = "none" if math.isnan(metrics.coefficient_mean) else f"{metrics.coefficient_mean:.3g}"
    return (f"epoch {metrics.epoch}/{epochs}: {symbol} {coefficient}, "
            f"floor met by {metrics.val_fraction_satisfied:.1%} of validation crops, "
            f"min PSNR {metrics.val_min_psnr:.2f} dB, bit accuracy {metrics.val_bit_accuracy:.4f}, "
            f"elapsed {metrics.seconds:.1f} s")


def _print_training_summary(config, result, out: Path, json_output: bool) -> None:
    best = result.best
    summary = {
        "output": str(result.output), "method": config.method, "seconds": round(result.seconds, 1),
        "epochs": config.epochs, "selected_epoch": best.epoch, "val_bit_accuracy": best.val_bit_accuracy,
        "val_fraction_meeting_floor": best.val_fraction_satisfied, "val_min_psnr": best.val_min_psnr,
        "train_files": len(result.train_files), "validation_files": len(result.validation_files),
    }
    if result.stopped_after_epoch is not None:
        summary["stopped_after_epoch"] = result.stopped_after_epoch
    if json_output:
        emit_json(summary)
        return
    print_summary_table(f"wm train ({config.preset}, {config.method}) → {out}", summary)
