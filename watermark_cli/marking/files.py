"""Marking files: one image in, one verified image file out, in this process or in worker processes.

`embed_file` is the whole life of one file: read, mark under the floor, check that the payload
reads back, write through a temporary file that is re-read and checked to hold the measured
values, bit for bit, before it is moved into place, and return every figure the summary table
and the audit trail need. `embed_files` runs many of them, in order in this process or spread
over `workers` processes, and yields each outcome as it completes, so that a failed file never
stops the batch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import BadInputError, CheckFailedError, WmError
from ..hashing import file_sha256, pixel_sha256
from ..integrity import containers
from ..integrity.binding import element_label, numbers_not_in_dicom_syntax, other_vr_name
from ..integrity.envelope import envelope, new_record_key, recipient_from_pem
from ..integrity.record import seal
from ..integrity.signature import load_signer
from ..io.dicom import dicom_high_bits, elements_read_two_ways
from ..io.discovery import sniff_kind
from ..io.image import check_writable, file_record, read_image, write_image
from ..io.isolation import IsolatedReader
from ..io.medical_image import DEFAULT_MAX_PIXELS, one_line
from ..io.writing import remove_temporaries_of
from ..keys import key_kind
from ..model.device import model_device
from ..model.store import load_model
from ..quality import QualityFloor, frame_meters, image_quality, meets_floor
from ..payload import PayloadCodec, bytes_to_text
from .fragile import fits_fragile_mark, fragile_capacity_bytes
from .image import codec_for, embed_pixels, extract_payload, read_any_mark
from .marked_binding import binding_as_written, check_written_binding, new_instance_uid
from .threads import ReaderPerThread, exit_with_parent, forks_workers, in_workers


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that is the same for every file of one `wm embed` call (sent to each worker)."""

    payload: bytes
    floor: QualityFloor
    window_override: tuple[float, float] | None = None  # --window: centre, width in modality units
    overwrite: bool = False
    allow_unverified: bool = False
    compression: str = "none"
    fill_budget: bool = True
    model: str | None = None
    device: str = "cpu"  # --device (model.device.DEVICE_CHOICES): where each worker runs the networks
    max_pixels: int = DEFAULT_MAX_PIXELS  # --max-pixels: declared size refused before decoding
    restore_record: bool = True  # keep the sealed restoration record in the output (integrity.record)
    recipient: bytes | None = None  # --recipient: PEM certificate; the record goes in a CMS envelope for it
    # --sign/--cert: the PEM bytes of an RSA key and its certificate (DICOM outputs are signed).
    # Bytes, not key objects: settings travel to worker processes.
    signing: tuple[bytes, bytes] | None = field(default=None, repr=False)
    # Never printed (not even by repr, in a stray log line): results and audit lines say
    # 'default' or 'custom'.
    key: str | bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EmbedResult:
    """Every figure of one marked file, as measured on the file written: what `wm embed --json`
    prints (`as_json`), what its summary table shows and what its audit line records
    (`marking.batch.audit_line`). PSNRs are in dB and None where a frame did not change (+inf)."""

    input: str
    output: str
    psnr: float | None  # in the binding view, the worst frame
    psnr_min: float
    psnr_domain: str
    binding_view: str
    psnr_peak: float  # the binding view's peak in stored units (a window's width, the frame's range, ...)
    psnr_peak_kind: str
    psnr_views: dict[str, float | None]  # every view measured, binding or reported
    views_below_floor: list[str]  # reader's views under the floor (only outside the default view domain)
    psnr_nominal: float | None  # against 2^BitsStored - 1: reported, never binding by default
    ssim: float | None
    max_abs_error: float
    frames: int
    frame_psnr: list[float | None]
    guard_scale: float | None  # None: audited from the files of an interrupted run
    payload_bits: int
    payload_format: int
    message_bytes: int
    key: str  # 'default' or 'custom', never the key
    verified: bool
    confidence: float
    model: str
    model_weights_sha256: str
    compression: str | None
    input_file_sha256: str
    input_pixels_sha256: str
    output_file_sha256: str
    output_pixels_sha256: str
    restoration_record_bytes: int | None = None
    pixel_data_bytes: int | None = None
    signed: bool = False
    recovered: bool = False  # written by a run that was killed before its audit line
    # The fragile mark of a small frame (`marking.fragile`), where the robust mark did not read
    # back: it reads back from lossless copies only.
    fragile: bool = False

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input: its result when marked, else an error and its exit code."""

    source: Path
    destination: Path
    result: EmbedResult | None = None
    error: str | None = None
    exit_code: int = 0


@dataclass(frozen=True)
class MarkReading:
    """What `wm extract` read from one file: the decoded payload, whether an old unauthenticated
    (format 1) mark was seen that was not accepted, or the error that kept the file unread."""

    source: Path
    decoded: object | None = None  # payload.DecodedPayload
    format_1_seen: bool = False
    error: str | None = None
    exit_code: int = 0
    hint: str | None = None  # where no mark was found but the file says wm marked it: what to try
    # The older, unkeyed model that wrote the mark found (`image.read_older_mark`), else None:
    # the mark is authentic under the key but protects nothing (anyone can read, strip, copy it).
    unprotected_model: str | None = None


# What `embed` writes into a DICOM's Derivation Description (the model is named there). Read back
# only as a plain model name: the header is anyone's to write, and a hint is printed to a terminal.
_DERIVATION = "Invisible watermark embedded by wm {version}, model {model}"
_DERIVATION_MODEL = re.compile(r"embedded by wm \S+, model ([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")


def marked_by_hint(image, loaded) -> str | None:
    """Why a file without a readable mark may still hold one: its DICOM header names the model
    that marked it, or it carries a wm restoration record (a marked file with a wrong key)."""
    named = None
    if image.kind == "dicom":
        found = _DERIVATION_MODEL.search(str(image.source.get("DerivationDescription", "") or ""))
        named = found.group(1).strip() if found else None
    if named is not None and named != loaded.name:
        return f"its header says model {named} marked it, not {loaded.name}: try --model {named}"
    if named is not None or file_record(image) is not None:
        return ("it was marked by wm" + (f" with model {named}" if named else "") + ": the key may be wrong "
                "(give the one it was marked with: --key-file, WM_KEY or --key)")
    return None


def unfitted_hint(decoded) -> str | None:
    """What to say of a mark refused because it does not cover the image (`image.mark_fits`)."""
    if decoded.unfitted_message is None:
        return None
    return (f"a mark of {bytes_to_text(decoded.unfitted_message)!r} was read but does not cover this image as a mark "
            "written on it would: copied from another image, or much of this image changed; not authentic")


def read_mark(source: Path, read, loaded, codec, legacy, accept_format_1: bool, older=()) -> MarkReading:
    """Read one file's mark with `codec`; where none is found, a mark of an `older` unkeyed
    model (`image.older_readers`), then a format-1 mark with `legacy` (accepted only with
    `accept_format_1`, else reported as seen). Never raises a WmError: a file that cannot be
    read is a MarkReading with its error."""
    try:
        image = read(source)
        decoded, unprotected = read_any_mark(loaded, codec, image, older)
        old = None
        if not decoded.found and legacy is not None:
            old = extract_payload(loaded, legacy, image, full_search=accept_format_1)
            if accept_format_1 and old.found:
                decoded, old = old, None
        hint = None if decoded.found else unfitted_hint(decoded) or marked_by_hint(image, loaded)
    except WmError as error:
        return MarkReading(source, error=str(error), exit_code=error.exit_code)
    return MarkReading(source, decoded, format_1_seen=old is not None and old.found, hint=hint,
                       unprotected_model=unprotected)


def embed_file(source: Path, destination: Path, settings: EmbedSettings, loaded, codec,
               read: Callable[[Path], object] | None = None) -> EmbedResult:
    """Mark one file. `read` reads the input (an `IsolatedReader`'s `read` in a batch, so that a
    decoder crash costs only this file); by default `read_image` in this process."""
    floor = settings.floor
    # Hashed before it is read and again before the output moves into place: the audit's input
    # hash is of the file that was marked (a file replaced mid-run was audited under another's hash).
    input_sha256 = file_sha256(source) if Path(source).is_file() else None
    image = read(source) if read is not None else read_image(source, settings.max_pixels)
    destination = check_writable(image, destination, settings.overwrite)  # before any work is done
    if image.kind == "dicom":
        _refuse_ambiguous_header(source, image.source)
    outcome = embed_pixels(loaded, codec, image, settings.payload, floor, settings.window_override,
                           fill_budget=settings.fill_budget)

    # Verify before anything is written: the marked pixels must give the payload back.
    decoded = outcome.read_back or extract_payload(loaded, codec, replace(image, pixels=outcome.pixels))
    verified = bool(decoded.found and decoded.message == settings.payload)
    if not verified and not settings.allow_unverified:
        binding = min((frame.quality for frame in outcome.frames), key=lambda q: q.psnr).binding_view
        raise CheckFailedError(f"{source}: the mark could not be read back at PSNR >= {floor.psnr_min:g} dB in its "
                               f"{binding} view ({_why_unreadable(floor, loaded, codec, image, len(settings.payload))}); "
                               "nothing written "
                               "(--allow-unverified to force)")

    # The guarantee is about the file: the complete temporary file is read back and measured
    # in every view before it is moved into place, so a file that misses the floor never
    # appears. Its bytes are hashed there too: the file moved into place is that very file.
    signer = _signer(settings.signing) if settings.signing is not None else None
    if signer is not None and image.kind != "dicom":
        raise BadInputError(f"{source}: only DICOM files can carry a digital signature (--sign); not marked")
    derivation = _DERIVATION.format(version=__version__, model=loaded.name)
    instance_uid = new_instance_uid(image)  # chosen here: the record binds the marked file's identity
    binding = (binding_as_written(image, outcome.pixels, destination, derivation, instance_uid, settings.compression)
               if settings.restore_record else None)
    record = (restoration_record(image, outcome.pixels, settings.key, settings.recipient,
                                 signer.certificate_sha256 if signer is not None else None, binding)
              if settings.restore_record else None)
    measured: dict = {}

    def check_written_file(temporary: Path) -> None:
        written = read_image(temporary, settings.max_pixels)
        if record is not None and file_record(written) != record:
            raise CheckFailedError(f"{source}: the written file does not hold its restoration record; nothing written")
        if binding is not None:
            check_written_binding(written, binding, source)
        if written.pixels.shape != image.pixels.shape:
            raise CheckFailedError(f"{source}: the written file has a different pixel shape; nothing written")
        if not np.array_equal(written.pixels, outcome.pixels):
            raise CheckFailedError(f"{source}: the written file does not hold the marked values; nothing written")
        # The values as written are the guard's, bit for bit (checked above), and the guard
        # measured those very values in every view with these meters (`guard.guard_frame`: the
        # frame it returns is the one it measured); a measure is a function of the values alone,
        # so measuring them again gave the same figures, for 6 to 17 ms of a 512² CT's embed.
        qualities = [guarded.quality for guarded in outcome.frames]
        if not all(meets_floor(q, floor) for q in qualities):
            raise CheckFailedError(f"{source}: the written values miss the floor in a view; nothing written")
        if file_sha256(source) != input_sha256:
            raise CheckFailedError(f"{source}: the input changed while it was being marked; nothing written")
        measured.update(qualities=qualities, pixels=written.pixels, file_sha256=file_sha256(temporary))

    written_path = write_image(image, outcome.pixels, destination, derivation=derivation,
                               overwrite=settings.overwrite, compression=settings.compression,
                               verify=check_written_file, record=record, signer=signer,
                               sop_instance_uid=instance_uid)
    return _result(source, written_path, image, measured["pixels"], measured["qualities"], outcome.meters,
                   settings, loaded, codec, decoded, verified, min(f.scale for f in outcome.frames),
                   measured["file_sha256"], input_sha256,
                   restoration_record_bytes=len(record) if record is not None else None,
                   pixel_data_bytes=int(image.pixels.nbytes), signed=signer is not None)


# A message length that small frames carry more often than longer ones: fewer bytes leave the
# code more redundancy to spend on a weak mark (single 96² held-out crops, 48 trials each, the mark
# fitted to its host: 42 read back at 4 bytes, 40 at 8, 34 at 16; `emri_small`, 10 frames of 64²
# MR, carried 8 bytes in 8/8 tries and 16 in 0/8 before fitting, all 16 in 8/8 since).
SHORT_MESSAGE_BYTES = 8


def _why_unreadable(floor: QualityFloor, loaded, codec, image, message_bytes: int) -> str:
    """The likely reason a mark at the floor does not read back, and what to do about it; for a
    small instance, what its fragile mark (`marking.fragile`) has room for too."""
    trained = loaded.trained_floor_db
    if trained is not None and floor.psnr_min > trained + 1.0:
        return (f"the floor of {floor.psnr_min:g} dB leaves too weak a mark: model {loaded.name} is made for "
                f"{trained:g} dB; lower --psnr-min")
    shorter = (f"a message of {SHORT_MESSAGE_BYTES} bytes or fewer (this one has {message_bytes}), "
               if message_bytes > SHORT_MESSAGE_BYTES else "")
    reason = f"the image is too small or too flat for this model; {shorter}a larger or more textured image carries it"
    if not (isinstance(codec, PayloadCodec) and fits_fragile_mark(image)):
        return reason
    room = fragile_capacity_bytes(codec, image)
    if room < 0:
        return reason + "; too few of its pixels may move for the fragile mark either"
    if room < message_bytes:
        return reason + f"; its fragile mark (lossless copies only) has room for {room} bytes here"
    return reason + "; its fragile mark would not keep the floor either"


# The largest record any of the three containers holds (a PNG chunk's length is 31 bits).
_MAX_RECORD_BYTES = 2**31 - 1


def restoration_record(image, marked: np.ndarray, key, recipient_certificate: bytes | None = None,
                       signer_sha256: str | None = None, binding: dict | None = None) -> bytes:
    """The sealed restoration record of `image` marked as `marked` (see integrity.record): under
    `key`, or under a random key in a CMS envelope for the recipient's certificate (PEM);
    `binding`: the marked file's presentation and identity as written (marking.marked_binding)."""
    kept, high_bits = None, None
    if image.kind == "dicom":
        kept, absent = containers.dicom_original_elements(image.source)
        elements = containers.dataset_bytes(kept)
        uid = str(image.source.get("SOPInstanceUID", "")) or None
        high_bits = dicom_high_bits(image.source, image.pixels, image.bits_stored)
        interpretation = containers.pixel_interpretation(image.source)  # embed changes none of them
    else:  # PNG, TIFF: the input's own record, if it was marked before, is kept (chained) as DICOM's is
        elements = containers.raster_original_elements(file_record(image))
        absent, uid, interpretation = (), None, {}
    if recipient_certificate is not None:
        key = new_record_key()
    record = seal(image.pixels, marked, key, original_elements=elements, added_elements=absent,
                  original_sop_instance_uid=uid, creator=f"wm {__version__}", high_bits=high_bits,
                  signer_sha256=signer_sha256, interpretation=interpretation, binding=binding)
    if recipient_certificate is not None:
        modified = containers.modified_attributes_item(kept) if kept is not None else None
        record = envelope(record, key, recipient_from_pem(recipient_certificate), modified)
    if len(record) > _MAX_RECORD_BYTES:
        raise BadInputError(f"{image.path}: the restoration record ({len(record) / 2**20:.0f} MiB) is too large to "
                            "store in the file; mark it with --no-restore-record")
    return record


