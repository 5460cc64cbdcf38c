"""The benchmarks behind the README's memory and key-less security figures still run, and what
they measure holds in their quick forms. Both had stopped at their start unnoticed (a dict read
as an object; a new image set's labels looked up among the held-out slices), so the README kept
figures no current build could reproduce."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_the_memory_benchmark_marks_a_large_radiograph_under_2_gb():
    figures = _benchmark("memory.py", "--json")
    assert figures["verified"] is True and figures["psnr"] >= 40.0
    assert 0 < figures["peak_rss_mib"] < 2048


@pytest.mark.slow
def test_the_keyless_attacker_copies_nothing_and_reads_chance():
    result = _benchmark("attacks_keyless.py", "--quick", "--json")
    assert result["keyed"] and len(result["removal_images"]) == 3
    copies = [row for row in result["rows"] if row["group"] == "copy"]
    assert len(copies) == 6  # blind, exact residual, JPEG export; each also across modalities
    assert all(row["trials"] >= 16 and row["successes"] == 0 for row in copies)
    read = next(row for row in result["rows"] if row["group"] == "read")
    # 5 images × 256 raw bits read with a guessed key: chance gives 0.5 ± 0.014.
    assert 0.44 < read["bit_agreement"]["mean"] < 0.56
    removals = [row for row in result["rows"] if row["group"] == "removal"]
    assert len(removals) >= 10 and all(row["trials"] == 3 for row in removals)
    # The per-image table counts the same cheap erasures as the per-attack rows, and each
    # denoiser's cost to the unmarked host is measured on every removal image.
    texture = result["host_texture"]
    assert [row["label"] for row in texture] == result["removal_images"]
    denoisers = list(texture[0]["host_psnr_denoised"])
    assert {"median 3×3", "gauss σ1"} <= set(denoisers)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from attacks_keyless import is_whole_frame_denoising
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    denoising_rows = [row for row in removals if is_whole_frame_denoising(row["name"], denoisers)]
    assert all(row["denoisings"] == len(denoising_rows) for row in texture)
    assert (sum(row["denoisings_erasing_within_4_db"] for row in texture)
            == sum(row["erased_within_4_db"] for row in denoising_rows))


def test_the_unseen_images_are_real_grayscale_and_in_neither_split():
    """`small_frames.py --split unseen`'s material: real images no model was trained or tuned on,
    none of them a file (in any encoding) of the training or held-out split; dipy's stored as
    whole 12-bit values."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from heldout import unseen_images
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from watermark_cli.data.clinical import CLINICAL_GROUPS

    images = unseen_images()
    in_splits = {name for group in CLINICAL_GROUPS for name in group.files}
    assert len(images) == 12 and len({label for label, _ in images}) == 12
    for label, image in images:
        assert image.photometric == "MONOCHROME2" and image.pixels.ndim == 3
        assert not any(name in label for name in in_splits), label
        assert image.pixels.std() > 0 and image.pixels.dtype.kind in "iu"
    dipy = [image for label, image in images if "dipy" in label]
    assert all(0 <= image.pixels.min() and image.pixels.max() <= 4095 for image in dipy)


def test_nearly_flat_crops_are_told_from_textured_ones():
    """`small_frames.py` gives crops with ≥ 90 % of their pixels at one value a row of their own:
    the held-out ultrasound's black corners with annotation strokes pass the sd rule of
    `textured_cuts` on the strokes' contrast alone; a CT's textured crops are never that flat."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from heldout import NEARLY_FLAT_SHARE, most_common_share, textured_cuts
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from watermark_cli.data.clinical import clinical_file
    from watermark_cli.io.image import read_image

    def shares(name: str) -> list[float]:
        frame = read_image(clinical_file(name)).pixels[0]
        return [most_common_share(cut) for cut in textured_cuts(frame, 128, 26, np.random.default_rng(3))]

    ultrasound = shares("JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert len(ultrasound) == 26
    flat = [share for share in ultrasound if share >= NEARLY_FLAT_SHARE]
    assert flat and max(flat) > 0.98  # a corner almost wholly one value, passed by the sd rule
    assert len(flat) < len(ultrasound)  # the sector's speckle is textured
    assert max(shares("693_UNCR.dcm")) < NEARLY_FLAT_SHARE
    assert most_common_share(np.zeros((4, 4))) == 1.0 and most_common_share(np.arange(4)) == 0.25


def test_the_mark_scale_study_measures_what_is_left_of_a_mark():
    """`mark_scale.py`'s two measures on a frame of its own: the idealised reader reads a spread
    mark on a flat host and not on a host of noise far stronger than it; the kept share is 1 when
    nothing is done, 0 when the mark is taken out exactly, −1 when it is inverted."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from mark_scale import LinearReader, kept_share, spread_mark
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    rng = np.random.default_rng(0)
    carriers, signs, pattern = spread_mark((128, 128), 1.0, rng)
    assert carriers.shape == (256, 128, 128) and abs(pattern.std() - 1.0) < 1e-6
    reader = LinearReader(carriers, signs, 1.0)
    assert reader.bit_error_rate(0.01 * pattern) == 0.0
    assert reader.bit_error_rate(-0.01 * pattern) == 1.0
    assert 0.35 < reader.bit_error_rate(0.01 * pattern + rng.standard_normal((128, 128))) < 0.65
    host = rng.standard_normal((128, 128))
    mark = 0.01 * pattern
    assert kept_share(host + mark, host, mark) == pytest.approx(1.0)
    assert kept_share(host, host, mark) == pytest.approx(0.0)
    assert kept_share(host - mark, host, mark) == pytest.approx(-1.0)


@pytest.mark.slow
def test_the_mark_scale_study_runs_and_its_cheapest_removals_agree():
    result = _benchmark("mark_scale.py", "--crop", "128", "--seed", "1", "--scales", "1,4", "--quick", "--json")
    assert len(result["images"]) == 2 and result["scales"] == [1.0, 4.0]
    for image in result["images"]:
        for figures in image["scales"]:
            assert abs(figures["psnr_marked"] - 40.0) < 0.01  # every synthetic mark at the floor
            assert 0.0 <= figures["clean_ber"] <= 1.0
            cheapest = figures["cheapest_erasing"]
            strict, loose = cheapest["kept ≤ 0.3"], cheapest["kept ≤ 0.5"]
            # whatever leaves ≤ 0.3 of the mark leaves ≤ 0.5: the looser erasure is never dearer
            assert strict is None or (loose is not None and loose["drop_db"] <= strict["drop_db"] + 1e-9)
            if figures["clean_ber"] > 0.14:
                assert cheapest["reader fails"] is None  # a mark that never read is not "erased"
