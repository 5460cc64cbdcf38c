"""Compressed frames that decoders read two ways are refused before anything is decoded.

pydicom decodes JPEG and JPEG-LS with libjpeg; a viewer or a PACS built on dcmtk decodes them with
IJG and CharLS. Each stream below was a marked CT that `wm verify` called intact (exit 0) while
dcmtk showed other pixels (red-team round 8): the honest re-encodings stay intact, each crafted
one is refused with a line naming what decoders read differently. dcmtk (dcmdjpeg, dcmcjpls) is
the real second decoder here; scripts/setup_env.sh installs it.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from conftest import fixed_key, run_wm_here
from dicom_peers import tool
from watermark_cli.data.clinical import clinical_file
from watermark_cli.io.encapsulated import jpeg_frame_header
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

KEY = fixed_key("compressed-frames-key")
JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1 = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"


# ---- a lossless JPEG encoder (T.81 process 14, one component, Huffman), for crafting streams -----

def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _entropy_coded(values: np.ndarray, precision: int) -> bytes:
    """Predictor 1 (T.81 H.1.2.1: the left sample; the one above in the first column; 2^(P-1)
    first), each difference taken modulo 2^16 as T.81 H.2.1 does, so `values` may leave
    [0, 2^P - 1]; difference category s has the 5-bit code s (the table `_lossless_jpeg` writes)."""
    x = values.astype(np.int64)
    predicted = np.empty_like(x)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:], predicted[1:, 0], predicted[1:, 1:] = x[0, :-1], x[:-1, 0], x[1:, :-1]
    differences = (x - predicted + 32767) % 65536 - 32767  # in [-32767, 32768]
    bits: list[str] = []
    for difference in differences.ravel().tolist():
        category = 16 if difference == 32768 else abs(difference).bit_length()
        extra = "" if category in (0, 16) else format((difference if difference > 0 else difference - 1)
                                                      & ((1 << category) - 1), f"0{category}b")
        bits.append(format(category, "05b") + extra)
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big")
    return data.replace(b"\xff", b"\xff\x00")


def _lossless_jpeg(values: np.ndarray, precision: int, *, predictor: int = 1, scans: tuple[bytes, ...] = (),
                   extra: bytes = b"") -> bytes:
    """A lossless JPEG frame of `values`; `scans`: entropy-coded data of scans to put first (each
    its own SOS); `extra`: marker segments before the scan header."""
    rows, columns = values.shape
    frame_header = _segment(0xC3, struct.pack(">BHHB", precision, rows, columns, 1) + b"\x01\x11\x00")
    table = _segment(0xC4, b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17)))
    scan_header = _segment(0xDA, bytes([1, 1, 0x00, predictor, 0, 0]))
    earlier = b"".join(scan_header + data for data in scans)
    return (b"\xff\xd8" + frame_header + table + extra + earlier + scan_header
            + _entropy_coded(values, precision) + b"\xff\xd9")


# ---- marked files ---------------------------------------------------------------------------------

def _mark(source: Path, destination: Path) -> Path:
    loaded = load_model(None)
    embed_file(source, destination, EmbedSettings(b"IS-29", QualityFloor(40.0), key=KEY.encode()), loaded,
               codec_for(loaded, KEY.encode()))
    return destination


@pytest.fixture(scope="module")
def marked_ct(tmp_path_factory) -> Path:
    return _mark(clinical_file("CT_small.dcm"), tmp_path_factory.mktemp("ct") / "ct.wm.dcm")


@pytest.fixture(scope="module")
def saturated_ct(tmp_path_factory) -> Path:
    """CT_small as 12-bit unsigned data with its bone saturated at 4095 (as a CT's metal, or a
    radiograph's direct exposure, is), marked."""
    folder = tmp_path_factory.mktemp("saturated")
    ds = pydicom.dcmread(clinical_file("CT_small.dcm"))
    values = np.clip(ds.pixel_array.astype(np.int64) * 3, 0, 4095)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    del ds["PixelPaddingValue"]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = values.astype("<u2").tobytes()
    ds.save_as(folder / "ct12.dcm", enforce_file_format=True)
    return _mark(folder / "ct12.dcm", folder / "ct12.wm.dcm")


def _stored(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array.astype(np.int64)


def _refiled(marked: Path, target: Path, syntax: str, frame: bytes) -> Path:
    """The marked file, its header unchanged, with `frame` as its pixel data under `syntax`."""
    ds = pydicom.dcmread(marked)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return target


def _dcmtk_words(path: Path, decoder: str) -> np.ndarray:
    """The words dcmtk decodes `path` to (a viewer's pixels before masking), read without pydicom's
    decoders: (rows, columns), or (frames, rows, columns) for several frames."""
    decoded = path.with_suffix(".dcmtk.dcm")
    subprocess.run([tool(decoder), str(path), str(decoded)], check=True, capture_output=True, timeout=120)
    ds = pydicom.dcmread(decoded)
    words = np.frombuffer(ds.PixelData, "<u2").reshape(-1, int(ds.Rows), int(ds.Columns)).astype(np.int64)
    return words[0] if len(words) == 1 else words


def _verify(path: Path) -> tuple[int, str]:
    result = run_wm_here("verify", str(path), "--key", KEY)
    assert "Traceback" not in result.stderr
    return result.code, result.stderr


# ---- JPEG Lossless ----------------------------------------------------------------------------

def test_lossless_samples_one_decoder_clamps_are_refused(saturated_ct, tmp_path):
    # T.81 takes prediction + difference modulo 2^16 (IJG, in dcmtk, does); libjpeg clamps it to
    # 2^P - 1. Every saturated marked pixel coded as 4095 + 1 read 4095 to wm (intact) and 0 to
    # dcmtk: a CT's bone shown black, pixel by pixel as the attacker chose.
    marked = _stored(saturated_ct)
    saturated = marked == 4095
    assert saturated.sum() > 100
    honest = _refiled(saturated_ct, tmp_path / "honest.dcm", JPEG_LOSSLESS_SV1, _lossless_jpeg(marked, 12))
    assert _verify(honest)[0] == 0
    assert (_dcmtk_words(honest, "dcmdjpeg") == marked).all()

    forged_values = marked + saturated  # 4096 where the marked value is 4095
    forged = _refiled(saturated_ct, tmp_path / "forged.dcm", JPEG_LOSSLESS_SV1, _lossless_jpeg(forged_values, 12))
    assert (_stored(forged) == marked).all()  # what libjpeg alone shows: the marked values
    assert ((_dcmtk_words(forged, "dcmdjpeg") & 0xFFF) != marked).sum() == saturated.sum()
    code, stderr = _verify(forged)
    assert code == 2 and "lossless samples coded outside the range of 12 bits" in stderr
    assert "decoders would read it differently" in stderr

    below = marked.copy()
    below[64, 64] = -5  # a negative sum: libjpeg shows 4095, IJG 65531
    code, stderr = _verify(_refiled(saturated_ct, tmp_path / "below.dcm", JPEG_LOSSLESS, _lossless_jpeg(below, 12)))
    assert code == 2 and "outside the range" in stderr


def _items(fragments: list[bytes], offsets: tuple[int, ...] = ()) -> bytes:
    """Encapsulated pixel data (PS3.5 A.4) of these fragments as they are, after a Basic Offset
    Table of `offsets`."""
    table = struct.pack(f"<{len(offsets)}I", *offsets)
    return b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
                    for item in (table, *(fragment + b"\0" * (len(fragment) % 2) for fragment in fragments)))


@pytest.fixture(scope="module")
def marked_two_frames(tmp_path_factory) -> Path:
    """A two-frame CT (CT_small, and the same slice upside down), marked."""
    folder = tmp_path_factory.mktemp("two_frames")
    ds = pydicom.dcmread(clinical_file("CT_small.dcm"))
    slices = np.stack([ds.pixel_array, ds.pixel_array[::-1]])
    ds.NumberOfFrames = 2
    ds.PixelData = slices.astype("<i2").tobytes()
    ds.save_as(folder / "two.dcm", enforce_file_format=True)
    return _mark(folder / "two.dcm", folder / "two.wm.dcm")


def test_fragments_decoders_group_into_other_frames_are_refused(marked_two_frames, tmp_path):
    # pydicom ends a frame (without an offset table) at a fragment whose last bytes hold EOI;
    # dcmtk's IJG feeds fragments until it meets EOI. Marked frame 1 with ten zero bytes after its
    # EOI, a forged frame, marked frame 2: pydicom read the marked frames (intact), dcmtk showed
    # the forged one as frame 2 (red-team round 8); an offset table skipping it fooled IJG alike.
    marked = _stored(marked_two_frames) & 0xFFFF
    first, second = (_lossless_jpeg(frame, 16) for frame in marked)
    forged_frame = marked[1].copy()
    forged_frame[40:80, 40:80] = 3000
    forged = _lossless_jpeg(forged_frame, 16)

    def refiled(name: str, pixel_data: bytes) -> Path:
        ds = pydicom.dcmread(marked_two_frames)
        ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS_SV1
        ds.PixelData = pixel_data
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    assert _verify(refiled("honest.dcm", _items([first, second])))[0] == 0
    halves = [first[:1000], first[1000:]]
    split = refiled("split.dcm", _items([*halves, second], (0, len(_items(halves)) - 8)))  # past the table
    assert _verify(split)[0] == 0  # a frame over two fragments, an offset table: every decoder agrees
    padded = first + bytes(10)
    for name, offsets in (("padded.dcm", ()), ("padded_table.dcm", (0, len(_items([padded, forged])) - 8))):
        path = refiled(name, _items([padded, forged, second], offsets))
        assert (_stored(path) & 0xFFFF == marked).all()  # what pydicom alone reads: the marked frames
        assert (_dcmtk_words(path, "dcmdjpeg")[1] != marked[1]).sum() == 1600  # dcmtk: the forged square
        code, stderr = _verify(path)
        assert code == 2 and "a fragment inside the frame that opens a new JPEG stream" in stderr
    trailing = [first, b"\0" * 8]  # a fragment after frame 1's EOI, which IJG takes for frame 2
    code, stderr = _verify(refiled("early_eoi.dcm", _items([*trailing, second], (0, len(_items(trailing)) - 8))))
    assert code == 2 and "an EOI marker before its last fragment" in stderr


def test_a_jpeg_process_other_than_the_transfer_syntax_s_is_refused(marked_ct, tmp_path):
    # dcmtk picks its decoder by transfer syntax, libjpeg by the stream: a 16-bit lossless stream
    # filed as Baseline or Extended read the marked values to wm and every HU cut to 8 or 12 bits
    # to dcmtk.
    marked = _stored(marked_ct) & 0xFFFF
    stream = _lossless_jpeg(marked, 16)
    assert _verify(_refiled(marked_ct, tmp_path / "lossless.dcm", JPEG_LOSSLESS, stream))[0] == 0
    for syntax in (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_LOSSLESS):
        code, stderr = _verify(_refiled(marked_ct, tmp_path / f"{syntax}.dcm", syntax, stream))
        assert code == 2 and "frame header FFC3, a JPEG process its transfer syntax does not name" in stderr


def test_signed_samples_coded_at_fewer_bits_than_bits_stored_are_refused(marked_ct, tmp_path):
    # pydicom extends a JPEG-LS sample's sign from the frame's precision, dcmtk from BitsStored: a
    # signed CT coded at 12 bits read the marked values to wm and each negative value 4096 higher
    # to dcmtk (red-team round 8). Signed frames must carry BitsStored bits or more.
    marked = _stored(marked_ct)
    assert pydicom.dcmread(marked_ct).PixelRepresentation == 1
    code, stderr = _verify(_refiled(marked_ct, tmp_path / "p12.dcm", JPEG_LOSSLESS, _lossless_jpeg(marked & 0xFFF, 12)))
    assert code == 2 and "12-bit samples of signed data whose BitsStored is 16" in stderr


def test_a_second_scan_is_refused(marked_ct, tmp_path):
    # Of two scans of the one component pydicom keeps the last (the marked values: intact) and
    # dcmtk decodes the first (a forged square) before it stops.
    marked = _stored(marked_ct) & 0xFFFF
    forged = marked.copy()
    forged[40:80, 40:80] = 0
    stream = _lossless_jpeg(marked, 16, scans=(_entropy_coded(forged, 16),))
    path = _refiled(marked_ct, tmp_path / "two_scans.dcm", JPEG_LOSSLESS, stream)
    code, stderr = _verify(path)
    assert code == 2 and "marker FFDA after the scan (only EOI may follow it)" in stderr


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.replace(b"\xff\xda\x00\x08\x01\x01\x00\x01", b"\xff\xda\x00\x08\x01\x01\x00\x04"),
     "predictor 4 where its transfer syntax names predictor 1"),
    (lambda s: s.replace(b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00", b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x01"),
     "a lossless scan with a point transform"),
    (lambda s: s.replace(b"\xff\xda", b"\xff\xdd\x00\x04\x00\x64\xff\xda", 1),
     "a restart interval of 100 samples, not whole rows of 128"),
    (lambda s: s.replace(b"\xff\xda", b"\xff\xdc\x00\x04\x00\x80\xff\xda", 1), "marker FFDC"),  # DNL
    (lambda s: s.replace(b"\xff\xc3", b"\xff\xcb", 1), "frame header FFCB"),  # arithmetic coding
    (lambda s: s.replace(b"\xff\xc4", b"\xff\xc3\x00\x0b\x10\x00\x80\x00\x80\x01\x01\x11\x00\xff\xc4", 1),
     "a second frame header"),
    (lambda s: s[:-2], "ends before its EOI marker"),
])
def test_lossless_frames_decoders_read_differently_are_named(change, problem):
    values = np.random.default_rng(0).integers(0, 4096, (128, 128))
    stream = _lossless_jpeg(values, 16)
    assert jpeg_frame_header(stream, JPEG_LOSSLESS_SV1, 128).precision == 16
    with pytest.raises(ValueError, match=problem):
        jpeg_frame_header(change(stream), JPEG_LOSSLESS_SV1, 128)


