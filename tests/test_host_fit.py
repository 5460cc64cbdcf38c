"""Informed embedding (`marking.host_fit`): the mark of a small instance fitted to its host.

The optimiser's contract on a toy reader (it needs no model), then the shipped model on crops of a
real CT: 96² frames the encoder's mark alone does not read back from, read back once fitted,
with every view still at the floor and the mark only where the encoder put one; and what is not
fitted (large frames, large instances, a mark that reads back as the encoder wrote it)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import watermark_cli.marking.image as marking
from conftest import fixed_key
from watermark_cli.io.image import read_image
from watermark_cli.marking.host_fit import FitSettings, fit_to_host
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

FLOOR = QualityFloor(40.0)


def _toy_problem(seed: int = 0):
    """A linear reader of 8 bits from a 16² frame; a guard that writes the mark as it is."""
    import torch

    rng = np.random.default_rng(seed)
    weights = torch.from_numpy(rng.normal(size=(8, 256)))
    host = rng.normal(scale=3.0, size=(1, 16, 16))
    bits = rng.integers(0, 2, 8)
    movable = np.zeros((1, 16, 16), dtype=bool)
    movable[:, ::2] = True  # every other row

    def guard(residual):
        return host + residual, residual

    def read(values):
        return weights @ values.reshape(-1)

    def reads_back(residual):
        return np.array_equal(read(torch.from_numpy(host + residual)).numpy() > 0, bits.astype(bool))

    return host, bits, movable, guard, read, reads_back, rng


def test_fitting_makes_a_message_the_host_drowned_read_back_at_its_own_energy_and_keeps_the_rest():
    host, bits, movable, guard, read, reads_back, rng = _toy_problem()
    kept = rng.normal(size=host.shape)  # the part a reader would synchronise on
    message = np.where(movable, rng.normal(size=host.shape), 0.0)
    assert not reads_back(kept + message)  # the host's own reading outweighs the mark
    fitted = fit_to_host(kept, message, movable, bits, guard, read, FitSettings(steps=60))
    assert reads_back(fitted)
    moved = fitted - kept
    assert np.all(moved[~movable] == 0)
    assert np.sqrt(np.square(moved).sum()) == pytest.approx(np.sqrt(np.square(message).sum()))


def test_fitting_keeps_the_encoders_mark_when_nothing_may_move():
    host, bits, movable, guard, read, _, rng = _toy_problem(1)
    kept, message = rng.normal(size=host.shape), rng.normal(size=host.shape)
    assert np.array_equal(fit_to_host(kept, message, np.zeros_like(movable), bits, guard, read), kept + message)


@pytest.fixture(scope="module")
def keyed():
    model = load_model(None)
    return model, marking.codec_for(model, fixed_key("host fit"))


def _crops(side: int, corners) -> list:
    image = read_image(get_testdata_file("CT_small.dcm", download=False))
    return [replace(image, pixels=image.pixels[:, top:top + side, left:left + side].copy()) for top, left in corners]


def _embed(model, codec, image, fitted: bool, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(marking, "check_markable_size", lambda image, tile: None)  # a single 96² frame
        patch.setattr(marking, "fits_fragile_mark", lambda image: False)  # the robust mark alone
        if not fitted:
            patch.setattr(marking, "FITTED_BELOW_SIDE", 0)
        return marking.embed_pixels(model, codec, image, b"ID-00042", FLOOR)


def test_fitted_marks_read_back_from_96_px_crops_where_the_encoders_alone_mostly_do_not(keyed, monkeypatch):
    model, codec = keyed
    plain_reads = 0
    for crop in _crops(96, ((0, 0), (32, 32), (16, 8), (8, 24))):
        assert marking.is_fitted_to_host(crop)
        plain = _embed(model, codec, crop, False, monkeypatch)
        fitted = _embed(model, codec, crop, True, monkeypatch)
        plain_reads += marking.extract_payload(model, codec, replace(crop, pixels=plain.pixels)).found
        decoded = marking.extract_payload(model, codec, replace(crop, pixels=fitted.pixels))
        assert decoded.found and decoded.message == b"ID-00042"
        for frame in fitted.frames:
            assert frame.quality.below_floor(FLOOR) == [] and frame.quality.psnr >= FLOOR.psnr_min
        # Only where the encoder marked: the pixels whose host owns the key's signs.
        encoders = marking.residual_for(model, crop, codec.encode(b"ID-00042"), codec)
        changed = fitted.pixels != crop.pixels
        assert changed.any() and not np.any(changed & (encoders == 0))
    assert plain_reads <= 1


def test_large_frames_and_large_instances_are_not_fitted(keyed, monkeypatch):
    image = read_image(get_testdata_file("CT_small.dcm", download=False))
    assert not marking.is_fitted_to_host(replace(image, pixels=np.zeros((1, 256, 256), dtype=image.pixels.dtype)))
    assert marking.is_fitted_to_host(replace(image, pixels=np.zeros((4, 128, 128), dtype=image.pixels.dtype)))
    assert not marking.is_fitted_to_host(replace(image, pixels=np.zeros((5, 128, 128), dtype=image.pixels.dtype)))
    monkeypatch.setattr(marking, "fit_to_host", lambda *args: pytest.fail("a 256² frame was fitted"))
    model, codec = keyed
    frame = np.tile(image.pixels, (1, 2, 2))
    outcome = marking.embed_pixels(model, codec, replace(image, pixels=frame), b"ID-00042", FLOOR)
    assert marking.extract_payload(model, codec, replace(image, pixels=outcome.pixels)).found


def test_what_is_kept_is_the_same_whatever_the_bits(keyed):
    """The split `embed_pixels` fits by: the encoder's marks of a message and of its complement
    differ by the message part alone, so half their sum (the key's constant and the pilot) is the
    same for any message."""
    model, codec = keyed
    image = _crops(96, ((0, 0),))[0]
    halves = []
    for message in (b"ID-00042", b"another"):
        bits = codec.encode(message)
        opposite = marking.residual_for(model, image, 1 - bits, codec)
        halves.append((marking.residual_for(model, image, bits, codec) + opposite) / 2)
    assert np.abs(halves[0]).max() > 0 and np.allclose(halves[0], halves[1], atol=1e-6 * np.abs(halves[0]).max())


def test_a_reading_that_is_not_a_number_keeps_the_encoders_mark():
    import torch

    host, bits, movable, guard, _, _, rng = _toy_problem(2)
    kept, message = rng.normal(size=host.shape), np.where(movable, rng.normal(size=host.shape), 0.0)
    unreadable = fit_to_host(kept, message, movable, bits, guard, lambda values: torch.full((8,), float("nan")) * values.sum())
    assert np.array_equal(unreadable, kept + message)


def test_a_96_px_frame_is_read_from_its_part_tiles_too(keyed, monkeypatch):
    """A 96² frame holds one whole 64-px tile, 44 % of its pixels; the reader folds every pixel
    onto the tile (`CarrierDecoder.fold`). With the whole tile's pixels put back as they were, the
    mark left in the part tiles still reads well above chance (over 1,024 raw bits, chance is
    0.50 ± 0.016); a reader of the whole tile alone reads chance there."""
    import torch

    from watermark_cli.model import networks

    model, codec = keyed
    bits = codec.encode(b"ID-00042")
    agreement = {"every pixel": [], "whole tiles alone": []}
    for crop in _crops(96, ((0, 0), (32, 32), (16, 8), (8, 24))):
        marked = _embed(model, codec, crop, True, monkeypatch).pixels
        marked[:, :64, :64] = crop.pixels[:, :64, :64]
        values = torch.from_numpy(marked.astype(np.float64))
        for reader, fold in (("every pixel", networks.CarrierDecoder.fold),
                             ("whole tiles alone", lambda decoder, maps: networks.tile_mean(maps, decoder.config.tile))):
            with monkeypatch.context() as patch, torch.no_grad():
                patch.setattr(networks.CarrierDecoder, "fold", fold)
                logits = marking._differentiable_read(model, codec, crop)(values).numpy()
            agreement[reader].append(np.mean((logits > 0) == (bits > 0)))
    assert np.mean(agreement["every pixel"]) >= 0.58 and np.mean(agreement["whole tiles alone"]) <= 0.56, agreement


def test_the_smallest_frames_have_their_whole_mark_fitted_and_96_px_frames_keep_the_rest(keyed, monkeypatch):
    """Under 1.5 tiles a side (64² frames) no resize, turn or crop is found, so nothing is kept
    for them: the whole mark is fitted, and a series of two such frames reads back at the
    floor. A 96² frame keeps the key's constant and the pilot, by which its crops are located."""
    model, codec = keyed
    handed: dict = {}
    fit = marking.fit_to_host

    def spy(kept, fitted, *rest):
        handed.update(kept=kept, fitted=fitted)
        return fit(kept, fitted, *rest)

    monkeypatch.setattr(marking, "fit_to_host", spy)
    image = read_image(get_testdata_file("CT_small.dcm", download=False))
    series = replace(image, pixels=np.stack([image.pixels[0, :64, :64], image.pixels[0, 64:, 64:]]))
    outcome = marking.embed_pixels(model, codec, series, b"ID-00042", FLOOR)
    assert not handed["kept"].any()
    assert np.array_equal(handed["fitted"], marking.residual_for(model, series, codec.encode(b"ID-00042"), codec))
    decoded = marking.extract_payload(model, codec, replace(series, pixels=outcome.pixels))
    assert decoded.found and decoded.message == b"ID-00042"
    assert all(frame.quality.below_floor(FLOOR) == [] for frame in outcome.frames)
    _embed(model, codec, _crops(96, ((16, 8),))[0], True, monkeypatch)
    assert handed["kept"].any() and not np.array_equal(handed["fitted"], handed["kept"])
