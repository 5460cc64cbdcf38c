"""Faults lose nothing: decoders that panic or crash, files that lie about their size, a batch
killed at random points, a full disk, a read-only output, links out of the input tree and two
runs at once. Each runs the real command line on real pydicom-data files and checks the files on
disk afterwards: every output absent or whole and holding its mark, one audit line per output."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import run_wm, run_wm_here
from watermark_cli.errors import BadInputError
from watermark_cli.hashing import file_sha256, pixel_sha256
from watermark_cli.io.image import read_image
from watermark_cli.io.isolation import IsolatedReader

# Their slow tests want the machine to themselves (`scripts/test.sh --all`).
pytestmark = pytest.mark.exclusive

CORPUS = Path(__file__).parent / "fuzz_corpus"


def data_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def a_png(path: Path, seed: int, side: int = 384) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, side)[None, :] + rng.normal(0, 12, (side, side))
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
    return path


def panicking_rle_file(path: Path) -> Path:
    """MR_small_RLE.dcm with bytes changed inside its RLE stream until the Rust RLE decoder
    panics: pyo3's PanicException, a BaseException that `except Exception` does not catch."""
    from pydicom.pixels import pixel_array

    original = data_file("MR_small_RLE.dcm").read_bytes()
    rng = random.Random(7)
    for _ in range(2000):
        damaged = bytearray(original)
        for _ in range(8):
            at = rng.randrange(len(damaged) - 8192, len(damaged))
            damaged[at] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            pixel_array(pydicom.dcmread(path))
        except Exception:
            continue
        except BaseException as error:  # noqa: BLE001 - the panic this test needs
            if type(error).__name__ == "PanicException":
                return path
            raise
    raise AssertionError("no damaged RLE stream made the decoder panic")


