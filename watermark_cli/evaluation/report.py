"""The report folder of `wm evaluate`: report.json, per_image.csv, PNG plots and report.html.

report.html is one self-contained file (plots inlined as PNG data), so it can be mailed or
attached to a validation record and opened in any browser without the folder around it.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from ..diagnostic.check import checked_readings
from ..io.writing import csv_text, write_atomically
from ..jsonout import dumps


def write_report(folder: Path, report: dict, rows: list[dict], frame_psnrs: list[float],
                 examples: list[tuple[str, str, np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "report.json", dumps(report, indent=2))
    write_atomically(folder / "per_image.csv", per_image_csv(rows))

    import matplotlib

    matplotlib.use("Agg")
    plots = {
        "psnr_histogram.png": _psnr_histogram(frame_psnrs, report["psnr_min_floor"]),
        "bit_accuracy_vs_strength.png": _strength_curves(report["attacks"]),
        "examples.png": example_figure(examples) if examples else None,
        "roc.png": _roc_curves(report["classifier"]) if report.get("classifier") else None,
    }
    for name, figure in plots.items():
        if figure is not None:
            write_atomically(folder / name, lambda handle, figure=figure: figure.savefig(handle, format="png", dpi=90))
    write_atomically(folder / "report.html", _html(report, {n: folder / n for n, f in plots.items() if f is not None}))
    import matplotlib.pyplot as plt

    plt.close("all")


def per_image_csv(rows: list[dict]) -> str:
    """The rows as CSV over the union of their columns. Images of different kinds have different
    views (a CT its windows, an 8-bit PNG only its stored values), so rows differ in their
    `psnr_<kind>` keys: the columns every row has come first, in the first row's order, then the
    others in the order they first appear; a cell is blank where a view does not apply."""
    appearing = list(dict.fromkeys(name for row in rows for name in row))
    shared = [name for name in rows[0] if all(name in row for row in rows)]
    header = shared + [name for name in appearing if name not in shared]
    return csv_text(header, ([row.get(name) for name in header] for row in rows))


# ---- plots ------------------------------------------------------------------------------------

def _psnr_histogram(frame_psnrs: list[float], floor: float):
    import matplotlib.pyplot as plt

    finite = [p for p in frame_psnrs if math.isfinite(p)]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(finite, bins=30, color="#4477aa")
    axis.axvline(floor, color="red", linestyle="--", label=f"floor {floor:g} dB")
    axis.set_xlabel("PSNR of written frame (dB)")
    axis.set_ylabel("frames")
    axis.legend()
    figure.tight_layout()
    return figure


def _strength_curves(attacks: dict):
    """Bit accuracy and payload recovery against strength, one panel per attack family that was
    run at two or more strengths."""
    import matplotlib.pyplot as plt

    families: dict[str, list[tuple[float, dict]]] = {}
    for figures in attacks.values():
        families.setdefault(figures["family"], []).append((figures["strength"], figures))
    graded = {name: sorted(points, key=lambda p: p[0]) for name, points in families.items()
              if len(points) >= 2 and name != "combined"}
    if not graded:
        return None
    columns = min(3, len(graded))
    rows = -(-len(graded) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (name, points) in zip(axes.ravel(), graded.items()):
        strengths = [p[0] for p in points]
        axis.plot(strengths, [p[1]["bit_accuracy"] for p in points], "o-", label="bit accuracy")
        axis.plot(strengths, [p[1]["payload_recovery"] for p in points], "s--", label="payload recovery")
        axis.set_title(name)
        axis.set_xlabel(_STRENGTH_UNITS.get(name, "strength"))
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    for axis in axes.ravel()[len(graded):]:
        axis.axis("off")
    axes.ravel()[0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


_STRENGTH_UNITS = {
    "jpeg": "JPEG quality", "jpeg2000": "compression ratio (0 = lossless)", "noise": "σ / peak",
    "blur": "σ (px)", "resize": "scale", "crop": "area kept", "rotate": "degrees", "contrast": "gain − 1",
}


# The difference maps are amplified this many times (mid-grey = no change), in the view's units.
DIFFERENCE_GAIN = 10.0


def amplified_difference(original: np.ndarray, marked: np.ndarray, gain: float = DIFFERENCE_GAIN) -> np.ndarray:
    """Mid-grey plus `gain` × (marked − original), both displays in a view's units, to [0, 1]."""
    return np.clip(0.5 + gain * (marked.astype(np.float64) - original.astype(np.float64)), 0.0, 1.0)


