"""Coverage-guided fuzzing of `read_image` with atheris (libFuzzer): `pip install -e '.[fuzz]'`.

    python benchmarks/fuzzing/atheris_target.py --family dicom -atheris_runs=100000 corpus_dir
    python benchmarks/fuzzing/atheris_target.py --family png -max_total_time=600 -rss_limit_mb=2048 corpus_dir

Each input's bytes are written to a temporary file with the family's suffix and read with
`read_image`; a WmError is the contract's answer for a bad file, anything else (a native panic
included) propagates, and atheris reports it and saves the input as crash-<sha1> in the working
folder. An empty corpus folder is first filled with the family's seeds (benchmarks/fuzzing/mutators.py).
All other arguments are libFuzzer's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `fuzzing` (the seeds)
sys.path.append(str(HERE.parent.parent))  # the checkout's `watermark_cli`, unless on PYTHONPATH


def _family(argv: list[str]) -> tuple[str, list[str]]:
    """--family NAME (or --family=NAME) taken out of argv; the rest is for libFuzzer."""
    family, rest, args = "dicom", [argv[0]], iter(argv[1:])
    for arg in args:
        if arg == "--family":
            family = next(args, family)
        elif arg.startswith("--family="):
            family = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return family, rest


def _fill_empty_corpus(family: str, argv: list[str]) -> None:
    from fuzzing import mutators

    folders = [Path(a) for a in argv[1:] if not a.startswith("-")]
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            for seed in mutators.build_seeds()[family]:
                (folder / seed.name).write_bytes(seed.data)


def main() -> None:
    import atheris

    family, argv = _family(sys.argv)
    suffixes = {"dicom": ".dcm", "png": ".png", "tiff": ".tif", "jpeg": ".jpg"}
    if family not in suffixes:
        sys.exit(f"--family must be one of {', '.join(suffixes)}")
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # tifffile logs every bad offset
    # Instrumented before anything imports them (the seeds below need pydicom, Pillow, tifffile).
    with atheris.instrument_imports(include=["watermark_cli", "pydicom", "PIL", "tifffile"]):
        import pydicom.pixels  # noqa: F401 - the decoders, imported lazily by read_image
        import tifffile  # noqa: F401
        from PIL import Image, PngImagePlugin, JpegImagePlugin  # noqa: F401
        from watermark_cli.errors import WmError
        from watermark_cli.io.image import read_image
    _fill_empty_corpus(family, argv)

    folder = tempfile.mkdtemp(prefix="wm-atheris-")
    path = Path(folder) / f"input{suffixes[family]}"

    def test_one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            read_image(path)
        except WmError as error:
            if "\n" in str(error).strip():
                raise AssertionError(f"WmError message is not one line: {error!r}") from error

    atheris.Setup(argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        try:
            path.unlink()
            os.rmdir(folder)
        except OSError:
            pass


if __name__ == "__main__":
    main()
