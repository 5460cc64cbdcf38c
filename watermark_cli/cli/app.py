"""The `wm` command line: one function per subcommand, type hints as the interface.

Heavy libraries (torch, torchvision, matplotlib) are imported inside the commands that need
them, so `wm --help` stays instant. Every failure the user can cause is a `WmError`: printed as
one line on stderr with its exit code (0 success, 1 negative answer, 2 bad input or usage).
"""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import BadInputError, CheckFailedError, NoWatermarkError, WmError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Invisible watermarks for medical images, with a PSNR floor that every written image keeps.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthetic images, the real clinical DICOMs and held-out slices.")
app.add_typer(data_app, name="data")

stdout = Console()
stderr = Console(stderr=True)
_state = {"debug": False}

ModelOption = Annotated[Optional[str], typer.Option("--model", "-m", help="Model folder or shipped model name.")]
KeyOption = Annotated[Optional[str], typer.Option(
    "--key", help="Secret key of the payload (visible to other users in `ps`: prefer --key-file or WM_KEY). "
                  "Default: the public default key, which detects but neither hides nor authenticates.")]
KeyFileOption = Annotated[Optional[Path], typer.Option(
    "--key-file", help="File holding the secret key (one trailing newline is dropped).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
PsnrOption = Annotated[float, typer.Option("--psnr-min", help="PSNR floor in dB that every written frame keeps.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for unexpected errors.")] = False) -> None:
    _state["debug"] = debug


def _emit_json(payload: dict) -> None:
    from ..jsonout import dumps

    sys.stdout.write(dumps(payload) + "\n")
    sys.stdout.flush()


def _parse_window(window: str | None) -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        center, width = (float(part) for part in window.split(","))
    except ValueError:
        raise BadInputError(f"--window must be CENTER,WIDTH (got {window!r})") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise BadInputError("--window needs a finite CENTER and a positive finite WIDTH")
    return center, width


def _resolve_key(key: str | None, key_file: Path | None) -> bytes | None:
    """The payload key from --key, --key-file or the WM_KEY variable (in that order; at most one
    of the first two), None for the public default key. Errors never show the key."""
    import os

    if key is not None and key_file is not None:
        raise BadInputError("give the key once: --key or --key-file, not both")
    if key_file is not None:
        try:
            secret = key_file.read_bytes()
        except OSError as error:
            raise BadInputError(f"--key-file {key_file}: cannot read it ({error.strerror or 'unreadable'})") from None
        secret = secret[:-1] if secret.endswith(b"\n") else secret
        secret = secret[:-1] if secret.endswith(b"\r") else secret
        if not secret:
            raise BadInputError(f"--key-file {key_file} is empty")
        return secret
    if key is not None:
        return key.encode("utf-8")
    if "WM_KEY" in os.environ:
        if not os.environ["WM_KEY"]:
            raise BadInputError("WM_KEY is set but empty; unset it for the public default key")
        return os.environ["WM_KEY"].encode("utf-8")
    return None


def _message_bytes(message: str, hex_message: bool) -> bytes:
    if not hex_message:
        return message.encode("utf-8")
    try:
        return bytes.fromhex(message)
    except ValueError:
        raise BadInputError(f"--hex message is not hexadecimal: {message!r}") from None


class PsnrDomain(str, Enum):
    """Where the floor holds (design §1): every view a reader uses, the stored values, or one window."""

    view = "view"
    stored = "stored"
    window = "window"


class PsnrPeak(str, Enum):
    """The peak of `--psnr-domain stored`."""

    nominal = "nominal"
    range = "range"


def _quality_floor(psnr_min: float, psnr_peak: PsnrPeak, psnr_domain: PsnrDomain, max_abs_error: float | None):
    from ..quality import QualityFloor

    if not (0 < psnr_min < 200):  # also rejects NaN
        raise BadInputError("--psnr-min must be between 0 and 200 dB")
    if max_abs_error is not None and not (math.isfinite(max_abs_error) and max_abs_error >= 0):
        raise BadInputError("--max-abs-error must be a finite number >= 0")
    if psnr_peak is not PsnrPeak.nominal and psnr_domain is not PsnrDomain.stored:
        raise BadInputError("--psnr-peak applies to --psnr-domain stored only (every view has its own peak)")
    return QualityFloor(psnr_min, psnr_peak.value, psnr_domain.value, max_abs_error)


PsnrDomainOption = Annotated[PsnrDomain, typer.Option(
    "--psnr-domain", help="view (default): every view a reader uses — the frame's data range, each VOI window "
                          "the file declares (a CT also the brain, soft tissue, lung and bone presets) and --window; "
                          "8-bit PNG/TIFF/JPEG as stored. stored: the stored values against --psnr-peak. window: one "
                          "window only (--window, else the file's first).")]
PsnrPeakOption = Annotated[PsnrPeak, typer.Option(
    "--psnr-peak", help="With --psnr-domain stored: nominal (2^BitsStored-1 / dtype max) or range (max-min of the "
                        "original frame).")]
WindowOption = Annotated[Optional[str], typer.Option(
    "--window", help="A VOI window CENTER,WIDTH in modality units (HU for CT) that the floor must hold in too: "
                     "the view an export of yours will use.")]


# ----------------------------------------------------------------------------------- embed ----

def _default_output(input_path: Path, is_folder: bool) -> Path:
    input_path = input_path.resolve()
    if is_folder:
        return input_path.with_name(input_path.name + "_wm")
    suffix = input_path.suffix.lower()
    if not suffix:
        return input_path.with_name(input_path.name + ".wm.dcm")
    # JPEG is lossy and never written: a marked JPEG becomes a PNG.
    return input_path.with_name(f"{input_path.stem}.wm{'.png' if suffix in ('.jpg', '.jpeg') else input_path.suffix}")


@app.command()
def embed(
    input: Annotated[Path, typer.Argument(help="Image file (DICOM, PNG, TIFF) or folder (recursive).")],
    message: Annotated[str, typer.Argument(help="Text to hide (UTF-8), or hex with --hex. Never a patient identifier.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file, or folder for a folder input.")] = None,
    model: ModelOption = None,
    psnr_min: PsnrOption = 40.0,
    psnr_domain: PsnrDomainOption = PsnrDomain.view,
    psnr_peak: PsnrPeakOption = PsnrPeak.nominal,
    window: WindowOption = None,
    max_abs_error: Annotated[Optional[float], typer.Option("--max-abs-error", help="Per-pixel bound in stored units.")] = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    hex_message: Annotated[bool, typer.Option("--hex", help="MESSAGE is hexadecimal bytes.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (a folder re-run skips them otherwise).")] = False,
    allow_unverified: Annotated[bool, typer.Option("--allow-unverified", help="Write even if the payload does not read back.")] = False,
    compress: Annotated[str, typer.Option("--compress", help="DICOM output: none (Explicit VR Little Endian), rle or jpeg2000 (both lossless).")] = "none",
    fill_budget: Annotated[bool, typer.Option("--fill-budget/--model-strength", help="Strengthen the mark until each frame sits just above the floor (most robust), or keep the model's own strength.")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes for a folder.")] = 1,
    audit: Annotated[Optional[Path], typer.Option("--audit", help="Audit log (JSON lines) to append to; default: wm-audit.jsonl in the output folder.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Hide MESSAGE in INPUT; every written frame keeps PSNR >= --psnr-min, measured on its stored
    values, in every view a reader uses (its data range and every window it declares)."""
    from ..io.audit import AuditLog, audit_record, default_audit_path
    from ..marking.files import EmbedSettings, check_free_space, embed_files
    from ..io.image import DICOM_COMPRESSIONS, scan_folder

    floor = _quality_floor(psnr_min, psnr_peak, psnr_domain, max_abs_error)
    window_override = _parse_window(window)
    payload = _message_bytes(message, hex_message)
    if compress not in DICOM_COMPRESSIONS:
        raise BadInputError(f"--compress must be one of {', '.join(DICOM_COMPRESSIONS)} (got {compress!r})")
    if not 1 <= workers <= 256:
        raise BadInputError("--workers must be between 1 and 256")
    if not input.exists():
        raise BadInputError(f"no such file or folder: {input}")
    secret = _resolve_key(key, key_file)
    loaded = _load_model(model)
    from ..marking.image import codec_for

    codec = codec_for(loaded, secret)
    codec.encode(payload)  # a too-long message fails here, before any file is touched

    not_images: list[Path] = []
    existing: list[tuple[Path, Path]] = []
    if input.is_dir():
        target = output or _default_output(input, is_folder=True)
        if target.exists() and not target.is_dir():
            raise BadInputError(f"{target}: exists and is not a folder")
        images, not_images = scan_folder(input, exclude=target)
        if not images:
            raise BadInputError(f"no image files in {input}")
        jobs = [(path, target / path.relative_to(input)) for path in images]
        if not overwrite:
            # A re-run does not redo work: outputs are written atomically, so one that exists is whole.
            existing = [job for job in jobs if job[1].exists()]
            jobs = [job for job in jobs if not job[1].exists()]
        check_free_space([source for source, _ in jobs], target)
    else:
        target = output or _default_output(input, is_folder=False)
        jobs = [(input, target)]
    audit_log = AuditLog(audit or default_audit_path(target, input.is_dir()))
    if jobs:
        audit_log.check_writable()

    settings = EmbedSettings(payload=payload, floor=floor, window_override=window_override, overwrite=overwrite,
                             allow_unverified=allow_unverified, compression=compress, fill_budget=fill_budget,
                             model=model, key=secret)
    failures: list = []
    results: list[dict] = []
    with _progress(len(jobs) > 1 and not json_output) as progress, GracefulStop() as stop:
        task = progress.add_task("embedding", total=len(jobs)) if progress else None
        for outcome in embed_files(jobs, settings, loaded, codec, workers, stop_requested=stop.requested):
            if outcome.result is not None:
                results.append(outcome.result)
                audit_log.append(audit_record(outcome.result, payload, codec))
                _warn_below_floor(outcome.result)
                if json_output:
                    _emit_json(outcome.result)
            else:
                failures.append(outcome)
                if len(jobs) == 1 and not input.is_dir():
                    raise (BadInputError if outcome.exit_code == 2 else CheckFailedError)(outcome.error)
                if json_output:
                    _emit_json({"input": str(outcome.source), "error": outcome.error})
            if progress:
                progress.advance(task)
    if stop.requested():
        raise KeyboardInterrupt  # after every written file was reported and audited
    results.sort(key=lambda r: r["input"])
    if not json_output:
        _print_embed_table(results)
        _print_batch_summary(input, results, failures, existing, not_images, audit_log.path if results else None)
    if failures:
        summary = f"{len(failures)} of {len(jobs)} file(s) could not be marked (see above)"
        raise BadInputError(summary) if all(f.exit_code == 2 for f in failures) else CheckFailedError(summary)


class GracefulStop:
    """The first Ctrl-C (or another of `signal_names`) asks the work to stop at its next safe
    point: embedding lets the files being written finish and be audited, training finishes its
    step and writes the best model so far. A second one stops at once. Either way the atomic
    writes leave no partial file."""

    def __init__(self, message: str = "stopping after the file(s) being written (Ctrl-C again to stop now)",
                 signal_names: tuple[str, ...] = ("SIGINT",), speaks: bool = True) -> None:
        self._stop = False
        self._previous: dict = {}
        self._message = message
        self._signal_names = signal_names
        self._speaks = speaks

    def requested(self) -> bool:
        return self._stop

    def _handle(self, signum, frame) -> None:
        import signal

        if self._stop:
            # Only a second Ctrl-C escalates: a scheduler and torchrun's agent may both send
            # SIGTERM for the same stop.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._stop = True
        if self._speaks:
            stderr.print(self._message, highlight=False)

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self._signal_names:
                number = getattr(signal, name)
                if signal.getsignal(number) is signal.SIG_IGN:
                    continue  # a signal the caller chose to ignore (e.g. `nohup`) stays ignored
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for number, previous in self._previous.items():
            if previous is not None:  # None: a handler installed from C, which cannot be restored
                signal.signal(number, previous)


def _print_batch_summary(input: Path, results, failures, existing, not_images, audit_path) -> None:
    """For folders: what was skipped and what failed, one line each, then the counts."""
    if not input.is_dir():
        if audit_path:
            stdout.print(f"  audit: {audit_path}", highlight=False, soft_wrap=True)
        return
    for outcome in sorted(failures, key=lambda f: str(f.source)):
        stderr.print(f"[red]failed:[/] {outcome.error}", highlight=False, soft_wrap=True)
    for path in not_images:
        stdout.print(f"skipped, not an image: {path}", highlight=False, soft_wrap=True)
    if existing:
        stdout.print(f"skipped, output already exists (--overwrite to redo): {len(existing)} file(s)",
                     highlight=False)
    stdout.print(f"marked {len(results)}, failed {len(failures)}, already done {len(existing)}, "
                 f"not images {len(not_images)}" + (f"; audit: {audit_path}" if audit_path else ""),
                 highlight=False, soft_wrap=True)


def _print_embed_table(results: list[dict]) -> None:
    if not results:
        return
    if len(results) == 1:
        r = results[0]
        others = ", ".join(f"{name} {_format_db(value)}" for name, value in r["psnr_views"].items()
                           if name != r["binding_view"])
        stdout.print(
            f"wrote {r['output']}\n"
            f"  PSNR {_format_db(r['psnr'])} dB in its binding view, {r['binding_view']} (floor {r['psnr_min']:g} dB, "
            f"{r['psnr_domain']} domain)\n"
            + (f"  other views: {others} dB\n" if others else "")
            + f"  nominal peak {_format_db(r['psnr_nominal'])} dB; SSIM {r['ssim']}, max |error| {r['max_abs_error']:g} "
            f"stored units, guard scale {r['guard_scale']:.3f}, {r['frames']} frame(s), "
            f"verified: {'yes' if r['verified'] else 'NO'}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"wm embed: {len(results)} file(s)")
    for column in ("file", "PSNR dB", "binding view", "SSIM", "max |err|", "guard", "verified"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            Path(r["output"]).name, _format_db(r["psnr"]), r["binding_view"],
            f"{r['ssim']:.4f}" if r["ssim"] is not None else "-", f"{r['max_abs_error']:g}",
            f"{r['guard_scale']:.2f}", "yes" if r["verified"] else "[red]NO[/]",
        )
    stdout.print(table)
    stdout.print(f"floor {results[0]['psnr_min']:g} dB in the {results[0]['psnr_domain']} domain", highlight=False)


def _warn_below_floor(result: dict) -> None:
    """One line when the chosen domain left a reader's view under the floor (design §1)."""
    if result["views_below_floor"]:
        stderr.print(f"[yellow]warning:[/] {result['output']}: below the {result['psnr_min']:g} dB floor in "
                     f"{', '.join(result['views_below_floor'])} (--psnr-domain {result['psnr_domain']} does not hold "
                     "there)", highlight=False, soft_wrap=True)


def _format_db(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------------- extract ----

@app.command()
def extract(
    input: Annotated[Path, typer.Argument(help="Image file (DICOM, PNG, TIFF, JPEG) or folder.")],
    model: ModelOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    accept_format_1: Annotated[bool, typer.Option(
        "--accept-format-1", help="Also accept marks in the payload format wm wrote before v2: "
                                  "unauthenticated, so anyone could have forged them.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Read the hidden message. Exit 0: found; 1: no valid watermark; 2: bad input."""
    from ..io.image import iter_image_files, read_image
    from ..payload import bytes_to_text, key_kind
    from ..marking.image import codec_for, extract_payload, legacy_codec_for

    if not input.exists():
        raise BadInputError(f"no such file or folder: {input}")
    files = iter_image_files(input) if input.is_dir() else [input]
    if not files:
        raise BadInputError(f"no image files in {input}")
    secret = _resolve_key(key, key_file)
    loaded = _load_model(model)
    codec = codec_for(loaded, secret)
    legacy = legacy_codec_for(loaded, secret)
    kind = key_kind(secret)
    missing = 0
    bad = 0
    for path in files:
        try:
            image = read_image(path)
            decoded = extract_payload(loaded, codec, image)
            old_mark = None
            if not decoded.found and legacy is not None:
                old_mark = extract_payload(loaded, legacy, image, full_search=accept_format_1)
                if accept_format_1 and old_mark.found:
                    decoded, old_mark = old_mark, None
        except WmError as error:
            if len(files) == 1:
                raise
            bad += 1
            stderr.print(f"[red]error:[/] {error}", highlight=False)
            if json_output:
                _emit_json({"input": str(path), "error": str(error)})
            continue
        text = bytes_to_text(decoded.message) if decoded.found else None
        missing += int(not decoded.found)
        hint = old_mark is not None and old_mark.found
        if json_output:
            _emit_json({"input": str(path), "found": decoded.found, "message": text,
                        "confidence": round(decoded.confidence, 4), "bit_errors": decoded.bit_errors,
                        "format": decoded.format if decoded.found else None,
                        "authenticated": decoded.authenticated and kind == "custom", "key": kind,
                        **({"format_1_mark": True} if hint else {})})
        elif len(files) == 1:
            if decoded.found:
                sys.stdout.write(text + "\n")
                if decoded.format == 1:
                    stderr.print("[yellow]warning:[/] a format-1 mark: unauthenticated, anyone could have written it",
                                 highlight=False)
        else:
            stdout.print(f"{path}: " + (text + (" (format 1, unauthenticated)" if decoded.format == 1 else "")
                                        if decoded.found else "[yellow]no watermark[/]"), highlight=False)
        if hint:
            stderr.print(f"{path}: holds a mark in the old payload format 1 (unauthenticated); read it with "
                         "--accept-format-1", highlight=False, soft_wrap=True)
    if bad:
        raise BadInputError(f"{bad} of {len(files)} file(s) could not be read")
    if missing:
        raise NoWatermarkError(
            f"no valid watermark in {input}" if len(files) == 1 else f"no valid watermark in {missing} of {len(files)} files"
        )


# ----------------------------------------------------------------------------------- train ----

@app.command()
def train(
    data: Annotated[Optional[list[Path]], typer.Argument(
        help="Files or folders of DICOM/PNG/TIFF images (or `data:` in --config).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Model folder to write (default: runs/model).")] = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML file of training options (any TrainConfig field, plus data, out, preset); "
                         "flags given here override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this folder from its last checkpoint (bit-exact); "
                         "only --epochs and --device may change.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="quick (default) | standard | paper")] = None,
    psnr_min: Annotated[Optional[float], typer.Option("--psnr-min", help="PSNR floor in dB (default: 40).")] = None,
    bits: Annotated[Optional[int], typer.Option("--bits", help="Raw bits the model carries (multiple of 8).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    steps_per_epoch: Annotated[Optional[int], typer.Option("--steps-per-epoch")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Per process.")] = None,
    method: Annotated[Optional[str], typer.Option(
        "--method", help="sequential (default) | fixed | lagrangian | augmented-lagrangian | projection")] = None,
    fixed_weight: Annotated[Optional[float], typer.Option("--fixed-weight", help="λ of --method fixed.")] = None,
    penalty_shape: Annotated[Optional[str], typer.Option("--penalty-shape", help="hinge | squared_hinge")] = None,
    tau_scope: Annotated[Optional[str], typer.Option("--tau-scope", help="global | per-sample")] = None,
    tau_schedule: Annotated[Optional[str], typer.Option("--tau-schedule", help="open-loop | closed-loop")] = None,
    dual_optimizer: Annotated[Optional[str], typer.Option("--dual-optimizer", help="sgd | nupi (Lagrangian methods)")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (default) | cpu | cuda")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: 0).")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Any training option as KEY=VALUE (repeatable), e.g. --set tau_growth=1.5")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train an encoder/decoder pair under PSNR_i >= floor for every training image."""
    import os

    from ..training.loop import (TrainingInterrupted, config_for_preset, parse_assignments, read_config_file,
                           resume_config, train as run_training, validate_config)

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
    with stop, _progress(speaks and not json_output) as progress:
        task = progress.add_task("training", total=config.epochs) if progress else None
        symbol = "λ" if "lagrangian" in config.method else "τ"

        def report(metrics) -> None:
            if progress:
                progress.update(task, completed=metrics.epoch, description=(
                    f"epoch {metrics.epoch}: bits {metrics.val_bit_accuracy:.4f}, "
                    f"floor met {metrics.val_fraction_satisfied:.0%}, {symbol} {metrics.coefficient_mean:.3g}"))

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
        _state["stopped_gracefully"] = True  # the line above says what happened; no "interrupted"
        raise typer.Exit(130)


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
        _emit_json(summary)
        return
    _print_summary_table(f"wm train ({config.preset}, {config.method}) → {out}", summary)


# -------------------------------------------------------------------------------- evaluate ----

@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Argument(help="Files or folders of images (held-out!).")],
    model: ModelOption = None,
    psnr_min: PsnrOption = 40.0,
    psnr_domain: PsnrDomainOption = PsnrDomain.view,
    psnr_peak: PsnrPeakOption = PsnrPeak.nominal,
    window: WindowOption = None,
    attacks: Annotated[str, typer.Option("--attacks", help="default | none | NAME[:STRENGTH],...")] = "default",
    messages: Annotated[int, typer.Option("--messages", help="Fixed messages per image.")] = 3,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    report: Annotated[Path, typer.Option("--report", help="Report folder.")] = Path("wm_report"),
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Folder of a classifier from `wm classifier train`: the diagnostic check.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels for the check: CSV path,label (paths relative to the CSV) or a folder of class subfolders.")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Non-inferiority margin on ΔAUROC (the check fails if the CI's lower bound is below −margin).")] = 0.01,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Quality, message recovery under attacks, false positives, and (with --classifier and
    --labels) whether a diagnostic classifier scores watermarked images as it scores originals."""
    from ..attacks.codecs import parse_attack_list
    from ..training.data import collect_image_files
    from ..evaluation.run import ClassifierCheck, EvaluationOptions, evaluate as run_evaluation

    floor = _quality_floor(psnr_min, psnr_peak, psnr_domain, None)
    attack_list = parse_attack_list(attacks)
    if messages < 1:
        raise BadInputError("--messages must be at least 1")
    if (classifier is None) != (labels is None):
        raise BadInputError("the classifier check needs both --classifier and --labels")
    if not (math.isfinite(margin) and 0 <= margin < 1):
        raise BadInputError("--margin must be between 0 and 1")
    n_files = len(collect_image_files(data))
    check = None
    if classifier is not None:
        from ..diagnostic.classifier import load_classifier, read_labels

        check = ClassifierCheck(load_classifier(classifier), read_labels(labels), margin, seed)
    loaded = _load_model(model)
    options = EvaluationOptions(floor=floor, attacks=attack_list, messages=messages, key=_resolve_key(key, key_file),
                                seed=seed,
                                window=_parse_window(window))
    with _progress(not json_output) as progress:
        task = progress.add_task("evaluating", total=n_files) if progress else None
        summary = run_evaluation(list(data), loaded, options, report,
                                 (lambda _: progress.advance(task)) if progress else None,
                                 on_marked=check.on_marked if check else None,
                                 finish=check.finish if check else None)
    if json_output:
        _emit_json(summary)
    else:
        _print_evaluation(summary, report)
    problems = []
    if summary["below_floor"]:
        problems.append(f"{summary['below_floor']} frame(s) below the {psnr_min:g} dB floor")
    if summary.get("classifier") and not summary["classifier"]["non_inferior"]:
        problems.append(f"the classifier check failed its −{margin:g} ΔAUROC margin")
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
    detection = summary["detection"]
    stdout.print(
        f"false positives on unmarked originals: {detection['false_positives']} of {detection['n_clean']} "
        f"(95 % upper bound {detection['false_positive_rate_upper_95']:.3g}); report: {report}"
    )
    block = summary.get("classifier")
    if block:
        ci = block["delta_auroc_ci95"]
        interval = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else "undefined"
        verdict = "[green]non-inferior[/]" if block["non_inferior"] else "[red]NOT shown non-inferior[/]"
        stdout.print(
            f"classifier check ({block['n_images']} labelled images): AUROC {block['auroc_clean']:.4f} → "
            f"{block['auroc_watermarked']:.4f}, Δ {block['delta_auroc']:+.4f}, 95 % CI {interval}, margin "
            f"−{block['margin']:g}: {verdict}; flip rate {block['flip_rate']:.4f}", highlight=False)
    quality = summary.get("quality") or {}
    parts = [f"{name} median {quality[name]['median']:.{digits}f}" for name, digits in
             (("psnr_data_range", 2), ("psnr_window", 2), ("psnr_nominal", 2), ("ssim", 4)) if quality.get(name)]
    if parts:
        stdout.print("quality per marked image: " + ", ".join(parts) +
                     f"; report.html in {report}", highlight=False)
    for item in summary["skipped"]:
        stderr.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}", highlight=False)


# ---------------------------------------------------------------------------- data, models ----

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
        _emit_json({"output": str(out), "n": n, "labels": str(labels)})
    else:
        stdout.print(f"wrote {n} synthetic images ({size}×{size}, {bit_depth}-bit {fmt}) and {labels}")


@data_app.command("clinical")
def data_clinical(
    out: Annotated[Path, typer.Argument(help="Folder to copy the split's DICOM files into.")],
    split: Annotated[str, typer.Option("--split", help="train or held_out")] = "held_out",
    json_output: JsonOption = False,
) -> None:
    """Copy the real clinical DICOMs of pydicom-data for one split (fixed, split by image, not by file)."""
    from ..data.clinical import write_clinical_split

    written = write_clinical_split(out, split)
    if json_output:
        _emit_json({"output": str(out), "split": split, "files": [str(p) for p in written]})
    else:
        stdout.print(f"copied {len(written)} {split} clinical DICOM file(s) to {out}")


@data_app.command("slices")
def data_slices(
    out: Annotated[Path, typer.Argument(help="Folder to write the slices (8-bit PNG) and a README into.")],
    json_output: JsonOption = False,
) -> None:
    """256² 8-bit slices with a mostly black background from held-out real images (pydicom-data's held-out split in its windows, dipy's MR volume): the hardest everyday case, never used in training."""
    from ..data.slices import write_slices

    written = write_slices(out)
    if json_output:
        _emit_json({"output": str(out), "slices": [str(p) for p in written]})
    else:
        stdout.print(f"wrote {len(written)} held-out 256² 8-bit slices to {out} (sources in README.txt there)")


@data_app.command("lesions")
def data_lesions(
    out: Annotated[Path, typer.Argument(help="Folder to write the images, labels.csv, manifest.csv and README.txt into.")],
    split: Annotated[str, typer.Option("--split", help="train or held_out: which clinical images give the real backgrounds.")] = "train",
    n: Annotated[int, typer.Option("--n", help="Number of images (about half with a lesion).")] = 400,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", help="Side in pixels.")] = 256,
    real_fraction: Annotated[float, typer.Option("--real-fraction", help="Share of images on real clinical backgrounds.")] = 0.5,
    json_output: JsonOption = False,
) -> None:
    """Labelled images for the diagnostic classifier check. THE LESIONS ARE SYNTHETIC.

    A small blurred nodule (the phantoms' lesion) drawn by the program on half of the images; the backgrounds are crops of the real pydicom-data clinical images of one split (train and held_out never mixed; crops without anatomy rejected) and the synthetic CT/MR/radiograph phantoms.

    Images come in pairs sharing a background, one with the nodule and one without. Writes 16-bit PNGs, labels.csv (path,label,group; label 1 = lesion, group = the pair), manifest.csv and a README.txt that says the lesions are synthetic.
    """  # one line per paragraph: the help output wraps them to the terminal
    from ..data.lesions import LesionDatasetConfig, write_lesion_dataset

    config = LesionDatasetConfig(split=split, n=n, size=size, seed=seed, real_fraction=real_fraction)
    labels = write_lesion_dataset(out, config)
    if json_output:
        _emit_json({"output": str(out), "split": split, "n": n, "labels": str(labels), "lesions": "synthetic"})
    else:
        stdout.print(f"wrote {n} images ({size}×{size}, 16-bit PNG; {split} backgrounds) and {labels}; "
                     "[bold]the lesions are synthetic[/] (see README.txt there)")


# ------------------------------------------------------------------------------ classifier ----

classifier_app = typer.Typer(no_args_is_help=True, help="The diagnostic classifier used by `wm evaluate --classifier`.")
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train(
    data: Annotated[Path, typer.Argument(help="Folder of labelled images (its labels.csv or class subfolders), or use --labels.")],
    out: Annotated[Path, typer.Option("--out", help="Classifier folder to write (weights.safetensors + card.yaml).")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="CSV path,label (0/1) or path,FINDING,...; paths relative to the CSV's folder; an optional group column (e.g. patient) keeps a group on one side of the validation split.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="small (CPU) | resnet18 | densenet121")] = "small",
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local pretrained weights to start from (safetensors or torch state dict).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs (default: 40).")] = None,
    input_size: Annotated[int, typer.Option("--input-size", help="Network input side in pixels.")] = 128,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Train a diagnostic classifier from scratch on clean (never watermarked) training images."""
    from ..diagnostic.classifier import ClassifierTrainingConfig, read_labels, train_classifier

    if not data.exists():
        raise BadInputError(f"no such file or folder: {data}")
    labelled = read_labels(labels) if labels is not None else read_labels(data)
    if labels is not None:
        labelled = labelled.within(data)
    defaults = ClassifierTrainingConfig()
    config = ClassifierTrainingConfig(arch=arch, input_size=input_size, epochs=epochs or defaults.epochs,
                                      seed=seed, device=device, weights=weights)
    with _progress(not json_output) as progress:
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
        "selected_epoch": card["training"]["selected_epoch"], "n_train": card["training"]["n_train"],
        "n_validation": card["training"]["n_validation"],
        "validation_auroc": card["validation"]["auroc_macro"], "validation_auroc_per_label": card["validation"]["auroc"],
    }
    if json_output:
        _emit_json(summary)
        return
    if len(card["label_names"]) == 1:
        del summary["validation_auroc_per_label"]  # the same figure as the macro AUROC
    _print_summary_table(f"wm classifier train ({arch}) → {out}", summary)


def _print_summary_table(title: str, summary: dict) -> None:
    """A two-column measure/value table of a command's summary (what --json prints)."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value")
    for name, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else ", ".join(map(str, value)) if isinstance(
            value, list) else str(value)
        table.add_row(name.replace("_", " "), shown)
    stdout.print(table)


@app.command()
def models(json_output: JsonOption = False) -> None:
    """List the shipped models and their payload capacity."""
    from ..model.store import read_card, shipped_models_folder

    from ..marking.image import smallest_markable_side

    folder = shipped_models_folder()
    rows = []
    for card_folder in sorted(p.parent for p in folder.glob("*/card.yaml")):
        card = read_card(card_folder)
        rows.append({"name": card_folder.name, "path": str(card_folder), "raw_bits": card["payload"]["raw_bits"],
                     "capacity_bytes": card["payload"]["capacity_bytes"],
                     "smallest_side_px": smallest_markable_side(int(card["architecture"].get("tile", 32))),
                     "psnr_min_db": card.get("quality_floor", {}).get("psnr_min_db")})
    if json_output:
        for row in rows:
            _emit_json(row)
        return
    table = Table(title=f"models in {folder}")
    for column in ("name", "raw bits", "capacity (bytes)", "smallest frame (px)", "trained floor (dB)"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["raw_bits"]), str(row["capacity_bytes"]), str(row["smallest_side_px"]),
                      str(row["psnr_min_db"]))
    stdout.print(table if rows else f"no models in {folder}")


# --------------------------------------------------------------------------------- helpers ----

def _load_model(name_or_path: str | None):
    from ..model.store import load_model

    return load_model(name_or_path)


class _progress:
    """A rich progress bar on stderr when `enabled`, else None (JSON mode, single items)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=stderr, transient=True)
        self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def main() -> None:
    # Not standalone: usage errors come back as exceptions, so that they too are one line.
    try:
        code = app(standalone_mode=False)
        if code == 130 and not _state.get("stopped_gracefully"):
            # typer turns a KeyboardInterrupt inside a command into this exit code
            stderr.print("interrupted; no partial file was left behind", highlight=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Abort:
        stderr.print("aborted", highlight=False)
        sys.exit(130)
    except typer.TyperException as error:
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        message = " ".join(message.split())
        if not message:  # e.g. `wm` alone: the help was printed, nothing else to say
            sys.exit(getattr(error, "exit_code", 2) or 2)
        stderr.print(f"error: {message} (see wm --help)", highlight=False, soft_wrap=True)
        sys.exit(getattr(error, "exit_code", 2) or 2)
    except WmError as error:
        stderr.print(f"error: {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted; no partial file was left behind", highlight=False)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _state["debug"]:
            raise
        first_line = (str(error).splitlines() or [""])[0]
        stderr.print(f"error: unexpected {type(error).__name__}: {first_line} (rerun with --debug for details)",
                     highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