def example_figure(examples: list[tuple[str, str, np.ndarray, np.ndarray]]):
    """One row per example: original and marked as the reader sees them in the view the mark
    was budgeted in (its binding view, to [0, 1]), and the ×10 difference in that view."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(examples), 3, figsize=(10, 3.4 * len(examples)), squeeze=False)
    for (label, view, original, marked), row in zip(examples, axes):
        row[0].imshow(np.clip(original, 0, 1), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{Path(label).name}\n{view}", fontsize=9)
        row[1].imshow(np.clip(marked, 0, 1), cmap="gray", vmin=0, vmax=1)
        row[1].set_title("watermarked, same view", fontsize=9)
        row[2].imshow(amplified_difference(original, marked), cmap="gray", vmin=0, vmax=1)
        row[2].set_title(f"difference ×{DIFFERENCE_GAIN:g} in that view", fontsize=9)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    return figure


def _roc_curves(classifier: dict):
    """One ROC curve per finding for the originals (solid) and the watermarked copies (dashed)."""
    import matplotlib.pyplot as plt

    curves = classifier.get("roc") or {}
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(4.8, 4.5))
    for index, (label, by_set) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        for name, style in (("clean", "-"), ("watermarked", "--")):
            points = by_set.get(name)
            if points:
                title = name if len(curves) == 1 else f"{label}, {name}"
                axis.plot(points["fpr"], points["tpr"], style, color=colour, label=title)
    axis.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    axis.set_xlabel("1 − specificity")
    axis.set_ylabel("sensitivity")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("ROC: one classifier, originals vs watermarked", fontsize=10)
    figure.tight_layout()
    return figure


# ---- HTML -------------------------------------------------------------------------------------

def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _number(value, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞"
    if percent:
        return f"{100 * value:.{digits}f} %"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _verdict(ok: bool, text: str) -> str:
    return f'<span class="{"pass" if ok else "fail"}">{html.escape(text)}</span>'


def _html(report: dict, plots: dict[str, Path]) -> str:
    floor = report["psnr_min_floor"]
    below = report["below_floor"]
    sections = [
        f"<h1>wm evaluation report</h1><p>Model <b>{html.escape(report['model'])}</b>; "
        f"{report['n_images']} images, {report['n_frames_marked']} marked frames, "
        f"{report['messages_per_image']} fixed messages per image. Floor {floor:g} dB in the "
        f"{html.escape(report['psnr_domain'])} domain; binding views: {html.escape(report['psnr_peak'])}.</p>",
        "<h2>1. Did every image keep its quality?</h2>",
        "<p>" + _verdict(below == 0, f"{below} frame(s) below the floor") +
        f" — the guard acted on {report['guard_acted']} image(s) (it shrinks a mark that would miss the floor).</p>",
    ]
    quality = report.get("quality") or {}
    body = []
    for name, title, digits in (("psnr", "PSNR in the binding view (dB)", 2),
                                ("psnr_data_range", "PSNR, data range (dB)", 2),
                                ("psnr_window", "PSNR, lowest declared or standard window (dB)", 2),
                                ("psnr_voi_lut", "PSNR, VOI LUT (dB)", 2),
                                ("psnr_stored", "PSNR, 8-bit as stored (dB)", 2),
                                ("psnr_nominal", "PSNR, nominal peak (reported, not binding) (dB)", 2),
                                ("ssim", "SSIM in the binding view", 4),
                                ("max_abs_error", "max |error| (stored units)", 0)):
        stats = quality.get(name)
        if stats:  # over the images that have this view: a mixed folder's PNGs have no window
            body.append([title, f"{stats['n_images']} of {report['n_images']}"] +
                        [_number(stats[k], digits) for k in ("min", "p1", "p5", "median", "mean", "max")])
    sections.append(_table(["per marked image", "images", "min", "p1", "p5", "median", "mean", "max"], body))
    if "psnr_histogram.png" in plots:
        sections.append(_image_tag(plots["psnr_histogram.png"], "PSNR histogram"))

    sections.append("<h2>2. Does the message survive what happens to images?</h2>")
    sections.append(_table(
        ["attack", "bit accuracy", "exact payload recovery", "95 % lower bound", "trials"],
        [[html.escape(name), _number(f["bit_accuracy"], 3, True), _number(f["payload_recovery"], 1, True),
          _number(f.get("payload_recovery_lower_95"), 1, True), str(f["n"])] for name, f in report["attacks"].items()],
    ))
    fragile = report.get("fragile_marks", 0)
    if fragile:  # their rows hold only as archived: the fragile mark survives no change of the values
        sections.append(f"<p>{fragile} of the marked images × messages carry the <em>fragile</em> mark (small frames "
                        "whose robust mark does not read back): it reads back from lossless copies only, so "
                        "every other attack removes it.</p>")
    if "bit_accuracy_vs_strength.png" in plots:
        sections.append(_image_tag(plots["bit_accuracy_vs_strength.png"], "bit accuracy against attack strength"))
    detection = report["detection"]
    sections.append(
        f"<h3>False positives</h3><p>{detection['false_positives']} payload(s) found in {detection['n_clean']} "
        f"unmarked originals; one-sided 95 % upper bound on the rate: "
        f"{_number(detection['false_positive_rate_upper_95'], 3)} (by design at most "
        f"{detection.get('false_positive_bound_per_image', float('nan')):.2g} per image).</p>"
    )

    classifier = report.get("classifier")
    sections.append("<h2>3. Does a diagnostic classifier still see the same thing?</h2>")
    if classifier:
        for reading, block in checked_readings(classifier):
            sections.append(f"<h3>{html.escape(reading)}</h3>")
            sections.append(_classifier_section(block))
        if "roc.png" in plots:
            sections.append(_image_tag(plots["roc.png"], "ROC curves clean vs watermarked"))
    else:
        sections.append("<p>Not run: pass <code>--classifier PATH --labels CSV</code>.</p>")

    if "examples.png" in plots:
        sections.append("<h2>Examples</h2><p>Original and watermarked in the view the mark was budgeted in "
                        "(the frame's binding view), and their difference amplified ×10 in that view "
                        "(mid-grey: no change).</p>")
        sections.append(_image_tag(plots["examples.png"], "example images with difference maps"))
    if report.get("skipped"):
        sections.append("<h2>Skipped</h2>" + _table(["file", "reason"], [
            [html.escape(item["path"]), html.escape(item["reason"])] for item in report["skipped"]]))
    sections.append("<p class=small>Per image × message × attack rows: per_image.csv; every figure: report.json.</p>")
    return _PAGE.format(body="\n".join(sections))


def _classifier_section(classifier: dict) -> str:
    passed = bool(classifier.get("non_inferior"))
    ci = classifier.get("delta_auroc_ci95") or [None, None]
    margin = classifier.get("margin")
    verdict = {"pass": "non-inferior", "fail": "shown inferior"}.get(classifier.get("verdict"), "inconclusive")
    lines = [
        "<p>" + _verdict(passed, verdict) + f" ({html.escape(str(classifier.get('reason', '')))})"
        f" — ΔAUROC (watermarked − originals) {_number(classifier.get('delta_auroc'), 4)}, paired bootstrap 95 % CI "
        f"{_number(ci[0], 4)} to {_number(ci[1], 4)}; the check passes when the lower bound is ≥ −{_number(margin, 3)} "
        f"and decides nothing unless the clean AUROC's 95 % lower bound is above "
        f"{_number(classifier.get('min_clean_auroc'), 2)}. "
        f"{classifier.get('n_images', '?')} labelled images, {html.escape(classifier.get('task', ''))} task; "
        f"classifier {html.escape(str(classifier.get('classifier', '')))}"
        + (f" ({html.escape(classifier['classifier_input'])})" if classifier.get("classifier_input") else "") + ".</p>",
    ]
    control, power = classifier.get("control"), classifier.get("power")
    if control:
        control_ci = control.get("delta_auroc_ci95") or [None, None]
        lines.append(
            f"<p>The positive control, the same images harmed on purpose "
            f"({html.escape(str(control.get('description', '')))}), through the same statistics: AUROC "
            f"{_number(control.get('auroc'), 4)}, ΔAUROC {_number(control.get('delta_auroc'), 4)}, 95 % CI "
            f"{_number(control_ci[0], 4)} to {_number(control_ci[1], 4)}: <b>{html.escape(str(control.get('verdict')))}</b>. "
            "A pass counts only when the control fails: otherwise the check could not have seen harm of that size."
            + (f" With these {power['n_images']} images, a drop in AUROC of {_number(power['detectable_drop'], 3)} or "
               f"more would be shown (fail) with {power['power']:.0%} probability." if power else "") + "</p>")
    clean, marked = classifier.get("clean") or {}, classifier.get("watermarked") or {}
    rows = [["AUROC", _number(classifier.get("auroc_clean"), 4), _number(classifier.get("auroc_watermarked"), 4)]]
    for name in ("accuracy", "sensitivity", "specificity"):
        rows.append([name + " (at the clean operating point)", _number(clean.get(name), 4), _number(marked.get(name), 4)])
    rows.append(["prediction flip rate", "", f"{_number(classifier.get('flip_rate'), 4)} "
                 f"({classifier.get('flips', '?')} of {classifier.get('decisions', '?')} decisions)"])
    mcnemar = classifier.get("flips_mcnemar")
    if mcnemar:
        rows.append(["flips made wrong / made right (McNemar exact p)", "",
                     f"{mcnemar['made_wrong']} / {mcnemar['made_right']} (p = {_number(mcnemar['p_value'], 3)})"])
    lines.append(_table(["metric", "originals", "watermarked"], rows))
    return "\n".join(lines)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wm evaluation report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }}
.pass {{ color: #176117; font-weight: bold; }} .fail {{ color: #b00020; font-weight: bold; }}
.small {{ font-size: 0.85em; color: #666; }}
</style></head><body>
{body}
</body></html>
"""