# ---- JPEG-LS --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jpeg_ls_frame(marked_ct, tmp_path_factory) -> bytes:
    """The marked CT encoded by CharLS (dcmtk's dcmcjpls), as a PACS would store it."""
    target = tmp_path_factory.mktemp("jls") / "ct.jls.dcm"
    subprocess.run([tool("dcmcjpls"), str(marked_ct), str(target)], check=True, capture_output=True, timeout=120)
    ds = pydicom.dcmread(target)
    assert ds.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _preset(maxval: int, kind: int = 1) -> bytes:
    """A JPEG-LS preset (LSE) of `kind` 1, coding parameters: `maxval` with T.87 C.2.4.1.1's
    default thresholds and reset for 16-bit samples."""
    return _segment(0xF8, bytes([kind]) + struct.pack(">5H", maxval, 18, 67, 276, 64))


def _with_preset(frame: bytes, preset: bytes) -> bytes:
    """`frame` with its coding-parameter preset (LSE) replaced by `preset`, or `preset` added."""
    at = frame.find(b"\xff\xf8")
    if at >= 0:
        frame = frame[:at] + frame[at + 2 + struct.unpack_from(">H", frame, at + 2)[0]:]
    scan = frame.find(b"\xff\xda")
    return frame[:scan] + preset + frame[scan:]


