"""What decoding in a process of its own costs: `IsolatedReader.read` against `read_image` here.

    .venv/bin/python benchmarks/decode_isolation.py [--repeats 5]

Every grayscale image file of pydicom and pydicom-data (native, RLE, JPEG, JPEG-LS and JPEG 2000 DICOMs)
plus a 512² 16-bit PNG is read `--repeats` times each way after a warm-up; printed: the median
time per file each way and the difference (the copy through the pipe), the decoder process's
start-up, and the total over one pass of all files.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from watermark_cli.errors import WmError
from watermark_cli.io.image import read_image
from watermark_cli.io.isolation import IsolatedReader


def readable_files(folder: Path) -> list[Path]:
    """pydicom's own test files and pydicom-data's, as installed (nothing is downloaded)."""
    import pydicom.data
    from pydicom.data.data_manager import external_data_sources

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    files = []
    for name in sorted(path for root in roots for path in root.glob("*.dcm")):
        try:
            read_image(name)
        except WmError:
            continue  # colour, floating point, too damaged: not what this measures
        files.append(Path(name))
    from PIL import Image

    png = folder / "ct_16bit.png"
    pixels = (np.random.default_rng(0).normal(1000, 200, (512, 512))).clip(0, 65535).astype(np.uint16)
    Image.fromarray(pixels).save(png)
    return [*files, png]


def median_ms(read, path: Path, repeats: int) -> float:
    read(path)  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        read(path)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = readable_files(Path(folder))
        started = time.perf_counter()
        with IsolatedReader() as reader:
            reader.read(files[0])
            startup = time.perf_counter() - started
            print(f"decoder process start-up and first read: {startup * 1e3:.0f} ms")
            print(f"{'file':38s} {'MB':>6s} {'here ms':>8s} {'isolated ms':>12s} {'extra ms':>9s}")
            here_total = isolated_total = 0.0
            for path in files:
                megabytes = read_image(path).pixels.nbytes / 2**20
                here = median_ms(read_image, path, arguments.repeats)
                isolated = median_ms(reader.read, path, arguments.repeats)
                here_total += here
                isolated_total += isolated
                print(f"{path.name[:38]:38s} {megabytes:6.2f} {here:8.1f} {isolated:12.1f} {isolated - here:9.1f}")
    print(f"{len(files)} files, one pass: {here_total:.0f} ms here, {isolated_total:.0f} ms isolated "
          f"(+{isolated_total - here_total:.0f} ms, {100 * (isolated_total / here_total - 1):.0f} %), "
          f"plus {startup * 1e3:.0f} ms once per run")


if __name__ == "__main__":
    main()