def _signer(signing: tuple[bytes, bytes]):
    return load_signer(*signing)


def recovered_result(source: Path, destination: Path, settings: EmbedSettings, loaded, codec,
                     read) -> EmbedResult | None:
    """The result `embed_file` would have reported for an output that a killed run wrote but did
    not get to audit; None when the output does not hold this run's message (it is then not
    this batch's work and is left alone). Measured again from the two files, so every figure is
    the real one; only the guard's scale is lost (None)."""
    image = read(source)
    written = read(destination)
    if written.pixels.shape != image.pixels.shape:
        return None
    decoded = extract_payload(loaded, codec, written)
    if not (decoded.found and decoded.message == settings.payload):
        return None
    meters = frame_meters(image, settings.floor, settings.window_override)
    qualities = [meter.with_ssim(meter.measure(frame), frame) for meter, frame in zip(meters, written.pixels)]
    return _result(source, destination, image, written.pixels, qualities, meters, settings, loaded, codec,
                   decoded, True, None, file_sha256(destination), file_sha256(source), recovered=True)


def _result(source: Path, written_path: Path, image, written_pixels: np.ndarray, qualities, meters,
            settings: EmbedSettings, loaded, codec, decoded, verified: bool, guard_scale: float | None,
            output_sha256: str, input_sha256: str, **more) -> EmbedResult:
    """Every figure of one marked file (`more`: EmbedResult's optional fields)."""
    floor = settings.floor
    summary = image_quality(qualities)
    worst = min(range(len(qualities)), key=lambda i: qualities[i].psnr)
    binding = meters[worst].view_named(summary.binding_view)
    below = sorted({name for q in qualities for name in q.below_floor(floor)})
    return EmbedResult(
        input=str(source),
        output=str(written_path),
        psnr=_finite(summary.psnr),
        psnr_min=floor.psnr_min,
        psnr_domain=floor.domain,
        binding_view=summary.binding_view,
        psnr_peak=round(binding.stored_span, 4),
        psnr_peak_kind=binding.kind,
        psnr_views={name: _finite(value) for name, value in summary.views.items()},
        views_below_floor=below,
        psnr_nominal=_finite(summary.nominal_psnr),
        ssim=_finite(summary.ssim),
        max_abs_error=summary.max_abs_error,
        frames=int(image.n_frames),
        frame_psnr=[_finite(q.psnr) for q in qualities],
        guard_scale=round(guard_scale, 4) if guard_scale is not None else None,
        payload_bits=codec.n_bits,
        payload_format=codec.format,
        message_bytes=len(settings.payload),
        key=key_kind(settings.key),
        verified=verified,
        confidence=round(decoded.confidence, 4),
        model=loaded.name,
        model_weights_sha256=loaded.weights_sha256,
        compression=settings.compression if image.kind == "dicom" else None,
        input_file_sha256=input_sha256,
        input_pixels_sha256=pixel_sha256(image.pixels),
        output_file_sha256=output_sha256,
        output_pixels_sha256=pixel_sha256(written_pixels),
        fragile=bool(decoded.found and decoded.fragile),
        **more,
    )


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unchanged frame (PSNR = inf) is reported as null."""
    import math

    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 4)


def _run_one(source: Path, destination: Path, settings: EmbedSettings, loaded, codec, read) -> FileOutcome:
    try:
        return FileOutcome(source, destination, result=embed_file(source, destination, settings, loaded, codec, read))
    except WmError as error:
        return FileOutcome(source, destination, error=str(error), exit_code=error.exit_code)
    except Exception as error:  # a fault of wm's own on this file: it fails alone, the batch goes on
        return FileOutcome(source, destination, error=f"{source}: unexpected {type(error).__name__}: "
                                                     f"{one_line(error)}", exit_code=2)


# ---- worker processes (--workers) -------------------------------------------------------------
# Each worker loads the model once and runs torch on several threads where there are cores for
# them. Workers are started with 'spawn': a process forked from one whose torch thread pool is
# already running can deadlock on more than one thread (`threads.in_processes` forks workers of
# one torch thread each).

_worker_state: dict = {}


def _start_worker(settings: EmbedSettings, threads: int, parent: int) -> None:
    import signal

    import torch

    exit_with_parent(parent)
    # Ctrl-C reaches the whole process group: the parent decides what happens (see
    # cli.GracefulStop); a worker always finishes the file it is writing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    loaded = load_model(settings.model, model_device(settings.device))
    reader = IsolatedReader(settings.max_pixels).__enter__()  # closed when the worker exits
    _worker_state.update(settings=settings, loaded=loaded, codec=codec_for(loaded, settings.key), reader=reader)


def _work(job: tuple[Path, Path]) -> FileOutcome:
    state = _worker_state
    return _run_one(job[0], job[1], state["settings"], state["loaded"], state["codec"], state["reader"].read)


def _refuse_ambiguous_header(source: Path, dataset) -> None:
    """A DICOM input that readers read two ways is not marked: one that holds an element twice (or
    out of order; pydicom keeps the last copy, dcmtk the first), a standard element in another VR
    than the dictionary's (RescaleIntercept as SS: dcmtk ignores it), or a number whose text is not
    DICOM's ('-1_024': -1024 to pydicom, -1 to dcmtk). wm would guard one view, a viewer show
    another. An element written as UN is no reason: wm writes it in the dictionary's VR; but one
    whose bytes do not make a value of that VR (3 bytes for an FD) cannot be written at all."""
    two_ways = elements_read_two_ways(source)
    if two_ways.repeated:
        raise BadInputError(f"{source}: data element {element_label(two_ways.repeated[0])} is written twice or "
                            "out of order (readers disagree on which copy counts); not marked")
    retyped = [(tag, vr) for tag, vr in two_ways.other_vr if vr != "UN"]
    if retyped:
        raise BadInputError(f"{source}: data element {other_vr_name(*retyped[0])} (readers disagree on its "
                            "value); not marked")
    odd_numbers = numbers_not_in_dicom_syntax(dataset)
    if odd_numbers:
        raise BadInputError(f"{source}: data element {element_label(odd_numbers[0])} holds a number not written "
                            "as DICOM writes numbers (readers disagree on its value); not marked")
    unreadable = _unparseable_element(dataset)
    if unreadable:
        raise BadInputError(f"{source}: data element {unreadable}; not marked")


def _unparseable_element(dataset) -> str | None:
    """'(0018,9087) ... cannot be read: ...' for the first element pydicom cannot parse, at any depth."""
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
        except Exception as error:
            return f"{element_label(int(tag))} cannot be read ({one_line(error, 120)})"
        if element.VR == "SQ":
            for item in element.value or []:
                found = _unparseable_element(item)
                if found:
                    return found
    return None


def embed_files(jobs: list[tuple[Path, Path]], settings: EmbedSettings, loaded, codec,
                workers: int = 1, stop_requested: Callable[[], bool] = lambda: False,
                threads: int = 1, device: str | None = None) -> Iterator[FileOutcome]:
    """Mark every (source, destination) job; yield outcomes as they complete (in the jobs' order
    on `threads` threads of this process, as they complete across `workers` processes).

    Once `stop_requested()` is true, no new file is started; files already being marked are
    finished and yielded, so that every written file is also reported (and audited). Inputs are
    decoded in an `IsolatedReader` (one per worker or thread), so a decoder that crashes fails one file.
    With a core for each and the networks on the CPU, `threads` files at once run in as many
    processes forked from this one (`threads.runs_in_processes`: two processes on two cores mark
    and read nearly twice as fast as one, two threads 1.3 to 1.5 times); else on threads. The
    networks run on `device` ('cpu', 'cuda:0'; default: where `loaded`'s are): with them on a GPU,
    `threads` files at once run in forked processes that move them there (`threads.in_workers`)."""
    if workers <= 1 or len(jobs) <= 1:
        device = device or str(loaded.device)
        forked = forks_workers(threads, [loaded], device, uses_autograd=True)  # small frames' fitted marks
        with ReaderPerThread(settings.max_pixels).prestart(0 if forked else threads) as readers:
            def mark(job: tuple[Path, Path]) -> FileOutcome:
                return _run_one(job[0], job[1], settings, loaded, codec, readers.read)

            try:
                yield from in_workers(mark, jobs, threads, [loaded], device, lost=_lost_twice,
                                      stop_requested=stop_requested, alone=_marked_alone,
                                      retry=lambda job: _after_lost_worker(job, settings, loaded, codec) or mark(job),
                                      uses_autograd=True, forked=forked)
            finally:
                if forked:
                    remove_temporaries_of(job[1] for job in jobs)  # what a worker killed while writing left
        return

    # A worker that dies (the kernel's out-of-memory killer, a crash outside decoding) breaks
    # its pool: every file it had not finished is tried again once in a new pool, so the batch
    # goes on; a file that fails in two pools is reported failed.
    try:
        attempts = {job: 0 for job in jobs}
        remaining = list(jobs)
        while remaining:
            lost: list[tuple[Path, Path]] = []
            for outcome in _run_pool(remaining, settings, workers, stop_requested, lost):
                yield outcome
            remaining = []
            for job in lost:
                outcome = _after_lost_worker(job, settings, loaded, codec)
                if outcome is not None:
                    yield outcome
                    continue
                attempts[job] += 1
                if attempts[job] < 2 and not stop_requested():
                    remaining.append(job)
                else:
                    yield _lost_twice(job)
    finally:
        # A worker killed while writing leaves its temporary file; each pool has shut down by now.
        remove_temporaries_of(job[1] for job in jobs)


def _after_lost_worker(job: tuple[Path, Path], settings: EmbedSettings, loaded, codec) -> FileOutcome | None:
    """A job whose worker died: where the output was already in place, that file audited (not
    marked again) or, when it does not read back, a failure; None where it is to be marked again."""
    if not job[1].exists() or settings.overwrite:
        return None
    recovered = _recovered_or_none(job, settings, loaded, codec)
    return (FileOutcome(job[0], job[1], result=recovered) if recovered is not None else
            FileOutcome(job[0], job[1], exit_code=1, error=f"{job[1]}: written by a worker that died; "
                        "it does not read back (--overwrite to redo it)"))


def _lost_twice(job: tuple[Path, Path]) -> FileOutcome:
    return FileOutcome(job[0], job[1], exit_code=1,
                       error=f"{job[0]}: the worker process died while marking it (twice); not marked")


def _recovered_or_none(job: tuple[Path, Path], settings: EmbedSettings, loaded, codec) -> EmbedResult | None:
    with IsolatedReader(settings.max_pixels) as reader:
        try:
            return recovered_result(job[0], job[1], settings, loaded, codec, reader.read)
        except WmError:
            return None


def _run_pool(jobs: list[tuple[Path, Path]], settings: EmbedSettings, workers: int,
              stop_requested: Callable[[], bool], lost: list[tuple[Path, Path]]) -> Iterator[FileOutcome]:
    """One pool of worker processes over `jobs`; jobs lost with a dead worker go to `lost`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(settings, threads, os.getpid()))
    try:
        futures = {executor.submit(_work, job): job for job in jobs}
        for future in as_completed(futures):
            if stop_requested():
                for pending in futures:
                    pending.cancel()  # only files not yet started can be cancelled
            if future.cancelled():
                continue
            try:
                yield future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
            except Exception as error:  # a worker that could not start (its model, say): that file failed
                source, destination = futures[future]
                yield FileOutcome(source, destination, error=f"{source}: worker failed ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else 'no message'})", exit_code=1)
    finally:
        # On any early exit: files not started are cancelled, files being written finish (their
        # writes are atomic), then the workers exit.
        executor.shutdown(wait=True, cancel_futures=True)


