"""`wm embed` and `wm extract`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadInputError, CheckFailedError, NoWatermarkError
from .app import GracefulStop, app, emit_json, format_db, open_model, progress_bar, stderr, stdout
from .options import (BATCH, INTEGRITY, KEY, OUTPUT, QUALITY, Compression, Device, DeviceOption, Engine, EngineOption,
                      JsonOption, KeyFileOption, KeyOption, MaxPixelsOption, ModelOption, PsnrDomain,
                      PsnrDomainOption, PsnrOption, PsnrPeak, PsnrPeakOption, RecipientOption, SchedulerOption,
                      ThreadsOption, WindowOption, examples, key_for_marking, key_for_reading, message_bytes,
                      parse_window, quality_floor)


@app.command(epilog=examples(
    ('wm embed scan.dcm "audit:7f3a9c"', "scan.wm.dcm beside it; scan.dcm is never touched"),
    ('wm embed a.dcm b.dcm "batch-7" -o marked/', "several files into a folder"),
    ('wm embed study/ "$(openssl rand -hex 8)" --key-file site.key', "a folder into study_wm/, keyed"),
))
def embed(
    arguments: Annotated[list[str], typer.Argument(
        metavar="INPUT... MESSAGE", show_default=False,
        help="Image files (DICOM, PNG, TIFF, JPEG) or one folder (recursive), then the MESSAGE to hide: UTF-8 text, "
             "or hex with --hex. Never a patient identifier: a random ID or a hash of your audit record.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", rich_help_panel=OUTPUT,
        help="Output file; a folder for a folder input or several files (created if missing).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", rich_help_panel=OUTPUT, help="Replace existing outputs (a re-run skips them otherwise).")] = False,
    compress: Annotated[Compression, typer.Option(
        "--compress", rich_help_panel=OUTPUT,
        help="DICOM output: none (Explicit VR Little Endian), rle or jpeg2000 (both lossless).")] = Compression.none,
    audit: Annotated[Optional[Path], typer.Option(
        "--audit", rich_help_panel=OUTPUT,
        help="Audit log (JSON lines) to append to; default: wm-audit.jsonl in the output folder.")] = None,
    psnr_min: PsnrOption = 40.0,
    psnr_domain: PsnrDomainOption = PsnrDomain.view,
    psnr_peak: PsnrPeakOption = PsnrPeak.nominal,
    window: WindowOption = None,
    max_abs_error: Annotated[Optional[float], typer.Option(
        "--max-abs-error", rich_help_panel=QUALITY, help="Per-pixel bound in stored units.")] = None,
    model_strength: Annotated[bool, typer.Option(
        "--model-strength", rich_help_panel=QUALITY,
        help="Keep the model's own strength instead of filling the budget to just above the floor (the default, "
             "most robust).")] = False,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified", rich_help_panel=QUALITY, help="Write even if the payload does not read back.")] = False,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    hex_message: Annotated[bool, typer.Option("--hex", rich_help_panel=KEY, help="MESSAGE is hexadecimal bytes.")] = False,
    no_restore_record: Annotated[bool, typer.Option(
        "--no-restore-record", rich_help_panel=INTEGRITY,
        help="Omit the encrypted record of the exact difference that `wm restore` and `wm verify` use (0 dB; a few "
             "% of the pixel data).")] = False,
    sign: Annotated[Optional[Path], typer.Option(
        "--sign", rich_help_panel=INTEGRITY,
        help="RSA private key (PEM, unencrypted): sign each DICOM output (PS3.15 Creator RSA, SHA-256).")] = None,
    cert: Annotated[Optional[Path], typer.Option(
        "--cert", rich_help_panel=INTEGRITY, help="The signer's X.509 certificate (PEM), with --sign.")] = None,
    recipient: RecipientOption = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, max=256, rich_help_panel=BATCH, help="Worker processes for a folder.")] = 1,
    threads: ThreadsOption = None,
    engine: EngineOption = Engine.local,
    scheduler: SchedulerOption = None,
    shard_spec: Annotated[Optional[str], typer.Option(
        "--shard", rich_help_panel=BATCH,
        help="I/N: mark only the deterministic I-th of N parts of a folder (0 <= I < N), for job arrays.")] = None,
    max_pixels: MaxPixelsOption = 100_000_000,
    json_output: JsonOption = False,
) -> None:
    """Hide MESSAGE in each INPUT, keeping every frame's PSNR at the floor in every view.

    Every written frame keeps PSNR >= --psnr-min in every view a reader uses (its data range and
    every window it declares), measured on the file as written; the mark is read back before the
    file is written. Exit 0: every file marked; 1: a file could not be marked; 2: bad input."""
    from ..io.audit import AuditLog, default_audit_path
    from ..marking.batch import folder_batch, plan_files
    from ..marking.files import EmbedSettings
    from ..marking.image import codec_for
    from ..marking.shards import parse_shard

    *inputs, message = arguments
    sources = [Path(item) for item in inputs]
    if not sources:
        raise BadInputError("give the image file(s) or folder to mark, then the MESSAGE to hide: "
                            "wm embed INPUT... MESSAGE")
    floor = quality_floor(psnr_min, psnr_peak, psnr_domain, max_abs_error)
    window_override = parse_window(window)
    payload = message_bytes(message, hex_message)
    if not payload:
        raise BadInputError("the MESSAGE is empty; give the ID or text to hide (e.g. a random ID: openssl rand -hex 8)")
    for source in sources:
        if not source.exists():
            raise BadInputError(f"no such file or folder: {source}")
    folders = [source for source in sources if source.is_dir()]
    if folders and len(sources) > 1:
        raise BadInputError(f"{folders[0]}: a folder is marked on its own; give one folder, or files only")
    if (shard_spec or engine is Engine.dask) and not folders:
        raise BadInputError("--shard and --engine dask apply to a folder input")
    check_engine(engine, scheduler)
    part = parse_shard(shard_spec) if shard_spec else None
    secret = key_for_marking(key, key_file)
    from ..model.device import model_device

    networks_on = model_device(device.value)  # a GPU asked for and absent: one line, before any file
    # Loaded on the CPU: a run of several files forks its workers from this process, and each
    # moves the networks to the GPU itself (`threads.in_workers`).
    loaded = open_model(model, "cpu")
    codec = codec_for(loaded, secret)
    codec.encode(payload)  # a too-long message fails here, before any file is touched
    signing = _signing_material(sign, cert)
    recipient_pem = _recipient_certificate(recipient, no_restore_record)
    settings = EmbedSettings(payload=payload, floor=floor, window_override=window_override, overwrite=overwrite,
                             allow_unverified=allow_unverified, compression=compress.value,
                             fill_budget=not model_strength, model=model, device=device.value, max_pixels=max_pixels, key=secret,
                             restore_record=not no_restore_record, signing=signing, recipient=recipient_pem)
    run = _Run(settings, loaded, codec, json_output, single=len(sources) == 1 and not folders, networks_on=networks_on)
    if folders:
        target = output or _folder_output(folders[0])
        with folder_batch(folders[0], target, overwrite=overwrite, max_pixels=max_pixels, part=part) as batch:
            audit_log = AuditLog(audit or default_audit_path(target, True))
            audit_log.check_writable()
            run.mark(batch, audit_log, workers, engine=engine, scheduler=scheduler, key_file=key_file, threads=threads)
        return
    batch = plan_files(sources, output, overwrite, max_pixels)
    audit_log = AuditLog(audit or default_audit_path(batch.jobs[0][1] if batch.jobs else sources[0], False))
    audit_log.check_writable()
    run.mark(batch, audit_log, workers, threads=threads)


def _folder_output(folder: Path) -> Path:
    folder = folder.resolve()
    return folder.with_name(folder.name + "_wm")


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


def _recipient_certificate(recipient: Path | None, no_restore_record: bool) -> bytes | None:
    """--recipient's PEM certificate, checked before any file is marked."""
    if recipient is None:
        return None
    if no_restore_record:
        raise BadInputError("--recipient encrypts the restoration record: it cannot go with --no-restore-record")
    from ..integrity.envelope import read_pem, recipient_from_pem

    pem = read_pem(recipient, "--recipient")
    recipient_from_pem(pem, f"--recipient {recipient}")
    return pem


