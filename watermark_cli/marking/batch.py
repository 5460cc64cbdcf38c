"""A batch of files to mark, one place for `wm embed` and `wm serve`: which (input, output) jobs a
request gives, what an earlier, interrupted run left behind, and the audit trail's lines.

- `plan_files` and `folder_batch` turn inputs into jobs. Output names never collide: two inputs
  that would be written to one output are a one-line failure for the second, never a
  replaced file. A JPEG (lossy, never written) becomes a PNG named after the whole input name.
- `folder_batch` holds the output folder for one writer while the batch runs (a shard holds its
  own part), removes the temporaries a killed run left, sets aside the outputs that already
  exist (a re-run does only what is missing; `--overwrite` redoes them) and checks the disk.
- `recover_unaudited` audits the outputs a killed run wrote without their audit line, measured
  again from the two files; `audit_line` is the one audit line of a marked file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import BadInputError, WmError
from ..io.audit import AuditLog
from ..io.discovery import scan_folder
from ..io.medical_image import DEFAULT_MAX_PIXELS, JPEG_SUFFIXES
from ..io.writing import exclusive_folder, remove_stale_temporaries
from ..payload import bytes_to_text
from .files import EmbedResult, EmbedSettings, check_free_space, recovered_result
from .shards import shard

Job = tuple[Path, Path]  # (input, output)


def default_output(source: Path) -> Path:
    """Beside the input: NAME.wm.EXT; a suffix-less file (DICOM) gets .wm.dcm. A JPEG is written
    as PNG and keeps its whole name (scan.jpg → scan.jpg.wm.png), so it never takes the output of
    a PNG of the same stem."""
    source = source.resolve()
    suffix = source.suffix.lower()
    if not suffix:
        return source.with_name(source.name + ".wm.dcm")
    if suffix in JPEG_SUFFIXES:
        return source.with_name(source.name + ".wm.png")
    return source.with_name(f"{source.stem}.wm{source.suffix}")


def output_in_folder(source: Path, root: Path, target: Path) -> Path:
    """Where a file of input folder `root` goes in output folder `target`: the same relative
    path, except that a JPEG becomes a PNG of its whole name (scan.jpg → scan.jpg.png)."""
    relative = source.relative_to(root)
    if source.suffix.lower() in JPEG_SUFFIXES:
        relative = relative.with_name(relative.name + ".png")
    return target / relative


@dataclass
class Batch:
    """What one `wm embed` will do: the jobs to mark and what it leaves alone, with the reasons."""

    jobs: list[Job]
    refused: list[tuple[Job, str]] = field(default_factory=list)  # each a one-line failure of that file
    existing: list[Job] = field(default_factory=list)  # outputs already there (skipped without --overwrite)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files below a folder that are not images
    created_folder: Path | None = None  # the output folder this run created (said to the user)


def plan_files(sources: list[Path], output: Path | None, overwrite: bool,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Batch:
    """Jobs for files named one by one: each beside its input, or into the file `output` (one
    input), or into the folder `output` (several inputs, or an existing folder), by its default
    name; the disk checked as for a folder (against the first output's folder)."""
    created = None
    if output is not None and (len(sources) > 1 or output.is_dir()):
        if output.exists() and not output.is_dir():
            raise BadInputError(f"-o {output}: several inputs need an output folder, and this is a file")
        created = output if make_output_folder(output) else None
        jobs = [(source, output / default_output(source).name) for source in sources]
    elif output is not None:
        created = output.parent if make_output_folder(output.parent) else None
        jobs = [(sources[0], output)]
    else:
        jobs = [(source, default_output(source)) for source in sources]
    batch = Batch(*_without_collisions(jobs), created_folder=created)
    if not overwrite:
        _set_aside_existing(batch)
    if batch.jobs:
        check_free_space([job[0] for job in batch.jobs], batch.jobs[0][1].parent, max_pixels)
    return batch


@contextmanager
def folder_batch(source: Path, target: Path, *, overwrite: bool, max_pixels: int = DEFAULT_MAX_PIXELS,
                 part: tuple[int, int] | None = None) -> Iterator[Batch]:
    """The batch of input folder `source` into output folder `target`, while holding `target`
    (or this shard of it) for this run alone. A run that writes nothing into a folder it created
    leaves no folder."""
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{target}: exists and is not a folder")
    if target.resolve() == source.resolve():
        raise BadInputError(f"{target}: the output folder is the input folder; give another one with -o")
    images, skipped = scan_folder(source, exclude=target)
    if not images:
        raise BadInputError(f"no image files in {source}")
    created = make_output_folder(target)
    try:
        jobs = [(path, output_in_folder(path, source, target)) for path in images]
        if part is not None:
            jobs = shard(jobs, source, *part)
        # A second run into the same folder (the same shard) fails at once.
        with exclusive_folder(target, f"shard-{part[0]}-of-{part[1]}" if part else None):
            remove_stale_temporaries(target, {job[1] for job in jobs} if part else None)
            jobs, refused = _without_collisions(jobs)
            escaping = set(_outside_folder(jobs, target))
            refused += [(job, f"{job[1]}: would be written outside the output folder (a link inside it); not marked")
                        for job in jobs if job in escaping]
            batch = Batch([job for job in jobs if job not in escaping], refused, skipped=skipped,
                          created_folder=target if created else None)
            if not overwrite:
                _set_aside_existing(batch)
            check_free_space([job[0] for job in batch.jobs], target, max_pixels)
            yield batch
    finally:
        if created and all(entry.name.startswith(".wm-shard-") for entry in target.iterdir()):
            for lock in target.iterdir():  # a shard's lock file, in a folder this run created
                lock.unlink()
            target.rmdir()


def make_output_folder(target: Path) -> bool:
    """Create the output folder (True if it did not exist), or fail in one line when it cannot be
    written: one error instead of one per file."""
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInputError(f"{target}: cannot create the output folder ({error.strerror or error})") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise BadInputError(f"{target}: the output folder is not writable")
    return created


def _without_collisions(jobs: list[Job]) -> tuple[list[Job], list[tuple[Job, str]]]:
    """The jobs whose output no earlier job takes; the others refused, naming the first one."""
    taken: dict[Path, Path] = {}
    kept, refused = [], []
    for job in jobs:
        key = job[1].resolve()
        if key in taken:
            refused.append((job, f"{job[0]}: would be written to {job[1]}, the output of {taken[key]}; "
                                 "rename one of them (nothing is replaced)"))
        else:
            taken[key] = job[0]
            kept.append(job)
    return kept, refused


def _outside_folder(jobs: list[Job], target: Path) -> list[Job]:
    """Jobs whose output would land outside the output folder (a linked subfolder in it)."""
    root = target.resolve()
    return [job for job in jobs if root not in job[1].parent.resolve().parents and job[1].parent.resolve() != root]


def _set_aside_existing(batch: Batch) -> None:
    """A re-run does not redo work: outputs are written atomically, so one that exists is whole."""
    batch.existing += [job for job in batch.jobs if job[1].exists()]
    batch.jobs = [job for job in batch.jobs if not job[1].exists()]


# ---- the audit trail -------------------------------------------------------------------------

# The result's figures copied into the audit line, in this order.
_AUDITED_FIGURES = (
    "psnr", "psnr_min", "psnr_domain", "binding_view", "psnr_peak", "psnr_peak_kind", "psnr_views",
    "views_below_floor", "psnr_nominal", "ssim", "max_abs_error", "frames", "frame_psnr", "guard_scale", "verified",
    "confidence", "restoration_record_bytes", "signed", "fragile",
)


def audit_line(result: EmbedResult, payload: bytes, codec, **extra) -> dict:
    """The audit line of one marked file (`extra`: more facts, e.g. the node's SOP Instance UID)."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "wm_version": __version__,
        "input": str(Path(result.input).resolve()),
        "output": str(Path(result.output).resolve()),
        "input_file_sha256": result.input_file_sha256,
        "input_pixels_sha256": result.input_pixels_sha256,
        "output_file_sha256": result.output_file_sha256,
        "output_pixels_sha256": result.output_pixels_sha256,
        "compression": result.compression,
        "payload": {
            "text": bytes_to_text(payload),
            "hex": payload.hex(),
            "bytes": len(payload),
            "raw_bits": codec.n_bits,
            "format": codec.format,
            "key": result.key,  # 'default' or 'custom': the key itself is never written
        },
        "model": result.model,
        "model_weights_sha256": result.model_weights_sha256,
        **{name: getattr(result, name) for name in _AUDITED_FIGURES},
        # Audited by a later run: the file was written by a run killed before its line.
        **({"recovered": True} if result.recovered else {}),
        **extra,
    }


@dataclass(frozen=True)
class Written:
    """An output on disk that may lack its audit line, with what it was marked with."""

    source: Path
    output: Path
    settings: EmbedSettings
    extra: dict = field(default_factory=dict)  # more audit facts (the node's SOP Instance UID)


def recover_unaudited(candidates: Iterable[Written], audit_log: AuditLog, loaded, codec,
                      read) -> Iterator[tuple[Written, EmbedResult | None]]:
    """Each candidate output that exists without an audit line: audited now (its result) when it
    holds its message, measured again from the two files; else None, left to the caller (the
    command line leaves it to --overwrite, the node marks the instance anew)."""
    audited = audit_log.outputs()
    for item in candidates:
        if not item.output.exists() or str(item.output.resolve()) in audited:
            continue
        try:
            result = recovered_result(item.source, item.output, item.settings, loaded, codec, read)
        except WmError:
            result = None
        if result is not None:
            audit_log.append(audit_line(result, item.settings.payload, codec, **item.extra))
        yield item, result