# ---- disk space ------------------------------------------------------------------------------

# Kept free beyond the estimate: the audit log, temporary files, and room for the system.
_SPARE_BYTES = 64 * 1024 * 1024


def estimated_output_bytes(source: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """A generous estimate of one output file's size, from headers only (no pixel decoding).

    Compressed inputs become uncompressed DICOM, so the decoded size is what counts. A header
    that declares more than `max_pixels` counts nothing: that file is refused before decoding.
    """
    size = source.stat().st_size
    declared = declared_pixels(source)
    if declared is None:  # unreadable headers fail later with a proper message; estimate plainly
        return 2 * size
    pixels, bytes_per_pixel, dicom = declared
    extra = size // 2 + 4096 if dicom else 4096
    return 0 if pixels > max_pixels else max(size, pixels * bytes_per_pixel + extra)


def declared_pixels(source: Path) -> tuple[int, int, bool] | None:
    """(rows × columns × frames, bytes per decoded value, whether DICOM) from the file's header
    alone; None where the header cannot be read (or the path is no regular file: a FIFO would block)."""
    if not source.is_file():
        return None
    try:
        kind = sniff_kind(source)
        if kind == "dicom" or source.suffix.lower() in (".dcm", ".dicom", ""):
            import pydicom

            ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
            pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
            return pixels, max(1, int(ds.BitsAllocated) // 8), True
        from PIL import Image

        with Image.open(source) as image:
            width, height = image.size
        return width * height, 2, False
    except Exception:
        return None


# An image this large (a 4096² frame, a 64-frame 512² series) is marked with no other file beside
# it: an embed works in float64 over every pixel, a few GiB for the largest images allowed.
ALONE_PIXELS = 4096 * 4096


def runs_alone(source: Path) -> bool:
    """Whether the file at `source` is large enough (`ALONE_PIXELS`, by its header) to be worked
    on with no other file beside it: `wm embed` marks it alone, `wm evaluate` evaluates it alone."""
    declared = declared_pixels(source)
    return declared is not None and declared[0] > ALONE_PIXELS


def _marked_alone(job: tuple[Path, Path]) -> bool:
    return runs_alone(job[0])


def check_free_space(sources: list[Path], output_folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    import shutil

    needed = sum(estimated_output_bytes(source, max_pixels) for source in sources) + _SPARE_BYTES
    existing = output_folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise BadInputError(f"not enough disk space for {len(sources)} output file(s) in {output_folder}: "
                            f"need about {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")
