"""Tests for the built-in synthetic dataset (CT-, MR- and radiograph-like phantoms)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from watermark_cli.errors import BadInputError
from watermark_cli.data.synthetic import KINDS, synth_image, write_synthetic_dataset


def image(kind: str, seed: int, lesion: bool = False, shape=(128, 128)) -> np.ndarray:
    return synth_image(kind, shape, np.random.default_rng(seed), lesion)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- single images -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(128, 128), (96, 160), (64, 64)])
def test_images_are_float32_in_unit_range(kind, shape):
    for lesion in (False, True):
        img = image(kind, 0, lesion, shape)
        assert img.shape == shape and img.dtype == np.float32
        assert np.isfinite(img).all()
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert img.std() > 0.05  # real structure, not a flat field


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_image_and_different_seeds_differ(kind):
    assert np.array_equal(image(kind, 3, True), image(kind, 3, True))
    assert not np.array_equal(image(kind, 3), image(kind, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_lesion_changes_the_image_only_locally_and_inside_the_anatomy(kind):
    size = 192
    for seed in range(6):
        plain = image(kind, seed, False, (size, size))
        with_lesion = image(kind, seed, True, (size, size))
        changed = np.abs(with_lesion - plain) > 0
        assert changed.any()
        rows, cols = np.nonzero(changed)
        # Diameter at most 8 % of the width; the blurred rim adds a little.
        assert rows.max() - rows.min() <= 0.15 * size + 3
        assert cols.max() - cols.min() <= 0.15 * size + 3
        # Contrast 5-15 % of the tissue: visible above 16-bit quantisation, not a blown-out blob.
        assert 0.01 < np.abs(with_lesion - plain).max() < 0.2
        # Inside the anatomy: the lesion sits on tissue, not on the air around the patient.
        assert plain[changed].mean() > 0.2


def test_kinds_differ_statistically():
    stats = {}
    for kind in KINDS:
        imgs = np.stack([image(kind, seed) for seed in range(4)])
        stats[kind] = {
            "near_zero": float(np.mean(imgs < 0.02)),
            "exact_zero": float(np.mean(imgs == 0.0)),
            "mean": float(imgs.mean()),
            "p99": float(np.percentile(imgs, 99)),
        }
    ct, mr, xray = stats["ct"], stats["mr"], stats["xray"]
    # CT: much air around the patient, clipped at the bottom of the range; dense bone near the top.
    assert ct["near_zero"] > 0.3 and ct["exact_zero"] > 0.1
    assert ct["p99"] > 0.35  # bone (>= +100 HU) present
    # MR: Rician noise never reaches exactly zero.
    assert mr["exact_zero"] == 0.0
    # Radiograph: the whole field is exposed tissue or background glow; nothing near zero.
    assert xray["near_zero"] < 0.01
    assert xray["mean"] > ct["mean"] and xray["mean"] > mr["mean"]


def test_bad_kind_or_shape_is_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(BadInputError):
        synth_image("pet", (64, 64), rng, False)
    with pytest.raises(BadInputError):
        synth_image("ct", (16, 64), rng, False)
    with pytest.raises(BadInputError):
        synth_image("ct", (64,), rng, False)  # type: ignore[arg-type]


# -- training data -------------------------------------------------------------------------------


def test_dataset_files_labels_and_16_bit_round_trip(tmp_path):
    csv_path = write_synthetic_dataset(tmp_path / "data", n=6, size=64, seed=11)
    assert csv_path == tmp_path / "data" / "labels.csv"
    with open(csv_path, encoding="utf-8") as f:
        assert f.readline().strip() == "path,label"
    rows = read_csv(csv_path)
    assert [r["path"] for r in rows] == [
        "ct_00000.png", "mr_00001.png", "xray_00002.png", "ct_00003.png", "mr_00004.png", "xray_00005.png",
    ]
    assert sum(int(r["label"]) for r in rows) == 3
    assert {r["label"] for r in rows} == {"0", "1"}

    for i, row in enumerate(rows):
        path = csv_path.parent / row["path"]  # relative to the CSV's folder
        with Image.open(path) as im:
            assert im.mode == "I;16"
            pixels = np.asarray(im)
        assert pixels.dtype == np.uint16 and pixels.shape == (64, 64)
        # Bit-exact: what was written is the rounded image, and reads back unchanged.
        kind = row["path"].split("_")[0]
        expected = synth_image(kind, (64, 64), np.random.default_rng([11, i]), bool(int(row["label"])))
        assert np.array_equal(pixels, np.rint(expected.astype(np.float64) * 65535).astype(np.uint16))
        assert int(pixels.max()) > 30000  # uses most of the 16-bit range


def test_dataset_is_deterministic(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n=4, size=64, seed=5).parent
    b = write_synthetic_dataset(tmp_path / "b", n=4, size=64, seed=5).parent
    c = write_synthetic_dataset(tmp_path / "c", n=4, size=64, seed=6).parent
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "ct_00000.png").read_bytes() != (c / "ct_00000.png").read_bytes()


def test_8_bit_png_and_16_bit_tiff(tmp_path):
    csv8 = write_synthetic_dataset(tmp_path / "png8", n=3, size=64, bit_depth=8)
    with Image.open(csv8.parent / "ct_00000.png") as im:
        assert im.mode == "L"
        assert np.asarray(im).dtype == np.uint8

    csv_tif = write_synthetic_dataset(tmp_path / "tif", n=3, size=64, fmt="tiff", seed=2)
    rows = read_csv(csv_tif)
    assert [r["path"] for r in rows] == ["ct_00000.tif", "mr_00001.tif", "xray_00002.tif"]
    pixels = tifffile.imread(csv_tif.parent / rows[0]["path"])
    assert pixels.dtype == np.uint16 and pixels.shape == (64, 64)
    expected = synth_image("ct", (64, 64), np.random.default_rng([2, 0]), bool(int(rows[0]["label"])))
    assert np.array_equal(pixels, np.rint(expected.astype(np.float64) * 65535).astype(np.uint16))


def test_labels_are_balanced_within_each_kind(tmp_path):
    rows = read_csv(write_synthetic_dataset(tmp_path / "d", n=30, size=64, seed=1))
    assert sum(int(r["label"]) for r in rows) == 15
    for kind in KINDS:
        assert sum(int(r["label"]) for r in rows if r["path"].startswith(kind)) == 5


@pytest.mark.parametrize("fraction, positives", [(0.0, 0), (1.0, 5), (0.2, 1)])
def test_lesion_fraction_sets_the_count(tmp_path, fraction, positives):
    rows = read_csv(write_synthetic_dataset(tmp_path / "d", n=5, size=64, lesion_fraction=fraction))
    assert sum(int(r["label"]) for r in rows) == positives


def test_kinds_can_be_chosen(tmp_path):
    rows = read_csv(write_synthetic_dataset(tmp_path / "d", n=3, size=64, kinds=["mr"]))
    assert [r["path"] for r in rows] == ["mr_00000.png", "mr_00001.png", "mr_00002.png"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"size": 32},
        {"fmt": "jpeg"},
        {"bit_depth": 12},
        {"kinds": ["ct", "pet"]},
        {"kinds": []},
        {"lesion_fraction": 1.5},
        {"seed": -1},
    ],
)
def test_bad_dataset_arguments_are_bad_input(tmp_path, kwargs):
    args = {"n": 2, "size": 64} | kwargs
    with pytest.raises(BadInputError):
        write_synthetic_dataset(tmp_path / "d", **args)
