"""End to end through the command line: embed → extract with the shipped model, a model `wm train`
wrote, and every bad input.

Most runs go through `main()` in this process (`run_wm_here`: the same parsing, one-line errors
and exit codes, without a new interpreter importing torch each time); a few run the real
`python -m watermark_cli` in a subprocess (`run_wm`) for the exit-code contract of the process."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from skimage.metrics import peak_signal_noise_ratio

from conftest import fixed_key, run_wm, run_wm_here
from watermark_cli.io.dicom import DICOM_ELEMENTS_CHANGED_ON_WRITE


def _one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture()
def held_out_png(synthetic_data, tmp_path):
    source = sorted(synthetic_data["held_out"].glob("*.png"))[0]
    target = tmp_path / source.name
    shutil.copy(source, target)
    return target


def test_embed_then_extract_png_keeps_the_floor_on_the_written_file(held_out_png, tmp_path):
    original_bytes = held_out_png.read_bytes()
    result = run_wm_here("embed", held_out_png, "audit:42 ✓", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    output = tmp_path / held_out_png.name.replace(".png", ".wm.png")
    assert report["output"] == str(output) and output.is_file()
    for field in ("input", "psnr", "psnr_min", "psnr_peak", "psnr_domain", "ssim", "max_abs_error",
                  "payload_bits", "verified", "model"):
        assert field in report
    # A 16-bit PNG is viewed over its own data range (design §1), not against 65535.
    before = np.asarray(Image.open(held_out_png))
    data_range = float(before.max()) - float(before.min())
    assert report["verified"] is True and report["binding_view"] == "data range"
    assert report["psnr_peak"] == data_range and report["psnr_domain"] == "view"
    # Independent re-measurement on the file as written, with scikit-image.
    after = np.asarray(Image.open(output))
    assert after.dtype == np.uint16 and not np.array_equal(before, after)
    measured = peak_signal_noise_ratio(before.astype(float), after.astype(float), data_range=data_range)
    assert measured >= 40.0
    assert measured == pytest.approx(report["psnr"], abs=1e-3)
    assert held_out_png.read_bytes() == original_bytes  # the input is never modified

    extracted = run_wm_here("extract", output)
    assert extracted.code == 0, extracted.stderr
    assert extracted.stdout.strip() == "audit:42 ✓"


@pytest.mark.slow  # a real `wm` process: torch, the models and numba start in 4-6 s (the fast lane's
# in-process tests check the same exit code: test_a_wrong_key_gives_no_watermark_and_the_right_one_the_message)
def test_an_unmarked_image_gives_no_watermark(held_out_png):
    clean = run_wm("extract", held_out_png, "--json")  # the real process: its exit code and streams
    assert clean.code == 1
    assert json.loads(clean.stdout)["found"] is False
    assert "no valid watermark" in _one_line_error(clean)


def test_a_wrong_key_gives_no_watermark_and_the_right_one_the_message(held_out_png, tmp_path):
    marked = tmp_path / "marked.png"
    assert run_wm_here("embed", held_out_png, "secret-id", "--key", fixed_key("k1"), "-o", marked).code == 0
    wrong = run_wm_here("extract", marked, "--key", fixed_key("k2"))
    assert wrong.code == 1 and wrong.stdout == ""
    right = run_wm_here("extract", marked, "--key", fixed_key("k1"))
    assert right.code == 0 and right.stdout.strip() == "secret-id"


def test_keys_come_from_a_file_or_the_environment_and_are_never_shown(held_out_png, tmp_path, monkeypatch):
    secret = fixed_key("never printed")
    key_file = tmp_path / "site.key"
    key_file.write_text(secret + "\n")
    marked = tmp_path / "keyed.png"
    embedded = run_wm_here("embed", held_out_png, "id-0042", "--key-file", key_file, "-o", marked, "--json")
    assert embedded.code == 0, embedded.stderr
    assert json.loads(embedded.stdout)["key"] == "custom"
    audit = (tmp_path / "wm-audit.jsonl").read_text()
    assert json.loads(audit)["payload"]["key"] == "custom"
    with monkeypatch.context() as environment:
        environment.setenv("WM_KEY", secret)
        read = run_wm_here("extract", marked, "--json")
    line = json.loads(read.stdout)
    assert read.code == 0 and line["message"] == "id-0042" and line["authenticated"] and line["key"] == "custom"
    public = run_wm_here("extract", marked, "--json")  # the default key
    assert public.code == 1 and json.loads(public.stdout)["key"] == "default"
    for result in (embedded, read, public):
        assert secret not in result.stdout + result.stderr
    assert secret not in audit
    both = run_wm_here("embed", held_out_png, "x", "--key", "a", "--key-file", key_file)
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    blank = run_wm_here("extract", marked, "--key-file", empty)
    assert both.code == 2 and "not both" in _one_line_error(both)
    assert blank.code == 2 and "empty" in _one_line_error(blank)


def test_real_ct_dicom_round_trip_keeps_every_other_element(tmp_path):
    source = get_testdata_file("693_J2KR.dcm")  # real CT, 512², JPEG 2000 lossless
    output = tmp_path / "ct.wm.dcm"
    result = run_wm_here("embed", source, "ct-0001", "-o", output, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["psnr"] >= 40.0

    original = pydicom.dcmread(source)
    written = pydicom.dcmread(output)
    assert written.SOPInstanceUID != original.SOPInstanceUID
    assert written.ImageType[0] == "DERIVED"
    assert written.SourceImageSequence[-1].ReferencedSOPInstanceUID == original.SOPInstanceUID
    changed = set(DICOM_ELEMENTS_CHANGED_ON_WRITE)
    for element in original:
        # Group lengths (gggg,0000) are retired and always recomputed or dropped by pydicom.
        if element.keyword in changed or element.tag.group == 0x7FE0 or element.tag.element == 0:
            continue
        assert written[element.tag].value == element.value, element.keyword
    bits = int(original.BitsStored)
    psnr = peak_signal_noise_ratio(original.pixel_array.astype(np.float64), written.pixel_array.astype(np.float64),
                                   data_range=2**bits - 1)
    assert psnr >= 40.0

    extracted = run_wm_here("extract", output)
    assert extracted.code == 0 and extracted.stdout.strip() == "ct-0001"


@pytest.mark.slow
def test_a_model_that_wm_train_wrote_marks_and_reads_back(trained_model, held_out_png, tmp_path):
    """train → embed → extract, each a real process: a model folder `wm train` writes is a model."""
    output = tmp_path / "marked.png"
    embedded = run_wm("embed", held_out_png, "trained-42", "--model", trained_model, "-o", output, "--json")
    assert embedded.code == 0, embedded.stderr
    report = json.loads(embedded.stdout)
    assert report["verified"] and report["psnr"] >= 40.0 and report["model"] not in ("wm-default-v2", "wm-keyed-v3")
    extracted = run_wm("extract", output, "--model", trained_model)
    assert extracted.code == 0 and extracted.stdout.strip() == "trained-42"
    other = run_wm("extract", output)  # the shipped model does not read another model's mark
    assert other.code == 1


def test_missing_file_is_a_one_line_error(tmp_path):
    result = run_wm("embed", tmp_path / "nope.dcm", "x")  # the real process
    assert result.code == 2
    assert "nope.dcm" in _one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_a_one_line_error_and_writes_nothing(tmp_path):
    corrupt = tmp_path / "broken.dcm"
    corrupt.write_bytes(b"DICM" + bytes(range(256)) * 7)
    result = run_wm_here("embed", corrupt, "x")
    assert result.code == 2
    assert "broken.dcm" in _one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dcm"]
    assert run_wm_here("extract", corrupt).code == 2


def test_message_too_long_is_refused_before_writing(held_out_png):
    result = run_wm_here("embed", held_out_png, "x" * 100)
    assert result.code == 2
    assert "at most 16 bytes" in _one_line_error(result)
    assert sorted(p.name for p in held_out_png.parent.iterdir()) == [held_out_png.name]


def test_image_smaller_than_two_tiles_is_refused(tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 200), dtype=np.uint8)).save(small)
    result = run_wm_here("embed", small, "x")
    assert result.code == 2
    assert "128 px" in _one_line_error(result)  # two 64-px tiles of the shipped model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]


def test_frames_under_two_tiles_are_marked_alone_robustly_where_that_reads_back_else_fragile(tmp_path):
    """A 64² or 96² frame holds one 64-px tile, and the robust mark needs two to be sure to read
    back: such a frame alone is marked all the same, verified, with the fragile mark where the
    robust one does not read back (`marking.fragile`); `wm models` lists the frames the robust
    mark needs and the size under which the fragile one stands in."""
    from watermark_cli.marking.image import frames_needed

    assert [frames_needed(side, side, 64) for side in (48, 63, 64, 96, 127, 128, 512)] == [None, None, 2, 2, 2, 1, 1]
    assert frames_needed(128, 64, 64) == 1 and frames_needed(64, 300, 64) == 1 and frames_needed(100, 100, 64) == 2
    single = tmp_path / "single.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)).save(single)
    result = run_wm_here("embed", single, "x", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and report["psnr"] >= 40.0 and isinstance(report["fragile"], bool)
    read = run_wm_here("extract", tmp_path / "single.wm.png", "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "x"
    listing = json.loads(run_wm_here("models", "--json").stdout.splitlines()[0])
    assert listing["frames_needed_by_side"] == {"64": 2, "96": 2, "128": 1}
    assert listing["fragile_mark_up_to_pixels"] == 256 * 256
    assert listing["fragile_mark_bytes_by_carriers"] == {"75": 4, "106": 8, "138": 12, "154": 16}


def test_existing_output_is_never_replaced_without_overwrite(held_out_png, tmp_path):
    output = tmp_path / "out.png"
    output.write_bytes(b"precious")
    result = run_wm_here("embed", held_out_png, "x", "-o", output)
    assert result.code == 2 and "already exists" in _one_line_error(result)
    assert output.read_bytes() == b"precious"
    assert run_wm_here("embed", held_out_png, "x", "-o", output, "--overwrite").code == 0
    assert output.read_bytes() != b"precious"


@pytest.mark.slow
def test_folder_embed_marks_good_files_and_reports_bad_ones(synthetic_data, tmp_path):
    folder = tmp_path / "study"
    (folder / "series").mkdir(parents=True)
    for source in sorted(synthetic_data["held_out"].glob("*.png"))[:2]:
        shutil.copy(source, folder / "series" / source.name)
    (folder / "series" / "corrupt.png").write_bytes(b"not a png")
    result = run_wm("embed", folder, "batch-7", "--json")
    assert result.code == 2  # the only failure is bad input (a corrupt file)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum("error" in line for line in lines) == 1
    marked = sorted((tmp_path / "study_wm" / "series").glob("*.png"))
    assert len(marked) == 2
    extracted = run_wm("extract", tmp_path / "study_wm", "--json")
    assert extracted.code == 0
    assert [json.loads(line)["message"] for line in extracted.stdout.splitlines()] == ["batch-7", "batch-7"]


@pytest.mark.slow
def test_evaluate_writes_a_report_with_no_image_below_the_floor(synthetic_data, tmp_path):
    report_dir = tmp_path / "report"
    result = run_wm("evaluate", synthetic_data["held_out"], "--attacks",
                    "identity,noise:0.01,crop:0.7", "--messages", "2", "--report", report_dir, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((report_dir / "report.json").read_text())
    assert report["n_images"] == 6 and report["below_floor"] == 0
    assert report["psnr"]["min"] >= 40.0
    assert report["attacks"]["identity"]["payload_recovery"] >= 5 / 6
    # A crop moves the tile grid; the offset search must find it again.
    assert report["attacks"]["crop:0.7"]["payload_recovery"] >= 5 / 6
    assert report["detection"]["n_clean"] == 6 and report["detection"]["false_positives"] == 0
    assert (report_dir / "per_image.csv").read_text().count("\n") == 1 + 6 * 2 * 3


def test_usage_errors_exit_2(held_out_png):
    assert run_wm_here("embed", held_out_png).code == 2
    result = run_wm_here("embed", held_out_png, "x", "--psnr-min", "-3")
    assert result.code == 2 and "--psnr-min" in _one_line_error(result)
    result = run_wm_here("evaluate", held_out_png, "--attacks", "bogus:1")
    assert result.code == 2 and "unknown attack" in _one_line_error(result)


def test_more_bad_inputs_get_one_line_errors(held_out_png, tmp_path):
    result = run_wm_here("embed", held_out_png, "x", "--psnr-domain", "window", "--window", "nan,nan")
    assert result.code == 2 and "--window" in _one_line_error(result)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_wm_here("train", empty, "--out", tmp_path / "m")
    assert result.code == 2 and "no image files" in _one_line_error(result)
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "card.yaml").write_text("architecture: {n_bits: 256}\npayload: {}\n")
    result = run_wm_here("extract", held_out_png, "--model", broken_model)
    assert result.code == 2 and "lacks" in _one_line_error(result)


def test_a_jpeg_export_is_read_and_a_marked_jpeg_becomes_png(held_out_png, tmp_path):
    marked = tmp_path / "marked.png"
    assert run_wm_here("embed", held_out_png, "from-jpeg", "-o", marked).code == 0
    exported = tmp_path / "export.jpg"
    pixels = np.asarray(Image.open(marked)).astype(np.float64)
    Image.fromarray(np.round(pixels / 257.0).astype(np.uint8)).save(exported, quality=95)
    result = run_wm_here("extract", exported, "--json")
    assert json.loads(result.stdout)["input"] == str(exported)
    assert result.code == 0 and json.loads(result.stdout)["message"] == "from-jpeg"
    remarked = run_wm_here("embed", exported, "again", "--json")
    assert remarked.code == 0, remarked.stderr
    # A JPEG is written as PNG under its whole name: it never takes a PNG's output (export.wm.png).
    assert json.loads(remarked.stdout)["output"].endswith("export.jpg.wm.png")


def test_help_is_fast_and_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from watermark_cli.cli.app import app; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
def test_the_shipped_default_model_marks_a_real_mr_without_model_option(tmp_path):
    source = get_testdata_file("MR2_UNCR.dcm", download=False)  # held-out MR, 1024², 12-bit
    output = tmp_path / "mr.wm.dcm"
    result = run_wm("embed", source, "held-out-mr", "-o", output, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "wm-keyed-v3" and report["psnr"] >= 40.0 and report["verified"]
    extracted = run_wm("extract", output)
    assert extracted.code == 0 and extracted.stdout.strip() == "held-out-mr"
    listing = run_wm("models", "--json")
    assert json.loads(listing.stdout.splitlines()[0])["capacity_bytes"] >= 16


def test_the_cli_choices_are_the_choices_of_the_modules_that_own_them():
    """The command line writes its Enums out (importing their owners would cost `wm --help`
    numpy, torch and cooper): each must list exactly what its owner accepts."""
    from watermark_cli.cli import options
    from watermark_cli.constrained.methods import DUAL_OPTIMIZERS, METHODS, TAU_SCHEDULES, TAU_SCOPES
    from watermark_cli.constrained.sequential_penalty import SHAPES
    from watermark_cli.data.clinical import SPLITS
    from watermark_cli.diagnostic.networks import ARCHITECTURES
    from watermark_cli.data.lesions import LESION_TASKS
    from watermark_cli.io.dicom import DICOM_COMPRESSIONS
    from watermark_cli.model.device import DEVICE_CHOICES
    from watermark_cli.training import PRESETS

    owners = {options.Compression: DICOM_COMPRESSIONS, options.Preset: PRESETS, options.Method: METHODS,
              options.PenaltyShape: SHAPES, options.TauScope: TAU_SCOPES, options.TauSchedule: TAU_SCHEDULES,
              options.DualOptimizer: DUAL_OPTIMIZERS, options.Device: DEVICE_CHOICES, options.Split: SPLITS,
              options.Architecture: ARCHITECTURES, options.LesionTask: LESION_TASKS}
    for choice, owned in owners.items():
        assert [member.value for member in choice] == list(owned), choice.__name__
    from watermark_cli.attacks.codecs import ATTACKS

    assert options.ATTACK_NAMES == tuple(ATTACKS)  # listed in `wm evaluate --help`


def test_a_choice_or_range_outside_the_interface_is_one_line_and_exit_2(tmp_path):
    for arguments in (["embed", tmp_path, "m", "--compress", "zip"], ["embed", tmp_path, "m", "--workers", "0"],
                      ["train", tmp_path, "--method", "adam"], ["data", "clinical", tmp_path, "--split", "test"]):
        result = run_wm_here(*arguments)
        assert result.code == 2, (arguments, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, result.stderr


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source_lines(monkeypatch):
    """Each paragraph of a command's docstring reads as one paragraph: typer had kept the source's
    line breaks, so an 80-column help broke every line a second time."""
    monkeypatch.setenv("COLUMNS", "240")
    result = run_wm("verify", "--help")
    assert result.code == 0
    # these words sit on two source lines of the docstring
    assert "have the pixels changed since marking (which blocks)" in result.stdout
