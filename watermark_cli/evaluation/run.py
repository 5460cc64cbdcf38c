"""`wm evaluate`: quality on the stored values, message recovery per attack, false positives.

For every image and each of K fixed messages: embed in memory (the guard quantises exactly as a
written file would hold the values, so quality is measured on those stored values, in every view
a reader uses), run every attack on the marked frames, decode, and compare with what was
embedded. Attacks act in the view the mark was budgeted in (each frame's binding view: an 8-bit
export goes through that window, noise is a fraction of its peak). Unmarked originals are
decoded too: any payload found there is a false positive.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..attacks.codecs import Attack, FrameContext, parse_attack
from ..diagnostic.check import compare_classifier, with_positive_control
from ..diagnostic.control import PositiveControl, default_control
from ..diagnostic.inputs import classifier_input
from ..diagnostic.labels import matching_outputs
from ..errors import BadInputError, WmError
from ..io.discovery import collect_image_files
from ..io.image import read_image
from ..io.medical_image import MedicalImage
from ..keys import key_kind
from ..marking.files import runs_alone
from ..marking.fragile import fragile_bit_agreement
from ..marking.image import (codec_for, embed_pixels, export_thresholds, image_false_positive_bound, read_fragile_mark,
                             read_frames, sign_thresholds)
from ..marking.threads import in_workers
from ..model.store import LoadedModel
from ..quality import QualityFloor, image_quality
from .report import write_report


@dataclass(frozen=True)
class EvaluationOptions:
    floor: QualityFloor
    attacks: list[Attack]
    messages: int = 3
    key: str | bytes | None = field(default=None, repr=False)  # never printed
    seed: int = 0
    window: tuple[float, float] | None = None  # --window: one more view (modality units)
    examples: int = 3  # images shown in the report with their amplified difference maps
    message_bytes: int | None = None  # length of the evaluation messages (default: the capacity)


# Called once per image with the original, its pixels marked with the first message (no attack)
# and each frame's budgeted view: the diagnostic classifier check scores both, as archived and
# exported through that view.
MarkedImageHook = Callable[[str, MedicalImage, np.ndarray, list], None]

# An example for the report: label, view name, the original and marked frame in that view.
Example = tuple[str, str, np.ndarray, np.ndarray]


def evaluation_messages(count: int, length: int, seed: int) -> list[bytes]:
    """Fixed printable messages of `length` bytes (full length exercises every payload byte)."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    return [("".join(rng.choice(alphabet) for _ in range(length))).encode() for _ in range(count)]


def upper_bound_95(failures: int, trials: int) -> float:
    """One-sided 95 % upper bound on a rate from `failures` in `trials` (exact Clopper–Pearson;
    with no failure it is 1 − 0.05^(1/n), close to the rule of three's 3/n)."""
    if trials == 0:
        return 1.0
    if failures == 0:
        return 1.0 - 0.05 ** (1.0 / trials)
    if failures >= trials:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, failures + 1, trials - failures))


# An image to evaluate: a label for the tables and a loader (images are read one at a time).
ImageSource = tuple[str, Callable[[], MedicalImage]]


def evaluate(
    data: list[Path],
    model: LoadedModel,
    options: EvaluationOptions,
    report_folder: Path,
    on_image: Callable[[str], None] | None = None,
    on_marked: MarkedImageHook | None = None,
    finish: Callable[[dict], None] | None = None,
    at_once: int = 1,
    device: str | None = None,
) -> dict:
    """Evaluate the image files under `data` and write the report folder. `finish` may add
    blocks to the report (the classifier check) before it is written. `at_once` and `device`:
    as `evaluate_images` takes them."""
    files = collect_image_files(data)
    if not files:
        raise BadInputError(f"no images found in {', '.join(map(str, data))}")
    sources = [(str(path), partial(read_image, path)) for path in files]
    report, rows, frame_psnrs, examples = evaluate_images(sources, model, options, on_image, on_marked,
                                                          with_examples=True, at_once=at_once, device=device)
    if finish is not None:
        finish(report)
    write_report(report_folder, report, rows, frame_psnrs, examples)
    return report


