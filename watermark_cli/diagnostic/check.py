"""Does a frozen diagnostic classifier see the same thing on watermarked images as on originals?

The statistics of the classifier check of `wm evaluate` (design §6), on scores already computed:
one score per image × finding for the originals (clean) and the same for their watermarked
copies (marked), and the 0/1 ground truth. Pure numpy: no model is needed here, so every
figure can be checked on constructed cases.

- AUROC: the Mann–Whitney statistic, P(score of a positive > score of a negative), ties counted
  one half; macro-averaged over findings for multi-label data.
- ΔAUROC = AUROC(marked) − AUROC(clean), with a paired percentile-bootstrap 95 % CI: each
  resample draws images with replacement and uses the SAME images for both, so what is measured
  is the effect of the watermark, not the luck of the sample. A resample in which a finding has
  only positives or only negatives has no AUROC; it is dropped and counted.
- The clean operating point: per finding, the threshold that maximises Youden's J
  (sensitivity + specificity − 1) on the clean scores. Accuracy, sensitivity and specificity are
  then measured at that same threshold on clean and on marked scores, and the prediction-flip
  rate is the fraction of image × finding decisions that differ; McNemar's exact test (scipy's
  binomial test of the discordant pairs) asks whether more of them became wrong than right.
- Verdict. No verdict without a classifier that sees the finding: unless the lower bound of the
  clean AUROC's bootstrap 95 % CI is above `MIN_CLEAN_AUROC` (0.7), the check is 'inconclusive'
  (a classifier at chance cannot be hurt by the mark, so its "no change" proves nothing). Then:
  'pass' (non-inferior) iff the ΔAUROC CI's lower bound is ≥ −margin (default 0.01); 'fail' when
  its upper bound is below −margin (shown inferior); otherwise 'inconclusive', too few images for
  the CI to decide, with an estimate of how many would (the CI's width shrinks as 1/√n).
- Positive control (`diagnostic.control`): the same images harmed on purpose go through the same
  statistics. A "pass" stands only when the control came out "fail"; otherwise the check could
  not have seen harm of that size, and the verdict is 'inconclusive' (a "fail" stands as it is:
  it already shows the check sees harm).
- Power: the smallest drop in AUROC that this n and margin would show ("fail") with 80 %
  probability: margin + (z₀.₉₇₅ + z₀.₈₀)·sd, the sd of the paired bootstrap's ΔAUROC, the larger of
  the mark's and the control's (a harmful change spreads the scores more than a harmless one, so
  the control's sd makes the figure conservative).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from ..errors import BadInputError

DEFAULT_MARGIN = 0.01
DEFAULT_RESAMPLES = 2000
POWER = 0.80
_Z_TWO_SIDED_95 = 1.959964
_Z_POWER = 0.841621  # the 80th percentile of the standard normal
#: The clean AUROC's 95 % lower bound must exceed this before the check decides anything.
MIN_CLEAN_AUROC = 0.7


# -- AUROC ------------------------------------------------------------------------------------


def _auroc_rows(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC of each row of (R, N) scores against (R, N) 0/1 targets; NaN for one-class rows."""
    positives = targets.sum(axis=-1)
    negatives = targets.shape[-1] - positives
    rank_sum = (rankdata(scores, axis=-1) * targets).sum(axis=-1)  # ties share their mean rank
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), value, np.nan)


def auroc(scores, targets) -> float:
    """AUROC of one finding (Mann–Whitney, ties one half); NaN when only one class is present."""
    scores, targets = _as_columns(scores, targets)
    if scores.shape[1] != 1:
        raise BadInputError("auroc() takes one finding; use macro_auroc() for several")
    return float(_auroc_rows(scores.T, targets.T)[0])