def _scan_parameters(frame: bytes, near: int, interleave: int, transform: int = 0, table: int = 0) -> bytes:
    scan = frame.find(b"\xff\xda")
    return frame[:scan + 6] + bytes([table, near, interleave, transform]) + frame[scan + 10:]


def test_jpeg_ls_parameters_charls_and_libjpeg_read_differently_are_refused(marked_ct, jpeg_ls_frame, tmp_path):
    # libjpeg honours a preset MAXVAL, CharLS takes it from P: a frame coded at 12 bits, its header
    # saying 16 with MAXVAL 4095, read the marked values to wm and did not decode in dcmtk; CharLS
    # ignores a mapping table and the point transform, and cannot decode ILV 1 of one component.
    honest = _refiled(marked_ct, tmp_path / "honest.dcm", JPEG_LS_LOSSLESS, jpeg_ls_frame)
    assert _verify(honest)[0] == 0
    assert _verify(_refiled(marked_ct, tmp_path / "default.dcm", JPEG_LS_LOSSLESS,
                            _with_preset(jpeg_ls_frame, _preset(65535))))[0] == 0  # the default, spelled out
    code, stderr = _verify(_refiled(marked_ct, tmp_path / "maxval.dcm", JPEG_LS_LOSSLESS,
                                    _with_preset(jpeg_ls_frame, _preset(4095))))
    assert code == 2 and "JPEG-LS MAXVAL 4095 for 16-bit samples" in stderr
    # libjpeg uses a preset's 0 as written, CharLS as 'the default': all of the stream's pixels differ
    zeros = _segment(0xF8, b"\x01" + struct.pack(">5H", 65535, 0, 0, 0, 0))
    code, stderr = _verify(_refiled(marked_ct, tmp_path / "zeros.dcm", JPEG_LS_LOSSLESS,
                                    _with_preset(jpeg_ls_frame, zeros)))
    assert code == 2 and "JPEG-LS thresholds 0, 0, 0 and reset 0 outside T.87's ranges" in stderr
    code, stderr = _verify(_refiled(marked_ct, tmp_path / "ilv.dcm", JPEG_LS_LOSSLESS,
                                    _scan_parameters(jpeg_ls_frame, 0, 1)))
    assert code == 2 and "interleave mode other than 0" in stderr
    for changed, problem in [
        (_with_preset(jpeg_ls_frame, _preset(65535, kind=2)), "a mapping table"),
        (_scan_parameters(jpeg_ls_frame, 0, 0, table=1), "a JPEG-LS mapping table"),
        (_scan_parameters(jpeg_ls_frame, 0, 0, transform=1), "point transform"),
        (_scan_parameters(jpeg_ls_frame, 2, 0), "NEAR 2 in a lossless JPEG-LS syntax"),
        (_with_preset(jpeg_ls_frame, _preset(65535) + _preset(65535)), "given twice"),
    ]:
        with pytest.raises(ValueError, match=problem):
            jpeg_frame_header(changed, JPEG_LS_LOSSLESS, 128)
    near = _scan_parameters(jpeg_ls_frame, 2, 0)
    assert jpeg_frame_header(near, JPEG_LS_NEAR_LOSSLESS, 128).marker == 0xF7  # NEAR is near-lossless's own


def test_a_jpeg_2000_frame_in_a_jp2_box_is_refused(marked_ct, tmp_path):
    # PS3.5 A.4.4: the bare codestream. A JPEG stream under a JPEG 2000 syntax, or a JP2 file,
    # is read by some decoders and refused or read otherwise by the next.
    stream = _lossless_jpeg(_stored(marked_ct) & 0xFFFF, 16)
    code, stderr = _verify(_refiled(marked_ct, tmp_path / "j2k.dcm", "1.2.840.10008.1.2.4.90", stream))
    assert code == 2 and "does not start with a bare JPEG 2000 codestream" in stderr
