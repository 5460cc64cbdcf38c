"""Peak memory of marking a large radiograph: `wm embed` on pydicom-data's RG1_UNCR.dcm
(CR, MONOCHROME1, 15 bit, 1955×1841), in a fresh process, as the operating system counts it.

    .venv/bin/python benchmarks/memory.py [--file NAME] [--json]

Prints the child's maximum resident set size (it includes Python, torch and the model) and its
wall time. The target (issue 4) is under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.data import get_testdata_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="RG1_UNCR.dcm", help="a pydicom-data file name")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    source = get_testdata_file(args.file, download=False)
    if source is None:
        print(f"{args.file} is not installed (pydicom-data)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, "-m", "watermark_cli", "embed", source, "memory-check",
                                    "-o", str(Path(folder) / "out.dcm"), "--json"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        print(completed.stderr.strip(), file=sys.stderr)
        return completed.returncode
    result = json.loads(completed.stdout.splitlines()[-1])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    figures = {"file": args.file, "peak_rss_mib": round(peak_mib, 1), "wall_seconds": round(seconds, 2),
               "psnr": result["psnr"], "verified": result["verified"]}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.file}: peak memory {peak_mib:.0f} MiB (target < 2048), {seconds:.1f} s wall, "
              f"PSNR {result['psnr']} dB, verified {result['verified']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
