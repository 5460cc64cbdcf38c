import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio

from watermark_cli.guard import guard_frame, guard_image
from watermark_cli.quality import QualityFloor, apply_window, measure_frame, psnr, windowed_psnr


@pytest.mark.parametrize("dtype, peak", [(np.uint8, 255), (np.uint16, 65535), (np.uint16, 4095)])
def test_psnr_matches_scikit_image(dtype, peak):
    rng = np.random.default_rng(1)
    reference = rng.integers(0, peak + 1, (96, 80)).astype(dtype)
    noisy = np.clip(reference.astype(np.int64) + rng.integers(-9, 10, reference.shape), 0, peak).astype(dtype)
    assert psnr(reference, noisy, peak) == pytest.approx(peak_signal_noise_ratio(reference, noisy, data_range=peak))


def test_known_residual_gives_known_psnr():
    reference = np.full((64, 64), 1000, dtype=np.uint16)
    test = reference + 10  # MSE = 100 exactly
    assert psnr(reference, test, 4095) == pytest.approx(10 * np.log10(4095**2 / 100))
    assert psnr(reference, reference, 4095) == float("inf")


def test_windowed_psnr_uses_the_dicom_linear_window():
    values = np.array([-10.0, 39.5, 90.0])
    mapped = apply_window(values, center=40.0, width=81.0)
    assert mapped.tolist() == pytest.approx([0.0, 0.5, 1.0])
    reference = np.full((8, 8), 40.0)
    assert windowed_psnr(reference, reference + 8.0, (40.0, 81.0)) == pytest.approx(-10 * np.log10(0.01))


def _check_written_frame(original, residual, floor, low, high, peak, window=None, fill_budget=False):
    guarded = guard_frame(original, residual, floor, stored_min=low, stored_max=high, nominal_peak=peak, window=window,
                          fill_budget=fill_budget)
    written = guarded.pixels
    assert written.dtype == original.dtype
    assert written.min() >= low and written.max() <= high
    # Re-measure from scratch on the stored values, independently of the guard's own report.
    quality = measure_frame(original, written, floor, peak, window)
    assert quality.psnr >= floor.psnr_min
    if floor.max_abs_error is not None:
        assert np.abs(written.astype(np.int64) - original.astype(np.int64)).max() <= floor.max_abs_error
    return guarded


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    bits=st.sampled_from([8, 10, 12, 16]),
    signed=st.booleans(),
    floor_db=st.floats(20.0, 70.0),
    amplitude=st.floats(0.0, 0.5),
    peak_kind=st.sampled_from(["nominal", "range"]),
    bound=st.one_of(st.none(), st.integers(0, 50)),
    fill_budget=st.booleans(),
)
def test_guard_never_writes_a_frame_below_the_floor(seed, bits, signed, floor_db, amplitude, peak_kind, bound,
                                                   fill_budget):
    rng = np.random.default_rng(seed)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = np.int16 if signed else (np.uint8 if bits == 8 else np.uint16)
    shape = tuple(rng.integers(8, 40, 2))
    # Hosts from flat to saturated, residuals from tiny to huge, heavy-tailed.
    original = rng.integers(low, high + 1, shape).astype(dtype)
    if rng.random() < 0.3:
        original[:] = rng.choice([low, high])
    residual = rng.standard_t(2, shape) * amplitude * (high - low)
    floor = QualityFloor(floor_db, peak_kind, "stored", bound)
    _check_written_frame(original, residual, floor, low, high, float(high - low), fill_budget=fill_budget)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), floor_db=st.floats(20.0, 60.0))
def test_guard_holds_in_the_window_domain(seed, floor_db):
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
    residual = rng.normal(0, 200, original.shape)
    floor = QualityFloor(floor_db, "nominal", "window")
    _check_written_frame(original, residual, floor, 0, 4095, 4095.0, window=(1000.0, 400.0),
                         fill_budget=bool(seed % 2))


@pytest.mark.parametrize("black_fraction", [0.0, 0.7])
def test_filling_the_budget_lands_just_above_the_floor(black_fraction):
    """A weak residual (≈ 50 dB) is stretched to use the quality budget, also when most of the
    frame is black background where half of the residual is clipped away."""
    rng = np.random.default_rng(5)
    original = rng.integers(20, 235, (128, 128)).astype(np.uint8)
    original[: int(black_fraction * 128)] = 0
    residual = rng.normal(0, 255 * 10 ** (-50 / 20), original.shape)
    guarded = _check_written_frame(original, residual, QualityFloor(40.0), 0, 255, 255.0, fill_budget=True)
    assert 40.0 <= guarded.quality.psnr <= 40.3
    assert guarded.scale > 2.5


def test_guard_keeps_a_residual_that_already_meets_the_floor():
    rng = np.random.default_rng(0)
    original = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    residual = rng.normal(0, 4095 * 0.005, original.shape)  # ≈ 46 dB
    guarded = _check_written_frame(original, residual, QualityFloor(40.0), 0, 4095, 4095.0)
    assert guarded.scale == 1.0


def test_guard_works_per_frame():
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    residual = np.stack([rng.normal(0, s, (32, 32)) for s in (0.5, 20.0, 100.0)])
    frames = guard_image(original, residual, QualityFloor(40.0), stored_min=0, stored_max=255, nominal_peak=255.0,
                         window=None)
    assert [f.scale for f in frames][0] == 1.0
    assert frames[1].scale < 1.0 and frames[2].scale < frames[1].scale
    assert all(f.quality.psnr >= 40.0 for f in frames)