@dataclass
class _ImageFigures:
    """What one image contributes to an evaluation (`_evaluate_image`), made where the image was
    evaluated (a worker process of a run of several at once) and added up in the run's order."""

    path: str
    loaded: bool = False  # read: one more unmarked original tried for a false positive
    false_positive: bool = False
    rows: list[dict] = field(default_factory=list)
    frame_psnrs: list[float] = field(default_factory=list)
    embeddings: list[tuple[str, dict]] = field(default_factory=list)
    guard_acted: int = 0
    skipped: str | None = None  # why it was not evaluated
    # For the run's `on_marked` hook: (the image, without its parsed header, its pixels marked with
    # the first message, the budgeted views): what comes back from a worker, the header no more.
    marked: tuple[MedicalImage, np.ndarray, list] | None = None
    # For the report's examples: the middle frame's budgeted view, original and marked frame (as
    # stored; shown in the view only for the few examples kept).
    example: tuple[object, np.ndarray, np.ndarray] | None = None


def _evaluate_image(source: ImageSource, model: LoadedModel, codec, options: EvaluationOptions,
                    messages: list[bytes], encoded: list[np.ndarray], keep_marked: bool,
                    with_example: bool) -> _ImageFigures:
    path, load = source
    figures = _ImageFigures(path)
    try:
        image = load()
        figures.loaded = True
        thresholds = sign_thresholds(image)  # what `wm extract` reading the file would use
        figures.false_positive = (read_frames(model, codec, image.pixels, thresholds=thresholds).decoded.found
                                  or read_fragile_mark(codec, image.pixels).found)
        for index, (message, raw_bits) in enumerate(zip(messages, encoded)):
            outcome = embed_pixels(model, codec, image, message, options.floor, options.window)
            figures.guard_acted += int(outcome.guard_acted)
            figures.frame_psnrs.extend(frame.quality.psnr for frame in outcome.frames)
            quality = _image_quality(outcome, options.floor)
            figures.embeddings.append((path, quality))
            budgeted = [meter.view_named(frame.quality.binding_view)
                        for meter, frame in zip(outcome.meters, outcome.frames)]
            if index == 0:
                if keep_marked:
                    figures.marked = (replace(image, source=None), outcome.pixels, budgeted)
                if with_example:
                    middle = image.n_frames // 2
                    figures.example = (budgeted[middle], image.pixels[middle], outcome.pixels[middle])
            contexts = [FrameContext(image.stored_min, image.stored_max, view, seed=options.seed + index)
                        for view in budgeted]
            for attack in options.attacks:
                attacked = np.stack([attack(frame, context) for frame, context in
                                     zip(outcome.pixels.astype(np.float64), contexts)])
                received = export_thresholds(len(attacked)) if attack.exports_8bit else thresholds
                reading = read_frames(model, codec, attacked, thresholds=received)
                probabilities, decoded = reading.probabilities, reading.decoded
                if not decoded.found and not attack.exports_8bit:  # an export's values are not stored ones
                    decoded = read_fragile_mark(codec, attacked)
                # A fragile mark's bits are its frame's in the pixels' lowest bits, not the robust bits.
                bit_accuracy = (fragile_bit_agreement(codec, attacked, message) if outcome.fragile
                                else float(np.mean((probabilities > 0.5) == raw_bits.astype(bool))))
                figures.rows.append({
                    "path": path, "message_index": index, "message_bytes": len(message), "attack": attack.label,
                    **quality,
                    "bit_accuracy": bit_accuracy,
                    "payload_recovered": bool(decoded.found and decoded.message == message),
                    "fragile": outcome.fragile,
                    "confidence": decoded.confidence,
                })
    except WmError as error:
        figures.skipped = str(error)  # what it had measured before the error still counts
    return figures


