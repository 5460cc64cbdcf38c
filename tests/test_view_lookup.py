"""The quality meter's shortcuts give exactly what the plain arithmetic gives.

The guard's floor is measured on the pixels it writes; tables of displays
(`quality.DisplayTables`), slopes found once per stored value (`allocation.spread_over_views`)
and the in-place quantisation only make that faster. Every figure here is compared with `==` /
`np.array_equal` against the straightforward computation written out in this file, bit for bit,
but the spread, whose regions' errors are summed per stored value (the same to float rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from watermark_cli.allocation import _REACH_IN_RMS, _LARGEST_RATIO, sensitivities, spread_over_views
from watermark_cli.guard import quantise
from watermark_cli.io.medical_image import MedicalImage
from watermark_cli.quality import DisplayTables, FrameMeter, QualityFloor, frame_meters, psnr
from watermark_cli.views import (DataRangeView, Display, FrameDisplay, ModalityTransform, StoredView, VoiLut,
                                 VoiView, VoiWindow)

DTYPES = [np.uint8, np.int8, np.uint16, np.int16]


def every_kind_of_view(original: np.ndarray) -> list:
    """One view of each kind the meter may meet: linear and LUT modality transforms, every VOI
    function, a threshold window, a VOI LUT, the stored values."""
    linear = ModalityTransform(2.5, -1024.0)
    lut = ModalityTransform(lut=np.linspace(-1000.0, 3000.0, 300), lut_first=-20)
    voi_lut = VoiLut(np.linspace(0.0, 4095.0, 500) ** 1.1, first_mapped=-100, output_bits=12)
    views = [DataRangeView(linear, original), DataRangeView(lut, original), StoredView(255.0, offset=-3.0)]
    for modality in (linear, lut):
        views += [VoiView(modality, VoiWindow(40.0, 80.0), original),
                  VoiView(modality, VoiWindow(-7.0, 333.0, "LINEAR_EXACT"), original),
                  VoiView(modality, VoiWindow(100.0, 900.0, "SIGMOID"), original),
                  VoiView(modality, VoiWindow(12.0, 1.0), original),
                  VoiView(modality, voi_lut, original)]
    for number, view in enumerate(views):
        view.name = f"{number}: {view.name}"
    return views


def frame_of(dtype, shape=(160, 170), seed=0) -> np.ndarray:
    """Values over the whole of the type, its two ends included."""
    info = np.iinfo(dtype)
    frame = np.random.default_rng(seed).integers(info.min, int(info.max) + 1, shape).astype(dtype)
    frame.flat[:2] = info.min, info.max
    return frame


@pytest.mark.parametrize("dtype", DTYPES)
def test_looked_up_displays_and_psnrs_are_the_computed_ones(dtype):
    original = frame_of(dtype)
    views = every_kind_of_view(original)
    meter = FrameMeter(original, views, [], StoredView(float(np.iinfo(dtype).max)))
    assert meter._tables is not None  # (a frame this large is measured from tables)
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    candidate = np.clip(original.astype(np.int64) + rng.integers(-3, 4, original.shape), info.min,
                        info.max).astype(dtype)
    for view in views:
        assert np.array_equal(meter.display(view, candidate), view.display(candidate))
        assert meter.display(view, candidate).tobytes() == view.display(candidate).tobytes()
    measured = meter.measure(candidate)
    for view in views:
        assert measured.views[view.name] == psnr(view.display(original), view.display(candidate), 1.0)
    assert measured.nominal_psnr == psnr(meter.nominal.display(original), meter.nominal.display(candidate), 1.0)
    assert meter.binding_psnr(candidate) == min(measured.views.values())


@pytest.mark.parametrize("make", [lambda x: x.astype(np.int32), lambda x: x.astype(np.float64),
                                  lambda x: np.asfortranarray(x), lambda x: x[:, ::-1]],
                         ids=["wider type", "floats", "Fortran order", "reversed"])
def test_other_types_and_layouts_are_measured_as_before(make):
    original = frame_of(np.int16)
    views = every_kind_of_view(original)
    meter = FrameMeter(original, views, [], StoredView(32767.0))
    candidate = make(np.clip(original.astype(np.int64) + 2, -32768, 32767).astype(np.int16))
    measured = meter.measure(candidate)
    for view in views:
        reference, shown = view.display(original), view.display(candidate)
        difference = reference - shown
        mse = float(np.mean(np.square(difference, out=difference)))
        assert measured.views[view.name] == (float(10.0 * np.log10(1.0 / mse)) if mse else float("inf"))


def test_psnr_overwriting_its_test_is_the_same_figure():
    rng = np.random.default_rng(2)
    reference, test = rng.random((90, 70)), rng.random((90, 70))
    plain = psnr(reference, test, 1.0)
    assert psnr(reference, test.copy(), 1.0, overwrite_test=True) == plain
    assert psnr(np.asfortranarray(reference), test.copy(), 1.0, overwrite_test=True) == psnr(
        np.asfortranarray(reference), test, 1.0)


def ct(frames: int, shape=(128, 128), seed=3) -> MedicalImage:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2000, shape)
    pixels = np.stack([(base + rng.integers(-40, 40, shape) + 7 * k).astype(np.int16) for k in range(frames)])
    display = Display(FrameDisplay(ModalityTransform(1.0, -1024.0), (VoiWindow(50.0, 350.0),)))
    return MedicalImage(pixels, "dicom", Path("ct.dcm"), 12, -2048, 2047, "MONOCHROME2", "CT", None, display)


def test_frames_share_their_window_tables_and_the_tables_stay_within_their_budget():
    image = ct(6)
    meters = frame_meters(image, QualityFloor(40.0))
    tables = meters[0]._tables
    assert all(meter._tables is tables for meter in meters)
    # Per frame: its own data-range table; shared by all: the declared, 4 standard windows and nominal.
    assert tables.nbytes == (6 + 6) * 65536 * 8
    small = DisplayTables(budget_bytes=3 * 65536 * 8)
    for meter in meters:
        for view in (*meter.binding, meter.nominal):
            small.table(view, np.dtype(np.int16))
            assert small.nbytes <= small.budget_bytes


def test_a_shared_table_gives_each_frame_its_own_display():
    image = ct(3)
    meters = frame_meters(image, QualityFloor(40.0))
    rng = np.random.default_rng(4)
    for meter, frame in zip(meters, image.pixels):
        candidate = np.clip(frame + rng.integers(-5, 6, frame.shape), -2048, 2047).astype(np.int16)
        for view in (*meter.binding, meter.nominal):
            assert np.array_equal(meter.display(view, candidate), view.display(candidate))


def plain_spread(residual, original, meter, psnr_min):
    """allocation.spread_over_views as plainly written: every pixel's slopes computed from its
    own displays."""
    def slopes_at(reach):
        values = original.astype(np.float64)
        reach = np.maximum(reach, 0.5)
        out = []
        for view in meter.binding:
            here = view.display(values)
            up = np.abs(view.display(values + reach) - here)
            down = np.abs(view.display(values - reach) - here)
            out.append(np.maximum(up, down) / reach)
        return np.stack(out)

    rms = 10.0 ** (-psnr_min / 20.0)
    first = slopes_at(1.0).max(axis=0)
    slopes = slopes_at(_REACH_IN_RMS * rms / np.maximum(first, 1e-12))
    tightest = slopes.max(axis=0)
    tightest = np.maximum(tightest, float(tightest.max()) / _LARGEST_RATIO)
    region = slopes.argmax(axis=0)
    shaped = residual / tightest
    n = len(meter.binding)
    error = np.zeros((n, n))
    for k in range(n):
        inside = region == k
        if inside.any():
            error[:, k] = [float(np.sum((slopes[v][inside] * shaped[inside]) ** 2)) / residual.size
                           for v in range(n)]
    budget, gains = rms * rms, np.zeros(n)
    for v in np.argsort([view.stored_span for view in meter.binding]):
        if error[v, v] > 0:
            gains[v] = np.sqrt(max(budget - float(np.dot(error[v], gains**2)), 0.0) / error[v, v])
    totals = error @ gains**2
    gains /= np.sqrt(max(float(np.max(totals / budget)) if np.any(totals > 0) else 1.0, 1e-12))
    return shaped * gains[region]


@pytest.mark.parametrize("dtype, spread", [(np.int16, 300), (np.uint16, 40000), (np.uint8, 255), (np.int32, 900)])
def test_the_spread_is_the_plain_one(dtype, spread):
    # Summed per stored value rather than per pixel: the same to float rounding.
    rng = np.random.default_rng(5)
    low = int(np.iinfo(dtype).min) if dtype != np.int32 else -500
    original = (low + rng.integers(0, spread, (120, 100))).astype(dtype)
    views = every_kind_of_view(original)
    meter = FrameMeter(original, views, [], StoredView(255.0))
    residual = rng.normal(0.0, 1.5, original.shape)
    spread_out = spread_over_views(residual, original, meter, 40.0)
    plain = plain_spread(residual, original, meter, 40.0)
    assert np.any(spread_out != residual)
    np.testing.assert_allclose(spread_out, plain, rtol=1e-10, atol=0)
    # A frame of other values than the meter's (its pixels' own slopes): the same either way.
    other = np.roll(original, 7, axis=1)
    np.testing.assert_allclose(spread_over_views(residual, other, meter, 40.0),
                               plain_spread(residual, other, meter, 40.0), rtol=1e-10, atol=0)
    # Floats (no table of stored values): per pixel.
    floats = original.astype(np.float64) + 0.25
    float_meter = FrameMeter(floats, every_kind_of_view(original), [], StoredView(255.0))
    np.testing.assert_allclose(spread_over_views(residual, floats, float_meter, 40.0),
                               plain_spread(residual, floats, float_meter, 40.0), rtol=1e-10, atol=0)


def test_sensitivities_per_pixel_are_the_plain_slopes():
    original = frame_of(np.int16, (60, 50))
    meter = FrameMeter(original, every_kind_of_view(original), [], StoredView(255.0))
    reach = np.random.default_rng(6).uniform(0.1, 40.0, original.shape)
    for step in (1.0, reach):
        values = original.astype(np.float64)
        bounded = np.maximum(step, 0.5)
        for view, slope in zip(meter.binding, sensitivities(meter, original, step)):
            here = view.display(values)
            plain = np.maximum(np.abs(view.display(values + bounded) - here),
                               np.abs(view.display(values - bounded) - here)) / bounded
            assert slope.tobytes() == plain.tobytes()


@pytest.mark.parametrize("dtype, low, high", [(np.int16, -8192, 8191), (np.uint16, 0, 65535), (np.uint8, 0, 255)])
def test_quantise_is_the_plain_expression(dtype, low, high):
    rng = np.random.default_rng(7)
    original = rng.integers(low, high + 1, (50, 40)).astype(dtype)
    for residual_type in (np.float32, np.float64):
        residual = (rng.normal(0.0, 30.0, original.shape)).astype(residual_type)
        for scale in (0.0, 0.37, 1.0, 5.123):
            plain = np.clip(np.rint(original.astype(np.float64) + scale * residual.astype(np.float64)), low, high)
            assert np.array_equal(quantise(original, residual, scale, low, high), plain.astype(dtype))