def macro_auroc(scores, targets) -> float:
    """Mean AUROC over the findings that have both classes; NaN when none has."""
    scores, targets = _as_columns(scores, targets)
    values = _auroc_rows(scores.T, targets.T)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def roc_curve(scores, targets) -> dict:
    """ROC points of one finding, from (0, 0) to (1, 1): one point per distinct score (a rate
    whose class is absent stays 0)."""
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    scores, targets = _as_columns(scores, targets)
    s, t = scores[:, 0], targets[:, 0]
    positives = t.sum()
    if 0 < positives < len(t):
        fpr, tpr, _ = sklearn_roc_curve(t, s, drop_intermediate=False)
    else:  # one class: sklearn's curve is undefined; the present class's rate by hand
        distinct = np.unique(s)[::-1]
        rate = np.r_[0.0, [(s >= value).mean() for value in distinct]]
        fpr, tpr = (rate, np.zeros_like(rate)) if positives == 0 else (np.zeros_like(rate), rate)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


# -- operating point --------------------------------------------------------------------------


def youden_threshold(scores, targets) -> float:
    """The threshold t (decide positive iff score ≥ t) that maximises Youden's J on these scores.

    Candidates lie halfway between consecutive distinct scores, never on a score itself: an
    image whose clean score sat exactly on the threshold would otherwise flip under any small
    change, and the flip rate would measure the threshold's placement rather than the watermark.
    Ties in J go to the highest threshold. With a single distinct score, that score is returned
    (every image is called positive).
    """
    scores, targets = _as_columns(scores, targets)
    s, t = scores[:, 0], targets[:, 0]
    distinct = np.unique(s)
    if distinct.size == 1:
        return float(distinct[0])
    candidates = (distinct[1:] + distinct[:-1]) / 2.0
    n_pos, n_neg = max(t.sum(), 1.0), max(len(t) - t.sum(), 1.0)
    called = s[None, :] >= candidates[:, None]
    sensitivity = (called & (t[None, :] == 1)).sum(axis=1) / n_pos
    specificity = (~called & (t[None, :] == 0)).sum(axis=1) / n_neg
    j = sensitivity + specificity - 1.0
    best = np.flatnonzero(j == j.max())[-1]
    return float(candidates[best])


def _decision_figures(called: np.ndarray, truth: np.ndarray) -> dict:
    positives, negatives = truth == 1, truth == 0
    return {
        "accuracy": float(np.mean(called == positives)),
        "sensitivity": float(called[positives].mean()) if positives.any() else None,
        "specificity": float((~called[negatives]).mean()) if negatives.any() else None,
    }


def mcnemar_exact(clean_right: np.ndarray, marked_right: np.ndarray) -> dict:
    """McNemar's exact test of paired decisions: of the decisions that changed, are those the mark
    made wrong more than those it made right? Two-sided binomial test of the discordant pairs
    (scipy), the test for paired proportions."""
    from scipy.stats import binomtest

    made_wrong = int(np.sum(clean_right & ~marked_right))
    made_right = int(np.sum(~clean_right & marked_right))
    discordant = made_wrong + made_right
    p_value = float(binomtest(made_wrong, discordant, 0.5).pvalue) if discordant else 1.0
    return {"made_wrong": made_wrong, "made_right": made_right, "p_value": p_value}


def _mean_of(per_label: list[dict], key: str) -> float | None:
    values = [item[key] for item in per_label if item[key] is not None]
    return float(np.mean(values)) if values else None


# -- the comparison ---------------------------------------------------------------------------


def paired_bootstrap_delta(clean, marked, targets, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = 0) -> tuple[np.ndarray, int]:
    """ΔAUROC (macro) of each resample that has both classes for every finding; (deltas, dropped)."""
    deltas, _, dropped = paired_bootstrap(clean, marked, targets, resamples, seed)
    return deltas, dropped


