"""`wm evaluate`'s figures and report folder, on real held-out DICOMs with the shipped model."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import run_wm_here
from watermark_cli.attacks.codecs import parse_attack_list
from watermark_cli.data.clinical import clinical_file, clinical_files
from watermark_cli.diagnostic.classifier import Classifier
from watermark_cli.errors import BadInputError
from watermark_cli.evaluation.run import EvaluationOptions, _add_example, evaluate_images, upper_bound_95
from watermark_cli.evaluation.report import per_image_csv, write_report
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
    assert quality["psnr"]["n_images"] == quality["psnr_data_range"]["n_images"] == 2
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


def test_images_evaluated_two_at_a_time_give_the_figures_of_one_at_a_time(tmp_path, monkeypatch):
    """`wm evaluate` runs an image per core, in forked processes where each has a core: the same
    report, rows, PSNRs, examples and marked images for the classifier check's hook, in the same
    order, and an image that cannot be read is skipped in place."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # two images at once, a forked process each
    read_in = tmp_path / "read_in"

    def loader(name: str):
        def load():
            with open(read_in, "a") as record:
                record.write(f"{os.getpid()}\n")
            return read_image(clinical_file(name))
        return load

    def unreadable():
        raise BadInputError("not an image")

    sources = [(name, loader(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    sources.insert(1, ("broken.dcm", unreadable))
    options = EvaluationOptions(floor=QualityFloor(40.0), attacks=parse_attack_list("identity,jpeg:90"), messages=1)
    model = load_model(None)
    runs = {}
    for at_once in (1, 2):
        marked, seen = [], []
        figures = evaluate_images(sources, model, options, on_image=seen.append, with_examples=True, at_once=at_once,
                                  on_marked=lambda path, image, pixels, views: marked.append((path, pixels)))
        assert seen == [path for path, _ in sources]
        runs[at_once] = (*figures, marked)
    pids = read_in.read_text().split()
    assert len(pids) == 4 and pids[:2] == [str(os.getpid())] * 2 and str(os.getpid()) not in pids[2:]
    (report, rows, psnrs, examples, marked), (again, rows_again, psnrs_again, examples_again, marked_again) = (
        runs[1], runs[2])
    assert report["n_images"] == 2
    assert again["skipped"] == report["skipped"] == [{"path": "broken.dcm", "reason": "not an image"}]
    # The same stored values and decisions; floats the networks feed (the guard's scale, a
    # reading's confidence) to rounding: a worker runs torch on one thread, this process on two.
    assert _same_to_rounding(again, report) and _same_to_rounding(rows_again, rows) and psnrs_again == psnrs
    assert [path for path, _ in marked_again] == [path for path, _ in marked] == ["CT_small.dcm", "MR_small.dcm"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(marked_again, marked))
    assert [(e[0], e[1]) for e in examples_again] == [(e[0], e[1]) for e in examples]
    assert all(np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3]) for a, b in zip(examples_again, examples))


def test_a_huge_file_is_evaluated_with_no_other_beside_it(monkeypatch):
    """As `wm embed` marks a file over `files.ALONE_PIXELS` alone, `wm evaluate` evaluates it
    alone (its header says how large it is; an in-memory image has no header and shares)."""
    import watermark_cli.evaluation.run as run
    import watermark_cli.marking.files as files

    monkeypatch.setattr(files, "ALONE_PIXELS", 300 * 300)  # between the 128² CT and the 512² one
    asked = {}
    real_in_workers = run.in_workers

    def spying(work, items, at_once, models, device, lost, alone, **kwargs):
        items = list(items)
        asked.update({index: alone(index) for index in items})
        return real_in_workers(work, items, at_once, models, device, lost, alone=alone, **kwargs)

    monkeypatch.setattr(run, "in_workers", spying)
    sources = [(str(clinical_file(name)), partial(read_image, clinical_file(name)))
               for name in ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm")]
    sources.append(("in memory", partial(read_image, clinical_file("CT_small.dcm"))))
    options = EvaluationOptions(floor=QualityFloor(40.0), attacks=parse_attack_list("identity"), messages=1)
    report = evaluate_images(sources, load_model(None), options)[0]
    assert report["n_images"] == 4
    assert asked == {0: False, 1: False, 2: True, 3: False}


def _same_to_rounding(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_to_rounding(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_to_rounding, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9)
    return a == b


def test_upper_bound_on_a_rate():
    assert upper_bound_95(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert upper_bound_95(0, 3000) < 0.001
    assert upper_bound_95(5, 10) > 0.5


def test_per_image_csv_has_the_union_of_the_rows_columns_and_blanks_where_a_view_does_not_apply():
    rows = [  # a CT (data range and windows), an 8-bit PNG (stored values only), an NM (data range)
        {"path": "ct.dcm", "psnr": 40.1, "psnr_data_range": 44.0, "psnr_window": 40.1, "ssim": 0.98},
        {"path": "cut.png", "psnr": 40.3, "psnr_stored": 40.3, "ssim": 0.97},
        {"path": "nm.dcm", "psnr": 41.0, "psnr_data_range": 41.0, "ssim": 0.99, "note": None},
    ]
    header, *lines = list(csv.reader(io.StringIO(per_image_csv(rows))))
    # Columns every row has, in the first row's order; then the others as they first appear.
    assert header == ["path", "psnr", "ssim", "psnr_data_range", "psnr_window", "psnr_stored", "note"]
    assert lines == [["ct.dcm", "40.1", "0.98", "44.0", "40.1", "", ""],
                     ["cut.png", "40.3", "0.97", "", "", "40.3", ""],
                     ["nm.dcm", "41.0", "0.99", "41.0", "", "", ""]]


def test_examples_show_each_kind_of_binding_view_before_a_second_of_one_kind():
    def shown(kinds: list[str], limit: int = 3) -> list[str]:
        examples, example_kinds = [], []
        for index, kind in enumerate(kinds):
            _add_example(examples, example_kinds, limit, kind, lambda: (f"img{index}", kind))
        assert [kind for _, kind in examples] == example_kinds
        return [label for label, _ in examples]

    assert shown(["window"] * 5) == ["img0", "img1", "img2"]  # one kind: the first images
    assert shown(["window", "window", "window", "data range", "window", "stored"]) == ["img0", "img3", "img5"]
    assert shown(["window", "window", "stored", "data range", "voi lut"]) == ["img0", "img2", "img3"]
    assert shown(["stored", "window"], limit=0) == []


def _mixed_folder(folder: Path) -> Path:
    """Real pixels of every kind `wm` reads, at least 128² (the default model's smallest frame):
    a CT that declares no window (the standard CT windows still apply), a 2-frame enhanced CT with
    per-frame windows, an NM DICOM with no window at all, and 256² cuts of a real CT written as an
    8-bit PNG, a 16-bit TIFF and a JPEG."""
    from PIL import Image

    folder.mkdir()
    for name, target in (("CT_small.dcm", "ct_no_declared_window.dcm"), ("eCT_Supplemental.dcm", "ct_2_frames.dcm"),
                         ("JPEG2000_UNC.dcm", "nm_no_window.dcm")):
        shutil.copyfile(get_testdata_file(name, download=False), folder / target)
    ct = pydicom.dcmread(get_testdata_file("693_UNCR.dcm", download=False)).pixel_array.astype(np.int64)
    cut = ct[128:384, 128:384] - ct[128:384, 128:384].min()
    eight_bit = np.rint(255.0 * cut / cut.max()).astype(np.uint8)
    Image.fromarray(eight_bit).save(folder / "cut_8bit.png")
    Image.fromarray(cut.astype(np.uint16)).save(folder / "cut_16bit.tif")
    Image.fromarray(eight_bit).save(folder / "cut.jpg", quality=90)
    return folder


@pytest.mark.slow
def test_wm_evaluate_on_a_folder_that_mixes_every_kind_of_image(tmp_path):
    folder = _mixed_folder(tmp_path / "mixed")
    declared = {path.name: any(element.keyword == "WindowCenter"  # top level or per frame
                               for element in pydicom.dcmread(path, stop_before_pixels=True).iterall())
                for path in folder.glob("*.dcm")}
    assert declared == {"ct_no_declared_window.dcm": False, "ct_2_frames.dcm": True, "nm_no_window.dcm": False}
    report_folder = tmp_path / "report"

    result = run_wm_here("evaluate", folder, "--attacks", "identity", "--messages", "1", "--report", report_folder)
    assert result.code == 0, result.stderr

    report = json.loads((report_folder / "report.json").read_text())
    assert report["n_images"] == 6 and report["n_frames_marked"] == 7 and report["below_floor"] == 0
    assert not report["skipped"] and report["attacks"]["identity"]["n"] == 6
    # Each view's figures over the images that have it, and how many those are.
    quality = report["quality"]
    covered = {name: figures["n_images"] for name, figures in quality.items() if figures}
    assert covered == {"psnr": 6, "psnr_data_range": 4, "psnr_window": 2, "psnr_stored": 2, "psnr_nominal": 6,
                       "ssim": 6, "max_abs_error": 6}
    assert quality["psnr_voi_lut"] is None
    for name in covered:
        if name.startswith("psnr"):
            assert quality[name]["min"] >= 40.0
    assert set(report["binding_views"]) <= {"window", "data range", "stored"}
    assert report["binding_views"]["stored"] == 2  # an 8-bit file has no other view

    with open(report_folder / "per_image.csv") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, {Path(row["path"]).name: row for row in reader}
    assert header[0] == "path" and header[-3:] == ["psnr_data_range", "psnr_window", "psnr_stored"]
    assert len(rows) == 6 and all(row["psnr"] and row["confidence"] for row in rows.values())
    blank = {name: sorted(column for column in header[-3:] if row[column] == "") for name, row in rows.items()}
    assert blank == {"ct_no_declared_window.dcm": ["psnr_stored"], "ct_2_frames.dcm": ["psnr_stored"],
                     "nm_no_window.dcm": ["psnr_stored", "psnr_window"],
                     "cut_16bit.tif": ["psnr_stored", "psnr_window"],
                     "cut_8bit.png": ["psnr_data_range", "psnr_window"], "cut.jpg": ["psnr_data_range", "psnr_window"]}

    page = (report_folder / "report.html").read_text()
    assert "0 frame(s) below the floor" in page
    for title, share in (("PSNR, data range (dB)", "4 of 6"), ("PSNR, lowest declared or standard window (dB)", "2 of 6"),
                         ("PSNR, 8-bit as stored (dB)", "2 of 6"), ("SSIM in the binding view", "6 of 6")):
        assert f"<td>{title}</td><td>{share}</td>" in page
    assert "VOI LUT" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2  # histogram, examples (one attack: no curves)
    assert (report_folder / "psnr_histogram.png").stat().st_size and (report_folder / "examples.png").stat().st_size
    summary = " ".join(result.stdout.split())
    assert "psnr_window median" in summary and "(2 of 6 images)" in summary and "psnr_stored median" in summary


class MeanBrightness(Classifier):
    """A stand-in diagnostic classifier: the score is the mean of the central input region. On
    images whose label is 'brighter centre' it is perfect, and a 40 dB mark cannot move it."""

    input_size = 32
    label_names = ["label"]
    path = Path("mean-brightness")

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        return inputs[:, 8:24, 8:24].mean(axis=(1, 2))[:, None].astype(np.float64)


class CornerBrightness(MeanBrightness):
    """A classifier that looks where the finding is not: at chance."""

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        return inputs[:, :6, :6].mean(axis=(1, 2))[:, None].astype(np.float64)


def _checked_report(tmp_path, classifier, count: int = 8) -> dict:
    """`evaluate` with the classifier check on `count` 16-bit images, half with a bright centre."""
    from PIL import Image

    from watermark_cli.diagnostic.labels import read_labels
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


@pytest.mark.slow
def test_a_classifier_at_chance_makes_the_check_inconclusive_in_the_json_and_the_html(tmp_path):
    block = _checked_report(tmp_path, CornerBrightness(), count=12)["classifier"]
    assert block["verdict"] == "inconclusive" and not block["non_inferior"]
    assert "does not clearly see the finding" in block["reason"]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classifier"]["verdict"] == "inconclusive"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "inconclusive" in page and "does not clearly see the finding" in page


@pytest.mark.slow
def test_classifier_check_joins_the_report(tmp_path):
    """A classifier that neither the mark nor the positive control moves: the mark alone would
    pass, but a check that could not have seen harm does not say so."""
    report = _checked_report(tmp_path, MeanBrightness())
    block = report["classifier"]
    assert block["n_images"] == 8 and block["auroc_clean"] == 1.0 and block["auroc_watermarked"] == 1.0
    assert block["delta_auroc"] == 0.0 and block["flip_rate"] == 0.0
    assert block["control"]["description"].startswith("mark:20") and block["control"]["verdict"] == "pass"
    assert block["verdict"] == "inconclusive" and not block["non_inferior"]
    assert block["reason"].startswith("the check cannot see harm of this size") and "would pass" in block["reason"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "positive control" in page and 'alt="ROC curves clean vs watermarked" src="data:image/png;base64,' in page
    assert block["flips_mcnemar"] == {"made_wrong": 0, "made_right": 0, "p_value": 1.0} and "McNemar" in page
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classifier"]["verdict"] == "inconclusive"


class RecordingContrast(MeanBrightness):
    """Scores the central region against the whole input in units of its spread, as a network
    that standardises its input does (an 8-bit export stretches each image to its own range),
    and keeps every batch of inputs it was asked to score."""

    def __init__(self):
        self.batches = []

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        self.batches.append(inputs.copy())
        spread = inputs.std(axis=(1, 2)) + 1e-9
        return ((super()._probabilities(inputs, batch_size)[:, 0] - inputs.mean(axis=(1, 2))) / spread)[:, None]


@pytest.mark.slow
def test_the_check_is_repeated_after_a_jpeg_q80_export_of_the_budgeted_view(tmp_path):
    classifier = RecordingContrast()
    block = _checked_report(tmp_path, classifier)["classifier"]
    exported = block["after_export"]
    assert exported["export"].startswith("jpeg:80") and exported["n_images"] == 8
    assert exported["auroc_clean"] == 1.0 and exported["delta_auroc_ci95"][0] >= -0.01  # the mark: no change
    assert exported["control"]["verdict"] in ("pass", "fail", "inconclusive")
    # Six score calls: originals, then marked, then the positive control, each as archived and
    # exported. An export is the same picture on another scale (8 bits over the view), through a
    # real lossy JPEG: closely correlated with the archived input, never equal to it.
    (archived_clean, exported_clean, archived_marked, exported_marked, archived_control,
     exported_control) = classifier.batches
    for archived, through_jpeg in ((archived_clean, exported_clean), (archived_marked, exported_marked),
                                   (archived_control, exported_control)):
        for before, after in zip(archived, through_jpeg):
            assert not np.array_equal(before, after)
            assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.95
    page = (tmp_path / "report" / "report.html").read_text()
    assert "after JPEG q80 export" in page and "as archived" in page