def evaluate_images(
    sources: list[ImageSource],
    model: LoadedModel,
    options: EvaluationOptions,
    on_image: Callable[[str], None] | None = None,
    on_marked: MarkedImageHook | None = None,
    with_examples: bool = False,
    at_once: int = 1,
    device: str | None = None,
):
    """The figures for in-memory images: (summary, one row per image × message × attack, frame
    PSNRs in their binding views), plus, `with_examples`, a few `Example`s for the report (the
    middle frame of the first images, original and marked, in that frame's binding view).
    `at_once` images are evaluated at a time (`marking.threads.in_workers`: forked processes
    where each has a core, or with the networks on a GPU; `device`, default where `model`'s
    networks are), the figures added up in the sources' order: the same decisions as one at a
    time, and the same figures to float rounding (a forked worker runs torch on one thread; where
    that moves the guard's scale in its last digits, a pixel here and there may round the other
    way, and a PSNR move in its fifth decimal)."""
    codec = codec_for(model, options.key)
    length = options.message_bytes if options.message_bytes is not None else codec.capacity_bytes
    if not 1 <= length <= codec.capacity_bytes:
        raise BadInputError(f"evaluation messages of {length} bytes do not fit this model "
                            f"(1 to {codec.capacity_bytes} bytes)")
    messages = evaluation_messages(options.messages, length, options.seed)
    encoded = [codec.encode(message) for message in messages]

    rows: list[dict] = []
    frame_psnrs: list[float] = []
    embeddings: list[tuple[str, dict]] = []  # (path, quality record), one per image × message
    examples: list[Example] = []
    example_kinds: list[str] = []  # the kind of binding view each example is shown in
    skipped: list[dict] = []
    guard_acted = 0
    false_positives = 0
    clean_tries = 0

    # Workers get an index, not the source: forked, they have the sources already (a loader need
    # not pickle).
    def evaluated(index: int) -> _ImageFigures:
        return _evaluate_image(sources[index], model, codec, options, messages, encoded, on_marked is not None,
                               with_examples)

    def lost(index: int) -> _ImageFigures:
        return _ImageFigures(sources[index][0], skipped="the worker process evaluating it died (twice)")

    def alone(index: int) -> bool:  # a huge file is evaluated with no other beside it, as `wm embed` marks it
        return runs_alone(Path(sources[index][0]))

    for figures in in_workers(evaluated, range(len(sources)), at_once, [model], device or str(model.device),
                              lost=lost, alone=alone, uses_autograd=True):  # embedding: small frames' fitted marks
        path = figures.path
        clean_tries += figures.loaded
        false_positives += int(figures.false_positive)
        if figures.marked is not None and on_marked is not None:
            try:
                on_marked(path, *figures.marked)
            except WmError as error:  # the hook cannot take this image (the classifier check): skipped whole
                figures = replace(figures, skipped=str(error), rows=[], frame_psnrs=[], embeddings=[],
                                  guard_acted=0, example=None)
        guard_acted += figures.guard_acted
        frame_psnrs.extend(figures.frame_psnrs)
        embeddings.extend(figures.embeddings)
        rows.extend(figures.rows)
        if figures.example is not None:
            view, original, marked = figures.example
            _add_example(examples, example_kinds, options.examples, view.kind,
                         lambda: (path, view.name, view.display(original), view.display(marked)))
        if figures.skipped is not None:
            skipped.append({"path": path, "reason": figures.skipped})
        if on_image:
            on_image(path)

    if not rows:
        raise BadInputError("no image could be evaluated: " + "; ".join(s["reason"] for s in skipped[:3]))
    report = _summarise(rows, frame_psnrs, embeddings, options, model, guard_acted, false_positives,
                        clean_tries, skipped, messages)
    if with_examples:
        return report, rows, frame_psnrs, examples
    return report, rows, frame_psnrs


def _add_example(examples: list[Example], kinds: list[str], limit: int, kind: str,
                 make: Callable[[], Example]) -> None:
    """Keep the first `limit` images as examples, except that an image whose binding view is of a
    kind not shown yet replaces the latest example of a kind shown twice: a mixed folder's report
    shows a CT window, a data range and an 8-bit PNG, not only its first three CTs."""
    if len(examples) >= limit:
        repeated = [index for index, shown in enumerate(kinds) if kinds.count(shown) > 1]
        if kind in kinds or not repeated:
            return
        del examples[repeated[-1]], kinds[repeated[-1]]
    examples.append(make())
    kinds.append(kind)


def _image_quality(outcome, floor: QualityFloor) -> dict:
    """One marked image's figures: the binding view and its PSNR (worst frame), the lowest PSNR
    per kind of view, and whether any frame fell below the floor in any view it was measured in."""
    qualities = [frame.quality for frame in outcome.frames]
    summary = image_quality(qualities)
    kinds: dict[str, float] = {}
    for meter, quality in zip(outcome.meters, qualities):
        for name, value in quality.views.items():
            kind = meter.view_named(name).kind
            kinds[kind] = min(kinds.get(kind, math.inf), value)
    worst_frame = min(range(len(qualities)), key=lambda i: qualities[i].psnr)
    return {
        "psnr": summary.psnr,
        "binding_view": summary.binding_view,
        "binding_view_kind": outcome.meters[worst_frame].view_named(summary.binding_view).kind,
        **{f"psnr_{kind.replace(' ', '_')}": value for kind, value in sorted(kinds.items())},
        "psnr_nominal": summary.nominal_psnr,
        "ssim": summary.ssim,
        "max_abs_error": summary.max_abs_error,
        "guard_scale": min(f.scale for f in outcome.frames),
        "frames_below_floor": sum(bool(q.below_floor(floor)) for q in qualities),
    }


