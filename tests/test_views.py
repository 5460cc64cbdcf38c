"""The views a reader uses (design §1): read from real files, and the floor held in every one.

The PSNRs that decide these tests are computed here from PS3.3's formulas, not by wm's views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from watermark_cli.guard import guard_image
from watermark_cli.io.image import read_image
from watermark_cli.io.medical_image import MedicalImage
from watermark_cli.quality import QualityFloor, frame_meters
from watermark_cli.views import (CT_STANDARD_WINDOWS, Display, FrameDisplay, ModalityTransform, VoiLut, VoiWindow,
                                 reader_views)


def data_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(path)


def ps33_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID), to [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.where(x <= center - width / 2, 0.0,
                        np.where(x > center + width / 2, 1.0, (x - center) / width + 0.5))
    lower, upper = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return np.where(x <= lower, 0.0, np.where(x > upper, 1.0, ((x - (center - 0.5)) / (width - 1) + 0.5)))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_functions_follow_ps33(function):
    x = np.linspace(-500, 500, 2001)
    for center, width in [(40.0, 80.0), (0.5, 2.0), (-600.0, 1500.0), (100.0, 1.5)]:
        assert np.allclose(VoiWindow(center, width, function).apply(x), ps33_window(x, center, width, function))


def test_voi_lut_and_modality_lut_are_looked_up_with_their_ends_held():
    lut = VoiLut(np.array([0, 100, 4000, 65535], dtype=np.float64), first_mapped=10, output_bits=16)
    assert lut.apply(np.array([5, 10, 11, 12, 13, 99])).tolist() == pytest.approx(
        [0, 0, 100 / 65535, 4000 / 65535, 1, 1])
    modality = ModalityTransform(lut=np.array([7.0, 9.0, 20.0]), lut_first=-1)
    assert modality.apply(np.array([-5, -1, 0, 1, 2])).tolist() == [7, 7, 9, 20, 20]


def names(image, frame=0):
    return [view.name for view in reader_views(image, frame)]


def test_every_declared_window_is_a_view_with_its_explanation():
    siemens = read_image(data_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    assert names(siemens) == ["data range", "window C450/W790 (WINDOW1)", "window C200/W443 (WINDOW2)"]
    ct = read_image(data_file("693_UNCR.dcm"))  # C40/W100 in HU over Rescale Intercept −1024
    assert names(ct) == ["data range", "window C40/W100"] + [
        f"CT {name} window C{c:g}/W{w:g}" for name, c, w in CT_STANDARD_WINDOWS]
    assert ct.window == (1064.0, 100.0)  # the first window in stored units, for exports


def test_windows_in_functional_groups_and_luts_are_read():
    enhanced = read_image(data_file("eCT_Supplemental.dcm"))  # shared functional groups
    assert names(enhanced, 0) == names(enhanced, 1)
    assert names(enhanced, 0)[:2] == ["data range", "window C49/W102"]
    lut = read_image(data_file("vlut_04.dcm"))
    assert names(lut) == ["data range", "VOI LUT of 256 entries"]
    modality_lut = read_image(data_file("mlut_18.dcm"))
    (data_range,) = reader_views(modality_lut, 0)
    table = np.asarray(modality_lut.source.ModalityLUTSequence[0].LUTData, dtype=np.float64)
    shown = table[np.clip(modality_lut.pixels[0].astype(np.int64) + 2048, 0, len(table) - 1)]
    assert data_range.span == pytest.approx(shown.max() - shown.min())  # the LUT's output units


def test_a_ct_always_has_the_standard_clinical_windows():
    ct = read_image(data_file("explicit_VR-UN.dcm"))
    assert names(ct) == ["data range"] + [f"CT {name} window C{c:g}/W{w:g}" for name, c, w in CT_STANDARD_WINDOWS]


def test_rasters_are_viewed_as_stored_when_8_bit_and_over_their_data_when_16_bit():
    eight = MedicalImage(np.zeros((1, 64, 64), np.uint8), "png", Path("a.png"), 8, 0, 255, "MONOCHROME2", None)
    sixteen = MedicalImage(np.zeros((1, 64, 64), np.uint16), "png", Path("a.png"), 16, 0, 65535, "MONOCHROME2", None)
    assert names(eight) == ["stored (peak 255)"]
    assert names(sixteen) == ["data range"]


# ------------------------------------------------------------------ the floor in every view ----

@st.composite
def displayed_images(draw):
    """A random multi-frame image with a random linear modality transform and several windows
    (random VOI functions), as a DICOM file could declare them; sometimes a windowless CT."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    signed = draw(st.booleans())
    bits = draw(st.sampled_from([8, 12, 16]))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = (np.int8 if bits == 8 else np.int16) if signed else (np.uint8 if bits == 8 else np.uint16)
    frames = draw(st.integers(1, 3))
    side = draw(st.integers(12, 48))
    # Data from a narrow band to the full range, sometimes with a black background.
    centre = rng.uniform(low, high)
    spread = (high - low) * 10 ** rng.uniform(-3, 0)
    pixels = np.clip(rng.normal(centre, spread, (frames, side, side)), low, high)
    if rng.random() < 0.3:
        pixels[:, : side // 2] = low
    pixels = np.rint(pixels).astype(dtype)
    slope = float(rng.choice([1.0, 0.5, 3.77, -1.0]))
    intercept = float(rng.choice([0.0, -1024.0, 12.5]))
    modality = ModalityTransform(slope, intercept)
    shown = modality.apply(pixels)
    windows = []
    for _ in range(draw(st.integers(0, 3))):
        width = float(10 ** rng.uniform(0.3, np.log10(max(abs(slope) * (high - low), 3.0))))
        center = float(rng.uniform(shown.min() - width / 2, shown.max() + width / 2))
        function = str(rng.choice(["LINEAR", "LINEAR_EXACT", "SIGMOID"]))
        windows.append(VoiWindow(center, max(width, 1.0), function))
    kind = "CT" if rng.random() < 0.3 else None
    image = MedicalImage(pixels, "dicom", Path("random.dcm"), bits, low, high, "MONOCHROME2", kind,
                         display=Display(FrameDisplay(modality, tuple(windows))))
    residual = rng.standard_t(3, pixels.shape) * (high - low) * 10 ** rng.uniform(-4, -0.5)
    return image, residual, modality, windows


@settings(max_examples=120, deadline=None)
@given(case=displayed_images(), floor_db=st.floats(25.0, 60.0), fill=st.booleans())
def test_the_floor_holds_in_the_data_range_and_every_window(case, floor_db, fill):
    image, residual, modality, windows = case
    floor = QualityFloor(floor_db)
    meters = frame_meters(image, floor)
    guarded = guard_image(image.pixels, residual, floor, meters, stored_min=image.stored_min,
                          stored_max=image.stored_max, fill_budget=fill)
    if image.modality == "CT":  # the standard windows too, in HU
        windows = windows + [VoiWindow(c, w) for _, c, w in CT_STANDARD_WINDOWS]
    for original, frame in zip(image.pixels, (g.pixels for g in guarded)):
        if np.array_equal(original, frame):
            continue  # an unmarked frame meets every floor
        before, after = (original.astype(np.float64) * modality.slope + modality.intercept,
                         frame.astype(np.float64) * modality.slope + modality.intercept)
        span = max(before.max() - before.min(), abs(modality.slope))
        assert 10 * np.log10(span**2 / np.mean((before - after) ** 2)) >= floor_db  # the data range
        for window in windows:
            shown = [ps33_window(v, window.center, window.width, window.function) for v in (before, after)]
            mse = np.mean((shown[0] - shown[1]) ** 2)
            assert mse == 0 or 10 * np.log10(1 / mse) >= floor_db, window


def test_the_window_domain_takes_a_window_and_a_voi_lut_alone_is_a_clear_refusal():
    """`--psnr-domain window` means one VOI window: a file whose only VOI is a LUT (pydicom's
    vlut_04) is refused in one line naming what it needs, and a --window of the user's is taken."""
    from pydicom.data import get_testdata_file

    from watermark_cli.errors import BadInputError
    from watermark_cli.io.image import read_image
    from watermark_cli.quality import QualityFloor, frame_meters

    image = read_image(get_testdata_file("vlut_04.dcm"))
    with pytest.raises(BadInputError, match="needs a VOI window"):
        frame_meters(image, QualityFloor(40.0, domain="window"))
    (meter,) = frame_meters(image, QualityFloor(40.0, domain="window"), window=(2000.0, 4000.0))
    assert [view.name for view in meter.binding] == ["window C2000/W4000 (--window)"]


def _lut_item(descriptor, data, descriptor_vr="US", data_vr="OW"):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new("LUTDescriptor", descriptor_vr, list(descriptor))
    item.add_new("LUTData", data_vr, data)
    return item


def _dicom_with(little_endian=True, pixel_representation=0, **sequences):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.PixelRepresentation = pixel_representation
    for keyword, items in sequences.items():
        setattr(ds, keyword, Sequence(items))
    for dataset in (ds, *(item for items in sequences.values() for item in items)):
        dataset.set_original_encoding(False, little_endian)
    return ds


def test_luts_are_read_as_dcmtk_and_pydicom_read_them():
    """Red team 9: a big-endian file's OW LUT Data was read little-endian (a VOI LUT view
    reported at 78 dB that both readers showed at 30); 8-bit entries one to a 16-bit word were
    read as bytes (a view reported flat that dcmtk showed at 35.5 dB); a first mapped value
    written as US above 2^15 is negative to dcmtk (a Modality LUT over signed pixels, the view
    reported flat, 20.7 dB as dcmtk showed it; a VOI LUT: both readings are views); a table
    whose entries use fewer bits than its descriptor says is shown over those by dcmtk +Mv
    (30.9 dB where wm measured 55)."""
    from watermark_cli.views import display_from_dicom

    ramp = np.arange(256) * 256
    for little_endian in (True, False):
        item = _lut_item((256, 100, 16), ramp.astype("<u2" if little_endian else ">u2").tobytes())
        (lut,) = display_from_dicom(_dicom_with(little_endian, VOILUTSequence=[item]), 1).shared.vois
        assert np.array_equal(lut.data, ramp) and lut.first_mapped == 100
    one_a_word = _lut_item((4, 0, 8), np.array([0, 10, 200, 255], "<u2").tobytes())
    packed = _lut_item((4, 0, 8), bytes([0, 10, 200, 255]))
    for item in (one_a_word, packed):
        (lut,) = display_from_dicom(_dicom_with(VOILUTSequence=[item]), 1).shared.vois
        assert lut.data.tolist() == [0, 10, 200, 255]
    for representation, first in ((1, -2048), (0, 63488)):
        modality_lut = _lut_item((4096, 63488, 16), list(range(4096)), data_vr="US")
        display = display_from_dicom(_dicom_with(pixel_representation=representation,
                                                 ModalityLUTSequence=[modality_lut]), 1)
        assert display.shared.modality.lut_first == first
    voi_lut = _lut_item((40, 65516, 12), list(range(0, 4000, 100)), data_vr="US")
    vois = display_from_dicom(_dicom_with(pixel_representation=1, VOILUTSequence=[voi_lut]), 1).shared.vois
    assert [lut.first_mapped for lut in vois] == [65516, -20]
    longer = _lut_item((4, 0, 8), [0, 10, 200, 255, 7, 7], data_vr="US")  # dcmtk reads all 6, pydicom 4
    vois = display_from_dicom(_dicom_with(VOILUTSequence=[longer]), 1).shared.vois
    assert [len(lut.data) for lut in vois] == [4, 6]
    twelve_in_sixteen = _lut_item((4096, 0, 16), list(range(4096)), data_vr="US")  # dcmtk +Mv: over 12 bits
    vois = display_from_dicom(_dicom_with(VOILUTSequence=[twelve_in_sixteen]), 1).shared.vois
    assert [(lut.output_bits, lut.describe()) for lut in vois] == [(16, "VOI LUT of 4096 entries"),
                                                                   (12, "VOI LUT (12 bits used)")]


def test_a_top_level_window_beside_functional_groups_is_a_view_too():
    """Red team 9: an enhanced CT converted from a classic one keeps a top-level window beside its
    functional groups' own; dcmtk shows the top-level one (over the groups' rescale), which wm
    did not measure (37.5 dB as shown, the file written). Now it is a view, over the groups'
    rescale and over the top-level one."""
    import pydicom

    ds = pydicom.dcmread(data_file("eCT_Supplemental.dcm"))
    ds.WindowCenter, ds.WindowWidth = 35, 70
    image = read_image(data_file("eCT_Supplemental.dcm"))
    from dataclasses import replace as replaced

    from watermark_cli.views import VoiView, display_from_dicom

    image = replaced(image, display=display_from_dicom(ds, image.n_frames))
    windows = [(view.modality, view.voi) for view in reader_views(image, 0) if isinstance(view, VoiView)]
    group_modality = image.display.frame(0).modality
    assert (group_modality, VoiWindow(35.0, 70.0)) in windows
    assert (ModalityTransform(), VoiWindow(35.0, 70.0)) in windows
    assert names(image)[:2] == ["data range", "window C49/W102"]


def _padded_mr(tmp_path, padding: int) -> Path:
    """A real MR with a 40-px border of `padding` declared as its Pixel Padding Value."""
    import pydicom

    ds = pydicom.dcmread(data_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "IconImageSequence"):
        ds.pop(keyword, None)
    pixels = ds.pixel_array.copy()
    pixels[:, :40] = padding
    pixels[:, -40:] = padding
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit = 16, 15  # (12 in the file: 65535 would not fit)
    ds.add_new("PixelPaddingValue", "US", padding)
    path = tmp_path / f"padded_{padding}.dcm"
    ds.save_as(path)
    return path


def test_padding_is_left_out_of_the_data_range_and_never_marked(tmp_path):
    """Red team 9: the data range took in the Pixel Padding Value (65535 beside anatomy of
    0..914), so the floor held against a range 70 times the anatomy's: content pixels moved by up
    to 25,850 (18.6 dB over the anatomy's range, as a viewer that leaves padding out shows it)
    and padding pixels were marked. Now padding stays as it is, the floor holds over the rest,
    and no marked pixel turns into padding, also where padding lies amid the image's values."""
    from watermark_cli.keys import generated_key_text
    from watermark_cli.marking.image import codec_for, embed_pixels
    from watermark_cli.model.store import load_model

    model = load_model(None)
    codec = codec_for(model, generated_key_text())
    image = read_image(_padded_mr(tmp_path, 65535))
    marked = embed_pixels(model, codec, image, b"pad-0001", QualityFloor(40.0)).pixels[0].astype(np.float64)
    original = image.pixels[0].astype(np.float64)
    padding = original == 65535
    assert padding.mean() > 0.15
    assert np.array_equal(marked[padding], original[padding])
    content, after = original[~padding], marked[~padding]
    assert after.min() == content.min() and after.max() == content.max()
    error = (after - content) / np.ptp(content)  # over the anatomy alone, in its own range
    assert 10 * np.log10(1.0 / np.mean(error**2)) >= 40.0  # (red team 10: 34 dB, padding counted in)
    inside = read_image(_padded_mr(tmp_path, 300))  # the anatomy holds values on both sides of 300
    marked = embed_pixels(model, codec, inside, b"pad-0001", QualityFloor(40.0)).pixels[0]
    was_padding = inside.pixels[0] == 300
    assert np.array_equal(marked == 300, was_padding) and np.any(marked != inside.pixels[0])


def test_a_modality_lut_that_is_not_monotonic_keeps_the_range_a_viewer_windows_to():
    """Red team 10: under a Modality LUT that shows stored value 560 as 1200 (above the data's
    595), the guard kept the stored range, and 14 pixels moved to 560 re-windowed the frame for
    dcmtk +Wm (19.2 dB). Now no pixel takes a stored value the LUT shows outside the range."""
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 596, (1, 1024, 1024)).astype(np.uint16)
    pixels[pixels == 560] = 561
    table = np.arange(4096, dtype=np.float64)
    table[560] = 1200.0
    image = MedicalImage(pixels, "dicom", Path("lut.dcm"), 12, 0, 4095, "MONOCHROME2", "MR",
                         display=Display(FrameDisplay(ModalityTransform(lut=table, lut_first=0))))
    residual = rng.normal(0, 2.0, pixels.shape)
    residual[pixels == 559] = 0.0
    residual.flat[np.flatnonzero(pixels == 559)[:20]] = 1.0  # a few pixels a mark would move onto 560
    meters = frame_meters(image, QualityFloor(40.0))
    (frame,) = guard_image(pixels, residual, QualityFloor(40.0), meters, stored_min=0, stored_max=4095)
    assert not np.any(frame.pixels == 560) and np.any(frame.pixels != pixels[0])
    shown = table[frame.pixels]
    assert shown.min() == table[pixels[0]].min() and shown.max() == table[pixels[0]].max()
