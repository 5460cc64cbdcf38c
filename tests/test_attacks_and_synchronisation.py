import numpy as np
import pytest

from watermark_cli.attacks.codecs import FrameContext, parse_attack, parse_attack_list
from watermark_cli.data.clinical import CLINICAL_GROUPS, clinical_files
from watermark_cli.errors import BadInputError
from watermark_cli.marking.synchronisation import estimate_tile_period

CONTEXT = FrameContext(stored_min=0, stored_max=4095, seed=3)


@pytest.fixture()
def frame():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256]
    return (2000 + 800 * np.sin(x / 20.0) * np.cos(y / 30.0) + rng.normal(0, 5, (256, 256))).round()


@pytest.mark.parametrize("spec", ["noise:0", "blur:0", "contrast:0", "resize:1", "crop:1", "rotate:0", "png16", "identity",
                                  "jpeg2000", "jpeg2000:0", "noise:0+blur:0"])
def test_attacks_at_strength_zero_are_the_identity(spec, frame):
    assert np.array_equal(parse_attack(spec)(frame, CONTEXT), frame)


def test_graded_attacks_do_what_they_say(frame):
    assert parse_attack("resize:0.5")(frame, CONTEXT).shape == (128, 128)
    cropped = parse_attack("crop:0.25")(frame, CONTEXT)
    assert cropped.shape == (128, 128)
    noisy = parse_attack("noise:0.01")(frame, CONTEXT)
    assert np.std(noisy - frame) == pytest.approx(0.01 * 4095, rel=0.05)
    exported = parse_attack("window8")(frame, CONTEXT)
    assert exported.min() >= 0 and exported.max() <= 255 and np.all(exported == np.round(exported))
    worse = np.abs(parse_attack("jpeg:30")(frame, CONTEXT) - exported).mean()
    better = np.abs(parse_attack("jpeg:95")(frame, CONTEXT) - exported).mean()
    assert better < worse


def test_jpeg2000_is_a_real_lossy_codec_at_the_stored_depth(frame):
    light = parse_attack("jpeg2000:5")(frame, CONTEXT)
    heavy = parse_attack("jpeg2000:80")(frame, CONTEXT)
    assert light.shape == frame.shape and light.max() > 255  # 12-bit values, not an 8-bit export
    assert 0 < np.abs(light - frame).mean() < np.abs(heavy - frame).mean()


def test_window_and_combined_attacks(frame):
    narrow = parse_attack("window8:2000,200")(frame, CONTEXT)
    low = 2000.0 - 0.5 - (200.0 - 1) / 2  # the DICOM linear VOI function (PS3.3 C.11.2.1.2.1)
    expected = np.rint(np.clip((frame - low) / (200.0 - 1), 0, 1) * 255.0)
    assert np.array_equal(narrow, expected)
    combined = parse_attack("jpeg:80+crop:0.25")
    assert combined.family == "combined"
    assert np.array_equal(combined(frame, CONTEXT), parse_attack("crop:0.25")(parse_attack("jpeg:80")(frame, CONTEXT), CONTEXT))
    labels = [a.label for a in parse_attack_list("identity,window8:40,400,jpeg:80+crop:0.7")]
    assert labels == ["identity", "window8:40,400", "jpeg:80+crop:0.7"]


def test_attack_names_are_validated():
    with pytest.raises(BadInputError):
        parse_attack("bogus")
    with pytest.raises(BadInputError):
        parse_attack("jpeg:150")
    with pytest.raises(BadInputError):
        parse_attack("png16:3")
    assert [a.label for a in parse_attack_list("none")] == ["identity"]
    assert parse_attack_list("default")[0].label == "identity"
    for bad in ("jpeg2000:0.5", "window8:40", "window8:40,-1", "jpeg:80+bogus"):
        with pytest.raises(BadInputError):
            parse_attack_list(bad)


@pytest.mark.parametrize("scale", [1.0, 0.9, 0.75, 0.6])
def test_tile_period_is_found_after_a_resize(scale):
    from PIL import Image

    rng = np.random.default_rng(1)
    tile = rng.normal(0, 1, (32, 32))
    y, x = np.mgrid[0:512, 0:512]
    host = 1000 + 300 * np.sin(x / 40.0) + 200 * np.cos(y / 25.0)
    marked = host + 8 * np.tile(tile, (16, 16))
    size = round(512 * scale)
    resized = np.asarray(Image.fromarray(marked.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC))
    period = estimate_tile_period(resized, 32)
    assert period is not None
    assert period[0] == pytest.approx(32 * scale, abs=0.05) and period[1] == pytest.approx(32 * scale, abs=0.05)


def test_no_period_is_claimed_on_an_unmarked_image(frame):
    rng = np.random.default_rng(2)
    assert estimate_tile_period(frame + rng.normal(0, 20, frame.shape), 32) is None


def test_clinical_split_is_by_image_group_and_disjoint():
    train = {path.name for _, path in clinical_files("train", all_encodings=True)}
    held_out = {path.name for _, path in clinical_files("held_out", all_encodings=True)}
    assert train and held_out and not train & held_out
    held_out_modalities = {group.modality for group in CLINICAL_GROUPS if group.split == "held_out"}
    assert {"CT", "MR", "CR", "NM", "US"} <= held_out_modalities


