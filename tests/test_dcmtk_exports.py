"""Exports made by a real DICOM tool keep the mark (issue 11): dcmtk's dcmj2pnm, not wm's code.

Each held-out modality is marked by default `wm embed`, exported by `dcmj2pnm` as a viewer or a
PACS would (8-bit PNG and JPEG q90 through the file's first window, or its min-max window when it
declares none), and read back by `wm extract`. The CR is MONOCHROME1: dcmtk writes it in display
polarity (inverted), which extraction must handle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import run_wm

pytestmark = pytest.mark.slow

MESSAGE = "export-0042"
# (pydicom-data file, modality): one per modality of the held-out split.
HELD_OUT = [("693_UNCR.dcm", "CT"), ("MR2_UNCR.dcm", "MR"), ("RG3_UNCR.dcm", "CR, MONOCHROME1"),
            ("JPEG2000_UNC.dcm", "NM, no window"), ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US 8-bit")]
EXPORTS = {"png": ["+on"], "jpeg90": ["+oj", "+Jq", "90"]}


def dcmj2pnm() -> str:
    tool = shutil.which("dcmj2pnm")
    if tool is None:
        pytest.fail("dcmtk's dcmj2pnm is not installed; scripts/setup_env.sh installs it (apt-get install dcmtk)")
    return tool


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    tool = dcmj2pnm()
    root = tmp_path_factory.mktemp("dcmtk")
    (root / "in").mkdir()
    for name, _ in HELD_OUT:
        shutil.copyfile(get_testdata_file(name, download=False), root / "in" / name)
    marked = run_wm("embed", root / "in", MESSAGE, "-o", root / "marked", "--json")
    assert marked.code == 0, marked.stderr
    folder = root / "exports"
    folder.mkdir()
    made = {}
    for name, _ in HELD_OUT:
        with_window = "WindowWidth" in pydicom.dcmread(root / "marked" / name, stop_before_pixels=True)
        window = ["+Wi", "1"] if with_window else ["+Wm"]
        for label, options in EXPORTS.items():
            target = folder / f"{Path(name).stem}-{label}.{'png' if label == 'png' else 'jpg'}"
            subprocess.run([tool, *window, *options, str(root / "marked" / name), str(target)], check=True,
                           capture_output=True, timeout=120)
            made[target.name] = target
    # The unmarked radiograph, exported the same way, outside the folder `wm extract` reads.
    original = root / "RG3_original-png.png"
    subprocess.run([tool, "+Wi", "1", "+on", str(root / "in" / "RG3_UNCR.dcm"), str(original)], check=True,
                   capture_output=True, timeout=120)
    made["original"] = original
    return made


def test_every_modality_reads_back_from_dcmtk_exports(exports):
    folder = exports["RG3_UNCR-png.png"].parent
    result = run_wm("extract", folder, "--json")
    found = {Path(line["input"]).name: line for line in map(json.loads, result.stdout.splitlines())}
    assert set(found) == set(exports) - {"original"}
    missed = sorted(name for name, line in found.items() if line.get("message") != MESSAGE)
    assert not missed, f"no mark read back from {missed}"
    assert result.code == 0


def test_the_inverted_monochrome1_export_is_read_in_its_polarity(exports):
    """dcmj2pnm shows RG3 (MONOCHROME1) inverted; the unmarked original's export reads as nothing."""
    from watermark_cli.io.image import read_image
    from watermark_cli.model.store import load_model
    from watermark_cli.marking.image import codec_for, read_frames

    loaded = load_model(None)
    codec = codec_for(loaded, None)
    reading = read_frames(loaded, codec, read_image(exports["RG3_UNCR-png.png"]).pixels)
    # A keyed mark needs no second polarity: its field is bound to the host's signs, which invert
    # with the image, so mark and field invert together (an unkeyed mark reads as inverted).
    assert reading.decoded.message == MESSAGE.encode() and reading.inverted is not loaded.keyed
    assert not read_frames(loaded, codec, read_image(exports["original"]).pixels).decoded.found
