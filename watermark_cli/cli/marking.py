"""`wm embed` and `wm extract`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadInputError, CheckFailedError, NoWatermarkError
from ..keys import resolve_key
from .app import GracefulStop, app, emit_json, format_db, open_model, progress_bar, stderr, stdout
from .options import (Compression, Engine, JsonOption, KeyFileOption, KeyOption, MaxPixelsOption, ModelOption, PsnrDomain,
                      PsnrDomainOption, RecipientOption,
                      PsnrOption, PsnrPeak, PsnrPeakOption, WindowOption, message_bytes, parse_window, quality_floor)


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
    compress: Annotated[Compression, typer.Option("--compress", help="DICOM output: none (Explicit VR Little Endian), rle or jpeg2000 (both lossless).")] = Compression.none,
    fill_budget: Annotated[bool, typer.Option("--fill-budget/--model-strength", help="Strengthen the mark until each frame sits just above the floor (most robust), or keep the model's own strength.")] = True,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Worker processes for a folder.")] = 1,
    audit: Annotated[Optional[Path], typer.Option("--audit", help="Audit log (JSON lines) to append to; default: wm-audit.jsonl in the output folder.")] = None,
    max_pixels: MaxPixelsOption = 100_000_000,
    restore_record: Annotated[bool, typer.Option("--restore-record/--no-restore-record", help="Keep an encrypted record of the exact difference in the output, for `wm restore` and `wm verify` (0 dB; a few % of the pixel data).")] = True,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="RSA private key (PEM, unencrypted): sign each DICOM output (PS3.15 Creator RSA profile, SHA-256).")] = None,
    cert: Annotated[Optional[Path], typer.Option("--cert", help="The signer's X.509 certificate (PEM), with --sign.")] = None,
    recipient: RecipientOption = None,
    engine: Annotated[Engine, typer.Option("--engine", help="A folder: local (this machine's processes) or dask (a Dask cluster: --scheduler, or a LocalCluster of --workers processes).")] = Engine.local,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="With --engine dask: a running scheduler's address (tcp://host:8786).")] = None,
    shard_spec: Annotated[Optional[str], typer.Option("--shard", help="I/N: mark only the deterministic I-th of N parts of a folder (0 <= I < N), for job arrays.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Hide MESSAGE in INPUT; every written frame keeps PSNR >= --psnr-min, measured on its stored
    values, in every view a reader uses (its data range and every window it declares)."""
    from ..io.audit import AuditLog, default_audit_path
    from ..io.image import scan_folder
    from ..io.writing import exclusive_folder, remove_stale_temporaries
    from ..marking.files import EmbedSettings, check_free_space

    floor = quality_floor(psnr_min, psnr_peak, psnr_domain, max_abs_error)
    window_override = parse_window(window)
    payload = message_bytes(message, hex_message)
    if not input.exists():
        raise BadInputError(f"no such file or folder: {input}")
    secret = resolve_key(key, key_file)
    loaded = open_model(model)
    from ..marking.image import codec_for

    codec = codec_for(loaded, secret)
    codec.encode(payload)  # a too-long message fails here, before any file is touched
    signing = _signing_material(sign, cert)
    recipient_pem = None
    if recipient is not None:
        from ..integrity.envelope import read_pem, recipient_from_pem

        recipient_pem = read_pem(recipient, "--recipient")
        recipient_from_pem(recipient_pem, f"--recipient {recipient}")  # a bad certificate fails before any file
        if not restore_record:
            raise BadInputError("--recipient encrypts the restoration record: it cannot go with --no-restore-record")

    settings = EmbedSettings(payload=payload, floor=floor, window_override=window_override, overwrite=overwrite,
                             allow_unverified=allow_unverified, compression=compress.value, fill_budget=fill_budget,
                             model=model, max_pixels=max_pixels, key=secret, restore_record=restore_record,
                             signing=signing, recipient=recipient_pem)
    if not input.is_dir():
        target = output or _default_output(input, is_folder=False)
        audit_log = AuditLog(audit or default_audit_path(target, False))
        audit_log.check_writable()
        _mark(input, [(input, target)], settings, loaded, codec, workers, audit_log, json_output)
        return

    target = output or _default_output(input, is_folder=True)
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{target}: exists and is not a folder")
    if target.resolve() == input.resolve():
        raise BadInputError(f"{target}: the output folder is the input folder; give another one with -o")
    from ..marking.shards import parse_shard, shard

    part = parse_shard(shard_spec) if shard_spec else None
    check_engine(engine, scheduler)
    images, skipped = scan_folder(input, exclude=target)
    if not images:
        raise BadInputError(f"no image files in {input}")
    created = _make_output_folder(target)
    try:
        jobs = [(path, target / path.relative_to(input)) for path in images]
        if part is not None:
            jobs = shard(jobs, input, *part)
        # A second run into the same folder (the same shard) fails at once.
        with exclusive_folder(target, f"shard-{part[0]}-of-{part[1]}" if part else None):
            remove_stale_temporaries(target, {job[1] for job in jobs} if part else None)
            existing: list[tuple[Path, Path]] = []
            if not overwrite:
                # A re-run does not redo work: outputs are written atomically, so one that exists is whole.
                existing = [job for job in jobs if job[1].exists()]
                jobs = [job for job in jobs if not job[1].exists()]
            check_free_space([source for source, _ in jobs], target, max_pixels)
            audit_log = AuditLog(audit or default_audit_path(target, True))
            audit_log.check_writable()
            recovered = _audit_unaudited(existing, settings, loaded, codec, audit_log)
            _mark(input, jobs, settings, loaded, codec, workers, audit_log, json_output,
                  escaping=_outside_folder(jobs, target), existing=existing, skipped=skipped, recovered=recovered,
                  engine=engine, scheduler=scheduler, key_file=key_file)
    finally:
        if created and all(entry.name.startswith(".wm-shard-") for entry in target.iterdir()):
            for lock in target.iterdir():  # a shard's lock file, in a folder this run created
                lock.unlink()
            target.rmdir()  # a run that wrote nothing leaves nothing


