"""The fragile mark (`marking.fragile`): small frames whose robust mark does not read back.

On 64² crops of pydicom-data's held-out nuclear-medicine file (counts of 0 to a few dozen, where
the floor in the frame's own data range leaves the robust mark too weak to read): the mark is
written, every view keeps the floor, only the pixels it needs move by one stored unit, and it
reads back with the key alone. As an attacker would try it: unmarked frames, another key, the
mark or all the lowest bits pasted onto another frame, read nothing; and any change of the values
(a few pixels moved by one unit, a blur) removes it, never turning it into another message."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import watermark_cli.marking.fragile as fragile
from conftest import fixed_key, run_wm_here
from watermark_cli.attacks.codecs import parse_attack_list
from watermark_cli.data.clinical import clinical_file
from watermark_cli.evaluation.report import write_report
from watermark_cli.evaluation.run import EvaluationOptions, evaluate_images
from watermark_cli.io.image import read_image
from watermark_cli.io.medical_image import MedicalImage
from watermark_cli.marking.image import codec_for, embed_pixels, extract_payload, fragile_outcome
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor, frame_meters, meets_floor

FLOOR = QualityFloor(40.0)
MESSAGE = b"ID-00042"
# 64² cuts of the NM frame (top, left): counts spanning 24 to 53, the robust mark too weak there.
FLAT_CUTS = ((512, 0), (64, 64), (320, 64))


@pytest.fixture(scope="module")
def loaded():
    return load_model("default")


@pytest.fixture(scope="module")
def nm():
    return read_image(clinical_file("JPEG2000_UNC.dcm"))


def _cut(image, top: int, left: int, side: int = 64):
    return replace(image, pixels=image.pixels[:, top:top + side, left:left + side].copy())


@pytest.fixture(scope="module")
def marked(loaded, nm):
    """(cut, outcome) for each flat cut given the fragile mark under one key (what `embed_pixels`
    writes where the robust mark does not read back: `test_embed_...` below)."""
    codec = codec_for(loaded, fixed_key("fragile"))
    cuts = [_cut(nm, *at) for at in FLAT_CUTS]
    return [(cut, fragile_outcome(codec, cut, MESSAGE, FLOOR, frame_meters(cut, FLOOR))) for cut in cuts]


@pytest.mark.slow
def test_embed_gives_the_fragile_mark_only_where_the_robust_one_does_not_read_back(loaded, nm):
    codec = codec_for(loaded, fixed_key("fragile"))
    for at in FLAT_CUTS:
        cut = _cut(nm, *at)
        outcome = embed_pixels(loaded, codec, cut, MESSAGE, FLOOR)
        assert outcome.fragile
        decoded = extract_payload(loaded, codec, replace(cut, pixels=outcome.pixels))
        assert decoded.found and decoded.message == MESSAGE and decoded.fragile
    # A textured 96² cut of the held-out CT holds the robust mark, which is kept.
    ct = read_image(clinical_file("693_UNCR.dcm"))
    cut = _cut(ct, 200, 200, 96)
    outcome = embed_pixels(loaded, codec, cut, MESSAGE, FLOOR)
    decoded = extract_payload(loaded, codec, replace(cut, pixels=outcome.pixels))
    assert not outcome.fragile and decoded.found and decoded.message == MESSAGE and not decoded.fragile


def test_a_flat_small_frame_gets_the_fragile_mark_at_the_floor_in_every_view_read_with_its_key_alone(loaded, marked):
    codec = codec_for(loaded, fixed_key("fragile"))
    for cut, outcome in marked:
        assert outcome is not None and outcome.fragile
        for meter, frame in zip(frame_meters(cut, FLOOR), outcome.pixels):
            quality = meter.measure(frame)  # measured again here, on the values written
            assert meets_floor(quality, FLOOR) and all(value >= FLOOR.psnr_min for value in quality.views.values())
        decoded = fragile.read_fragile(codec, outcome.pixels)
        assert decoded.found and decoded.message == MESSAGE and decoded.fragile
        for other in ("another", "a third"):
            assert not fragile.read_fragile(codec_for(loaded, fixed_key(other)), outcome.pixels).found
    # As `wm extract` reads it: the robust mark first, then this one.
    cut, outcome = marked[0]
    decoded = extract_payload(loaded, codec, replace(cut, pixels=outcome.pixels))
    assert decoded.found and decoded.message == MESSAGE and decoded.fragile


def test_the_fragile_mark_moves_few_pixels_by_one_unit_and_keeps_the_frame_range(loaded, marked):
    for cut, outcome in marked:
        moved = outcome.pixels.astype(np.int64) - cut.pixels
        assert set(np.unique(moved)) <= {-1, 0, 1}
        assert 0 < np.count_nonzero(moved) <= 18  # an 8-byte frame, 106 bits, in at most 18 blocks of 63 pixels or more
        assert outcome.pixels.min() == cut.pixels.min() and outcome.pixels.max() == cut.pixels.max()
        # Every pixel at the frame's least or greatest value stays there.
        ends = np.isin(cut.pixels, (cut.pixels.min(), cut.pixels.max()))
        assert np.array_equal(outcome.pixels[ends], cut.pixels[ends])


def test_unmarked_small_frames_hold_no_fragile_mark(loaded, nm):
    """Every 64² cut of the NM frame and of emri_small's frames, under several keys: nothing found
    (the 40-bit tag and the pad make a chance reading as rare as the robust mark's)."""
    emri = read_image(clinical_file("emri_small.dcm"))
    cuts = [_cut(nm, top, left) for top in range(0, 1024, 64) for left in range(0, 256, 64)]
    cuts += [replace(emri, pixels=emri.pixels[index:index + 1].copy()) for index in range(emri.n_frames)]
    cuts.append(emri)  # the whole instance too
    codecs = [codec_for(loaded, fixed_key(f"unmarked {index}")) for index in range(3)]
    for cut in cuts:
        for codec in codecs:
            assert not fragile.read_fragile(codec, cut.pixels).found


def test_a_fragile_mark_pasted_onto_another_frame_reads_as_nothing(loaded, nm, marked):
    """The attacker has a marked frame and another of the same size: the exact moves added to it,
    or every lowest bit of the marked frame copied into it, do not carry the mark over."""
    codec = codec_for(loaded, fixed_key("fragile"))
    others = [_cut(nm, top, 0) for top in (576, 320, 448)]
    for (cut, outcome), other in zip(marked, others):
        moves = outcome.pixels.astype(np.int64) - cut.pixels
        pasted = np.clip(other.pixels + moves, 0, None).astype(other.pixels.dtype)
        lowest_bits = (other.pixels.astype(np.int64) & ~1) | (outcome.pixels & 1)
        for forged in (pasted, lowest_bits):
            assert not fragile.read_fragile(codec, forged).found


def test_any_change_of_the_values_removes_the_fragile_mark_and_never_gives_another_message(loaded, marked):
    codec = codec_for(loaded, fixed_key("fragile"))
    rng = np.random.default_rng(5)
    for cut, outcome in marked:
        nudged = outcome.pixels.astype(np.int64)
        chosen = rng.random(nudged.shape) < 0.05  # 5 % of the pixels moved by one unit
        nudged[chosen] += rng.choice([-1, 1], size=int(chosen.sum()))
        blurred = (outcome.pixels[:, 1:, :] + outcome.pixels[:, :-1, :]) / 2.0  # not whole numbers, one row less
        for changed in (nudged, blurred, outcome.pixels * 1.0 + 0.5):
            decoded = fragile.read_fragile(codec, changed)
            assert not decoded.found, decoded


def test_the_bit_agreement_evaluate_reports_is_whole_on_a_marked_copy_and_chance_elsewhere(loaded, marked):
    """`wm evaluate`'s bit accuracy of a frame given the fragile mark: its frame's bits, all read
    back from the marked values; about half of them from the unmarked frame, another message or
    another key; none (0.5) once the values are not whole numbers."""
    codec = codec_for(loaded, fixed_key("fragile"))
    stranger = codec_for(loaded, fixed_key("another"))
    chance = []
    for cut, outcome in marked:
        assert fragile.fragile_bit_agreement(codec, outcome.pixels, MESSAGE) == 1.0
        assert fragile.fragile_bit_agreement(codec, outcome.pixels * 1.0 + 0.5, MESSAGE) == 0.5
        chance += [fragile.fragile_bit_agreement(codec, cut.pixels, MESSAGE),
                   fragile.fragile_bit_agreement(codec, outcome.pixels, b"ID-00043"),
                   fragile.fragile_bit_agreement(stranger, outcome.pixels, MESSAGE)]
    # 9 readings of a 106-bit frame: each within 0.5 ± 0.2 (a chance of about 1e-5 each), the mean closer.
    assert all(0.3 <= value <= 0.7 for value in chance) and abs(np.mean(chance) - 0.5) < 0.1, chance


def test_wm_evaluate_reports_a_fragile_marks_own_bits(loaded, nm, tmp_path):
    """A flat cut that `wm evaluate` gives the fragile mark: as marked, its frame's bits read back
    whole (the robust bits, never meant to, would read at chance); after JPEG, at chance. The
    report says how many marks are fragile, and what that means."""
    cut = _cut(nm, *FLAT_CUTS[0])
    options = EvaluationOptions(floor=FLOOR, attacks=parse_attack_list("identity,jpeg:80"), messages=1,
                                key=fixed_key("fragile"), message_bytes=8)
    summary, rows, psnrs = evaluate_images([("flat cut", lambda: cut)], loaded, options)
    assert summary["fragile_marks"] == 1
    identity, jpeg = summary["attacks"]["identity"], summary["attacks"]["jpeg:80"]
    assert identity["bit_accuracy"] == 1.0 and identity["payload_recovery"] == 1.0
    assert 0.3 <= jpeg["bit_accuracy"] <= 0.7 and jpeg["payload_recovery"] == 0.0
    write_report(tmp_path, summary, rows, psnrs, [])
    assert "1 of the marked images × messages carry the <em>fragile</em> mark" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_wm_evaluate_says_how_many_marks_are_fragile(tmp_path):
    """`wm evaluate` on the flat cut as a DICOM file, the default message length: it says the mark
    is fragile, and what that means."""
    import pydicom

    ds = pydicom.dcmread(clinical_file("JPEG2000_UNC.dcm"))
    top, left = FLAT_CUTS[0]
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[top:top + 64, left:left + 64]).tobytes()
    ds.Rows = ds.Columns = 64
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    folder = tmp_path / "cuts"
    folder.mkdir()
    ds.save_as(folder / "flat.dcm", enforce_file_format=True)
    result = run_wm_here("evaluate", folder, "--attacks", "identity", "--messages", "1", "--report", tmp_path / "cli")
    assert result.code == 0, result.stderr
    assert "1 marked image(s) × message(s) carry the fragile mark" in " ".join(result.stdout.split())


