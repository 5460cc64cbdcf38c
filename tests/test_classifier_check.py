"""The diagnostic classifier check: its statistics on constructed cases, labels, preprocessing,
the synthetic-lesion dataset, and `wm classifier train` end to end."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_wm
from watermark_cli.data.clinical import CLINICAL_GROUPS
from watermark_cli.diagnostic.classifier import load_classifier
from watermark_cli.diagnostic.inputs import classifier_input
from watermark_cli.diagnostic.labels import read_labels
from watermark_cli.diagnostic.training import ClassifierTrainingConfig, train_classifier, validation_split
from watermark_cli.diagnostic.check import (
    auroc,
    compare_classifier,
    macro_auroc,
    paired_bootstrap_delta,
    roc_curve,
    youden_threshold,
)
from watermark_cli.errors import BadInputError


# -- AUROC ------------------------------------------------------------------------------------


def test_perfect_classifier_has_auroc_one_and_inverted_zero():
    targets = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auroc(scores, targets) == 1.0
    assert auroc(-scores, targets) == 0.0


def test_constant_scores_give_auroc_one_half():
    assert auroc(np.full(7, 0.3), np.array([0, 1, 0, 1, 1, 0, 0])) == 0.5


def test_auroc_by_hand_with_and_without_ties():
    # Positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 beats 0.1 only; 0.8 beats both -> 3/4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # Positives 0.5, 0.9 against negatives 0.2, 0.5: 1 + 0.5 (tie) + 1 + 1 -> 3.5/4.
    assert auroc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.875)


def test_auroc_with_one_class_only_is_undefined():
    assert np.isnan(auroc([0.2, 0.4], [1, 1]))


def test_macro_auroc_averages_the_findings():
    targets = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    scores = np.array([[0.1, 0.5], [0.2, 0.5], [0.7, 0.5], [0.9, 0.5]])  # perfect, constant
    assert macro_auroc(scores, targets) == pytest.approx(0.75)


def test_roc_curve_runs_from_origin_to_one_one_with_one_step_per_tie():
    curve = roc_curve([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])
    assert curve["fpr"] == [0.0, 0.0, 0.5, 1.0]
    assert curve["tpr"] == [0.0, 0.5, 1.0, 1.0]


# -- operating point, flips, bootstrap, verdict -------------------------------------------------


def test_operating_point_and_flips_at_the_clean_threshold():
    targets = np.array([0, 0, 1, 1])
    clean = np.array([0.1, 0.2, 0.7, 0.9])
    marked = np.array([0.1, 0.5, 0.7, 0.3])  # one negative rises above, one positive drops below
    assert youden_threshold(clean, targets) == pytest.approx(0.45)  # halfway between 0.2 and 0.7
    result = compare_classifier(clean, marked, targets, ["lesion"], resamples=200)
    assert result["per_label"]["lesion"]["threshold"] == pytest.approx(0.45)
    assert result["clean"] == {"accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    assert result["watermarked"] == {"accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5}
    assert result["flips"] == 2 and result["decisions"] == 4 and result["flip_rate"] == 0.5
    # Marked positives 0.7, 0.3 against negatives 0.1, 0.5: 0.7 beats both, 0.3 beats 0.1 -> 3/4.
    assert result["auroc_clean"] == 1.0 and result["auroc_watermarked"] == pytest.approx(0.75)


def test_identical_scores_give_no_flips_a_zero_interval_and_a_pass():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, size=(60, 2))
    scores = np.clip(0.8 * targets + rng.random((60, 2)), 0, 1)  # a classifier that sees both findings
    result = compare_classifier(scores, scores.copy(), targets, ["a", "b"], seed=1)
    assert result["auroc_clean_ci95"][0] > 0.7
    assert result["flip_rate"] == 0.0 and result["flips"] == 0
    assert result["delta_auroc"] == 0.0
    assert result["delta_auroc_ci95"] == [0.0, 0.0]
    assert result["non_inferior"] is True and result["verdict"] == "pass"
    assert result["task"] == "multilabel" and set(result["roc"]) == {"a", "b"}
    json.dumps(result, allow_nan=False)  # JSON-ready as it is


def test_a_degraded_watermarked_set_fails_the_margin():
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 50)
    clean = 0.6 * targets + 0.4 * rng.random(100)  # perfect separation
    marked = 0.2 * targets + 0.8 * rng.random(100)  # the watermark blurred the finding away
    result = compare_classifier(clean, marked, targets, margin=0.01)
    assert result["auroc_clean"] == 1.0
    assert result["delta_auroc"] < -0.1
    assert result["delta_auroc_ci95"][1] < 0  # the whole interval is below zero
    assert result["non_inferior"] is False and result["verdict"] == "fail"
    assert result["flip_rate"] > 0.1


def test_a_small_change_within_the_margin_passes():
    rng = np.random.default_rng(1)
    targets = np.repeat([0, 1], 100)
    clean = 0.5 * targets + rng.random(200)
    marked = clean + rng.normal(0, 1e-4, 200)  # far below any gap between scores
    result = compare_classifier(clean, marked, targets, margin=0.01)
    assert abs(result["delta_auroc"]) < 1e-3
    assert result["delta_auroc_ci95"][0] >= -0.01 and result["verdict"] == "pass"


def test_bootstrap_drops_resamples_that_lose_a_class():
    targets = np.array([1, 0, 0])  # one positive: a third of draws miss it... often
    scores = np.array([0.9, 0.2, 0.1])
    deltas, dropped = paired_bootstrap_delta(scores, scores, targets, resamples=500, seed=0)
    assert dropped > 0 and len(deltas) + dropped == 500
    assert np.all(deltas == 0.0)


def test_compare_classifier_refuses_unusable_inputs():
    with pytest.raises(BadInputError, match="only positives or only negatives"):
        compare_classifier([0.1, 0.2], [0.1, 0.2], [0, 0])
    with pytest.raises(BadInputError, match="do not match"):
        compare_classifier([0.1, 0.2], [0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(BadInputError, match="0 or 1"):
        compare_classifier([0.1, 0.2], [0.1, 0.2], [0, 2])


# -- labels -----------------------------------------------------------------------------------


def _png(path: Path, value: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_binary_labels_from_a_csv_with_relative_and_absolute_paths(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    absolute = _png(tmp_path / "elsewhere" / "b.png")
    labels = _write(tmp_path / "imgs" / "labels.csv", f"path,lesion\na.png,0\n{absolute},1\n")
    labelled = read_labels(labels)
    assert labelled.label_names == ["lesion"] and labelled.task == "binary"
    assert labelled.targets.tolist() == [[0.0], [1.0]]
    assert labelled.paths[0] == tmp_path / "imgs" / "a.png"
    assert labelled.targets_for([absolute]).tolist() == [[1.0]]
    assert read_labels(tmp_path / "imgs").label_names == ["lesion"]  # a folder's own labels.csv


def test_a_group_column_is_not_a_finding_and_keeps_groups_on_one_side(tmp_path):
    rows = ["path,label,group"]
    for i in range(20):
        _png(tmp_path / f"i{i}.png")
        rows.append(f"i{i}.png,{i % 2},patient{i // 2}")
    labelled = read_labels(_write(tmp_path / "labels.csv", "\n".join(rows) + "\n"))
    assert labelled.label_names == ["label"] and labelled.groups[:3] == ["patient0", "patient0", "patient1"]
    train, validation = validation_split(labelled, 0.2, seed=0)
    assert len(validation) == 4 and sorted(train + validation) == list(range(20))
    assert {i // 2 for i in train}.isdisjoint({i // 2 for i in validation})


def test_multilabel_csv(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    labels = _write(tmp_path / "labels.csv", "path,nodule,effusion\na.png,1,0\nb.png,1,1\nc.png,0,0\n")
    labelled = read_labels(labels)
    assert labelled.label_names == ["nodule", "effusion"] and labelled.task == "multilabel"
    assert labelled.targets.tolist() == [[1, 0], [1, 1], [0, 0]]
    assert labelled.positives() == {"nodule": 2, "effusion": 1}


def test_labels_from_class_subfolders(tmp_path):
    # "abnormal" sorts first, but it is the positive class by name.
    for folder, names in (("normal", ("n1.png", "n2.png")), ("abnormal", ("x1.png",))):
        for name in names:
            _png(tmp_path / "two" / folder / name)
    labelled = read_labels(tmp_path / "two")
    assert labelled.label_names == ["abnormal"]
    by_name = {p.name: t[0] for p, t in zip(labelled.paths, labelled.targets)}
    assert by_name == {"x1.png": 1.0, "n1.png": 0.0, "n2.png": 0.0}

    for folder in ("benign", "malignant"):  # no known name: the second in sorted order
        _png(tmp_path / "plain" / folder / "i.png")
    assert read_labels(tmp_path / "plain").label_names == ["malignant"]

    for folder in ("ct", "mr", "us"):  # three classes: one-hot findings
        _png(tmp_path / "three" / folder / "i.png")
    three = read_labels(tmp_path / "three")
    assert three.label_names == ["ct", "mr", "us"] and three.targets.tolist() == np.eye(3).tolist()


@pytest.mark.parametrize("text, message", [
    ("path,label\na.png,2\n", "line 2: label is '2', not 0 or 1"),
    ("path,label\na.png,yes\n", "not 0 or 1"),
    ("path,label\nmissing.png,1\n", "1 listed file(s) do not exist, first line 2: missing.png"),
    ("file,label\na.png,1\n", "first row must be a header"),
    ("path,label\na.png,1,0\n", "line 2: 3 columns"),
    ("path,label\na.png,1\na.png,0\n", "listed twice"),
    ("path,label\n", "no images listed"),
])
def test_bad_labels_are_one_line_errors(tmp_path, text, message):
    _png(tmp_path / "a.png")
    labels = _write(tmp_path / "labels.csv", text)
    with pytest.raises(BadInputError) as caught:
        read_labels(labels)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_without_labels_is_refused(tmp_path):
    _png(tmp_path / "only" / "a.png")
    with pytest.raises(BadInputError, match="no labels.csv and no class subfolders"):
        read_labels(tmp_path)


# -- preprocessing ----------------------------------------------------------------------------


def test_classifier_input_uses_the_middle_frame_the_stored_range_and_keeps_the_aspect():
    frames = np.zeros((3, 40, 80), dtype=np.uint16)
    frames[1] = 3000  # the middle frame
    out = classifier_input(frames, (0, 4000), size=32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out[16, 16] == pytest.approx(0.75)  # 3000 of 0..4000
    assert out[:7].max() == 0.0 and out[-7:].max() == 0.0  # letterboxed: 80x40 -> 32x16, centred
    signed = np.full((1, 16, 16), -1024, dtype=np.int16)
    assert classifier_input(signed, (-32768, 32767), size=16)[8, 8] == pytest.approx((32768 - 1024) / 65535)


# -- networks ---------------------------------------------------------------------------------


def test_the_small_network_keeps_the_weight_names_of_the_classifier_folders_already_written():
    """The keys of `weights.safetensors`: a renamed attribute would orphan every classifier folder
    `wm classifier train` has written (five conv stages of conv + batch norm, then the head)."""
    from watermark_cli.diagnostic.networks import build_network

    widths = (1, 8, 16, 32, 64, 128)
    expected = {}
    for stage, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        conv, norm = f"backbone.features.{4 * stage}", f"backbone.features.{4 * stage + 1}"
        expected[f"{conv}.weight"] = (cout, cin, 3, 3)
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{norm}.{name}"] = (cout,)
        expected[f"{norm}.num_batches_tracked"] = ()
    expected["backbone.head.weight"], expected["backbone.head.bias"] = (2, 256), (2,)
    state = build_network("small", 2).state_dict()
    assert {key: tuple(tensor.shape) for key, tensor in state.items()} == expected


@pytest.mark.slow
@pytest.mark.parametrize("arch, first, head", [
    ("resnet18", "backbone.conv1.weight", "backbone.fc"),
    ("densenet121", "backbone.features.conv0.weight", "backbone.classifier"),
])
def test_the_torchvision_networks_keep_their_weight_names_with_one_input_channel(arch, first, head):
    from watermark_cli.diagnostic.networks import build_network

    state = build_network(arch, 3).state_dict()
    assert all(key.startswith("backbone.") for key in state)
    assert tuple(state[first].shape) == (64, 1, 7, 7)
    assert tuple(state[f"{head}.weight"].shape)[0] == 3 and tuple(state[f"{head}.bias"].shape) == (3,)


# -- the synthetic-lesion dataset and `wm classifier train`, end to end --------------------------------


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_lesion_dataset_then_classifier_train_through_the_cli(tmp_path):
    data = tmp_path / "lesions"
    made = run_wm("data", "lesions", data, "--split", "train", "--n", "24", "--size", "96", "--seed", "3", "--json")
    assert made.code == 0, made.stderr
    assert json.loads(made.stdout)["lesions"] == "synthetic"
    labels = _rows(data / "labels.csv")
    assert list(labels[0]) == ["path", "label", "group"] and len(labels) == 24
    assert sum(int(r["label"]) for r in labels) == 12
    pairs: dict[str, list[dict]] = {}
    for row in labels:
        pairs.setdefault(row["group"], []).append(row)
    assert len(pairs) == 12 and all(sorted(int(r["label"]) for r in p) == [0, 1] for p in pairs.values())
    a, b = (np.asarray(Image.open(data / r["path"]), dtype=np.int64) for r in next(iter(pairs.values())))
    changed = np.abs(a - b) > 0
    assert 0 < changed.mean() < 0.05  # the pair differs only where the nodule is
    assert "SYNTHETIC" in (data / "README.txt").read_text()
    manifest = _rows(data / "manifest.csv")
    train_files = {name for g in CLINICAL_GROUPS if g.split == "train" for name in g.files}
    real = [r for r in manifest if r["background"].startswith("real:")]
    assert real and all(r["source_file"] in train_files for r in real)  # never a held-out image
    assert any(r["background"].startswith("synthetic:") for r in manifest)
    image = np.asarray(Image.open(data / labels[0]["path"]))
    assert image.dtype == np.uint16 and image.shape == (96, 96)

    out = tmp_path / "classifier"
    trained = run_wm("classifier", "train", data, "--out", out, "--epochs", "2", "--input-size", "64", "--json")
    assert trained.code == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["labels"] == ["label"] and summary["n_train"] + summary["n_validation"] == 24
    assert (out / "weights.safetensors").is_file() and (out / "card.yaml").is_file()

    classifier = load_classifier(out)
    training = classifier.card["training"]
    validation_groups = {row["group"] for row in labels if row["path"] in training["validation_files"]}
    train_groups = {row["group"] for row in labels if row["path"] in training["train_files"]}
    assert validation_groups and not validation_groups & train_groups  # a pair never straddles the split
    assert classifier.label_names == ["label"] and classifier.input_size == 64
    assert classifier.card["training"]["seed"] == 0 and classifier.card["architecture"]["arch"] == "small"
    pixels = [np.asarray(Image.open(data / r["path"]))[np.newaxis] for r in labels[:5]]
    scores = classifier.score_pixels(pixels, (0, 65535))
    # Five different images give five different scores (a preprocessing that blanked or clipped
    # them all would not), and scoring is deterministic.
    assert scores.shape == (5, 1) and len(np.unique(scores)) == 5
    np.testing.assert_array_equal(classifier.score_pixels(pixels, (0, 65535)), scores)
    from watermark_cli.io.image import read_image

    from_files = classifier.score_images([read_image(data / r["path"]) for r in labels[:5]])
    np.testing.assert_array_equal(scores, from_files)  # one preprocessing for pixels and files

    again = run_wm("classifier", "train", data, "--out", out, "--epochs", "1")
    assert again.code == 2 and "not empty" in again.stderr


def test_faint_brain_task_is_faint_blobs_inside_real_brains_split_by_slice(tmp_path):
    """`wm data lesions --task faint-brain`: 8-bit 256² real brain slices in pairs, one of each
    pair with a blob of radius 4-10 px and peak 12-30 % of full scale inside the brain; no slice
    is in both splits."""
    from watermark_cli.data.faint_lesions import brain_mask, brain_slices

    data = tmp_path / "faint"
    made = run_wm("data", "lesions", data, "--task", "faint-brain", "--n", "12", "--json")
    assert made.code == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["lesions"] == "synthetic" and summary["bit_depth"] == 8 and summary["size"] == 256
    labels, manifest = _rows(data / "labels.csv"), _rows(data / "manifest.csv")
    assert len(labels) == 12 and sum(int(r["label"]) for r in labels) == 6
    for first, second in zip(manifest[0::2], manifest[1::2]):
        assert first["pair"] == second["pair"] and int(first["label"]) + int(second["label"]) == 1
        lesion = first if first["label"] == "1" else second
        a, b = (np.asarray(Image.open(data / r["path"])) for r in (first, second))
        assert a.dtype == np.uint8 and a.shape == (256, 256)
        changed = np.argwhere(a != b)
        row, col = int(lesion["lesion_row"]), int(lesion["lesion_col"])
        radius, contrast = float(lesion["lesion_radius_px"]), float(lesion["lesion_contrast"])
        assert 4 <= radius <= 10 and 0.12 <= contrast <= 0.30
        # The pair differs only around the blob's centre, by at most its peak contrast (8-bit
        # rounding aside), and the centre lies inside the brain of the moved slice.
        assert np.hypot(changed[:, 0] - row, changed[:, 1] - col).max() <= 2 * radius + 2
        assert np.abs(a.astype(int) - b.astype(int)).max() <= round(contrast * 255) + 1
        assert brain_mask(np.asarray(Image.open(data / lesion["path"]), dtype=np.float32) / 255)[row, col]
    assert {r["group"] for r in labels} == {r["slice"] for r in manifest}  # the group is the slice
    assert "SYNTHETIC" in (data / "README.txt").read_text()
    train, held_out = ({item.group for item in brain_slices(split)} for split in ("train", "held_out"))
    assert len(train) >= 20 and len(held_out) >= 8 and not train & held_out


@pytest.mark.slow
def test_the_recipe_trains_at_the_images_own_side_balances_and_stops_early(tmp_path):
    """No --input-size: the images' own side (96 here); positives weighted by negatives /
    positives; training stops `patience` epochs after the best validation AUROC."""
    from watermark_cli.diagnostic.inputs import native_input_size

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(24):
        label = int(i % 3 == 0)  # one in three: imbalanced
        image = rng.normal(20000, 2000, (96, 96))
        image[40:56, 40:56] += 8000 * label
        Image.fromarray(np.clip(image, 0, 65535).astype(np.uint16)).save(tmp_path / f"i{i}.png")
        rows.append(f"i{i}.png,{label}")
    _write(tmp_path / "labels.csv", "\n".join(rows) + "\n")
    labelled = read_labels(tmp_path)
    assert native_input_size([(96, 96), (40, 90)]) == 96
    assert native_input_size([(300, 200)]) == 256 and native_input_size([(20, 16)]) == 32
    result = train_classifier(labelled, tmp_path / "c", ClassifierTrainingConfig(epochs=30, patience=2))
    card = result.card
    assert card["architecture"]["input_size"] == 96
    weight = float(re.search(r"label ([0-9.]+)", card["training"]["loss"]).group(1))
    positives = card["training"]["positives_train"]["label"]
    assert weight == pytest.approx((card["training"]["n_train"] - positives) / positives, rel=1e-2) and weight > 1.5
    run, best = card["training"]["epochs_run"], card["training"]["selected_epoch"]
    assert run == len(card["history"]) and (run == 30 or run - best == 2)


def test_a_large_group_trains_in_chunks_of_half_a_batch_and_small_groups_whole(tmp_path):
    import torch

    from watermark_cli.diagnostic.labels import LabelledImages
    from watermark_cli.diagnostic.training import _group_batches

    groups = ["slice"] * 20 + [f"pair{i // 2}" for i in range(12)]
    labelled = LabelledImages([tmp_path / f"{i}.png" for i in range(32)], np.zeros((32, 1), np.float32),
                              ["label"], tmp_path / "labels.csv", groups)
    chunks = [set(range(0, 8)), set(range(8, 16)), set(range(16, 20))]  # half a batch, in order
    spread = []
    for seed in range(5):
        batches = _group_batches(list(range(32)), labelled, 16, torch.Generator().manual_seed(seed))
        assert sorted(i for batch in batches for i in batch) == list(range(32))  # each image once an epoch
        for batch in batches:
            assert all((i ^ 1) in batch for i in batch if i >= 20)  # a pair is never split
            assert all(chunk <= set(batch) or not chunk & set(batch) for chunk in chunks)
        spread.append(sum(any(i < 20 for i in batch) for batch in batches))
    # The old rule (whole groups) put all 20 images of the slice in one batch, every epoch.
    assert max(spread) >= 2


def test_classifier_train_refuses_bad_labels_in_one_line(tmp_path):
    _png(tmp_path / "a.png")
    _write(tmp_path / "labels.csv", "path,label\na.png,maybe\n")
    result = run_wm("classifier", "train", tmp_path, "--labels", tmp_path / "labels.csv", "--out", tmp_path / "c")
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0 and "not 0 or 1" in result.stderr


def test_pretrained_weights_must_fit_the_architecture(tmp_path):
    import torch

    for i, label in enumerate((0, 1, 0, 1)):
        _png(tmp_path / f"i{i}.png", 1000 + 3000 * label)
    _write(tmp_path / "labels.csv", "path,label\n" + "".join(f"i{i}.png,{i % 2}\n" for i in range(4)))
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, foreign)
    config = ClassifierTrainingConfig(epochs=1, input_size=32, weights=foreign)
    with pytest.raises(BadInputError, match="tensors fit this architecture"):
        train_classifier(read_labels(tmp_path), tmp_path / "c", config)


def test_a_classifier_that_does_not_see_the_finding_gets_no_verdict():
    """At chance, identical clean and marked scores (ΔAUROC exactly 0) still prove nothing."""
    rng = np.random.default_rng(4)
    targets = np.repeat([0, 1], 60)
    chance = rng.random(120)
    result = compare_classifier(chance, chance.copy(), targets)
    assert result["delta_auroc"] == 0.0 and result["delta_auroc_ci95"] == [0.0, 0.0]
    assert result["verdict"] == "inconclusive" and result["non_inferior"] is False
    assert "does not clearly see the finding" in result["reason"]
    assert result["images_needed"] is None or result["auroc_clean"] > 0.7  # more images cannot help at chance

    weak = 0.35 * targets + rng.random(120)  # sees the finding a little: more images would show it
    result = compare_classifier(weak, weak.copy(), targets)
    low, high = result["auroc_clean_ci95"]
    assert result["auroc_clean"] > 0.7 >= low and result["verdict"] == "inconclusive"
    assert result["images_needed"] > 120


def test_a_ci_that_straddles_the_margin_is_inconclusive_with_the_images_needed():
    rng = np.random.default_rng(5)
    targets = np.repeat([0, 1], 40)
    clean = 1.2 * targets + rng.random(80)
    marked = clean + rng.normal(0, 0.25, 80)  # a real but small disturbance, measured on 80 images
    result = compare_classifier(clean, marked, targets, margin=0.01)
    low, high = result["delta_auroc_ci95"]
    assert result["auroc_clean_ci95"][0] > 0.7
    assert low < -0.01 <= high and result["verdict"] == "inconclusive"
    assert "too few images" in result["reason"] and (result["images_needed"] is None or result["images_needed"] > 80)


def test_mcnemar_counts_the_decisions_the_mark_made_wrong_and_right():
    from scipy.stats import binomtest

    from watermark_cli.diagnostic.check import mcnemar_exact

    truth = np.repeat([0, 1], 50)
    clean = 0.6 * truth + 0.4 * np.linspace(0, 1, 100)  # separable: every clean decision right
    marked = clean.copy()
    marked[50:62] -= 0.55  # twelve positives pushed below any threshold: wrong after the mark
    result = compare_classifier(clean, marked, truth)
    test = result["flips_mcnemar"]
    assert test["made_wrong"] == result["flips"] == 12 and test["made_right"] == 0
    assert test["p_value"] == pytest.approx(binomtest(12, 12, 0.5).pvalue) and test["p_value"] < 0.001
    same = mcnemar_exact(np.ones(10, bool), np.ones(10, bool))
    assert same == {"made_wrong": 0, "made_right": 0, "p_value": 1.0}
    balanced = mcnemar_exact(np.array([True, False] * 5), np.array([False, True] * 5))
    assert balanced["made_wrong"] == balanced["made_right"] == 5 and balanced["p_value"] == 1.0