def _percentiles(values: list[float]) -> dict:
    """Order statistics of frame PSNRs. An unchanged frame has PSNR +inf, which sorts correctly;
    JSON has no infinity, so such a statistic is reported as null (see `jsonout.json_safe`)."""
    array = np.asarray(values, dtype=np.float64)
    # "lower": an order statistic, a PSNR some frame really has (never one between two frames)
    p1, p5 = np.percentile(array, [1.0, 5.0], method="lower")
    return {
        "min": float(array.min()),
        "max": float(array.max()),
        "p1": float(p1),
        "p5": float(p5),
        "median": float(np.median(array)) if np.isfinite(np.median(array)) else math.inf,
        "mean": float(np.mean(array)) if np.isfinite(array).all() else math.inf,
    }


# Per-image quality figures summarised in the report (keys of `_image_quality`): the binding
# PSNR, the lowest PSNR per kind of view, the nominal PSNR (reported, not binding), SSIM, |error|.
QUALITY_FIGURES = ("psnr", "psnr_data_range", "psnr_window", "psnr_voi_lut", "psnr_stored", "psnr_nominal",
                   "ssim", "max_abs_error")


def _quality_figures(embeddings: list[tuple[str, dict]]) -> dict:
    """Each of QUALITY_FIGURES over the marked images (worst frame, × messages) that have it, with
    `n_images`, how many images that is: a kind of view only exists where an image has one (a
    window in a CT or a DICOM that declares it, the 8-bit stored view in an 8-bit PNG or JPEG).
    None where no image has it."""
    figures = {}
    for key in QUALITY_FIGURES:
        measured = [(path, quality[key]) for path, quality in embeddings if quality.get(key) is not None]
        figures[key] = ({**_percentiles([value for _, value in measured]),
                         "n_images": len({path for path, _ in measured})} if measured else None)
    return figures


def _summarise(rows, frame_psnrs, embeddings, options, model, guard_acted, false_positives,
               clean_tries, skipped, messages) -> dict:
    attacks: dict[str, dict] = {}
    for attack in options.attacks:
        subset = [r for r in rows if r["attack"] == attack.label]
        recovered = sum(bool(r["payload_recovered"]) for r in subset)
        attacks[attack.label] = {
            "family": attack.family,
            "strength": attack.strength,
            "bit_accuracy": float(np.mean([r["bit_accuracy"] for r in subset])),
            "payload_recovery": float(np.mean([r["payload_recovered"] for r in subset])),
            # One-sided 95 % lower bound on the recovery rate (Clopper–Pearson on the failures).
            "payload_recovery_lower_95": 1.0 - upper_bound_95(len(subset) - recovered, len(subset)),
            "n": len(subset),
        }
    n_images = len({r["path"] for r in rows})
    binding_kinds: dict[str, int] = {}
    for _, quality in embeddings:
        binding_kinds[quality["binding_view_kind"]] = binding_kinds.get(quality["binding_view_kind"], 0) + 1
    return {
        "model": model.name,
        "model_path": str(model.path),
        "n_images": n_images,
        "n_frames_marked": len(frame_psnrs),
        "messages_per_image": len(messages),
        "message_bytes": len(messages[0]),
        "key": key_kind(options.key),  # 'default' or 'custom', never the key
        "psnr_min_floor": options.floor.psnr_min,
        "psnr_domain": options.floor.domain,
        # Which kind of view bound the marked images (worst frame each), over images × messages.
        "psnr_peak": ", ".join(f"{kind} ({count})" for kind, count in sorted(binding_kinds.items())),
        "binding_views": binding_kinds,
        "psnr": _percentiles(frame_psnrs),
        # Frames below the floor in any view they were measured in (binding or reported).
        "below_floor": int(sum(quality["frames_below_floor"] for _, quality in embeddings)),
        "quality": _quality_figures(embeddings),
        "guard_acted": guard_acted,
        # Images × messages given the fragile mark (`marking.fragile`): small frames whose robust
        # mark did not read back; any change of the values removes it.
        "fragile_marks": len({(r["path"], r["message_index"]) for r in rows if r["fragile"]}),
        "attacks": attacks,
        "detection": {
            "false_positives": false_positives,
            "n_clean": clean_tries,
            "false_positive_rate": false_positives / clean_tries if clean_tries else None,
            "false_positive_rate_upper_95": upper_bound_95(false_positives, clean_tries),
            "false_positive_bound_per_image": image_false_positive_bound(codec_for(model, options.key)),
        },
        "skipped": skipped,
    }