def test_large_images_and_format_1_are_never_read_for_a_fragile_mark(loaded):
    codec = codec_for(loaded, fixed_key("fragile"))
    assert not fragile.read_fragile(codec, np.zeros((1, 512, 512), np.int16)).found
    ct = read_image(clinical_file("693_UNCR.dcm"))
    assert not fragile.fits_fragile_mark(ct)


def test_padding_below_the_content_is_kept_and_a_copy_without_the_padding_element_still_reads(loaded, nm):
    """A CT-like frame whose Pixel Padding Value lies below every content value: the padding stays
    as it is, and the reader, which needs no header, reads a copy that dropped the element; padding
    amid the content gets no fragile mark (a reader without the header would take it for content)."""
    codec = codec_for(loaded, fixed_key("fragile"))
    cut = _cut(nm, 512, 0)
    pixels = cut.pixels.astype(np.int16)
    pixels[:, :, :16] = -2000  # a padded border
    padded = replace(cut, pixels=pixels, display=replace(cut.display, padding=(-2000, -2000)))
    outcome = fragile_outcome(codec, padded, MESSAGE, FLOOR, frame_meters(padded, FLOOR))
    assert outcome is not None and np.all(outcome.pixels[:, :, :16] == -2000)
    decoded = fragile.read_fragile(codec, outcome.pixels)
    assert decoded.found and decoded.message == MESSAGE
    amid = replace(cut, display=replace(cut.display, padding=(5, 5)))  # a value the content holds
    assert 5 in cut.pixels and fragile.fragile_residual(codec, amid, MESSAGE) is None


