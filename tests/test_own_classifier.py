"""The classifier check on the user's own model file (TorchScript, torch.export, ONNX) read through
its card, the positive control beside every verdict, and the power figure.

The model files are real exports (torch.jit.trace, torch.export.save, torch.onnx.export) of one
small network; what each format's loader gives must be what the network itself gives.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_wm, run_wm_here

from watermark_cli.diagnostic.card import read_classifier_model_card
from watermark_cli.diagnostic.check import compare_classifier, detectable_drop, with_positive_control
from watermark_cli.diagnostic.classifier import Classifier
from watermark_cli.diagnostic.control import PositiveControl, parse_control
from watermark_cli.diagnostic.external import load_external_classifier, open_classifier
from watermark_cli.diagnostic.inputs import Intensity, classifier_input
from watermark_cli.errors import BadInputError
from watermark_cli.views import ModalityTransform

SIZE = 32
CARD = {"input_size": SIZE, "channels": 3, "intensity": "nominal",
        "normalize": {"mean": [0.5, 0.4, 0.3], "std": 0.25}, "output": "logits", "labels": ["spot", "edge"]}


def _network():
    import torch

    class TwoFindings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).amax(dim=(2, 3)))

    return TwoFindings().eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The network, its card, and the network saved in each format (torch.export for a fixed
    batch of 2, ONNX with a dynamic batch, TorchScript traced)."""
    import torch

    folder = tmp_path_factory.mktemp("exported")
    net = _network()
    example = torch.zeros(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, example).save(str(folder / "model.ts"))
        torch.export.save(torch.export.export(net, (example,)), str(folder / "model.pt2"))
        torch.onnx.export(net, (example,), str(folder / "model.onnx"), input_names=["image"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    card = folder / "card.yaml"
    card.write_text(yaml.safe_dump(CARD))
    return {"net": net, "card": card, "folder": folder,
            "files": {fmt: folder / f"model.{fmt}" for fmt in ("ts", "pt2", "onnx")}}


def _card(tmp_path: Path, **changes) -> Path:
    card = {**CARD, **changes}
    for key in [k for k, v in card.items() if v is None]:
        del card[key]
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


# -- the card -----------------------------------------------------------------------------------


def test_a_card_reads_every_field(tmp_path):
    card = read_classifier_model_card(_card(tmp_path, intensity={"window": [40, 400]}, channels=1,
                                            normalize={"mean": 0.1, "std": [0.2]}, output="probabilities"))
    assert (card.input_size, card.channels, card.output, card.labels) == (SIZE, 1, "probabilities", ("spot", "edge"))
    assert card.intensity == Intensity("window", (40.0, 400.0)) and card.mean == (0.1,) and card.std == (0.2,)
    batch = card.normalised(np.full((2, SIZE, SIZE), 0.5, dtype=np.float32))
    assert batch.shape == (2, 1, SIZE, SIZE) and np.allclose(batch, (0.5 - 0.1) / 0.2)


@pytest.mark.parametrize("changes, message", [
    ({"input_size": 0}, "input_size must be a whole number"),
    ({"input_size": "224"}, "input_size must be a whole number"),
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"intensity": "hounsfield"}, "intensity must be nominal | range or {window: [centre, width]}"),
    ({"intensity": {"window": [40]}}, "window must be [centre, width]"),
    ({"intensity": {"window": [40, 0]}}, "positive width"),
    ({"normalize": {"mean": [0.1, 0.2], "std": 1}}, "mean must be one number or one per channel (3)"),
    ({"normalize": {"mean": 0, "std": 0}}, "std must be positive"),
    ({"normalize": [0.5, 0.25]}, "normalize must be {mean: ..., std: ...}"),
    ({"output": "softmax"}, "output must be logits or probabilities"),
    ({"labels": []}, "labels must name each output"),
    ({"labels": ["a", "a"]}, "names must differ"),
    ({"labels": None}, "lacks labels"),
    ({"resize": "bicubic"}, "unknown field(s) resize"),
])
def test_a_bad_card_is_one_line_naming_the_field(tmp_path, changes, message):
    with pytest.raises(BadInputError, match="classifier card") as caught:
        read_classifier_model_card(_card(tmp_path, **changes))
    assert message in str(caught.value) and "\n" not in str(caught.value)