class _Run:
    """One `wm embed`: marks a batch, audits and reports each file as it completes, then the
    summary and the exit code."""

    def __init__(self, settings, loaded, codec, json_output: bool, single: bool, networks_on: str = "cpu") -> None:
        self.settings, self.loaded, self.codec, self.networks_on = settings, loaded, codec, networks_on
        self.json_output, self.single = json_output, single

    def mark(self, batch, audit_log, workers: int, *, engine: Engine = Engine.local, scheduler: str | None = None,
             key_file: Path | None = None, threads: int | None = None) -> None:
        from ..io.isolation import IsolatedReader
        from ..marking.batch import Written, audit_line, recover_unaudited
        from ..marking.files import FileOutcome, embed_files
        from ..marking.threads import default_threads

        if self.single and batch.existing:
            raise BadInputError(f"{batch.existing[0][1]}: already exists (use --overwrite to replace it)")
        if batch.created_folder is not None and not self.json_output:
            stderr.print(f"created the output folder {escape(str(batch.created_folder))}", highlight=False,
                         soft_wrap=True)
        recovered, unproven = 0, []
        if batch.existing:  # outputs of an earlier run: any it wrote without an audit line is audited now
            with IsolatedReader(self.settings.max_pixels) as reader:
                for item, result in recover_unaudited(
                        (Written(source, output, self.settings) for source, output in batch.existing), audit_log,
                        self.loaded, self.codec, reader.read):
                    recovered += result is not None
                    if result is None:  # not this run's mark, nor audited: never counted as done
                        unproven.append(FileOutcome(item.source, item.output, exit_code=2, error=(
                            f"{item.output}: exists, without an audit line or this message's mark (not done; "
                            "--overwrite to redo)")))
            batch.existing = [job for job in batch.existing if job[1] not in {o.destination for o in unproven}]
            if unproven and self.single:
                raise BadInputError(unproven[0].error)
        failures = [FileOutcome(job[0], job[1], exit_code=2, error=why) for job, why in batch.refused] + unproven
        for failure in failures:
            self._report_failure(failure)
        results = []
        with progress_bar(len(batch.jobs) > 1 and not self.json_output) as progress, GracefulStop() as stop:
            task = progress.add_task("embedding", total=len(batch.jobs)) if progress else None
            if engine is Engine.dask and batch.jobs:
                from ..marking.cluster import embed_files_on_cluster

                outcomes = embed_files_on_cluster(batch.jobs, self.settings, workers, scheduler,
                                                  stop_requested=stop.requested, key_file=key_file)
            else:
                at_once = default_threads(len(batch.jobs), threads, on_gpu=self.networks_on != "cpu")
                outcomes = embed_files(batch.jobs, self.settings, self.loaded, self.codec, workers,
                                       stop_requested=stop.requested, threads=at_once, device=self.networks_on)
            for outcome in outcomes:
                if outcome.result is not None:
                    results.append(outcome.result)
                    audit_log.append(audit_line(outcome.result, self.settings.payload, self.codec))
                    _warn_below_floor(outcome.result)
                    if self.json_output:
                        emit_json(outcome.result.as_json())
                else:
                    if self.single:
                        raise (BadInputError if outcome.exit_code == 2 else CheckFailedError)(outcome.error)
                    failures.append(outcome)
                    self._report_failure(outcome)
                if progress:
                    progress.advance(task)
        if stop.requested():
            raise KeyboardInterrupt  # after every written file was reported and audited
        results.sort(key=lambda r: r.input)
        if not self.json_output:
            _print_embed_table(results)
            _print_batch_summary(self.single, results, failures, batch.existing, batch.skipped, recovered,
                                 audit_log.path if results or recovered else None)
        if failures:
            summary = (f"{len(failures)} of {len(batch.jobs) + len(batch.refused) + len(unproven)} file(s) "
                       "could not be marked"
                       + ("" if self.json_output else " (see above)"))
            raise BadInputError(summary) if all(f.exit_code == 2 for f in failures) else CheckFailedError(summary)

    def _report_failure(self, outcome) -> None:
        if self.json_output:
            emit_json({"input": str(outcome.source), "error": outcome.error, "exit_code": outcome.exit_code})


