"""The command line as a newcomer meets it: several paths at once, `--version`, help that reads at
80 columns, JSON errors, failures that say what to do, and names that never collide."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import fixed_key, run_wm_here

ROOT = Path(__file__).resolve().parents[1]


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def ct_slice() -> np.ndarray:
    """A real CT slice (pydicom-data 693) as 8-bit gray in a soft-tissue window."""
    hu = pydicom.dcmread(get_testdata_file("693_UNCR.dcm")).pixel_array.astype(np.float64) - 1024
    return np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)


@pytest.fixture()
def two_pngs(synthetic_data, tmp_path) -> list[Path]:
    paths = []
    for source in sorted(synthetic_data["held_out"].glob("*.png"))[:2]:
        paths.append(tmp_path / source.name)
        shutil.copy(source, paths[-1])
    return paths


def test_embed_extract_and_verify_take_several_paths(two_pngs, tmp_path):
    """What a shell glob gives: `wm embed a.png b.png MESSAGE -o DIR`, `wm extract a b`, `wm verify a b`."""
    out = tmp_path / "marked"
    embedded = run_wm_here("embed", *two_pngs, "batch-9", "-o", out, "--key", fixed_key("k1"), "--json")
    assert embedded.code == 0, embedded.stderr
    written = sorted(out.glob("*.wm.png"))
    assert [json.loads(line)["output"] for line in embedded.stdout.splitlines()] == [str(p) for p in written]
    assert len(written) == 2 and (out / "wm-audit.jsonl").read_text().count("\n") == 2
    read = run_wm_here("extract", *written, "--key", fixed_key("k1"), "--json")
    assert read.code == 0 and [json.loads(line)["message"] for line in read.stdout.splitlines()] == ["batch-9"] * 2
    verified = run_wm_here("verify", *written, "--key", fixed_key("k1"), "--json")
    assert verified.code == 0 and [json.loads(line)["intact"] for line in verified.stdout.splitlines()] == [True] * 2
    with_an_unmarked = run_wm_here("verify", written[0], two_pngs[0], "--key", fixed_key("k1"), "--json")
    assert with_an_unmarked.code == 1 and [json.loads(line)["intact"] for line in
                                           with_an_unmarked.stdout.splitlines()] == [True, False]
    mixed = run_wm_here("extract", written[0], two_pngs[0], "--key", fixed_key("k1"))  # one marked, one not: exit 1
    assert mixed.code == 1 and "batch-9" in mixed.stdout and "no watermark" in mixed.stdout
    assert "1 of 2" in one_line(mixed)


def test_version_and_help_that_reads_at_80_columns():
    shown = run_wm_here("--version")
    assert shown.code == 0 and shown.stdout.strip() == f"wm {version('wm')}"
    environment = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    for command in ("embed", "extract", "verify", "evaluate", "train"):
        text = subprocess.run([str(ROOT / ".venv/bin/wm"), command, "--help"], capture_output=True, text=True,
                              env=environment, timeout=60).stdout
        assert "Examples" in text and "…" not in text, (command, text)  # no option name cut short
        assert len(text.splitlines()) <= 150, (command, len(text.splitlines()))
    evaluate = subprocess.run([str(ROOT / ".venv/bin/wm"), "evaluate", "--help"], capture_output=True, text=True,
                              env=environment, timeout=60).stdout
    for attack in ("jpeg", "noise", "resize", "crop", "rotate", "window8"):
        assert re.search(rf"\b{attack}\b", evaluate), attack  # the attack names are listed


def test_json_errors_are_one_object_on_stdout_with_the_same_exit_code(tmp_path):
    missing = run_wm_here("extract", tmp_path / "nope.dcm", "--json")
    assert missing.code == 2 and json.loads(missing.stdout) == {"error": f"no such file or folder: {tmp_path / 'nope.dcm'}",
                                                               "exit_code": 2}
    usage = run_wm_here("embed", "--json", "--psnr-min", "nan", tmp_path / "x.png", "m")
    assert usage.code == 2 and json.loads(usage.stdout)["exit_code"] == 2 and "--psnr-min" in json.loads(usage.stdout)["error"]
    assert len(usage.stdout.splitlines()) == 1 and "--psnr-min" in one_line(usage)


def test_an_empty_message_is_refused_and_a_created_output_folder_is_said(two_pngs, tmp_path):
    empty = run_wm_here("embed", two_pngs[0], "")
    assert empty.code == 2 and "MESSAGE is empty" in one_line(empty)
    assert run_wm_here("embed", two_pngs[0]).code == 2  # no message at all: a usage error
    target = tmp_path / "new" / "deeper" / "out.png"
    made = run_wm_here("embed", two_pngs[0], "id-1", "-o", target)
    assert made.code == 0 and target.is_file()
    assert f"created the output folder {target.parent}" in made.stderr


@pytest.mark.slow  # five runs of wm: 7.6 to 9.2 s on a slow day, at the fast lane's 8 s guard
def test_a_refused_mark_says_what_would_work(two_pngs, tmp_path):
    # The floor is named when it is what blocks the mark (so high that not even the fragile mark of
    # a small image, a few dozen moves of one unit, fits under it).
    high = run_wm_here("embed", two_pngs[0], "id-2", "--psnr-min", "190", "-o", tmp_path / "high.png")
    assert high.code == 1 and "floor of 190 dB" in one_line(high) and "lower --psnr-min" in one_line(high)
    assert not (tmp_path / "high.png").exists()
    # A frame too small: what would work.
    small = tmp_path / "small.png"
    Image.fromarray(ct_slice()[:48, :48]).save(small)
    refused = run_wm_here("embed", small, "id-3")
    assert refused.code == 2 and "full-size image" in one_line(refused)
    # A 64² cut of a CT frame almost all air at 0 (pydicom-data's enhanced CT): the robust mark
    # does not read back and the fragile mark's 95 pixels hold a 4-byte message, not an 8-byte one;
    # the refusal says so, and the shorter message is marked.
    from watermark_cli.data.clinical import clinical_file
    from watermark_cli.io.image import read_image

    sparse = tmp_path / "sparse.png"
    Image.fromarray(read_image(clinical_file("eCT_Supplemental.dcm")).pixels[1, 96:160, 352:416]).save(sparse)
    longer = run_wm_here("embed", sparse, "ID-00042", "-o", tmp_path / "sparse8.png")
    assert longer.code == 1 and "fragile mark (lossless copies only) has room for 4 bytes" in one_line(longer)
    assert not (tmp_path / "sparse8.png").exists()
    shorter = run_wm_here("embed", sparse, "ID42", "-o", tmp_path / "sparse4.png", "--json")
    assert shorter.code == 0 and json.loads(shorter.stdout)["fragile"], shorter.stderr
    read = run_wm_here("extract", tmp_path / "sparse4.png", "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "ID42"


def test_a_mark_not_found_says_which_key_or_model_to_try(two_pngs, tmp_path):
    # A wrong key: the file says wm marked it (its restoration record).
    keyed = tmp_path / "keyed.png"
    assert run_wm_here("embed", two_pngs[0], "id-4", "--key", fixed_key("right"), "-o", keyed).code == 0
    wrong = run_wm_here("extract", keyed, "--key", fixed_key("wrong"))
    assert wrong.code == 1 and "the key may be wrong" in one_line(wrong)
    unmarked = run_wm_here("extract", two_pngs[1])  # nothing says wm marked it: no hint to chase
    assert unmarked.code == 1 and "key may be wrong" not in unmarked.stderr


def test_a_header_naming_another_model_is_a_hint_and_never_a_terminal_escape(tmp_path):
    # Another model: the DICOM header names the model that marked it.
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    ds.DerivationDescription = "Invisible watermark embedded by wm 0.1.0, model wm-other-v9"
    ds.save_as(tmp_path / "other.dcm")
    other = run_wm_here("extract", tmp_path / "other.dcm", "--json")
    assert other.code == 1 and "try --model wm-other-v9" in json.loads(other.stdout)["hint"]
    assert "try --model wm-other-v9" in one_line(other)
    ds.DerivationDescription = "Invisible watermark embedded by wm 0.1.0, model \x1b]0;owned\x07"
    ds.save_as(tmp_path / "hostile.dcm")  # the header is anyone's to write: no escape reaches a terminal
    hostile = run_wm_here("extract", tmp_path / "hostile.dcm")
    assert hostile.code == 1 and "\x1b" not in hostile.stderr and "--model" not in hostile.stderr


def test_output_names_never_collide(tmp_path):
    """A JPEG becomes a PNG under its whole name, so scan.jpg and scan.png both get their own
    output; two inputs that would still share one output: the second fails, nothing is replaced."""
    folder = tmp_path / "study"
    folder.mkdir()
    pixels = ct_slice()
    Image.fromarray(pixels).save(folder / "scan.png")
    Image.fromarray(pixels).save(folder / "scan.jpg", quality=95)
    Image.fromarray(pixels[::-1]).save(folder / "scan.jpg.png")  # takes the JPEG's folder output name
    result = run_wm_here("embed", folder, "id-5", "--json")
    assert result.code == 2, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and "rename one of them" in errors[0]["error"]
    written = sorted(p.name for p in (tmp_path / "study_wm").glob("*.png"))
    assert written == ["scan.jpg.png", "scan.png"]
    assert {line["input"] for line in lines if "output" in line} == {str(folder / "scan.png"), str(folder / "scan.jpg")}
    # Beside the input: scan.jpg → scan.jpg.wm.png, scan.png → scan.wm.png.
    for name, output in (("scan.jpg", "scan.jpg.wm.png"), ("scan.png", "scan.wm.png")):
        single = run_wm_here("embed", folder / name, "id-6", "--json")
        assert single.code == 0 and json.loads(single.stdout)["output"] == str(folder / output)


def test_set_up_is_quiet_and_does_nothing_the_second_time():
    """The environment exists (the suite runs in it): the set-up command finds nothing to do."""
    done = subprocess.run(["bash", str(ROOT / "scripts/setup_env.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


def test_files_named_one_by_one_get_the_disk_check_a_folder_gets(two_pngs, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2**20))
    result = run_wm_here("embed", *two_pngs, "id-7", "-o", tmp_path / "out")
    assert result.code == 2 and "not enough disk space for 2 output file(s)" in one_line(result)
    assert not list((tmp_path / "out").glob("*.png"))
