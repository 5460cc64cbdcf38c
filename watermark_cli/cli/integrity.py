"""`wm restore` and `wm verify`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import BadInputError, CheckFailedError, WmError
from .app import app, emit_json, open_model, stderr, stdout
from .options import (INTEGRITY, OUTPUT, JsonOption, KeyFileOption, KeyOption, MaxPixelsOption, ModelOption,
                      RecipientKeyOption, RecipientOption, examples, key_for_reading, recipient_for_opening)


TRUST_VARIABLE = "WM_TRUST"
TrustOption = Annotated[Optional[list[Path]], typer.Option(
    "--trust", rich_help_panel=INTEGRITY,
    help="A PEM certificate or bundle whose signatures count: CA certificates (a signer's certificate must be "
         f"issued under one) or signers' own certificates (pinned). Repeatable. Default: the files named in "
         f"{TRUST_VARIABLE} (separated by '{os.pathsep}').")]


def trusted_signers(paths: list[Path] | None):
    """The trust anchors of --trust, else of the WM_TRUST setting (empty: no signer is trusted,
    and only a secret key, or the signer its record pins, proves a file)."""
    from ..integrity.envelope import read_pem
    from ..integrity.signature import load_trust

    if not paths:
        setting = os.environ.get(TRUST_VARIABLE, "")
        paths = [Path(part) for part in setting.split(os.pathsep) if part.strip()]
        where = TRUST_VARIABLE
    else:
        where = "--trust"
    return load_trust([(str(path), read_pem(path, where)) for path in paths])


def _default_restored(marked: Path) -> Path:
    """scan.wm.dcm → scan.restored.dcm (beside the marked file)."""
    stem = marked.name[: -len(marked.suffix)] if marked.suffix else marked.name
    stem = stem[: -len(".wm")] if stem.endswith(".wm") else stem
    return marked.with_name(f"{stem}.restored{marked.suffix}")


@app.command(epilog=examples(
    ("wm restore scan.wm.dcm --key-file site.key", "scan.restored.dcm: the original's pixel data and UID"),
))
def restore(
    marked: Annotated[Path, typer.Argument(help="A file written by `wm embed` (DICOM, PNG or TIFF).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the original (default: NAME.restored.EXT).")] = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    recipient: RecipientOption = None,
    recipient_key: RecipientKeyOption = None,
    keep_header_changes: Annotated[bool, typer.Option(
        "--keep-header-changes",
        help="Restore even when what a reader sees or whose image it is changed since marking (the "
             "changes are kept and named).")] = False,
    trust: TrustOption = None,
    accept_unproven: Annotated[bool, typer.Option(
        "--accept-unproven",
        help="Restore what a record that proves nothing describes (public default key; a recipient's "
             "record without a trusted signature): anyone could have sealed it.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Write the original of MARKED back, bit-exact.

    From the restoration record `wm embed` stored in it: pixels checked against the original's
    SHA-256 before anything is written; the original SOP Instance UID back. Exit 1: no record,
    not authentic, wrong key, pixels changed since marking, an identity or presentation change
    since marking (named; --keep-header-changes to restore under it), or a record that proves
    nothing: under the public default key, or sealed for a recipient (anyone with the certificate
    can) without a signature by a signer --trust names (--accept-unproven to restore it all the
    same). Other header changes are kept and named."""
    from ..marking.restoration import restore_file

    if not marked.is_file():
        raise BadInputError(f"no such file: {marked}")
    result = restore_file(marked, output or _default_restored(marked), key_for_reading(key, key_file), overwrite,
                          recipient_for_opening(recipient, recipient_key), keep_header_changes,
                          trusted_signers(trust), accept_unproven)
    result_changes = result.pop("header_changes_described")
    if json_output:
        emit_json(result)
        return
    what = ("pixel data identical to the original" if result["proved"] else
            f"pixel data as the record describes the original (unproven: {result['unproven']})")
    stdout.print(f"restored {escape(result['output'])}: {escape(what)} "
                 f"(SHA-256 {result['pixels_sha256'][:16]}…)"
                 + (f", SOP Instance UID {result['sop_instance_uid']}" if result["sop_instance_uid"] else "")
                 + (f", {result['transfer_syntax']}" if result["transfer_syntax"] else ""),
                 highlight=False, soft_wrap=True)
    if result_changes:
        stdout.print(f"  kept, made since marking: {escape(result_changes)}", highlight=False, soft_wrap=True)