def check_engine(engine: Engine, scheduler: str | None) -> None:
    """--engine dask needs Dask distributed installed; --scheduler needs --engine dask."""
    if engine is Engine.dask:
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise BadInputError("--engine dask needs Dask distributed: pip install 'wm[dask]'")
    elif scheduler:
        raise BadInputError("--scheduler goes with --engine dask")


def _signing_material(sign: Path | None, cert: Path | None) -> tuple[bytes, bytes] | None:
    """The PEM bytes of --sign and --cert, checked (key and certificate match) before any file is marked."""
    if sign is None and cert is None:
        return None
    if sign is None or cert is None:
        raise BadInputError("--sign and --cert go together: the private key and its certificate")
    material = []
    for option, path in (("--sign", sign), ("--cert", cert)):
        try:
            material.append(path.read_bytes())
        except OSError as error:
            raise BadInputError(f"{option} {path}: cannot read it ({error.strerror or 'unreadable'})") from None
    from ..integrity.signature import load_signer

    load_signer(*material)
    return material[0], material[1]


def _make_output_folder(target: Path) -> bool:
    """Create the output folder (True if it did not exist), or fail in one line when it cannot be
    written: one error instead of one per file."""
    import os

    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInputError(f"{target}: cannot create the output folder ({error.strerror or error})") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise BadInputError(f"{target}: the output folder is not writable")
    return created


def _outside_folder(jobs: list[tuple[Path, Path]], target: Path) -> list[tuple[Path, Path]]:
    """Jobs whose output would land outside the output folder (a linked subfolder in it)."""
    root = target.resolve()
    return [job for job in jobs if root not in job[1].parent.resolve().parents and job[1].parent.resolve() != root]


def _audit_unaudited(existing, settings, loaded, codec, audit_log) -> int:
    """Outputs a killed run wrote but did not get to audit get their line now (see `AuditLog`)."""
    from ..io.audit import audit_record
    from ..marking.files import recovered_results

    audited = audit_log.outputs()
    unaudited = [job for job in existing if str(job[1].resolve()) not in audited]
    count = 0
    for result in recovered_results(unaudited, settings, loaded, codec):
        audit_log.append(audit_record(result, settings.payload, codec))
        count += 1
    return count


