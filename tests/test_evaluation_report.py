"""`wm evaluate`'s figures and report folder, on real held-out DICOMs with the shipped model."""

from __future__ import annotations

import csv
import json
import re
from functools import partial

import numpy as np
import pytest

from watermark_cli.attacks.codecs import parse_attack_list
from watermark_cli.data.clinical import clinical_files
from watermark_cli.evaluation.run import EvaluationOptions, evaluate_images, upper_bound_95
from watermark_cli.evaluation.report import write_report
from watermark_cli.io.image import read_image
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    files = [path for group, path in clinical_files("held_out") if group.modality in ("CT", "MR")][:2]
    sources = [(str(path), partial(read_image, path)) for path in files]
    options = EvaluationOptions(floor=QualityFloor(40.0), attacks=parse_attack_list("identity,jpeg:90,jpeg:60,noise:0.01"),
                                messages=2, seed=1)
    report, rows, frame_psnrs, examples = evaluate_images(sources, load_model(None), options, with_examples=True)
    folder = tmp_path_factory.mktemp("report")
    write_report(folder, report, rows, frame_psnrs, examples)
    return report, rows, folder


def test_report_figures_agree_with_the_rows(evaluated):
    report, rows, _ = evaluated
    assert report["n_images"] == 2 and report["below_floor"] == 0
    assert len(rows) == 2 * 2 * 4  # images × messages × attacks
    for name, figures in report["attacks"].items():
        subset = [r for r in rows if r["attack"] == name]
        assert figures["n"] == len(subset)
        assert figures["payload_recovery"] == pytest.approx(np.mean([r["payload_recovered"] for r in subset]))
        assert figures["payload_recovery_lower_95"] <= figures["payload_recovery"]
    assert report["attacks"]["identity"]["payload_recovery"] == 1.0
    quality = report["quality"]
    assert quality["psnr"]["min"] >= 40.0 and quality["psnr"]["min"] <= quality["psnr"]["median"] <= quality["psnr"]["max"]
    assert 0 < quality["ssim"]["min"] <= 1 and quality["max_abs_error"]["max"] >= 1
    # The unmarked originals were read too, and nothing was found in them.
    assert report["detection"] == {**report["detection"], "false_positives": 0, "n_clean": 2}


def test_report_folder_is_complete_and_self_contained(evaluated):
    report, rows, folder = evaluated
    assert json.loads((folder / "report.json").read_text())["n_images"] == 2
    with open(folder / "per_image.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "0 frame(s) below the floor" in page
    # Plots are inlined, never linked: the page works alone.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # histogram, strength curves, examples
    assert not re.search(r'src="(?!data:)', page)
    assert "jpeg:60" in page and "False positives" in page


def test_upper_bound_on_a_rate():
    assert upper_bound_95(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert upper_bound_95(0, 3000) < 0.001
    assert upper_bound_95(5, 10) > 0.5


class MeanBrightness:
    """A stand-in diagnostic classifier: the score is the mean of the central input region. On
    images whose label is 'brighter centre' it is perfect, and a 40 dB mark cannot move it."""

    input_size = 32
    path = "mean-brightness"

    def score_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[:, 8:24, 8:24].mean(axis=(1, 2))[:, None].astype(np.float64)


class CornerBrightness(MeanBrightness):
    """A classifier that looks where the finding is not: at chance."""

    def score_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[:, :6, :6].mean(axis=(1, 2))[:, None].astype(np.float64)


def _checked_report(tmp_path, classifier, count: int = 8) -> dict:
    """`evaluate` with the classifier check on `count` 16-bit images, half with a bright centre."""
    from PIL import Image

    from watermark_cli.diagnostic.classifier import read_labels
    from watermark_cli.evaluation.run import ClassifierCheck, evaluate

    rng = np.random.default_rng(4)
    rows = ["path,label"]
    for index in range(count):
        label = index % 2
        image = rng.normal(20000, 3000, (128, 128))
        image[40:88, 40:88] += 15000 * label  # a bright centre is the finding
        Image.fromarray(np.clip(image, 0, 65535).astype(np.uint16)).save(tmp_path / f"img{index}.png")
        rows.append(f"img{index}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")

    check = ClassifierCheck(classifier, read_labels(tmp_path / "labels.csv"), margin=0.01)
    options = EvaluationOptions(floor=QualityFloor(40.0), attacks=parse_attack_list("identity"), messages=1)
    return evaluate([tmp_path], load_model(None), options, tmp_path / "report",
                    on_marked=check.on_marked, finish=check.finish)


def test_a_classifier_at_chance_makes_the_check_inconclusive_in_the_json_and_the_html(tmp_path):
    block = _checked_report(tmp_path, CornerBrightness(), count=12)["classifier"]
    assert block["verdict"] == "inconclusive" and not block["non_inferior"]
    assert "does not clearly see the finding" in block["reason"]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classifier"]["verdict"] == "inconclusive"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "inconclusive" in page and "does not clearly see the finding" in page


def test_classifier_check_joins_the_report(tmp_path):
    report = _checked_report(tmp_path, MeanBrightness())
    block = report["classifier"]
    assert block["n_images"] == 8 and block["auroc_clean"] == 1.0 and block["auroc_watermarked"] == 1.0
    assert block["delta_auroc"] == 0.0 and block["non_inferior"] and block["flip_rate"] == 0.0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "non-inferior" in page and 'alt="ROC curves clean vs watermarked" src="data:image/png;base64,' in page
    assert block["flips_mcnemar"] == {"made_wrong": 0, "made_right": 0, "p_value": 1.0} and "McNemar" in page
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classifier"]["verdict"] == "pass"


class RecordingContrast(MeanBrightness):
    """Scores the central region against the whole input in units of its spread, as a network
    that standardises its input does (an 8-bit export stretches each image to its own range),
    and keeps every batch of inputs it was asked to score."""

    def __init__(self):
        self.batches = []

    def score_inputs(self, inputs: np.ndarray) -> np.ndarray:
        self.batches.append(inputs.copy())
        spread = inputs.std(axis=(1, 2)) + 1e-9
        return ((super().score_inputs(inputs)[:, 0] - inputs.mean(axis=(1, 2))) / spread)[:, None]


def test_the_check_is_repeated_after_a_jpeg_q80_export_of_the_budgeted_view(tmp_path):
    classifier = RecordingContrast()
    block = _checked_report(tmp_path, classifier)["classifier"]
    exported = block["after_export"]
    assert exported["export"].startswith("jpeg:80") and exported["n_images"] == 8
    assert exported["auroc_clean"] == 1.0 and exported["verdict"] == "pass"
    # Four score calls: originals and marked as archived, then both exported. An export is the
    # same picture on another scale (8 bits over the view), through a real lossy JPEG: closely
    # correlated with the archived input, never equal to it.
    archived_clean, archived_marked, exported_clean, exported_marked = classifier.batches
    for archived, through_jpeg in ((archived_clean, exported_clean), (archived_marked, exported_marked)):
        for before, after in zip(archived, through_jpeg):
            assert not np.array_equal(before, after)
            assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.95
    page = (tmp_path / "report" / "report.html").read_text()
    assert "after JPEG q80 export" in page and "as archived" in page