@pytest.mark.slow
def test_a_decoder_panic_fails_one_file_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    panicking_rle_file(folder / "broken_rle.dcm")
    shutil.copy(data_file("CT_small.dcm"), folder / "ct.dcm")
    a_png(folder / "good.png", 1)
    with pytest.raises(BadInputError, match="broken_rle.dcm"):
        read_image(folder / "broken_rle.dcm")  # in this process too: one line, not a panic

    result = run_wm("embed", folder, "panic-1", "-o", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "panicked" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "broken_rle.dcm" in failed[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("*") if p.suffix != ".jsonl") == ["ct.dcm", "good.png"]

    read = run_wm("extract", folder, "--json")
    lines = [json.loads(line) for line in read.stdout.splitlines()]
    assert read.code == 2 and "Traceback" not in read.stderr
    assert [("error" in line) for line in lines] == [True, False, False]  # sorted: broken_rle, ct, good


@pytest.mark.slow
def test_every_corpus_file_and_every_lying_header_is_refused_in_one_line_and_good_files_are_marked(tmp_path):
    """The 'Done when' folder: every crasher the fuzzer found, the malformed files of the limits
    (bombs, headers that promise more than the file holds) and good files, in one batch."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    bad = sorted(p for family in ("dicom", "png", "tiff", "jpeg", "limits") for p in (CORPUS / family).glob("*")
                 if p.is_file())
    assert len(bad) >= 10
    for index, path in enumerate(bad):
        shutil.copy(path, folder / f"{index:03d}_{path.parent.name}_{path.name}")
    panicking_rle_file(folder / "zz_rle_panic.dcm")
    for name, maker in lying_headers().items():
        maker(folder / name)
    shutil.copy(data_file("CT_small.dcm"), folder / "good_ct.dcm")
    a_png(folder / "good.png", 2)

    started = time.monotonic()
    result = run_wm("embed", folder, "mixed-1", "-o", tmp_path / "out")
    assert time.monotonic() - started < 240
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "panicked" not in result.stderr
    written = sorted(p.name for p in (tmp_path / "out").glob("*") if p.suffix != ".jsonl")
    assert {"good_ct.dcm", "good.png"} <= set(written)
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) + len(written) == len(bad) + len(lying_headers()) + 3
    for name in lying_headers():
        assert any(name in line for line in failed), name


# ---- resource limits ---------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path) -> Path:
    """100 000 x 100 000 8-bit gray (10^10 pixels) from a few kilobytes of zlib stream."""
    import zlib

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * 100_001
    stream = b"".join(compressor.compress(row) for _ in range(200)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
                     + _png_chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path) -> Path:
    """A 64 x 64 TIFF whose tags say 200 000 x 200 000."""
    import tifffile

    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        offsets = [tags[name].offset for name in ("ImageWidth", "ImageLength")]
        types = [tags[name].dtype for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, dtype in zip(offsets, types):
        # A classic TIFF entry: tag (2), type (2), count (4), value (4); make the value a LONG.
        data[offset + 2:offset + 4] = struct.pack("<H", 4)
        data[offset + 8:offset + 12] = struct.pack("<I", 200_000)
    path.write_bytes(bytes(data))
    return path


def jpeg_bomb(path: Path) -> Path:
    """A small JPEG whose frame header says 65 000 x 65 000."""
    from PIL import Image

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65_000, 65_000)
    path.write_bytes(bytes(data))
    return path


def dicom_promising_more(path: Path, rows: int = 65_535, frames: int = 10_000) -> Path:
    """A real CT header claiming Rows = Columns = 65 535 and 10 000 frames (4 x 10^13 pixels)."""
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_short_pixel_data(path: Path) -> Path:
    """A real CT whose header is right but whose pixel data stops halfway (under the limit)."""
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_whose_codestream_lies(path: Path) -> Path:
    """A real 512 x 512 JPEG 2000 CT (693_J2KI) whose codestream's SIZ says 30 000 x 30 000 while
    the DICOM header stays honest: a decoder would allocate what the codestream says."""
    ds = pydicom.dcmread(data_file("693_J2KI.dcm"))
    data = bytearray(ds.PixelData)
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 8:siz + 16] = struct.pack(">II", 30_000, 30_000)
    ds.PixelData = bytes(data)
    ds.save_as(path, enforce_file_format=True)
    return path


def lying_headers() -> dict:
    return {"bomb.png": png_bomb, "bomb.tif": tiff_bomb, "bomb.jpg": jpeg_bomb,
            "promises_more.dcm": dicom_promising_more, "short_pixels.dcm": dicom_short_pixel_data,
            "codestream_lies.dcm": dicom_whose_codestream_lies}


_BOUNDED_READ = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
from watermark_cli.errors import WmError
from watermark_cli.io.image import read_image
for path in sys.argv[1:]:
    started = time.monotonic()
    try:
        read_image(path)
        outcome = "read"
    except WmError as error:
        outcome = "error: " + str(error)
    print(f"{time.monotonic() - started:.3f}\\t{outcome}")
"""


def test_bombs_and_lying_headers_are_refused_within_seconds_in_under_2_gb(tmp_path):
    paths = [maker(tmp_path / name) for name, maker in lying_headers().items()]
    # Under a 2 GiB address-space limit: a reader that tried to allocate what the header asks
    # would fail with MemoryError instead (also a one-line error), so the message is checked too.
    done = subprocess.run([sys.executable, "-c", _BOUNDED_READ, *map(str, paths)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = done.stdout.splitlines()
    assert len(answers) == len(paths)
    for path, answer in zip(paths, answers):
        seconds, outcome = answer.split("\t")
        assert float(seconds) < 5, answer
        assert outcome.startswith("error: ") and path.name in outcome, answer
        assert "memory" not in outcome, answer  # refused from the header, not by running out
        if path.name == "short_pixels.dcm":
            assert "promises" in outcome
        elif path.name == "codestream_lies.dcm":
            assert "a compressed frame declares 30000 x 30000 pixels" in outcome
        else:
            assert "--max-pixels" in outcome


def test_max_pixels_is_an_option_with_a_documented_default(tmp_path):
    ct = shutil.copy(data_file("CT_small.dcm"), tmp_path / "ct.dcm")
    result = run_wm_here("embed", ct, "x", "--max-pixels", "1000", "-o", tmp_path / "out.dcm")
    assert result.code == 2 and "16,384 pixels" in result.stderr and "--max-pixels" in result.stderr
    assert not (tmp_path / "out.dcm").exists()
    assert run_wm_here("extract", ct, "--max-pixels", "1000").code == 2
    assert run_wm_here("extract", ct, "--max-pixels", "0").code == 2  # a range the interface refuses
    assert "100000000" in run_wm_here("embed", "--help").stdout.replace(",", "").replace("_", "")


# ---- an isolated decoder -----------------------------------------------------------------------

@pytest.mark.slow
def test_a_decoder_that_dies_or_hangs_costs_one_file_and_the_next_file_is_read():
    ct = data_file("CT_small.dcm")
    with IsolatedReader(timeout_s=2) as reader:
        assert reader.read(ct).pixels.shape == (1, 128, 128)

        # A segfault mid-decode: the child is stopped, then killed with SIGSEGV while the read waits.
        child = reader._process.pid
        os.kill(child, signal.SIGSTOP)

        def crash() -> None:
            os.kill(child, signal.SIGSEGV)
            os.kill(child, signal.SIGCONT)

        threading.Timer(0.5, crash).start()
        with pytest.raises(BadInputError, match="decoder crashed.*SIGSEGV"):
            reader.read(ct)
        assert reader.read(ct).pixels.shape == (1, 128, 128)  # a new decoder took over

        # A decoder that hangs: stopped for good, so the read times out and the child is replaced.
        os.kill(reader._process.pid, signal.SIGSTOP)
        with pytest.raises(BadInputError, match="longer than 2 s"):
            reader.read(ct)
        assert np.array_equal(reader.read(ct).pixels, read_image(ct).pixels)
        assert reader.crashes == 2


def test_the_isolated_reader_gives_the_same_images_and_errors_as_reading_here(tmp_path):
    paths = [data_file(name) for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small.dcm")]
    paths.append(a_png(tmp_path / "a.png", 3))
    paths.append(dicom_short_pixel_data(tmp_path / "short.dcm"))
    with IsolatedReader() as reader:
        for path in paths:
            try:
                here = read_image(path)
            except BadInputError as error:
                with pytest.raises(BadInputError) as there:
                    reader.read(path)
                assert str(there.value) == str(error)
                continue
            there = reader.read(path)
            assert there.pixels.dtype == here.pixels.dtype and np.array_equal(there.pixels, here.pixels)
            assert there.display == here.display and there.bits_stored == here.bits_stored


# ---- killed, full, read-only, linked, concurrent -------------------------------------------------

def _batch_folder(root: Path, count: int) -> Path:
    folder = root / "in"
    folder.mkdir()
    for index in range(count):
        a_png(folder / f"img{index:02d}.png", 100 + index)
    return folder


def _check_whole(output: Path, message: str | None = None) -> list[dict]:
    """Every output whole and equal to its audit line; no torn or duplicated line."""
    log = output / "wm-audit.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    records = [json.loads(line) for line in lines]  # every line parses
    outputs = [r["output"] for r in records]
    assert len(outputs) == len(set(outputs)), "an output audited twice"
    written = sorted(output.glob("*.png"))
    for path in written:
        assert read_image(path).pixels.shape[0] == 1  # whole: it decodes
    by_output = {r["output"]: r for r in records}
    for path in written:
        record = by_output.get(str(path.resolve()))
        if record is not None:
            assert record["output_file_sha256"] == file_sha256(path)
            assert record["output_pixels_sha256"] == pixel_sha256(read_image(path).pixels)
            if message is not None:
                assert record["payload"]["text"] == message
    assert set(outputs) <= {str(p.resolve()) for p in written}  # no line without its file
    return records


@pytest.mark.slow
def test_a_batch_killed_at_random_points_leaves_whole_files_and_a_rerun_completes_it(tmp_path):
    count = 8
    folder = _batch_folder(tmp_path, count)
    output = tmp_path / "out"
    rng = random.Random(2026)
    kills = 0
    while kills < 20:
        process = subprocess.Popen([sys.executable, "-m", "watermark_cli", "embed", str(folder), "kill-me",
                                    "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        if rng.random() < 0.25:  # while starting, reading or planning
            time.sleep(rng.uniform(0.2, 2.5))
        else:  # while marking and writing: a random moment after the run's first file appeared
            before = set(output.glob("img*.png")) if output.exists() else set()
            deadline = time.monotonic() + 60
            while (process.poll() is None and time.monotonic() < deadline
                   and not (set(output.glob("img*.png")) if output.exists() else set()) - before):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        stderr = process.stderr.read().decode()
        assert "Traceback" not in stderr, stderr
        _check_whole(output, "kill-me")
        if finished or len(list(output.glob("img*.png"))) == count:
            shutil.rmtree(output)  # done: start the batch again, so that every kill lands mid-batch
    # A run after the last kill completes the rest: every input marked, each audited once.
    result = run_wm("embed", folder, "kill-me", "-o", output)
    assert result.code == 0, result.stderr
    records = _check_whole(output, "kill-me")
    assert len(records) == count == len(list(output.glob("img*.png")))
    assert not [p for p in output.rglob(".*") if ".tmp-" in p.name]  # stale temporaries removed
    read = run_wm("extract", output, "--json")
    assert [json.loads(line)["message"] for line in read.stdout.splitlines()] == ["kill-me"] * count


def _mount_tmpfs(mount: Path, size: str, read_only: bool = False) -> None:
    mount.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root, as in CI")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1400k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_batch_is_a_clean_error_with_no_partial_file(tmp_path, small_disk, monkeypatch):
    from watermark_cli.marking import batch

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(6):  # six 512 x 512 16-bit CTs (~0.5 MB each) for a 1.4 MB disk
        shutil.copy(data_file("693_UNCR.dcm"), folder / f"ct{index}.dcm")
    before = {p: file_sha256(p) for p in folder.iterdir()}
    # The free-space estimate would refuse the batch up front (tested elsewhere); here the
    # disk must fill while files are being written.
    monkeypatch.setattr(batch, "check_free_space", lambda *arguments: None)
    output = small_disk / "out"
    result = run_wm_here("embed", folder, "full", "-o", output)
    assert result.code == 2, result.stderr
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    assert {p: file_sha256(p) for p in folder.iterdir()} == before  # inputs untouched
    assert not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]  # no partial file
    written = sorted(output.glob("ct*.dcm"))
    assert 1 <= len(written) < 6
    for path in written:
        assert read_image(path).pixels.shape == (1, 512, 512)


def test_a_read_only_output_folder_is_one_line_before_any_work(tmp_path):
    folder = _batch_folder(tmp_path, 2)
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "1m", read_only=True)
    try:
        result = run_wm_here("embed", folder, "x", "-o", mount / "out")
        assert result.code == 2 and "Read-only file system" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        single = run_wm_here("embed", folder / "img00.png", "x", "-o", mount / "one.png")
        assert single.code == 2 and "the output folder is not writable" in single.stderr, single.stderr  # first
        assert len(single.stderr.strip().splitlines()) == 1 and not (mount / "one.png").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_output_folder_inside_the_input_is_never_read_as_input(tmp_path):
    folder = _batch_folder(tmp_path, 2)
    output = folder / "marked"
    first = run_wm_here("embed", folder, "inside", "-o", output)
    assert first.code == 0, first.stderr
    again = run_wm_here("embed", folder, "inside", "-o", output)
    assert again.code == 0 and "already done 2" in again.stdout
    assert not (output / "marked").exists()
    assert run_wm_here("embed", folder, "x", "-o", folder).code == 2  # the input folder itself


def test_links_are_never_followed_out_of_the_input_or_the_output_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    a_png(outside / "secret.png", 5)
    (outside / "elsewhere").mkdir()
    folder = _batch_folder(tmp_path, 2)
    (folder / "link_out.png").symlink_to(outside / "secret.png")
    (folder / "linked_folder").symlink_to(outside, target_is_directory=True)
    (folder / "link_in.png").symlink_to(folder / "img00.png")
    sub = folder / "sub"
    sub.mkdir()
    a_png(sub / "deep.png", 6)
    output = tmp_path / "out"
    output.mkdir()
    (output / "sub").symlink_to(outside / "elsewhere", target_is_directory=True)  # a trap in -o
    before = sorted(outside.rglob("*"))

    result = run_wm_here("embed", folder, "links", "-o", output)
    assert result.code == 2, result.stderr
    assert "skipped, a link leading outside the input folder" in result.stdout and "link_out.png" in result.stdout
    assert "skipped, a linked folder" in result.stdout
    assert "outside the output folder" in result.stderr and "deep.png" in result.stderr
    assert sorted(outside.rglob("*")) == before  # nothing read from or written to outside
    assert sorted(p.name for p in output.glob("*.png")) == ["img00.png", "img01.png", "link_in.png"]
    assert all(str(output.resolve()) in r["output"] for r in _check_whole(output))


def test_a_loop_of_links_a_fifo_an_unreadable_element_and_a_stale_output_each_fail_alone(tmp_path, monkeypatch):
    # Each stopped a whole batch (a loop of links, an element pydicom cannot parse), hung it (a
    # FIFO named as a file), or was counted done with exit 0 (an unmarked file at an output path).
    folder = _batch_folder(tmp_path, 2)
    (folder / "l1.png").symlink_to(folder / "l2.png")
    (folder / "l2.png").symlink_to(folder / "l1.png")
    with monkeypatch.context() as raw_un:
        raw_un.setattr(pydicom.config, "replace_un_with_known_vr", False)  # written as UN, as it is
        ds = pydicom.dcmread(data_file("CT_small.dcm"))
        ds.add(pydicom.DataElement(0x00189087, "UN", b"\x01\x02\x03"))  # DiffusionBValue is FD: 8 bytes a value
        ds.save_as(folder / "odd.dcm", enforce_file_format=True)
    result = run_wm_here("embed", folder, "alone", "-o", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "skipped, a link that leads round in a loop" in result.stdout
    assert "DiffusionBValue (0018,9087) cannot be read" in result.stderr and "1 of 3" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img00.png", "img01.png"]

    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    named = run_wm_here("embed", folder / "img00.png", fifo, "fifo", "-o", tmp_path / "named")
    assert named.code == 2 and "not a regular file" in named.stderr
    assert [p.name for p in (tmp_path / "named").glob("*.png")] == ["img00.wm.png"]

    (tmp_path / "stale").mkdir()
    shutil.copy(folder / "img01.png", tmp_path / "stale" / "img01.png")  # unmarked, no audit line
    stale = run_wm_here("embed", folder, "alone", "-o", tmp_path / "stale")
    assert stale.code == 2 and "exists, without an audit line or this message's mark" in stale.stderr
    assert "already done 0" in stale.stdout


def test_an_input_replaced_while_it_is_marked_writes_nothing(tmp_path):
    # The audit took the input's hash after marking: a file replaced mid-run was audited under the
    # replacement's hash while the output held the first file's image and patient.
    from watermark_cli.errors import CheckFailedError
    from watermark_cli.marking.files import EmbedSettings, embed_file
    from watermark_cli.marking.image import codec_for
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor

    source, replacement = a_png(tmp_path / "in.png", 1), a_png(tmp_path / "other.png", 2)

    def read_then_replace(path: Path):
        image = read_image(path)
        shutil.copy(replacement, path)  # another file moved over the input while it is marked
        return image

    loaded = load_model(None)
    with pytest.raises(CheckFailedError, match="the input changed while it was being marked"):
        embed_file(source, tmp_path / "out.png", EmbedSettings(b"swap", QualityFloor(40.0)), loaded,
                   codec_for(loaded, None), read=read_then_replace)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.slow
def test_two_runs_on_one_folder_at_once_corrupt_nothing_and_audit_each_file_once(tmp_path):
    folder = _batch_folder(tmp_path, 8)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "watermark_cli", "embed", str(folder), "twice", "-o", str(output)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [run.communicate(timeout=300) for run in runs]
    codes = sorted(run.returncode for run in runs)
    for _, stderr in answers:
        assert "Traceback" not in stderr
    assert codes[0] == 0
    if codes[1] != 0:  # the second found the folder held: one line, nothing done
        assert codes[1] == 2
        assert any("another wm embed is writing into this folder" in stderr for _, stderr in answers)
    records = _check_whole(output, "twice")
    assert len(records) == 8 == len(list(output.glob("img*.png")))


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("workers", [("--workers", "2"), ("--threads", "2")], ids=["spawned", "forked"])
def test_a_worker_killed_mid_batch_is_replaced_and_the_batch_completes(tmp_path, workers):
    """`--workers 2`: worker processes that load the model; `--threads 2` on a 2-core machine
    (CI's): processes forked from the run (`threads.runs_in_processes`)."""
    folder = _batch_folder(tmp_path, 10)
    output = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "watermark_cli", "embed", str(folder), "workers",
                                "-o", str(output), *workers], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(output.glob("img*.png")):
        time.sleep(0.02)
    # The workers are the children that have children of their own (each its decoder process).
    workers = [child for child in _children(process.pid) if _children(child)]
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr
    assert process.returncode == 0, stderr
    records = _check_whole(output, "workers")
    assert len(records) == 10 == len(list(output.glob("img*.png")))
    assert not [p for p in output.rglob(".*") if ".tmp-" in p.name]  # whether or not the kill landed mid-write


@pytest.mark.slow
@pytest.mark.parametrize("command", [("extract", "--threads", "2"), ("embed", "x", "--workers", "2")],
                         ids=["forked", "spawned"])
def test_no_worker_outlives_a_run_killed_outright(tmp_path, command):
    """SIGKILL (or the out-of-memory killer) on a run leaves none of its worker processes behind:
    each waits on a queue whose other end it holds itself, so it would wait for ever."""
    folder = _batch_folder(tmp_path, 40)
    process = subprocess.Popen([sys.executable, "-m", "watermark_cli", command[0], str(folder), *command[1:]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.05)
        workers = [child for child in _children(process.pid) if _children(child)]  # each has its decoder
    assert workers, "no worker process found"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.05)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"]
    assert not alive


def test_messages_and_keys_that_are_not_plain_text_get_one_line_or_are_taken_as_bytes(tmp_path):
    from watermark_cli.payload import bytes_to_text

    ct = shutil.copy(data_file("CT_small.dcm"), tmp_path / "ct.dcm")
    out = tmp_path / "out.dcm"
    not_utf8 = b"id-\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    for message, needle in ((not_utf8, "not valid UTF-8"), ("id\x1b[2J", "control characters"),
                            ("x" * 100_000, "at most 16 bytes"), ("abc", "not hexadecimal")):
        result = run_wm_here("embed", ct, message, "-o", out, *(["--hex"] if message == "abc" else []))
        assert result.code == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
    assert bytes_to_text(b"id\x1b[2J") == "69641b5b324a"  # a read-back escape sequence is shown as hex

    huge, folder_key = tmp_path / "huge.key", tmp_path / "keys"
    huge.write_bytes(b"k" * (2**20 + 1))
    folder_key.mkdir()
    for key_file, needle in ((huge, "too large"), (folder_key, "cannot read"), (tmp_path / "absent.key", "cannot read")):
        result = run_wm_here("embed", ct, "m", "--key-file", key_file, "-o", out)
        assert result.code == 2 and needle in result.stderr and "k" * 50 not in result.stderr
    # (A passphrase typed in a terminal that is not UTF-8: tests/test_keys.py.)


def test_file_names_that_look_like_terminal_markup_are_printed_as_they_are(tmp_path):
    folder = tmp_path / "a[" / "b]"  # with the name below: '[/b]' would close a markup tag
    folder.mkdir(parents=True)
    a_png(folder / "[red]good.png", 8)
    (folder / "[bold]bad.png").write_bytes(b"not a png")
    result = run_wm_here("embed", folder, "names", "-o", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert f"failed: {folder / '[bold]bad.png'}: not a valid PNG file" in result.stderr
    read = run_wm_here("extract", tmp_path / "out" / "[red]good.png")
    assert read.code == 0 and read.stdout.strip() == "names"
    missing = run_wm_here("extract", folder / "[bold]bad.png")
    assert missing.code == 2 and "[bold]bad.png" in missing.stderr


def test_only_the_temporaries_of_the_given_targets_are_removed(tmp_path):
    from watermark_cli.io.writing import remove_temporaries_of, write_atomically

    mine, other = tmp_path / "a" / "x.tmp-y.dcm", tmp_path / "b" / "z.dcm"
    for target in (mine, other):
        target.parent.mkdir()
        write_atomically(target, b"whole")
    left = [mine.with_name(f".{mine.name}.tmp-abc123"), other.with_name(f".{other.name}.tmp-def456"),
            mine.with_name(".x.tmp-abc999")]  # the temporary of 'x', another file
    for stale in left:
        stale.write_bytes(b"half")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    link = mine.with_name(f".{mine.name}.tmp-link")
    link.symlink_to(outside)
    assert remove_temporaries_of([mine, mine]) == 1
    assert not left[0].exists() and left[1].exists() and left[2].exists()
    assert link.is_symlink() and outside.read_bytes() == b"not ours"  # a link is never followed or removed
    assert mine.read_bytes() == other.read_bytes() == b"whole"