def _mark(input: Path, jobs, settings, loaded, codec, workers: int, audit_log, json_output: bool, *,
          escaping=(), existing=(), skipped=(), recovered: int = 0, engine: Engine = Engine.local,
          scheduler: str | None = None, key_file: Path | None = None) -> None:
    """Mark every job, audit and report each file as it completes; the batch summary and exit code."""
    from ..io.audit import audit_record
    from ..marking.files import FileOutcome, embed_files

    failures: list = [FileOutcome(source, destination, exit_code=2, error=f"{destination}: would be written outside "
                                  "the output folder (a link inside it); not marked") for source, destination in escaping]
    jobs = [job for job in jobs if job not in escaping]
    results: list[dict] = []
    single = not input.is_dir()
    with progress_bar(len(jobs) > 1 and not json_output) as progress, GracefulStop() as stop:
        task = progress.add_task("embedding", total=len(jobs)) if progress else None
        if engine is Engine.dask and jobs:
            from ..marking.cluster import embed_files_on_cluster

            outcomes = embed_files_on_cluster(jobs, settings, workers, scheduler, stop_requested=stop.requested,
                                              key_file=key_file)
        else:
            outcomes = embed_files(jobs, settings, loaded, codec, workers, stop_requested=stop.requested)
        for outcome in outcomes:
            if outcome.result is not None:
                results.append(outcome.result)
                audit_log.append(audit_record(outcome.result, settings.payload, codec))
                _warn_below_floor(outcome.result)
                if json_output:
                    emit_json(outcome.result)
            else:
                failures.append(outcome)
                if single:
                    raise (BadInputError if outcome.exit_code == 2 else CheckFailedError)(outcome.error)
                if json_output:
                    emit_json({"input": str(outcome.source), "error": outcome.error})
            if progress:
                progress.advance(task)
    if stop.requested():
        raise KeyboardInterrupt  # after every written file was reported and audited
    results.sort(key=lambda r: r["input"])
    if not json_output:
        _print_embed_table(results)
        _print_batch_summary(input, results, failures, existing, skipped, recovered,
                             audit_log.path if results or recovered else None)
    if failures:
        summary = f"{len(failures)} of {len(jobs) + len(escaping)} file(s) could not be marked (see above)"
        raise BadInputError(summary) if all(f.exit_code == 2 for f in failures) else CheckFailedError(summary)


def _print_batch_summary(input: Path, results, failures, existing, skipped, recovered, audit_path) -> None:
    """For folders: what was skipped and what failed, one line each, then the counts."""
    if not input.is_dir():
        if audit_path:
            stdout.print(f"  audit: {escape(str(audit_path))}", highlight=False, soft_wrap=True)
        return
    for outcome in sorted(failures, key=lambda f: str(f.source)):
        stderr.print(f"[red]failed:[/] {escape(outcome.error)}", highlight=False, soft_wrap=True)
    for path, why in skipped:
        stdout.print(f"skipped, {why}: {escape(str(path))}", highlight=False, soft_wrap=True)
    if existing:
        stdout.print(f"skipped, output already exists (--overwrite to redo): {len(existing)} file(s)",
                     highlight=False)
    if recovered:
        stdout.print(f"audited {recovered} output(s) an interrupted run wrote without its audit line",
                     highlight=False)
    stdout.print(f"marked {len(results)}, failed {len(failures)}, already done {len(existing)}, "
                 f"skipped {len(skipped)}" + (f"; audit: {escape(str(audit_path))}" if audit_path else ""),
                 highlight=False, soft_wrap=True)