def test_the_layout_is_the_same_on_every_machine_and_numpy():
    """The keyed choices come from SHAKE-256 (not a numpy generator, whose stream numpy promises on
    one build only): a fixed key and frame give these very moves, or a mark written today would not
    read back after an upgrade. (A change here is a change of the mark's format: stop 52 writes the
    uncoded frame, in fewer moves, and reads stop 51's coded bits as before.)"""
    import hashlib

    codec = codec_for(load_model("default"), fixed_key("layout"))
    frame = (100 + np.arange(64 * 64).reshape(1, 64, 64) % 37 + (np.arange(64)[None, :, None] % 5)).astype(np.uint16)
    image = MedicalImage(pixels=frame, kind="png", path=Path("layout.png"), bits_stored=16, stored_min=0,
                         stored_max=65535, photometric="MONOCHROME2", modality=None)
    residual = fragile.fragile_residual(codec, image, MESSAGE)  # the uncoded frame (stop 52)
    digest = hashlib.sha256(residual.astype("<i1").tobytes()).hexdigest()
    assert int(np.abs(residual).sum()) == 14 and digest.startswith("639ddaf46806bca0"), digest
    # Stop 51 wrote the coded bits: the very same moves as then, and they still read back.
    order = fragile._carrier_order(codec, fragile.carriers(frame))
    coded = fragile._moves(frame, fragile._coded_layout(codec, order), codec.encode(MESSAGE) ^ fragile._pad(codec, frame))
    digest = hashlib.sha256(coded.astype("<i1").tobytes()).hexdigest()
    assert int(np.abs(coded).sum()) == 43 and digest.startswith("7aed6c90da4a02ba"), digest
    for moves in (residual, coded):
        decoded = fragile.read_fragile(codec, frame + moves.astype(np.int64))
        assert decoded.found and decoded.message == MESSAGE and decoded.fragile


