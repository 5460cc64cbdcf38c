"""Every kind of DICOM a PACS exports, marked with the shipped model and read back (issue 4).

Each case goes through the same path as `wm embed` (embedding.embed_file: mark, verify, write
through a temporary file that is re-read and re-measured) and is then checked independently:
pydicom decodes the written file, the PSNR of every frame is recomputed here from the two
decoded arrays, and the payload is extracted from the file on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import run_wm
from watermark_cli.errors import BadInputError
from watermark_cli.hashing import file_sha256, pixel_sha256
from watermark_cli.io.image import read_image
from watermark_cli.keys import DEFAULT_KEY
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for, extract_payload
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

MESSAGE = b"PACS-2026-0042"


def data_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(path)


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(None)
    return loaded, codec_for(loaded, None)


def independent_frame_psnrs(original: np.ndarray, written: np.ndarray, peak: float) -> list[float]:
    values = []
    for before, after in zip(original.astype(np.float64), written.astype(np.float64)):
        mse = np.mean((before - after) ** 2)
        values.append(np.inf if mse == 0 else 10 * np.log10(peak**2 / mse))
    return values


def assert_scikit_image_reads_the_same(path: Path, ds: pydicom.Dataset) -> None:
    """scikit-image (through imageio's own DICOM reader, independent of pydicom) sees the same
    image, in modality units (stored value × slope + intercept)."""
    import warnings

    import skimage.io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = np.asarray(skimage.io.imread(path)).astype(np.float64)
    stored = ds.pixel_array.astype(np.float64)
    expected = stored * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    if expected.ndim == 3 and seen.ndim == 2:
        expected = expected[0]  # imageio's reader returns the first frame of a multi-frame image
    assert seen.shape == expected.shape
    assert np.allclose(seen, expected, atol=1e-3 * max(1.0, float(np.abs(expected).max())))


# imageio's DICOM reader does not understand enhanced multi-frame functional groups: it fails on
# the original file too ("No pixel data found").
SCIKIT_IMAGE_CANNOT_READ = {"eCT_Supplemental.dcm"}

DICOM_CASES = [
    # (file, what it covers); a "+" names an encoding this test writes from the file first.
    ("693_UNCR.dcm", "CT 512², signed, BitsStored 14 of 16"),
    ("MR2_UNCR.dcm", "MR 1024², 12 bit"),
    ("RG3_UNCR.dcm", "CR 1760², MONOCHROME1, 10 bit"),
    ("JPEG2000_UNC.dcm", "NM 1024×256, signed"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US grayscale 8 bit, lossless JPEG"),
    ("eCT_Supplemental.dcm", "enhanced CT, 2 frames"),
    ("693_J2KR.dcm", "JPEG 2000 lossless"),
    ("JPEG-LL.dcm", "NM, lossless JPEG process 14"),
    ("bad_sequence.dcm", "CT, lossless JPEG, 12 bit"),
    ("MR2_UNCR.dcm+implicit", "implicit VR little endian"),
    ("693_UNCR.dcm+bigendian", "explicit VR big endian"),
    ("693_UNCR.dcm+rle-2frames", "RLE lossless, multi-frame"),
]


def encoded_case(name: str, folder: Path) -> Path:
    """A pydicom-data file, or one re-encoded from it: the small files pydicom-data has in
    these encodings (64² MR) are below the size a mark can be read back from."""
    source, _, encoding = name.partition("+")
    if not encoding:
        return data_file(source)
    ds = pydicom.dcmread(data_file(source))
    target = folder / f"{encoding}.dcm"
    if encoding == "implicit":
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(target, implicit_vr=True, little_endian=True)
    elif encoding == "bigendian":
        ds.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
        pydicom.dcmwrite(target, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    elif encoding == "rle-2frames":
        frames = ds.pixel_array
        ds.NumberOfFrames = 2
        ds.PixelData = np.stack([frames, np.ascontiguousarray(frames[::-1])]).astype("<i2").tobytes()
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(target)
    return target


# The 1760² CR takes seconds: it runs with the slow lane.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "RG3_UNCR.dcm" else name
                                  for name, _ in DICOM_CASES])
def test_every_dicom_case_is_marked_under_the_floor_and_read_back(name, shipped, tmp_path):
    loaded, codec = shipped
    source = encoded_case(name, tmp_path)
    settings = EmbedSettings(payload=MESSAGE, floor=QualityFloor(40.0))
    result = embed_file(source, tmp_path / "out.dcm", settings, loaded, codec)
    assert result.verified

    original = read_image(source)
    written_ds = pydicom.dcmread(tmp_path / "out.dcm")
    assert written_ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    written = written_ds.pixel_array.reshape(original.pixels.shape)
    assert written.dtype == original.pixels.dtype  # native depth and signedness kept
    assert not np.array_equal(written, original.pixels)  # it really was marked
    # The floor holds on every frame against its own data range (Rescale Slope cancels out).
    ranges = [float(frame.max()) - float(frame.min()) for frame in original.pixels]
    psnrs = [independent_frame_psnrs(o[None], w[None], r)[0] for o, w, r in zip(original.pixels, written, ranges)]
    assert len(psnrs) == original.n_frames and min(psnrs) >= 40.0

    decoded = extract_payload(loaded, codec, read_image(tmp_path / "out.dcm"))
    assert decoded.found and decoded.message == MESSAGE
    if name not in SCIKIT_IMAGE_CANNOT_READ and not name.endswith("bigendian"):
        assert_scikit_image_reads_the_same(tmp_path / "out.dcm", written_ds)

    # A derived image: new instance UID, DERIVED, the model named, the original referenced.
    original_ds = original.source
    assert written_ds.SOPInstanceUID != original_ds.SOPInstanceUID
    assert written_ds.ImageType[0] == "DERIVED"
    assert "wm" in written_ds.DerivationDescription and loaded.name in written_ds.DerivationDescription
    assert written_ds.SourceImageSequence[-1].ReferencedSOPInstanceUID == original_ds.SOPInstanceUID


@pytest.mark.parametrize("compression, syntax", [
    ("rle", pydicom.uid.RLELossless), ("jpeg2000", pydicom.uid.JPEG2000Lossless),
])
def test_lossless_re_encoding_stores_exactly_the_marked_values(compression, syntax, shipped, tmp_path):
    loaded, codec = shipped
    source = data_file("693_UNCR.dcm")
    plain = embed_file(source, tmp_path / "plain.dcm", EmbedSettings(MESSAGE, QualityFloor(40.0)), loaded, codec)
    packed = embed_file(source, tmp_path / "packed.dcm",
                        EmbedSettings(MESSAGE, QualityFloor(40.0), compression=compression), loaded, codec)
    written = pydicom.dcmread(tmp_path / "packed.dcm")
    assert written.file_meta.TransferSyntaxUID == syntax
    assert packed.output_pixels_sha256 == plain.output_pixels_sha256  # same stored values
    assert (tmp_path / "packed.dcm").stat().st_size < (tmp_path / "plain.dcm").stat().st_size
    assert extract_payload(loaded, codec, read_image(tmp_path / "packed.dcm")).message == MESSAGE


@pytest.mark.slow
def test_unused_high_bits_are_left_as_they_were(shipped, tmp_path):
    """BitsStored 12 of 16 with something in the top 4 bits (old files keep overlays there)."""
    loaded, codec = shipped
    ds = pydicom.dcmread(data_file("MR2_UNCR.dcm"))
    words = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    high = np.random.default_rng(3).integers(0, 16, words.size, dtype=np.uint16) << 12
    ds.PixelData = ((words & 0x0FFF) | high).tobytes()
    ds.save_as(tmp_path / "overlay_bits.dcm")

    embed_file(tmp_path / "overlay_bits.dcm", tmp_path / "out.dcm", EmbedSettings(MESSAGE, QualityFloor(40.0)),
               loaded, codec)
    written = np.frombuffer(pydicom.dcmread(tmp_path / "out.dcm").PixelData, dtype="<u2")
    assert np.array_equal(written >> 12, high >> 12)  # high bits untouched
    assert not np.array_equal(written & 0x0FFF, words & 0x0FFF)  # stored bits marked
    assert extract_payload(loaded, codec, read_image(tmp_path / "out.dcm")).message == MESSAGE


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "OBXXXX1A.dcm", "SC_ybr_full_uncompressed.dcm"])
def test_colour_and_palette_dicom_are_refused_not_turned_gray(name, shipped, tmp_path):
    loaded, codec = shipped
    with pytest.raises(BadInputError, match="colour DICOM images are not supported"):
        embed_file(data_file(name), tmp_path / "out.dcm", EmbedSettings(MESSAGE, QualityFloor(40.0)), loaded, codec)
    assert not any(tmp_path.iterdir())


def test_window_domain_floor_holds_in_the_window_and_says_where_it_does_not(shipped, tmp_path):
    """An expert budgets in one wide window of theirs: the floor holds there, and the file's own
    narrower window that then falls below it is named in the result (and on stderr by the CLI)."""
    loaded, codec = shipped
    source = data_file("MR2_UNCR.dcm")
    floor = QualityFloor(40.0, domain="window")
    result = embed_file(source, tmp_path / "out.dcm", EmbedSettings(MESSAGE, floor, window_override=(2000.0, 4000.0)),
                        loaded, codec)
    ds = read_image(source).source
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    original = read_image(source).pixels.astype(np.float64) * slope + intercept  # modality units
    written = read_image(tmp_path / "out.dcm").pixels.astype(np.float64) * slope + intercept

    def window_psnr(center, width):  # the DICOM linear VOI function (PS3.3 C.11.2.1.2)
        low = center - 0.5 - (width - 1) / 2
        shown = [np.clip((image - low) / (width - 1), 0, 1) for image in (original, written)]
        return 10 * np.log10(1 / np.mean((shown[0] - shown[1]) ** 2))

    assert window_psnr(2000.0, 4000.0) >= 40.0
    assert result.psnr_domain == "window" and result.binding_view == "window C2000/W4000 (--window)"
    assert window_psnr(1000.0, 2000.0) < 40.0  # the file's own window, half as wide
    assert "window C1000/W2000" in result.views_below_floor
    assert result.psnr_views["window C1000/W2000"] == pytest.approx(window_psnr(1000.0, 2000.0), abs=1e-3)


# ------------------------------------------------------------------------------ folders ----

def make_mixed_folder(root: Path) -> Path:
    folder = root / "export"
    (folder / "series1").mkdir(parents=True)
    (folder / "series2").mkdir()
    for name, target in [("693_UNCR.dcm", "series1/ct.dcm"), ("MR2_UNCR.dcm", "series1/mr.dcm"),
                         ("JPGLosslessP14SV1_1s_1f_8b.dcm", "series2/us"),  # no suffix, as PACS often do
                         ("US1_UNCR.dcm", "series2/colour.dcm")]:
        (folder / target).write_bytes(data_file(name).read_bytes())
    (folder / "series2" / "broken.dcm").write_bytes(b"DICM" + os.urandom(3000))
    (folder / "README.txt").write_text("export notes")
    return folder


@pytest.mark.slow
def test_mixed_folder_marks_the_good_reports_the_rest_and_loses_nothing(tmp_path):
    folder = make_mixed_folder(tmp_path)
    before = {p: file_sha256(p) for p in folder.rglob("*") if p.is_file()}
    result = run_wm("embed", folder, "batch-9", "--workers", "2")
    assert result.code == 2, result.stderr  # failures were all bad input
    output = tmp_path / "export_wm"
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()) == [
        "series1/ct.dcm", "series1/mr.dcm", "series2/us", "wm-audit.jsonl"]
    assert "colour.dcm" in result.stderr and "broken.dcm" in result.stderr
    assert "skipped, not an image" in result.stdout and "README.txt" in result.stdout
    assert "marked 3, failed 2" in result.stdout
    assert {p: file_sha256(p) for p in folder.rglob("*") if p.is_file()} == before  # inputs untouched
    assert not list(tmp_path.rglob(".*.tmp-*"))

    audit = [json.loads(line) for line in (output / "wm-audit.jsonl").read_text().splitlines()]
    assert len(audit) == 3
    for line in audit:
        assert line["input_file_sha256"] == file_sha256(Path(line["input"]))
        assert line["output_file_sha256"] == file_sha256(Path(line["output"]))
        assert line["output_pixels_sha256"] == pixel_sha256(read_image(line["output"]).pixels)
        assert line["input_pixels_sha256"] == pixel_sha256(read_image(line["input"]).pixels)
        assert line["payload"]["text"] == "batch-9" and line["verified"] is True
        assert line["psnr"] >= 40.0 and line["model_weights_sha256"]
        assert line["payload"]["key"] == "default" and DEFAULT_KEY not in json.dumps(line)  # a kind, never a key

    extracted = run_wm("extract", output, "--json")
    assert [json.loads(line)["message"] for line in extracted.stdout.splitlines()] == ["batch-9"] * 3

    # A re-run does no work twice: the outputs exist, so only the bad files are tried again.
    mtimes = {p: p.stat().st_mtime_ns for p in output.rglob("*.dcm")}
    again = run_wm("embed", folder, "batch-9")
    assert again.code == 2 and "already done 3" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*.dcm")} == mtimes
    assert len((output / "wm-audit.jsonl").read_text().splitlines()) == 3
    # ... unless asked to redo them.
    redo = run_wm("embed", folder, "batch-9", "--overwrite", "--audit", tmp_path / "elsewhere.jsonl")
    assert "marked 3" in redo.stdout and len((tmp_path / "elsewhere.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_ctrl_c_during_a_batch_leaves_only_whole_files(tmp_path):
    # The signal goes when the first output appears. If the test process is held up long enough
    # for the run to start its last file first, the run rightly ends with every file marked and
    # exit 0; that attempt proves nothing and is made again with a longer batch.
    for attempt, count in enumerate((12, 36)):
        folder = tmp_path / f"many{attempt}"
        folder.mkdir()
        for index in range(count):
            (folder / f"img{index:02d}.dcm").write_bytes(data_file("693_UNCR.dcm").read_bytes())
        # A user's Ctrl-C meets a run whose SIGINT is not ignored. A suite started in the background
        # of a shell without job control inherits an ignored SIGINT (which wm rightly keeps), so
        # the child is started with Python's handler here: exec turns that into the default.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            process = subprocess.Popen([sys.executable, "-m", "watermark_cli", "embed", folder, "x"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        output = tmp_path / f"many{attempt}_wm"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(output.glob("img*.dcm")):
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        written = sorted(output.glob("img*.dcm"))
        if process.returncode == 0 and len(written) == count and attempt == 0:
            continue
        break
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not list(output.glob(".*"))  # no temporary file left
    assert 1 <= len(written) < count
    for path in written:  # every file that exists is whole and marked
        assert read_image(path).pixels.shape == (1, 512, 512)
    audit = (output / "wm-audit.jsonl").read_text().splitlines()
    assert len(audit) == len(written)


def test_not_enough_disk_space_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    import shutil

    from watermark_cli.marking import files as embedding

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
    with pytest.raises(BadInputError, match="not enough disk space"):
        embedding.check_free_space([data_file("RG1_UNCR.dcm")], tmp_path / "out")
    # A compressed input counts at its decoded size: 1955 × 1841 × 2 bytes.
    assert embedding.estimated_output_bytes(data_file("RG1_J2KR.dcm")) >= 1955 * 1841 * 2


def test_ultrasound_black_background_stays_black_and_the_mark_survives_jpeg_50(shipped, tmp_path):
    """72 % of this ultrasound is exact black. The mark is kept off pixels at the ends of the
    stored range (a signed mark cannot live there), so the background is written unchanged and
    the whole PSNR budget goes into the sector, where it survives a JPEG q50 export."""
    from watermark_cli.attacks.codecs import FrameContext, parse_attack
    from watermark_cli.marking.image import read_frames

    loaded, codec = shipped
    source = data_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    settings = EmbedSettings(payload=MESSAGE, floor=QualityFloor(40.0))
    embed_file(source, tmp_path / "out.dcm", settings, loaded, codec)
    original, written = read_image(source), read_image(tmp_path / "out.dcm")
    black = original.pixels == original.stored_min
    assert black.mean() > 0.5
    assert np.array_equal(written.pixels[black], original.pixels[black])
    assert not np.array_equal(written.pixels[~black], original.pixels[~black])
    assert min(independent_frame_psnrs(original.pixels, written.pixels, original.nominal_peak)) >= 40.0

    jpeg_50 = parse_attack("jpeg:50")
    context = FrameContext(written.stored_min, written.stored_max, None)
    exported = np.stack([jpeg_50(frame, context) for frame in written.pixels])
    decoded = read_frames(loaded, codec, exported).decoded
    assert decoded.found and decoded.message == MESSAGE


def test_the_mark_is_confined_to_the_range_only_where_enough_pixels_are_inside_it():
    from watermark_cli.marking.image import confine_to_unclipped

    rng = np.random.default_rng(3)
    residual = rng.normal(size=(2, 512, 512))
    pixels = np.full((2, 512, 512), 100, dtype=np.uint8)
    pixels[0, :, :128] = 0      # frame 0: a quarter black, 3/4 inside (48 tiles of 64²)
    pixels[1, :, :] = 255       # frame 1: saturated but for a 100² patch (2.4 tiles)
    pixels[1, :100, :100] = 100
    confined = confine_to_unclipped(residual, pixels, 0, 255, tile=64)
    assert np.all(confined[0, :, :128] == 0) and np.array_equal(confined[0, :, 128:], residual[0, :, 128:])
    assert np.array_equal(confined[1], residual[1])  # too little inside: the one-sided mark is kept


@pytest.mark.slow
def test_anatomy_outside_the_read_region_keeps_its_mark(shipped):
    """Extraction reads the centre 1024² of large images. A 2048² frame that is black but for a
    patch in a corner must not be confined (the centre would carry nothing) and must read back."""
    from scipy.ndimage import gaussian_filter

    from watermark_cli.io.medical_image import MedicalImage
    from watermark_cli.marking.image import embed_pixels, read_frames

    loaded, codec = shipped
    texture = gaussian_filter(np.random.default_rng(1).normal(size=(400, 400)), 3)
    pixels = np.zeros((1, 2048, 2048), np.uint16)
    pixels[0, 50:450, 50:450] = 500 + 3000 * (texture - texture.min()) / np.ptp(texture)
    image = MedicalImage(pixels=pixels, kind="png", path=Path("corner.png"), bits_stored=12, stored_min=0,
                         stored_max=4095, photometric="MONOCHROME2", modality=None)
    marked = embed_pixels(loaded, codec, image, MESSAGE, QualityFloor(40.0), None)
    assert marked.frames[0].quality.psnr >= 40.0
    decoded = read_frames(loaded, codec, marked.pixels).decoded
    assert decoded.found and decoded.message == MESSAGE


@pytest.mark.slow
def test_the_nominal_peak_on_request_warns_in_one_line_where_a_reader_would_see_the_mark(tmp_path):
    """`--psnr-domain stored --psnr-peak nominal` is the expert's old behaviour: the CT meets 40 dB
    against 2^14 − 1 and falls far below it in its own C40/W100 window, which embed names."""
    result = run_wm("embed", data_file("693_UNCR.dcm"), "x", "-o", tmp_path / "out.dcm", "--psnr-domain", "stored",
                    "--psnr-peak", "nominal", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["binding_view"].startswith("nominal") and report["psnr"] >= 40.0
    assert "window C40/W100" in report["views_below_floor"] and report["psnr_views"]["window C40/W100"] < 30.0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "window C40/W100" in warnings[0] and "--psnr-domain stored" in warnings[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm"])
def test_ten_small_frames_are_marked_and_read_back_as_one_instance(tmp_path, name):
    """emri_small: 10 frames of 64² MR, under the 128 px a frame needs on its own; marked as one
    instance (every frame at the floor) and read back from all its frames' evidence together."""
    marked = tmp_path / "out.dcm"
    result = run_wm("embed", data_file(name), "ID-0042", "-o", marked, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and report["psnr"] >= 40.0 and len(report["frame_psnr"]) == 10
    assert min(report["frame_psnr"]) >= 40.0
    read = run_wm("extract", marked, "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "ID-0042"


@pytest.mark.slow
def test_one_small_frame_alone_is_marked_and_one_frame_of_a_marked_instance_reads_its_own_message_or_nothing(
        tmp_path):
    """One 64² frame alone holds too few tiles for the robust mark to be sure to read back: it is
    marked all the same, robustly where that reads back, else with the fragile mark
    (`marking.fragile`), verified, every view at the floor; one under a tile a side is refused in
    one line. One frame cut from a marked 10-frame instance holds a tenth of its evidence, but the
    whole mark of such small frames is fitted to each host (stop 49): it reads back the instance's
    message (9 of 10 frames of emri_small, in each encoding, two keys) or "no watermark" (exit 1),
    never another message."""
    marked = tmp_path / "marked.dcm"
    assert run_wm("embed", data_file("emri_small.dcm"), "ID-0042", "-o", marked).code == 0
    cuts = [(data_file("emri_small.dcm"), 0, tmp_path / "cut.dcm")]
    cuts += [(marked, frame, tmp_path / f"one-{frame}.dcm") for frame in (0, 5, 9)]
    for source, frame, cut in cuts:
        ds = pydicom.dcmread(source)
        ds.PixelData = ds.pixel_array[frame:frame + 1].tobytes()
        ds.NumberOfFrames = 1
        if "PerFrameFunctionalGroupsSequence" in ds:
            ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[frame:frame + 1]
        ds.save_as(cut)
    result = run_wm("embed", tmp_path / "cut.dcm", "x", "-o", tmp_path / "out.dcm", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and min(report["frame_psnr"]) >= 40.0 and not report["views_below_floor"]
    read = run_wm("extract", tmp_path / "out.dcm", "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "x"
    assert json.loads(read.stdout).get("fragile", False) == report["fragile"]
    ds = pydicom.dcmread(tmp_path / "cut.dcm")
    ds.PixelData = ds.pixel_array[:48, :48].copy().tobytes()
    ds.Rows = ds.Columns = 48
    ds.save_as(tmp_path / "tiny.dcm")
    result = run_wm("embed", tmp_path / "tiny.dcm", "x", "-o", tmp_path / "tiny-out.dcm")
    assert result.code == 2 and not (tmp_path / "tiny-out.dcm").exists()
    assert result.stderr.strip().count("\n") == 0 and "too small to mark" in result.stderr
    alone = [run_wm("extract", cut) for _, frame, cut in cuts[1:]]
    assert all((read.code, read.stdout.strip()) in ((0, "ID-0042"), (1, "")) for read in alone), alone
    assert sum(read.code == 0 for read in alone) >= 2