def _print_embed_table(results: list[dict]) -> None:
    if not results:
        return
    if len(results) == 1:
        r = results[0]
        others = ", ".join(f"{name} {format_db(value)}" for name, value in r["psnr_views"].items()
                           if name != r["binding_view"])
        stdout.print(
            f"wrote {escape(r['output'])}\n"
            f"  PSNR {format_db(r['psnr'])} dB in its binding view, {r['binding_view']} (floor {r['psnr_min']:g} dB, "
            f"{r['psnr_domain']} domain)\n"
            + (f"  other views: {others} dB\n" if others else "")
            + f"  nominal peak {format_db(r['psnr_nominal'])} dB; SSIM {r['ssim']}, max |error| {r['max_abs_error']:g} "
            f"stored units, guard scale {r['guard_scale']:.3f}, {r['frames']} frame(s), "
            f"verified: {'yes' if r['verified'] else 'NO'}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"wm embed: {len(results)} file(s)")
    for column in ("file", "PSNR dB", "binding view", "SSIM", "max |err|", "guard", "verified"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            escape(Path(r["output"]).name), format_db(r["psnr"]), r["binding_view"],
            f"{r['ssim']:.4f}" if r["ssim"] is not None else "-", f"{r['max_abs_error']:g}",
            f"{r['guard_scale']:.2f}" if r["guard_scale"] is not None else "-",  # None: recovered
            "yes" if r["verified"] else "[red]NO[/]",
        )
    stdout.print(table)
    stdout.print(f"floor {results[0]['psnr_min']:g} dB in the {results[0]['psnr_domain']} domain", highlight=False)


def _warn_below_floor(result: dict) -> None:
    """One line when the chosen domain left a reader's view under the floor (design §1)."""
    if result["views_below_floor"]:
        stderr.print(f"[yellow]warning:[/] {escape(result['output'])}: below the {result['psnr_min']:g} dB floor in "
                     f"{', '.join(result['views_below_floor'])} (--psnr-domain {result['psnr_domain']} does not hold "
                     "there)", highlight=False, soft_wrap=True)


@app.command()
def extract(
    input: Annotated[Path, typer.Argument(help="Image file (DICOM, PNG, TIFF, JPEG) or folder.")],
    model: ModelOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    accept_format_1: Annotated[bool, typer.Option(
        "--accept-format-1", help="Also accept marks in the payload format wm wrote before v2: "
                                  "unauthenticated, so anyone could have forged them.")] = False,
    max_pixels: MaxPixelsOption = 100_000_000,
    engine: Annotated[Engine, typer.Option("--engine", help="A folder: local (this process) or dask (a Dask cluster: --scheduler, or a LocalCluster of --workers processes).")] = Engine.local,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="With --engine dask: a running scheduler's address (tcp://host:8786).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="With --engine dask and no --scheduler: LocalCluster worker processes.")] = 2,
    json_output: JsonOption = False,
) -> None:
    """Read the hidden message. Exit 0: found; 1: no valid watermark; 2: bad input."""
    from ..io.image import iter_image_files
    from ..io.isolation import IsolatedReader
    from ..marking.files import read_mark
    from ..marking.image import codec_for, legacy_codec_for
    from ..keys import key_kind

    if not input.exists():
        raise BadInputError(f"no such file or folder: {input}")
    check_engine(engine, scheduler)
    files = iter_image_files(input) if input.is_dir() else [input]
    if not files:
        raise BadInputError(f"no image files in {input}")
    secret = resolve_key(key, key_file)
    kind = key_kind(secret)
    single = len(files) == 1
    outcomes = {"found": 0, "missing": 0, "bad": 0}
    if engine is Engine.dask and not single:
        from ..marking.cluster import read_marks_on_cluster

        open_model(model)  # a missing or damaged model is one line here, not an error per file
        with progress_bar(not json_output) as progress, GracefulStop() as stop:
            task = progress.add_task("reading", total=len(files)) if progress else None
            for reading in read_marks_on_cluster(files, model, secret, max_pixels, accept_format_1, workers,
                                                 scheduler, stop_requested=stop.requested, key_file=key_file):
                outcomes[_report_mark(reading, kind, json_output, single)] += 1
                if progress:
                    progress.advance(task)
        if stop.requested():
            raise KeyboardInterrupt
    else:
        with IsolatedReader(max_pixels) as reader:  # its interpreter starts while the model loads
            loaded = open_model(model)
            codec = codec_for(loaded, secret)
            legacy = legacy_codec_for(loaded, secret)
            for path in files:
                reading = read_mark(path, reader.read, loaded, codec, legacy, accept_format_1)
                outcomes[_report_mark(reading, kind, json_output, single)] += 1
    missing, bad = outcomes["missing"], outcomes["bad"]
    if bad:
        raise BadInputError(f"{bad} of {len(files)} file(s) could not be read")
    if missing:
        raise NoWatermarkError(
            f"no valid watermark in {input}" if len(files) == 1 else f"no valid watermark in {missing} of {len(files)} files"
        )


def _report_mark(reading, kind: str, json_output: bool, single: bool) -> str:
    """Print one file's mark; 'found', 'missing' or 'bad' (a single file's error is raised)."""
    from ..payload import bytes_to_text

    path, decoded = reading.source, reading.decoded
    if reading.error is not None:
        if single:
            raise (BadInputError if reading.exit_code == 2 else CheckFailedError)(reading.error)
        stderr.print(f"[red]error:[/] {escape(reading.error)}", highlight=False, soft_wrap=True)
        if json_output:
            emit_json({"input": str(path), "error": reading.error})
        return "bad"
    text = bytes_to_text(decoded.message) if decoded.found else None
    hint = reading.format_1_seen
    if json_output:
        emit_json({"input": str(path), "found": decoded.found, "message": text,
                   "confidence": round(decoded.confidence, 4), "bit_errors": decoded.bit_errors,
                   "format": decoded.format if decoded.found else None,
                   "authenticated": decoded.authenticated and kind == "custom", "key": kind,
                   **({"format_1_mark": True} if hint else {})})
    elif single:
        if decoded.found:
            sys.stdout.write(text + "\n")
            if decoded.format == 1:
                stderr.print("[yellow]warning:[/] a format-1 mark: unauthenticated, anyone could have written it",
                             highlight=False)
    else:
        stdout.print(f"{escape(str(path))}: " + (escape(text) + (" (format 1, unauthenticated)" if decoded.format == 1 else "")
                                    if decoded.found else "[yellow]no watermark[/]"), highlight=False)
    if hint:
        stderr.print(f"{escape(str(path))}: holds a mark in the old payload format 1 (unauthenticated); read it with "
                     "--accept-format-1", highlight=False, soft_wrap=True)
    return "found" if decoded.found else "missing"