def _print_batch_summary(single: bool, results, failures, existing, skipped, recovered, audit_path) -> None:
    """For batches: what was skipped and what failed, one line each, then the counts."""
    if single:
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


# What a fragile mark (`marking.fragile`) is, wherever one is reported.
_FRAGILE_NOTE = ("a fragile mark: the frame is too small or too flat for the robust one; it reads back from lossless "
                 "copies only (any change of the values removes it)")


def _print_embed_table(results: list) -> None:
    if not results:
        return
    if len(results) == 1:
        r = results[0]
        others = ", ".join(f"{name} {format_db(value)}" for name, value in r.psnr_views.items()
                           if name != r.binding_view)
        stdout.print(
            f"wrote {escape(r.output)}\n"
            f"  PSNR {format_db(r.psnr)} dB in its binding view, {r.binding_view} (floor {r.psnr_min:g} dB, "
            f"{r.psnr_domain} domain)\n"
            + (f"  other views: {others} dB\n" if others else "")
            + f"  nominal peak {format_db(r.psnr_nominal)} dB; SSIM {r.ssim}, max |error| {r.max_abs_error:g} "
            f"stored units, guard scale {r.guard_scale:.3f}, {r.frames} frame(s), "
            f"verified: {'yes' if r.verified else 'NO'}"
            + (f"\n  {_FRAGILE_NOTE}" if r.fragile else ""), highlight=False, soft_wrap=True)
        return
    table = Table(title=f"wm embed: {len(results)} file(s)")
    for column in ("file", "PSNR dB", "binding view", "SSIM", "max |err|", "guard", "verified"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            escape(Path(r.output).name), format_db(r.psnr), r.binding_view,
            f"{r.ssim:.4f}" if r.ssim is not None else "-", f"{r.max_abs_error:g}",
            f"{r.guard_scale:.2f}" if r.guard_scale is not None else "-",  # None: recovered
            ("yes (fragile)" if r.fragile else "yes") if r.verified else "[red]NO[/]",
        )
    stdout.print(table)
    stdout.print(f"floor {results[0].psnr_min:g} dB in the {results[0].psnr_domain} domain", highlight=False)