# What a classifier in a hospital also reads: the image exported to 8 bits through the view the
# mark was budgeted in (a CT's window) and saved as JPEG at quality 80, the most common export.
CLASSIFIER_EXPORT = "jpeg:80"


class ClassifierCheck:
    """The diagnostic classifier check inside `wm evaluate`.

    The frozen classifier scores every labelled image three times: as it came; marked with the
    first evaluation message (no attack, default view-floor settings), which is what a hospital
    would archive; and harmed on purpose by the positive `control` (`diagnostic.control`). All
    three again after CLASSIFIER_EXPORT through the view the mark was budgeted in. Each reading's
    marked and control scores go to `diagnostic.check.compare_classifier` against the clean ones,
    and `with_positive_control` puts the control beside the mark's figures; the export's block is
    `after_export` inside the archived one. Unlabelled images are still evaluated for quality and
    robustness; they simply take no part in this check.
    """

    def __init__(self, classifier, labelled, margin: float, seed: int = 0,
                 control: PositiveControl | None = None, floor_db: float = 40.0) -> None:
        self.classifier = classifier
        self.labelled = labelled
        self.margin = margin
        self.seed = seed
        self.control = control or default_control(floor_db)
        self.floor_db = floor_db
        self._outputs = matching_outputs(classifier.label_names, labelled.label_names)
        self._row_of = {path.resolve(): row for row, path in enumerate(labelled.paths)}
        self._inputs: dict[str, list[np.ndarray]] = {name: [] for name in _CHECK_SETS}
        self._export = parse_attack(CLASSIFIER_EXPORT)
        self._rows: list[int] = []
        self._unlabelled = 0

    def on_marked(self, path: str, image: MedicalImage, marked_pixels: np.ndarray, views: list) -> None:
        row = self._row_of.get(Path(path).resolve())
        if row is None:
            self._unlabelled += 1
            return
        stored_range = (image.stored_min, image.stored_max)  # a marked image keeps its format
        middle = image.n_frames // 2  # the frame the classifier reads
        harmed = self.control.harmed(image.pixels[middle : middle + 1], marked_pixels[middle : middle + 1],
                                     stored_range, self.floor_db, self.classifier.input_size)[0]
        modality = image.display.frame(middle).modality
        context = FrameContext(image.stored_min, image.stored_max, views[middle], seed=self.seed)
        for name, frame in zip(_CHECK_SETS[::2], (image.pixels[middle], marked_pixels[middle], harmed)):
            self._inputs[name].append(self.classifier.input_of(frame, stored_range, modality))
            exported = self._export(np.asarray(frame, dtype=np.float64), context)
            self._inputs[name + " exported"].append(classifier_input(
                exported, (0, 255), self.classifier.input_size, self.classifier.intensity.of_export()))
        self._rows.append(row)

    def finish(self, report: dict) -> None:
        if not self._rows:
            raise BadInputError(f"none of the evaluated images has a label in {self.labelled.source}")
        targets, names = self.labelled.targets[self._rows], self.labelled.label_names
        scores = {name: self.classifier.score_inputs(np.stack(inputs))[:, self._outputs]
                  for name, inputs in self._inputs.items()}
        description = self.control.describe(self.floor_db)
        readings = []
        for suffix in ("", " exported"):
            clean = scores["clean" + suffix]
            block = compare_classifier(clean, scores["marked" + suffix], targets, names, margin=self.margin,
                                       seed=self.seed)
            control = compare_classifier(clean, scores["control" + suffix], targets, names, margin=self.margin,
                                         seed=self.seed)
            readings.append(with_positive_control(block, control, description))
        block, exported = readings
        exported["export"] = f"{CLASSIFIER_EXPORT}: 8-bit export through the budgeted view, then JPEG quality 80"
        block["after_export"] = exported
        block["classifier"] = str(self.classifier.path)
        block["classifier_input"] = self.classifier.describe_input()
        block["labels_source"] = str(self.labelled.source)
        block["unlabelled_images"] = self._unlabelled
        report["classifier"] = block


# The image sets the check scores, each as archived and after the export: originals, marked
# copies, and the positive control.
_CHECK_SETS = ("clean", "clean exported", "marked", "marked exported", "control", "control exported")
