"""`wm evaluate`'s figures and report folder, on real held-out DICOMs with the shipped model."""

from __future__ import annotations

import csv
import json
import re
from functools import partial

import numpy as np
import pytest

from watermark_cli.attacks import parse_attack_list
from watermark_cli.clinical_data import clinical_files
from watermark_cli.evaluation import EvaluationOptions, evaluate_images, rule_of_three_upper_bound
from watermark_cli.evaluation_report import write_report
from watermark_cli.image_io import read_image
from watermark_cli.model_store import load_model
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
    assert rule_of_three_upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert rule_of_three_upper_bound(0, 3000) < 0.001
    assert rule_of_three_upper_bound(5, 10) > 0.5