def _warn_below_floor(result) -> None:
    """One line when the chosen domain left a reader's view under the floor (design §1)."""
    if result.views_below_floor:
        stderr.print(f"[yellow]warning:[/] {escape(result.output)}: below the {result.psnr_min:g} dB floor in "
                     f"{', '.join(result.views_below_floor)} (--psnr-domain {result.psnr_domain} does not hold "
                     "there)", highlight=False, soft_wrap=True)


@app.command(epilog=examples(
    ("wm extract scan.wm.dcm", "prints the message; exit 0"),
    ("wm extract *.wm.dcm --json", "one JSON line per file; exit 0 only if every file holds a mark"),
    ("wm extract export.jpg --key-file site.key", "a JPEG export of a keyed mark"),
))
def extract(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="INPUT...", help="Image files (DICOM, PNG, TIFF, JPEG) or folders.")],
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    accept_format_1: Annotated[bool, typer.Option(
        "--accept-format-1", rich_help_panel=KEY,
        help="Also accept marks in the payload format wm wrote before v2: unauthenticated, so anyone could have "
             "forged them.")] = False,
    max_pixels: MaxPixelsOption = 100_000_000,
    engine: EngineOption = Engine.local,
    scheduler: SchedulerOption = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, max=256, rich_help_panel=BATCH,
        help="With --engine dask and no --scheduler: LocalCluster worker processes.")] = 2,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Read the hidden message.

    Exit 0: a valid, authenticated payload in every file (the message on stdout); 1: no valid
    watermark (never a garbled message); 2: bad input."""
    from ..io.discovery import collect_image_files
    from ..keys import key_kind
    from ..marking.files import read_mark
    from ..marking.image import codec_for, legacy_codec_for, older_readers
    from ..marking.threads import ReaderPerThread, default_threads, forks_workers, in_workers
    from ..model.device import model_device

    check_engine(engine, scheduler)
    files = collect_image_files(inputs)
    if not files:
        raise BadInputError(f"no image files in {', '.join(map(str, inputs))}")
    secret = key_for_reading(key, key_file)
    kind = key_kind(secret)
    single = len(files) == 1
    outcomes = {"found": 0, "missing": 0, "bad": 0}
    hints: list[str] = []
    if engine is Engine.dask and not single:
        from ..marking.cluster import read_marks_on_cluster

        model_device(device.value)  # a missing model or device is one line here, not an error per file
        open_model(model, "cpu")
        with progress_bar(not json_output) as progress, GracefulStop() as stop:
            task = progress.add_task("reading", total=len(files)) if progress else None
            for reading in read_marks_on_cluster(files, model, secret, max_pixels, accept_format_1, workers,
                                                 scheduler, stop_requested=stop.requested, key_file=key_file,
                                                 device=device.value):
                outcomes[_report_mark(reading, kind, json_output, single, hints)] += 1
                if progress:
                    progress.advance(task)
        if stop.requested():
            raise KeyboardInterrupt
    else:
        networks_on = model_device(device.value)
        at_once = default_threads(len(files), threads, on_gpu=networks_on != "cpu")
        # Files at once are read in forked worker processes where there is a core for each, or
        # with the networks on a GPU (`runs_in_processes`), each of which starts a decoder of its
        # own; otherwise on threads of this process, whose decoders start while the model loads.
        forked = forks_workers(at_once, [], networks_on)  # the models load on the CPU: `in_workers` follows this
        with ReaderPerThread(max_pixels).prestart(0 if forked else at_once) as readers:
            loaded = open_model(model, "cpu")  # the networks go to `networks_on` in `in_workers`
            codec = codec_for(loaded, secret)
            legacy = legacy_codec_for(loaded, secret)
            older = older_readers(loaded, secret)

            def read(path: Path):
                return read_mark(path, readers.read, loaded, codec, legacy, accept_format_1, older)

            for reading in in_workers(read, files, at_once, [loaded, *(reader for reader, _ in older)], networks_on,
                                      lost=_lost_reading, forked=forked):
                outcomes[_report_mark(reading, kind, json_output, single, hints)] += 1
    missing, bad = outcomes["missing"], outcomes["bad"]
    if bad:
        raise BadInputError(f"{bad} of {len(files)} file(s) could not be read")
    if missing:
        where = f"in {files[0]}" if single else f"in {missing} of {len(files)} files"
        raise NoWatermarkError(f"no valid watermark {where}" + (f"; {hints[0]}" if len(set(hints)) == 1 and (
            single or len(hints) == missing) else ""))


def _lost_reading(path: Path):
    from ..marking.files import MarkReading

    return MarkReading(path, error=f"{path}: the worker process reading it died (twice); not read", exit_code=1)


def _report_mark(reading, kind: str, json_output: bool, single: bool, hints: list[str]) -> str:
    """Print one file's mark; 'found', 'missing' or 'bad' (a single file's error is raised)."""
    from ..payload import bytes_to_text

    path, decoded = reading.source, reading.decoded
    if reading.error is not None:
        if single:
            raise (BadInputError if reading.exit_code == 2 else CheckFailedError)(reading.error)
        stderr.print(f"[red]error:[/] {escape(reading.error)}", highlight=False, soft_wrap=True)
        if json_output:
            emit_json({"input": str(path), "error": reading.error, "exit_code": reading.exit_code})
        return "bad"
    text = bytes_to_text(decoded.message) if decoded.found else None
    if reading.hint:
        hints.append(reading.hint)
    if json_output:
        emit_json({"input": str(path), "found": decoded.found, "message": text,
                   "confidence": round(decoded.confidence, 4), "bit_errors": decoded.bit_errors,
                   "format": decoded.format if decoded.found else None,
                   "authenticated": decoded.authenticated and kind == "custom", "key": kind,
                   "protected": decoded.found and kind == "custom" and reading.unprotected_model is None,
                   **({"model": reading.unprotected_model} if reading.unprotected_model else {}),
                   **({"hint": reading.hint} if reading.hint else {}),
                   **({"format_1_mark": True} if reading.format_1_seen else {}),
                   **({"fragile": True} if decoded.found and decoded.fragile else {})})
    elif single:
        if decoded.found:
            sys.stdout.write(text + "\n")
            if decoded.format == 1:
                stderr.print("[yellow]warning:[/] a format-1 mark: unauthenticated, anyone could have written it",
                             highlight=False)
    else:
        shown = (escape(text) + (" (format 1, unauthenticated)" if decoded.format == 1 else "")
                 + (" (fragile mark)" if decoded.fragile else "") if decoded.found
                 else "[yellow]no watermark[/]" + (f" ({escape(reading.hint)})" if reading.hint else ""))
        stdout.print(f"{escape(str(path))}: {shown}", highlight=False, soft_wrap=True)
    if reading.unprotected_model:
        stderr.print(f"[yellow]warning:[/] {escape(str(path))}: marked by {reading.unprotected_model}, a model whose "
                     "marks do not depend on the key: anyone with wm can read, remove or copy it; mark the original "
                     "again with the current model", highlight=False, soft_wrap=True)
    if decoded.found and decoded.fragile and single and not json_output:
        stderr.print(f"[yellow]note:[/] {_FRAGILE_NOTE}", highlight=False, soft_wrap=True)
    if reading.format_1_seen:
        stderr.print(f"{escape(str(path))}: holds a mark in the old payload format 1 (unauthenticated); read it with "
                     "--accept-format-1", highlight=False, soft_wrap=True)
    return "found" if decoded.found else "missing"