@pytest.mark.parametrize("degrees", [0.5, 1.0, 3.0])
def test_a_rotated_real_image_is_turned_back_and_read(degrees):
    """The held-out CT, marked by the shipped model, rotated about its centre (bilinear, same
    size, as a viewer's export does): the public pilot gives the angle back, and the message
    reads. (The lattice of a whole repeated mark, `estimate_rotation`, is an unkeyed model's way:
    here it only ever saw the pilot where the mark had been put on the 21 % of the frame at its
    minimum, −2000 outside the scan, which the data range now keeps as it is.)"""
    from watermark_cli.io.image import read_image
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor
    from watermark_cli.marking.synchronisation import estimate_rotation
    from watermark_cli.marking.image import codec_for, embed_pixels, read_frames

    model = load_model(None)
    codec = codec_for(model, None)
    image = read_image(clinical_files("held_out")[0][1])
    marked = embed_pixels(model, codec, image, b"rotated 12345", QualityFloor(40.0), None).pixels
    context = FrameContext(image.stored_min, image.stored_max, None)
    rotated = np.stack([parse_attack(f"rotate:{degrees}")(frame, context) for frame in marked])

    assert estimate_rotation(marked[0].astype(np.float64), 64) is None  # nothing to undo
    reading = read_frames(model, codec, rotated)
    assert reading.decoded.found and reading.decoded.message == b"rotated 12345"
    assert reading.rotated_by == pytest.approx(-degrees, abs=0.2)
    assert read_frames(model, codec, image.pixels).decoded.found is False  # the original: no mark


def test_no_rotation_is_claimed_on_an_unmarked_image(frame):
    from watermark_cli.marking.synchronisation import estimate_rotation

    rng = np.random.default_rng(4)
    assert estimate_rotation(frame + rng.normal(0, 20, frame.shape), 32) is None


def test_a_weak_first_period_peak_is_not_mistaken_for_its_multiple():
    """A 256² 8-bit phantom (not held-out data) marked by the unkeyed model and resized by 0.75:
    along its rows the autocorrelation peak at the period (48 px) is weak and the one at twice it
    strong. Reading the multiple scaled the image back by 2/3 too little and lost the mark."""
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor
    from watermark_cli.data.synthetic import synth_image
    from watermark_cli.marking.image import codec_for, embed_pixels, read_frames
    from watermark_cli.data.slices import Slice, slice_image

    rng = np.random.default_rng(99)
    phantoms = [synth_image(("ct", "mr", "xray")[k % 3], (256, 256), rng, False) for k in range(11)]
    image = slice_image(Slice("phantom", "synthetic", np.rint(np.clip(phantoms[10], 0, 1) * 255).astype(np.uint8)))
    model = load_model("wm-default-v2")  # the unkeyed model, whose whole mark repeats (a keyed one: its pilot)
    codec = codec_for(model, None)
    marked = embed_pixels(model, codec, image, b"2yW4Acq9", QualityFloor(40.0))
    resized = parse_attack("resize:0.75")(marked.pixels[0].astype(np.float64),
                                          FrameContext(0, 255, marked.meters[0].binding[0]))
    period = estimate_tile_period(resized, 64)
    assert period == pytest.approx((48.0, 48.0), abs=0.1)
    assert read_frames(model, codec, resized[None]).decoded.message == b"2yW4Acq9"


def test_the_pilot_score_spread_from_sorted_rows_is_numpys_median_deviation():
    """The scans' robust spread is taken from each row sorted once (no second sort of the
    deviations): the very values numpy's medians give, ties and odd lengths included."""
    from watermark_cli.marking.synchronisation import _sorted_row_deviations, _sorted_row_medians

    rng = np.random.default_rng(7)
    for length in (4096, 4095, 3, 2):
        for trial in range(6):
            rows = (rng.standard_normal((9, length)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
            if trial % 2:
                rows = np.round(rows)  # many equal values
            ordered = np.sort(rows, axis=1)
            centres = _sorted_row_medians(ordered)
            assert np.array_equal(centres, np.median(rows.astype(np.float64), axis=1))
            deviations = np.abs(rows - centres[:, None].astype(np.float32)).astype(np.float64)
            assert np.array_equal(_sorted_row_deviations(ordered, centres), np.median(deviations, axis=1))


def test_the_resize_scan_s_separable_fold_is_bilinear_sampling_folded():
    """The resize scan's fold (rows gathered by their bilinear taps, then one product per scale
    for the columns) gives what sampling every point and folding the samples gives: square and
    oblong maps, scales both ways, and samples clamped at the edges (6 periods at 1.5 on 300 px)."""
    import torch
    import torch.nn.functional as F

    from watermark_cli.marking.synchronisation import _centre_grids, _separable_folds
    from watermark_cli.model.networks import tile_mean

    rng = np.random.default_rng(3)
    for rows, cols, side, scales in [(512, 512, 256, [0.4, 0.77, 1.0, 1.23, 1.6]),
                                     (300, 484, 384, [0.5, 1.4, 1.6]), (200, 130, 128, [0.45, 0.99, 1.5])]:
        maps = rng.standard_normal((2, rows, cols)).astype(np.float32)
        scales = np.array(scales)
        grid = _centre_grids(rows, cols, side, scales.astype(np.float32), np.zeros(len(scales)))
        sampled = F.grid_sample(torch.from_numpy(maps)[None].expand(len(scales), -1, -1, -1), grid, mode="bilinear",
                                padding_mode="border", align_corners=True)
        # grid_sample works out its coordinates in float32: a few 1e-5 at 500 px.
        assert np.allclose(_separable_folds(maps, 64, side, scales), tile_mean(sampled, 64).numpy(), atol=1e-4)
