"""The quality guard: whatever the residual, the written frame meets the floor in its views."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio

from watermark_cli.guard import guard_frame, guard_image
from watermark_cli.io.medical_image import MedicalImage
from watermark_cli.quality import FrameMeter, QualityFloor, frame_meters, psnr
from watermark_cli.views import StoredView, stored_range_view


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


def stored_meter(original: np.ndarray, peak_kind: str, nominal_peak: float) -> FrameMeter:
    """A meter for the expert's stored domain: the nominal peak, or the frame's stored range."""
    view = StoredView(nominal_peak) if peak_kind == "nominal" else stored_range_view(original)
    return FrameMeter(original, [view], [], StoredView(nominal_peak))


def _check_written_frame(original, residual, floor, meter, low, high, fill_budget=False, peak=None):
    guarded = guard_frame(original, residual, floor, meter, stored_min=low, stored_max=high, fill_budget=fill_budget)
    written = guarded.pixels
    assert written.dtype == original.dtype
    assert written.min() >= low and written.max() <= high
    if peak is not None:  # re-measured from scratch on the stored values, not by the guard's meter
        assert peak_signal_noise_ratio(original.astype(np.float64), written.astype(np.float64),
                                       data_range=peak) >= floor.psnr_min or np.array_equal(original, written)
    assert meter.measure(written).psnr >= floor.psnr_min
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
    peak = float(high - low) if peak_kind == "nominal" else max(float(original.max()) - float(original.min()), 1.0)
    _check_written_frame(original, residual, floor, stored_meter(original, peak_kind, float(high - low)), low, high,
                         fill_budget=fill_budget, peak=peak)


def gray_image(pixels: np.ndarray, kind: str = "png") -> MedicalImage:
    info = np.iinfo(pixels.dtype)
    return MedicalImage(pixels=pixels, kind=kind, path=Path(f"test.{kind}"), bits_stored=pixels.dtype.itemsize * 8,
                        stored_min=int(info.min), stored_max=int(info.max), photometric="MONOCHROME2", modality=None)


@pytest.mark.parametrize("black_fraction", [0.0, 0.7])
def test_filling_the_budget_lands_just_above_the_floor(black_fraction):
    """A weak residual (≈ 50 dB) is stretched to use the quality budget, also when most of the
    frame is black background where half of the residual is clipped away."""
    rng = np.random.default_rng(5)
    original = rng.integers(20, 235, (128, 128)).astype(np.uint8)
    original[: int(black_fraction * 128)] = 0
    residual = rng.normal(0, 255 * 10 ** (-50 / 20), original.shape)
    (meter,) = frame_meters(gray_image(original[None]), QualityFloor(40.0))
    guarded = _check_written_frame(original, residual, QualityFloor(40.0), meter, 0, 255, fill_budget=True, peak=255)
    assert guarded.quality.binding_view == "stored (peak 255)"  # an 8-bit PNG is viewed as stored
    assert 40.0 <= guarded.quality.psnr <= 40.3
    assert guarded.scale > 2.5


def test_guard_keeps_a_residual_that_already_meets_the_floor():
    rng = np.random.default_rng(0)
    original = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    residual = rng.normal(0, 2000 * 0.005, original.shape)  # ≈ 46 dB against the frame's range
    (meter,) = frame_meters(gray_image(original[None]), QualityFloor(40.0))
    guarded = _check_written_frame(original, residual, QualityFloor(40.0), meter, 0, 65535)
    assert guarded.quality.binding_view == "data range"  # a 16-bit PNG is viewed over its data
    assert guarded.scale == 1.0


def test_guard_works_per_frame():
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    residual = np.stack([rng.normal(0, s, (32, 32)) for s in (0.5, 20.0, 100.0)])
    meters = frame_meters(gray_image(original), QualityFloor(40.0))
    frames = guard_image(original, residual, QualityFloor(40.0), meters, stored_min=0, stored_max=255)
    assert [f.scale for f in frames][0] == 1.0
    assert frames[1].scale < 1.0 and frames[2].scale < frames[1].scale
    assert all(f.quality.psnr >= 40.0 for f in frames)


@pytest.mark.parametrize("value", [-3, 0, 0.0, float("nan"), float("inf"), -float("inf"), 200, "40", True, None])
def test_a_floor_that_would_check_nothing_is_refused_wherever_it_is_made(value):
    """QualityFloor checks itself: a negative, zero, infinite or NaN floor, or one that is not a
    number, never reaches the guard (a floor of −3 dB once let a 22.7 dB mark through as verified)."""
    from watermark_cli.errors import BadInputError

    with pytest.raises(BadInputError, match="psnr_min must be a number of dB"):
        QualityFloor(value)
    assert QualityFloor(40).psnr_min == 40.0 and QualityFloor(np.float32(41.5)).psnr_min == 41.5
    with pytest.raises(BadInputError, match="--max-abs-error"):
        QualityFloor(40.0, max_abs_error=-1)
    with pytest.raises(BadInputError, match="--psnr-peak applies"):
        QualityFloor(40.0, peak="range", domain="view")


def test_ssim_is_scikit_images_gaussian_ssim_to_a_millionth():
    """wm's own SSIM (float32, one pass of filters) against scikit-image's definition it follows,
    on a real CT in its data range with marks of three sizes."""
    from skimage.metrics import structural_similarity

    from watermark_cli.data.clinical import clinical_file
    from watermark_cli.io.image import read_image
    from watermark_cli.quality import ssim

    frame = read_image(clinical_file("693_UNCR.dcm")).pixels[0].astype(np.float64)
    rng = np.random.default_rng(3)
    original = (frame - frame.min()) / np.ptp(frame)
    for noise in (0.5, 3.0, 30.0):
        marked = np.clip((frame + np.rint(rng.normal(0, noise, frame.shape)) - frame.min()) / np.ptp(frame), 0, 1)
        expected = structural_similarity(original, marked, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert abs(ssim(original, marked, 1.0) - expected) < 1e-6
    assert np.isnan(ssim(original[:10, :10], original[:10, :10], 1.0))


def test_a_frame_viewed_over_its_data_keeps_its_range():
    """A viewer that windows to the data takes the range from the frame it shows: the written
    frame's minimum and maximum are the original's (the pixels there unchanged, every other
    between them), so the PSNR over each frame's own range is the guarded one. Before, a mark
    that pushed a few pixels out re-windowed a whole MR (0..595 shown as 0..910: 22 dB)."""
    rng = np.random.default_rng(5)
    original = rng.integers(100, 1001, (2, 96, 96)).astype(np.uint16)
    original[1, :40] = 100  # a frame with much of it at its minimum, as air or background is
    residual = rng.normal(0, 40.0, original.shape)
    residual[original == 100] = -30.0  # a mark that would push the darkest pixels darker
    floor = QualityFloor(40.0)
    meters = frame_meters(gray_image(original), floor)
    frames = guard_image(original, residual, floor, meters, stored_min=0, stored_max=65535, fill_budget=True)
    for before, after in zip(original, (frame.pixels for frame in frames)):
        assert after.min() == before.min() and after.max() == before.max()
        at_ends = (before == before.min()) | (before == before.max())
        assert np.array_equal(after[at_ends], before[at_ends])
        assert np.any(after != before)  # and the frame is marked
        assert psnr(over_its_range(before), over_its_range(after), 1.0) >= 40.0


def over_its_range(frame: np.ndarray) -> np.ndarray:
    """A frame as a viewer that windows to the data shows it: its own minimum to its maximum."""
    return (frame.astype(np.float64) - frame.min()) / np.ptp(frame)