@app.command(epilog=examples(
    ("wm verify scan.wm.dcm --key-file site.key", "exit 0 only when intact and proved by the secret key"),
    ("wm verify *.wm.dcm --key-file site.key --json", "one JSON line per file"),
    ("wm verify scan.wm.dcm --key-file site.key --map changes.png", "where the pixels changed, outlined in red"),
    ("wm verify scan.wm.dcm --recipient me.pem --recipient-key me.key --trust hospital-ca.pem",
     "a recipient's record: proved only by a signature under the trusted CA"),
))
def verify(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="INPUT...", help="Marked files (DICOM, PNG, TIFF; a JPEG export has no record).")],
    model: ModelOption = None,
    key: KeyOption = None,
    key_file: KeyFileOption = None,
    change_map: Annotated[Optional[Path], typer.Option(
        "--map", rich_help_panel=OUTPUT,
        help="Write a PNG of the frames with changed blocks outlined in red (one input only).")] = None,
    recipient: RecipientOption = None,
    recipient_key: RecipientKeyOption = None,
    trust: TrustOption = None,
    max_pixels: MaxPixelsOption = 100_000_000,
    json_output: JsonOption = False,
) -> None:
    """Say whether a marked file is intact since marking, and what changed.

    Is the mark there, is the restoration record there and authentic, have the pixels changed
    since marking (which blocks), has anything changed that alters what a reader sees or whose
    image it is (each change named), do the file's digital signatures hold and are they by trusted
    signers. Exit 0 only when every file is intact and proved (a secret key; a recipient's record
    only with a trusted signature; never the public default key); 1 tampered, unproven, no mark or
    no record; 2 bad input."""
    from ..io.image import read_image
    from ..marking.image import codec_for, older_readers
    from ..marking.verification import verify_image, write_change_map

    if len(inputs) == 1 and not inputs[0].is_file():
        raise BadInputError(f"no such file: {inputs[0]}")
    if change_map is not None and len(inputs) > 1:
        raise BadInputError("--map draws one file's changes: give one INPUT with it")
    secret = key_for_reading(key, key_file)
    opener = recipient_for_opening(recipient, recipient_key)
    anchors = trusted_signers(trust)
    loaded = open_model(model)
    codec = codec_for(loaded, secret)
    older = older_readers(loaded, secret)
    problems, unreadable = [], 0
    for path in inputs:
        try:
            image = read_image(path, max_pixels)
            result = verify_image(image, secret, loaded, codec, opener, older, anchors)
            if change_map is not None:
                write_change_map(image, result, change_map)
        except WmError as error:  # one bad file never stops the others
            if len(inputs) == 1:
                raise
            unreadable += 1
            stderr.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            if json_output:
                emit_json({"input": str(path), "error": str(error), "exit_code": error.exit_code})
            continue
        if json_output:
            emit_json(result.as_json())
        else:
            _print_verification(result, change_map)
        if not result.intact:
            problems.append(f"{path}: {result.status}")
    if unreadable:
        raise BadInputError(f"{unreadable} of {len(inputs)} file(s) could not be verified (see above)")
    if problems:
        raise CheckFailedError(problems[0] if len(inputs) == 1 else
                               f"{len(problems)} of {len(inputs)} files are not proved intact (see above)")


def _print_verification(result, change_map: Path | None) -> None:
    yes_no = {True: "[green]yes[/]", False: "[red]no[/]"}
    lines = [f"{escape(result.input)}",
             f"  mark: {yes_no[result.mark_found]}" + (f", message {escape(result.message)!r}" if result.mark_found else "")
             + (" (fragile: lossless copies only)" if result.mark_fragile else ""),
             f"  restoration record: {yes_no[result.record_found]}"
             + (f", authentic {yes_no[result.record_authentic]}" if result.record_found else "")]
    if result.record_authentic:
        changed = ", ".join(f"frame {f} row {r} col {c}" for f, r, c in result.changed_blocks[:8])
        more = f" and {len(result.changed_blocks) - 8} more" if len(result.changed_blocks) > 8 else ""
        lines.append(f"  pixels: {len(result.changed_blocks)} of {result.n_blocks} blocks of "
                     f"{result.block_size}x{result.block_size} changed" + (f" ({changed}{more})" if changed else ""))
    if result.record_authentic:
        from ..integrity.binding import describe

        header = ("[red]not bound (older record)[/]" if not result.bound else
                  f"[red]{escape(describe(result.binding_changes))}[/]" if result.binding_changes else "unchanged")
        lines.append(f"  presentation and identity: {header}")
        lines.append(f"  authenticity: {result.authenticity}")
    for check in result.signatures:
        trust = ("trusted" if check.trusted else
                 "pinned by the record" if result.counts(check) else f"not trusted: {check.trust_problem}")
        lines.append(f"  signature {check.uid} by {escape(check.signer)}: "
                     + (f"[green]valid[/], {escape(trust)}" if check.valid else
                        f"[red]invalid[/] ({escape(check.reason)})"))
    if change_map is not None:
        lines.append(f"  map: {escape(str(change_map))}")
    lines.append(f"  → {'[green]' if result.intact else '[red]'}{result.status}[/]")
    stdout.print("\n".join(lines), highlight=False, soft_wrap=True)
