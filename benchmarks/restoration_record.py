"""Size of the restoration record per modality, and what it costs `wm embed` in time.

    .venv/bin/python benchmarks/restoration_record.py [--model PATH] [--repeats 3]

For each real pydicom-data image (every modality wm marks, native and compressed inputs): the
record's size against the pixel data's (goal <= 10 %), and the median wall time of the whole
`embed_file` (read, mark, verify, write, re-read) with and without the record, then of
`restore_file` and of the record part of `wm verify` (block tags recomputed). Default settings:
40 dB view floor, the shipped model, a custom key.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from watermark_cli.data.clinical import clinical_file
from watermark_cli.integrity.record import changed_blocks, open_record
from watermark_cli.io.image import file_record, read_image
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.marking.restoration import restore_file
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

CASES = [
    ("CT", "693_UNCR.dcm"), ("CT", "CT_small.dcm"), ("CT 2 frames", "eCT_Supplemental.dcm"),
    ("MR", "MR2_UNCR.dcm"), ("MR", "MR-SIEMENS-DICOM-WithOverlays.dcm"), ("CR", "RG3_UNCR.dcm"),
    ("CR", "RG1_UNCR.dcm"), ("NM", "JPEG2000_UNC.dcm"), ("US 8 bit", "JPGLosslessP14SV1_1s_1f_8b.dcm"),
    ("CT J2K lossless", "693_J2KR.dcm"),
]
KEY = b"benchmark key"


def median_seconds(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model(args.model)
    codec = codec_for(loaded, KEY)
    print("| modality | file | pixels | pixel data | record | record / pixel data | embed s (no record) "
          "| embed s (record) | restore s | verify blocks s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for modality, name in CASES:
            source = clinical_file(name)

            def embed(record: bool, target=out / "marked.dcm") -> dict:
                settings = EmbedSettings(b"bench-0001", QualityFloor(40.0), key=KEY, overwrite=True,
                                         restore_record=record)
                return embed_file(source, target, settings, loaded, codec)

            plain = median_seconds(lambda: embed(False, out / "plain.dcm"), args.repeats)
            with_record = median_seconds(lambda: embed(True), args.repeats)
            result = embed(True)
            restore = median_seconds(lambda: restore_file(out / "marked.dcm", out / "restored.dcm", KEY,
                                                          overwrite=True), args.repeats)
            image = read_image(out / "marked.dcm")
            record, tag_key = open_record(file_record(image), KEY)
            blocks = median_seconds(lambda: changed_blocks(record, image.pixels, tag_key), args.repeats)
            frames, rows, cols = image.pixels.shape
            size, pixel_bytes = result.restoration_record_bytes, result.pixel_data_bytes
            print(f"| {modality} | {name} | {frames}x{rows}x{cols} | {pixel_bytes / 1024:.0f} KiB | "
                  f"{size / 1024:.1f} KiB | {100 * size / pixel_bytes:.1f} % | {plain:.2f} | {with_record:.2f} | "
                  f"{restore:.2f} | {blocks:.3f} |", flush=True)


if __name__ == "__main__":
    main()