def paired_bootstrap(clean, marked, targets, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(ΔAUROC, clean AUROC) (macro) of each resample that has both classes for every finding,
    and how many resamples were dropped."""
    clean, targets = _as_columns(clean, targets)
    marked, _ = _as_columns(marked, targets)
    n, k = clean.shape
    rng = np.random.default_rng(seed)
    deltas, cleans, dropped = [], [], 0
    for start in range(0, resamples, 250):  # bounded memory: 250 × n × k at a time
        count = min(250, resamples - start)
        picks = rng.integers(0, n, size=(count, n))
        values = np.empty((count, 2, k))
        for label in range(k):
            drawn_targets = targets[picks, label]
            values[:, 0, label] = _auroc_rows(clean[picks, label], drawn_targets)
            values[:, 1, label] = _auroc_rows(marked[picks, label], drawn_targets)
        usable = np.isfinite(values).all(axis=(1, 2))
        dropped += int(count - usable.sum())
        macro = values[usable].mean(axis=2)
        deltas.append(macro[:, 1] - macro[:, 0])
        cleans.append(macro[:, 0])
    return np.concatenate(deltas), np.concatenate(cleans), dropped


def _images_needed(n: int, estimate: float, bound: float, target: float) -> int | None:
    """About how many images would put a 95 % bound on the right side of `target`: the bound's
    distance from the estimate shrinks as 1/√n. None when the estimate itself is on the wrong side
    (more images cannot help)."""
    room, spread = estimate - target, estimate - bound
    if room <= 0:
        return None
    return int(np.ceil(n * max(1.0, (spread / room) ** 2)))


def classifier_verdict(n: int, auroc_clean: float, clean_ci: list, delta: float, delta_ci: list,
                       margin: float) -> dict:
    """verdict ('pass' | 'fail' | 'inconclusive'), non_inferior, reason, images_needed (see the
    module docstring)."""
    if clean_ci[0] is None or delta_ci[0] is None:
        return {"verdict": "inconclusive", "non_inferior": False, "images_needed": None,
                "reason": "too few images of one class: no bootstrap resample had both classes"}
    if not clean_ci[0] > MIN_CLEAN_AUROC:
        needed = _images_needed(n, auroc_clean, clean_ci[0], MIN_CLEAN_AUROC)
        return {"verdict": "inconclusive", "non_inferior": False, "images_needed": needed,
                "reason": f"the classifier does not clearly see the finding: clean AUROC {auroc_clean:.3f}, 95 % "
                          f"lower bound {clean_ci[0]:.3f}, not above {MIN_CLEAN_AUROC:g}"
                          + (f" (about {needed} images would show it)" if needed else
                             " (a better classifier is needed, not more images)")}
    if delta_ci[0] >= -margin:
        return {"verdict": "pass", "non_inferior": True, "images_needed": None,
                "reason": f"ΔAUROC 95 % lower bound {delta_ci[0]:+.4f} ≥ −{margin:g}"}
    if delta_ci[1] < -margin:
        return {"verdict": "fail", "non_inferior": False, "images_needed": None,
                "reason": f"ΔAUROC 95 % upper bound {delta_ci[1]:+.4f} < −{margin:g}: shown inferior"}
    needed = _images_needed(n, delta, delta_ci[0], -margin)
    return {"verdict": "inconclusive", "non_inferior": False, "images_needed": needed,
            "reason": f"the ΔAUROC 95 % CI [{delta_ci[0]:+.4f}, {delta_ci[1]:+.4f}] contains −{margin:g}: too few "
                      "images to decide" + (f" (about {needed} would)" if needed else "")}


def compare_classifier(
    clean_scores,
    marked_scores,
    targets,
    label_names: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict:
    """The classifier check of `wm evaluate`: a JSON-ready dict (NaN never appears; None does).

    Inputs: (N,) or (N, K) scores (probabilities or any monotone score) for the originals and for
    their watermarked copies in the same order, and (N,) or (N, K) 0/1 targets.

    Fields:
      n_images, labels, task ('binary' | 'multilabel'), margin;
      auroc_clean, auroc_watermarked, delta_auroc (watermarked − clean; macro over findings);
      delta_auroc_ci95 [low, high]: paired percentile bootstrap over images;
      bootstrap {resamples, used, dropped_single_class, seed};
      auroc_clean_ci95, min_clean_auroc: the clean AUROC's bootstrap CI and the bound it must clear;
      verdict 'pass' | 'fail' | 'inconclusive', non_inferior (pass), reason, images_needed (about how
        many would decide an inconclusive check; None otherwise or when more cannot help);
      flip_rate, flips, decisions: image × finding decisions that change at the clean threshold;
      flips_mcnemar {made_wrong, made_right, p_value}: McNemar's exact test of the decisions that
        changed (did the mark make more of them wrong than right?);
      clean / watermarked {accuracy, sensitivity, specificity}: at the clean operating point
        (macro over findings);
      per_label {NAME: n_positive, n_negative, threshold, auroc_clean, auroc_watermarked,
        delta_auroc, clean {...}, watermarked {...}, flips, flip_rate};
      roc {NAME: {clean: {fpr, tpr}, watermarked: {fpr, tpr}}}: points for plotting.
    A finding whose images are all positive or all negative has no AUROC; it is reported with
    None and left out of the macro figures. BadInputError when no finding has both classes.
    """
    clean, truth = _as_columns(clean_scores, targets)
    marked, _ = _as_columns(marked_scores, targets)  # same shape as the targets, so as the clean scores
    n, k = clean.shape
    names = [f"finding_{i}" for i in range(k)] if label_names is None else [str(x) for x in label_names]
    if len(names) != k:
        raise BadInputError(f"{len(names)} label names for {k} score columns")
    if not (np.isfinite(margin) and margin >= 0):
        raise BadInputError(f"the non-inferiority margin must be zero or positive, got {margin}")
    if resamples < 1:
        raise BadInputError("the bootstrap needs at least one resample")

    has_both = (truth.sum(axis=0) > 0) & (truth.sum(axis=0) < n)
    if not has_both.any():
        raise BadInputError("the labelled images hold only positives or only negatives: AUROC is undefined")
    columns = np.flatnonzero(has_both)

    per_label, roc, flips_total = {}, {}, 0
    figures_clean, figures_marked, right_clean, right_marked = [], [], [], []
    for label, name in enumerate(names):
        threshold = youden_threshold(clean[:, label], truth[:, label])
        called_clean = clean[:, label] >= threshold
        called_marked = marked[:, label] >= threshold
        flips = int(np.sum(called_clean != called_marked))
        flips_total += flips
        right_clean.append(called_clean == (truth[:, label] == 1))
        right_marked.append(called_marked == (truth[:, label] == 1))
        on_clean = _decision_figures(called_clean, truth[:, label])
        on_marked = _decision_figures(called_marked, truth[:, label])
        figures_clean.append(on_clean)
        figures_marked.append(on_marked)
        a_clean = auroc(clean[:, label], truth[:, label]) if has_both[label] else None
        a_marked = auroc(marked[:, label], truth[:, label]) if has_both[label] else None
        per_label[name] = {
            "n_positive": int(truth[:, label].sum()), "n_negative": int(n - truth[:, label].sum()),
            "threshold": threshold, "auroc_clean": a_clean, "auroc_watermarked": a_marked,
            "delta_auroc": (a_marked - a_clean) if has_both[label] else None,
            "clean": on_clean, "watermarked": on_marked, "flips": flips, "flip_rate": flips / n,
        }
        roc[name] = {"clean": roc_curve(clean[:, label], truth[:, label]),
                     "watermarked": roc_curve(marked[:, label], truth[:, label])}

    auroc_clean = macro_auroc(clean[:, columns], truth[:, columns])
    auroc_marked = macro_auroc(marked[:, columns], truth[:, columns])
    deltas, cleans, dropped = paired_bootstrap(clean[:, columns], marked[:, columns], truth[:, columns],
                                               resamples=resamples, seed=seed)
    if deltas.size:
        ci = [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]
        clean_ci = [float(np.percentile(cleans, 2.5)), float(np.percentile(cleans, 97.5))]
    else:  # every resample lost a class: too few images of one class to say anything
        ci, clean_ci = [None, None], [None, None]
    decision = classifier_verdict(n, auroc_clean, clean_ci, auroc_marked - auroc_clean, ci, margin)
    return {
        "n_images": n,
        "labels": names,
        "task": "binary" if k == 1 else "multilabel",
        "margin": float(margin),
        "auroc_clean": auroc_clean,
        "auroc_clean_ci95": clean_ci,
        "min_clean_auroc": MIN_CLEAN_AUROC,
        "auroc_watermarked": auroc_marked,
        "delta_auroc": auroc_marked - auroc_clean,
        "delta_auroc_ci95": ci,
        "delta_auroc_sd": float(np.std(deltas, ddof=1)) if deltas.size > 1 else None,
        "bootstrap": {"resamples": int(resamples), "used": int(deltas.size),
                      "dropped_single_class": dropped, "seed": int(seed)},
        **decision,
        "flip_rate": flips_total / (n * k),
        "flips": flips_total,
        "flips_mcnemar": mcnemar_exact(np.concatenate(right_clean), np.concatenate(right_marked)),
        "decisions": n * k,
        "clean": {key: _mean_of(figures_clean, key) for key in ("accuracy", "sensitivity", "specificity")},
        "watermarked": {key: _mean_of(figures_marked, key) for key in ("accuracy", "sensitivity", "specificity")},
        "per_label": per_label,
        "roc": roc,
    }


def _as_columns(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float scores and (N, K) 0./1. targets, checked."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    t = t[:, None] if t.ndim == 1 else t
    if s.ndim != 2 or t.ndim != 2 or s.shape != t.shape:
        raise BadInputError(f"scores {np.shape(scores)} and targets {np.shape(targets)} do not match")
    if s.shape[0] == 0:
        raise BadInputError("no images to score")
    if not np.isfinite(s).all():
        raise BadInputError("classifier scores contain NaN or infinity")
    if not np.isin(t, (0.0, 1.0)).all():
        raise BadInputError("targets must be 0 or 1")
    return s, t


def detectable_drop(margin: float, sd: float) -> float:
    """The true ΔAUROC drop that the 'fail' rule (95 % upper bound below −margin) detects with
    probability POWER, for a ΔAUROC estimate of this sd (normal approximation)."""
    return float(margin + (_Z_TWO_SIDED_95 + _Z_POWER) * sd)


def with_positive_control(block: dict, control: dict, description: str) -> dict:
    """`block` (compare_classifier of the marked images) with its positive control beside it:
    `control` {description, auroc, delta_auroc, delta_auroc_ci95, verdict, reason, flip_rate} from
    the harmed images' compare_classifier, and `power`; a pass whose control did not fail becomes
    'inconclusive'. Returns the same dict, changed."""
    block["control"] = {"description": description, "auroc": control["auroc_watermarked"],
                        **{key: control[key] for key in ("delta_auroc", "delta_auroc_ci95", "delta_auroc_sd", "verdict",
                                                         "reason", "flip_rate")}}
    spreads = [sd for sd in (block.get("delta_auroc_sd"), control.get("delta_auroc_sd")) if sd is not None]
    margin = block["margin"]
    block["power"] = ({"detectable_drop": detectable_drop(margin, max(spreads)), "power": POWER,
                       "sd": max(spreads), "n_images": block["n_images"]} if spreads else None)
    if block["verdict"] != "pass" or control["verdict"] == "fail":
        return block
    shown = control["delta_auroc"]
    if shown < -margin and control["delta_auroc_ci95"][1] is not None:
        needed = _images_needed(block["n_images"], -shown, -control["delta_auroc_ci95"][1], margin)
        why = (f"its positive control ({description}) lowered AUROC by {-shown:.4f}, but with a 95 % CI "
               f"reaching {control['delta_auroc_ci95'][1]:+.4f}, not clearly below −{margin:g}"
               + (f" (about {needed} images would show it)" if needed else ""))
    else:
        needed = None
        why = (f"its positive control ({description}) changed AUROC by only {shown:+.4f}: this classifier is not "
               "hurt by that harm, so its 'no change' under the mark shows nothing (choose a --control it is hurt by)")
    block.update(verdict="inconclusive", non_inferior=False, images_needed=needed,
                 reason=f"the check cannot see harm of this size: {why}; the mark alone would pass "
                        f"({block['reason']})")
    return block


def checked_readings(block: dict) -> list[tuple[str, dict]]:
    """The check's readings in report order: ("as archived", block), then ("after JPEG q80
    export", its `after_export` block) where `wm evaluate` measured one. Each has its own verdict; the check
    holds only when every one passes."""
    readings = [("as archived", block)]
    if isinstance(block.get("after_export"), dict):
        readings.append(("after JPEG q80 export", block["after_export"]))
    return readings