# -- intensity ---------------------------------------------------------------------------------


def test_a_window_is_read_in_modality_units_and_range_over_the_frames_own_values():
    stored = np.array([[0, 1024, 1064, 1264, 3000]], dtype=np.uint16)  # a CT row: −1024 HU offset
    modality = ModalityTransform(slope=1.0, intercept=-1024.0)
    window = Intensity("window", (40.0, 400.0)).unit_frame(stored, (0, 4095), modality)
    # HU −1024, 0, 40, 240, 1976 in a 40/400 window: black, (0 − 39.5)/399 + 0.5, the centre, white, white
    np.testing.assert_allclose(window[0], [0.0, 0.5 - 39.5 / 399, 0.5 + 0.5 / 399, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(Intensity("range").unit_frame(stored, (0, 4095))[0], stored[0] / 3000.0, atol=1e-6)
    np.testing.assert_allclose(Intensity().unit_frame(stored, (0, 4095))[0], stored[0] / 4095.0, atol=1e-6)
    assert Intensity("window", (40.0, 400.0)).of_export() == Intensity() and Intensity("range").of_export().kind == "range"
    assert not Intensity("range").unit_frame(np.full((4, 4), 7), (0, 255)).any()  # a flat frame: 0, not NaN


def test_the_nominal_input_is_the_one_wm_classifiers_always_had():
    frames = np.random.default_rng(2).integers(0, 4000, (3, 40, 60)).astype(np.uint16)
    assert np.array_equal(classifier_input(frames, (0, 4095), 32), classifier_input(frames, (0, 4095), 32, Intensity()))


# -- the formats ---------------------------------------------------------------------------------


@pytest.mark.slow  # the module's exported models: 7 to 9 s to make, over the fast lane's guard
def test_each_format_scores_what_the_network_scores(exported):
    import torch

    inputs = np.random.default_rng(5).random((5, SIZE, SIZE), dtype=np.float32)  # 5: pads the batch-2 program
    card = read_classifier_model_card(exported["card"])
    with torch.inference_mode():
        expected = torch.sigmoid(exported["net"](torch.from_numpy(card.normalised(inputs)))).double().numpy()
    for fmt, path in exported["files"].items():
        classifier = load_external_classifier(path, exported["card"])
        assert classifier.label_names == ["spot", "edge"] and classifier.input_size == SIZE
        np.testing.assert_allclose(classifier.score_inputs(inputs), expected, atol=1e-5, err_msg=fmt)
    assert load_external_classifier(exported["files"]["pt2"], exported["card"]).runtime.fixed_batch == 2


@pytest.mark.slow
@pytest.mark.parametrize("fmt, changes, message", [
    ("onnx", {"input_size": 48}, "takes 3×32×32 inputs; its card card.yaml says 3×48×48"),
    ("pt2", {"channels": 1, "normalize": None}, "takes 3×32×32 inputs; its card card.yaml says 1×32×32"),
    ("ts", {"channels": 1, "normalize": None}, "does not fit its card card.yaml: classifier model.ts failed on its inputs"),
    ("ts", {"labels": ["spot"]}, "returns shape (2, 2) for 2 inputs; its card's 1 label(s) want (2, 1)"),
    ("onnx", {"output": "probabilities"}, "returns values outside [0, 1]"),
])
def test_a_card_that_does_not_fit_its_model_is_found_by_the_dry_run(exported, tmp_path, fmt, changes, message):
    with pytest.raises(BadInputError) as caught:
        load_external_classifier(exported["files"][fmt], _card(tmp_path, **changes))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_damaged_foreign_or_missing_files_are_one_line_errors(exported, tmp_path):
    for suffix in (".ts", ".pt2", ".onnx"):
        damaged = tmp_path / f"damaged{suffix}"
        damaged.write_bytes(b"\x00not a model" * 40)
        with pytest.raises(BadInputError, match=f"cannot load {damaged}") as caught:
            load_external_classifier(damaged, exported["card"])
        assert "\n" not in str(caught.value)
    with pytest.raises(BadInputError, match="not a model file wm runs"):
        load_external_classifier(tmp_path / "model.h5", exported["card"])
    with pytest.raises(BadInputError, match="classifier not found"):
        load_external_classifier(tmp_path / "absent.onnx", exported["card"])
    with pytest.raises(BadInputError, match="needs --classifier-card"):
        open_classifier(exported["files"]["onnx"])
    with pytest.raises(BadInputError, match="carries its own card"):
        open_classifier(tmp_path, exported["card"])


def _code_pickle(marker: Path) -> bytes:
    """torch.save of an object that, unpickled without restriction, creates `marker`."""
    import torch

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    torch.save({"weight": RunsCode()}, buffer)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["weights", "sample_inputs"])
def test_a_pt2_runs_no_pickled_code(exported, tmp_path, entry):
    """torch.export.load unpickles a weight marked `use_pickle` and falls back to an unrestricted
    unpickle of the sample inputs; wm lets neither run code."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.pt2"
    with zipfile.ZipFile(exported["files"]["pt2"]) as source, zipfile.ZipFile(evil, "w") as target:
        config_name = next(n for n in source.namelist() if n.endswith("weights/model_weights_config.json"))
        config = json.loads(source.read(config_name))
        weight_file = config_name.rsplit("/", 1)[0] + "/" + config["config"]["conv.weight"]["path_name"]
        config["config"]["conv.weight"]["use_pickle"] = True
        for item in source.infolist():
            data = source.read(item)
            if entry == "weights" and item.filename == config_name:
                data = json.dumps(config).encode()
            elif entry == "weights" and item.filename == weight_file:
                data = _code_pickle(marker)
            elif entry == "sample_inputs" and "sample_inputs/" in item.filename:
                data = _code_pickle(marker)
            target.writestr(item, data)
    with pytest.raises(BadInputError) as caught:
        load_external_classifier(evil, exported["card"])
    assert not marker.exists() and "cannot load" in str(caught.value) and "\n" not in str(caught.value)
    # the one wm patched back: torch loads as it did before
    import torch

    assert torch.load.__name__ == "load"


@pytest.mark.slow
def test_the_command_line_refuses_a_model_file_without_its_card(exported, tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,1\n")
    result = run_wm_here("evaluate", tmp_path, "--classifier", exported["files"]["onnx"], "--labels", labels)
    assert result.code == 2 and "needs --classifier-card" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = run_wm_here("evaluate", tmp_path, "--classifier", exported["files"]["onnx"], "--classifier-card",
                      exported["card"], "--labels", labels, "--control", "mark:45")
    assert bad.code == 2 and "below the 40 dB floor" in bad.stderr
    assert "--control must be" in run_wm_here("evaluate", tmp_path, "--classifier", exported["files"]["onnx"],
                                              "--classifier-card", exported["card"], "--labels", labels,
                                              "--control", "sharpen:2").stderr
    alone = run_wm_here("evaluate", tmp_path, "--control", "blur:2")
    assert alone.code == 2 and "--control goes with --classifier and --labels" in alone.stderr


# -- the positive control and power ---------------------------------------------------------------


def test_the_mark_control_scales_the_mark_and_the_blur_control_spreads_a_spot():
    original = np.full((1, 64, 64), 1000, dtype=np.uint16)
    marked = original.copy()
    marked[0, 10, 10] += 3
    harmed = PositiveControl("mark", 20.0).harmed(original, marked, (0, 4095), 40.0, 64)
    assert harmed.dtype == np.uint16 and harmed[0, 10, 10] == 1030 and (harmed != original).sum() == 1
    assert PositiveControl("mark", 20.0).harmed(original, marked, (0, 1010), 40.0, 64)[0, 10, 10] == 1010  # clipped
    spot = original.copy()
    spot[0, 32, 32] = 4000
    blurred = PositiveControl("blur", 1.0).harmed(spot, spot, (0, 4095), 40.0, 32)  # sd 2 px of this 64² image
    assert blurred[0, 32, 32] < 1000 + 3000 / 20 and blurred.sum() == pytest.approx(spot.sum(), rel=1e-3)
    with pytest.raises(BadInputError, match="below the 40 dB floor"):
        PositiveControl("mark", 40.0).harmed(original, marked, (0, 4095), 40.0, 64)
    assert parse_control("blur:1.5") == PositiveControl("blur", 1.5)
    for text in ("mark", "mark:-3", "noise:20", "blur:nan"):
        with pytest.raises(BadInputError, match="--control must be"):
            parse_control(text)


def _scores(n: int, seed: int, harm: float = 0.0):
    """Scores of a classifier with AUROC about 0.9 on n images, and a copy shifted by `harm`
    towards chance (each positive's score lowered, each negative's raised, plus noise)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    clean = rng.normal(truth * 1.8, 1.0)
    changed = clean + harm * np.where(truth == 1, -1.0, 1.0) + rng.normal(0, 0.05 + harm, n)
    return clean, changed, truth


def test_a_pass_stands_only_when_the_control_fails():
    clean, marked, truth = _scores(300, 1)
    _, harmed, _ = _scores(300, 1, harm=1.0)
    block = compare_classifier(clean, marked, truth, margin=0.02)
    control = compare_classifier(clean, harmed, truth, margin=0.02)
    assert block["verdict"] == "pass" and control["verdict"] == "fail"
    checked = with_positive_control(dict(block), control, "a strong harm")
    assert checked["verdict"] == "pass" and checked["control"]["verdict"] == "fail"
    assert checked["control"]["delta_auroc"] == control["delta_auroc"] < -0.1
    assert checked["power"]["detectable_drop"] == pytest.approx(
        detectable_drop(0.02, max(block["delta_auroc_sd"], control["delta_auroc_sd"])))

    blind = with_positive_control(dict(block), block, "a harmless change")  # a control that changed nothing
    assert blind["verdict"] == "inconclusive" and not blind["non_inferior"]
    assert blind["reason"].startswith("the check cannot see harm of this size") and "not hurt by that harm" in blind["reason"]

    failed = compare_classifier(clean, harmed, truth, margin=0.02)
    assert with_positive_control(dict(failed), block, "a harmless change")["verdict"] == "fail"  # a fail stands


def test_a_control_too_weak_for_this_n_asks_for_more_images():
    clean, marked, truth = _scores(60, 3)
    _, harmed, _ = _scores(60, 3, harm=0.12)
    block = compare_classifier(clean, marked, truth, margin=0.01)
    control = compare_classifier(clean, harmed, truth, margin=0.01)
    assert block["verdict"] == "pass" and control["verdict"] != "fail" and control["delta_auroc"] < -0.01
    checked = with_positive_control(dict(block), control, "a mild harm")
    assert checked["verdict"] == "inconclusive" and checked["images_needed"] > 60
    assert "not clearly below" in checked["reason"]


@pytest.mark.slow
def test_the_detectable_drop_is_shown_about_four_times_in_five():
    """The power figure means what it says: harms whose true ΔAUROC equals the detectable drop
    are called 'fail' in about 80 % of repeated samples."""
    n, trials, margin = 200, 60, 0.01
    truth_big = _scores(4000, 7)[2]

    def shortfall(harm: float) -> float:
        """True drop (from a large sample) minus the detectable drop at n (bootstrap sd, mean of 4)."""
        drop = -compare_classifier(*_scores(4000, 7, harm=harm)[:2], truth_big, resamples=1)["delta_auroc"]
        sds = [compare_classifier(*_scores(n, 50 + k, harm=harm)[:2], _scores(n, 50 + k)[2], margin=margin,
                                  resamples=500)["delta_auroc_sd"] for k in range(4)]
        return drop - detectable_drop(margin, float(np.mean(sds)))

    harms = np.linspace(0.02, 0.6, 30)
    gaps = np.array([shortfall(h) for h in harms])
    harm = float(np.interp(0.0, gaps, harms))  # the true drop equals the detectable drop here
    assert gaps[0] < 0 < gaps[-1]
    failures = []
    for trial in range(trials):
        clean, harmed, truth = _scores(n, 1000 + trial, harm=harm)
        failures.append(compare_classifier(clean, harmed, truth, margin=margin, resamples=500)["verdict"] == "fail")
    assert 0.6 <= np.mean(failures) <= 0.95


# -- end to end ----------------------------------------------------------------------------------


class SpotDetector(Classifier):
    """Scores the brightest pixel above its 5×5 neighbourhood: it sees a small bright spot, which
    a 40 dB mark leaves alone and a blur erases."""

    input_size = 64
    label_names = ["spot"]
    path = Path("spot-detector")

    def _probabilities(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        from scipy.ndimage import uniform_filter

        local = inputs - uniform_filter(inputs, size=(1, 5, 5), mode="nearest")
        return local.max(axis=(1, 2))[:, None].astype(np.float64)


def _spot_images(folder: Path, count: int, finding: str = "label") -> Path:
    from PIL import Image

    rng = np.random.default_rng(11)
    rows = [f"path,{finding}"]
    for index in range(count):
        image = rng.normal(30000, 1500, (128, 128))
        if index % 2:
            r, c = rng.integers(20, 108, 2)
            image[r : r + 2, c : c + 2] += 14000
        Image.fromarray(np.clip(image, 0, 65535).astype(np.uint16)).save(folder / f"spot{index}.png")
        rows.append(f"spot{index}.png,{index % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


@pytest.mark.slow
def test_the_check_passes_a_classifier_the_control_hurts_and_doubts_one_it_does_not(tmp_path):
    from watermark_cli.attacks.codecs import parse_attack_list
    from watermark_cli.diagnostic.labels import read_labels
    from watermark_cli.evaluation.run import ClassifierCheck, EvaluationOptions, evaluate
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor

    labels = _spot_images(tmp_path, 24)
    options = EvaluationOptions(floor=QualityFloor(40.0), attacks=parse_attack_list("identity"), messages=1)
    blocks = {}
    for control in ("blur:3", "mark:39"):
        check = ClassifierCheck(SpotDetector(), read_labels(labels), 0.02, control=parse_control(control))
        blocks[control] = evaluate([tmp_path], load_model(None), options, tmp_path / control,
                                   on_marked=check.on_marked, finish=check.finish)["classifier"]
    hurt, barely = blocks["blur:3"], blocks["mark:39"]
    assert hurt["auroc_clean"] > 0.95 and hurt["control"]["verdict"] == "fail" and hurt["verdict"] == "pass"
    assert hurt["control"]["delta_auroc"] < -0.3 and hurt["power"]["detectable_drop"] > 0.02
    assert barely["control"]["verdict"] != "fail" and barely["verdict"] == "inconclusive"
    assert "cannot see harm of this size" in barely["reason"]
    page = (tmp_path / "blur:3" / "report.html").read_text()
    assert "positive control" in page and "blur:3" in page


@pytest.mark.slow
def test_wm_evaluate_runs_an_onnx_model_through_its_card(exported, tmp_path):
    labels = _spot_images(tmp_path, 6, finding="edge")  # one of the model's two outputs, by name
    result = run_wm("evaluate", tmp_path, "--classifier", exported["files"]["onnx"], "--classifier-card",
                    exported["card"], "--labels", labels, "--attacks", "identity", "--messages", "1",
                    "--report", tmp_path / "report", "--json")
    assert result.code in (0, 1), result.stderr
    block = json.loads(result.stdout)["classifier"]
    assert block["labels"] == ["edge"] and block["n_images"] == 6
    assert block["classifier_input"].startswith("ONNX model, 3×32² inputs, nominal stored range")
    assert block["control"]["description"].startswith("mark:20") and "power" in block
    assert block["after_export"]["control"]["verdict"] in ("pass", "fail", "inconclusive")