def test_a_frame_too_sparse_for_the_coded_bits_carries_a_short_message_uncoded(loaded, nm):
    """A 64² cut of the NM frame almost all zero counts: 76 pixels may carry a bit, too few for the
    256 coded bits (fewer than 60 % of them), enough for a 4-byte message's 75-bit frame without
    the code (a channel that loses no bit needs none). It is written at the floor in every view
    with one unit moves and read with its key alone; an 8-byte message, whose frame is 106 bits,
    gets none (embed then refuses the file), and no other key or host reads it."""
    codec = codec_for(loaded, fixed_key("fragile"))
    cut = _cut(nm, 0, 128)
    usable = fragile.carriers(cut.pixels)
    assert 75 <= usable.sum() < 0.6 * codec.n_bits
    assert fragile.fragile_residual(codec, cut, MESSAGE) is None
    outcome = fragile_outcome(codec, cut, b"ID42", FLOOR, frame_meters(cut, FLOOR))
    assert outcome is not None and outcome.fragile
    moved = outcome.pixels.astype(np.int64) - cut.pixels
    assert set(np.unique(moved)) <= {-1, 0, 1} and 0 < np.count_nonzero(moved) <= 75
    for meter, frame in zip(frame_meters(cut, FLOOR), outcome.pixels):
        assert meets_floor(meter.measure(frame), FLOOR)
    decoded = extract_payload(loaded, codec, replace(cut, pixels=outcome.pixels))
    assert decoded.found and decoded.message == b"ID42" and decoded.fragile
    assert not fragile.read_fragile(codec_for(loaded, fixed_key("another")), outcome.pixels).found
    assert not fragile.read_fragile(codec, cut.pixels).found
    other = _cut(nm, 0, 192)
    lowest_bits = (other.pixels.astype(np.int64) & ~1) | (outcome.pixels & 1)
    for forged in (np.clip(other.pixels + moved, 0, None), lowest_bits):
        assert not fragile.read_fragile(codec, forged).found


def test_the_bytes_by_carriers_that_wm_models_lists_are_what_the_layout_holds(loaded):
    codec = codec_for(loaded, fixed_key("fragile"))
    table = fragile.capacity_by_carriers(codec.n_bits)
    assert table == {75: 4, 106: 8, 138: 12, 154: 16}
    for count in range(60, 300):
        usable = np.zeros((1, 64, 64), dtype=bool)
        usable.reshape(-1)[:count] = True
        order = fragile._carrier_order(codec, usable)
        fitting = [cls.capacity for cls in codec.classes if fragile._frame_layout(order, cls.code.k) is not None]
        held = codec.capacity_bytes if fragile._coded_layout(codec, order) is not None else max(fitting, default=-1)
        assert held == max((size for least, size in table.items() if count >= least), default=-1), count
