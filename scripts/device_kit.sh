#!/usr/bin/env bash
# Make .device/: what wm needs on the lent GPU machine (the `device` tool) beyond that machine's
# own image, which has python3 with torch, numpy, scipy, scikit-image, typer, rich and the rest
# but none of wm's DICOM, payload and record packages; nothing can be fetched there.
#   bash scripts/device_kit.sh [PYTHON_VERSION]    (default 3.12: the device image's python3)
# Then, from a session that holds a device machine (see scripts/on_device.sh):
#   run(command="bash scripts/on_device.sh speed", carry=[".device"], timeout_s=540)
# .device/wheels: those packages as wheels for that Python, at the versions this checkout's .venv
# has (on_device.sh unpacks them there with pip --target). .device/pydicom-data.tar.xz: the
# pydicom-data package cut to the clinical files of wm's splits (its whole wheel, 34 MB, would
# take the carried tree over the tool's 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-3.12}
KIT=.device
# What wm imports that the image lacks (its package list: the device tool's KINDS.md).
PACKAGES=(pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle reedsolo cooper-optim
          cryptography cffi pycparser zstandard zxcvbn pynetdicom)
bash scripts/setup_env.sh
pins=()
for name in "${PACKAGES[@]}"; do
  pins+=("$name==$(.venv/bin/python -c "from importlib.metadata import version; print(version('$name'))")")
done
platforms=()
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
           manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
  platforms+=(--platform "$tag")
done
rm -rf "$KIT" && mkdir -p "$KIT/wheels"
# (pip's warnings about package locations it skips are noise here; a failure still stops the script.)
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  "${platforms[@]}" -d "$KIT/wheels" "${pins[@]}" 2> >(grep -v "is ignored" >&2)
# pydicom-data: its package and metadata (pydicom finds it by its entry point) with the files of
# the clinical splits that it, not pydicom, ships, one encoding each.
.venv/bin/python - "$KIT/pydicom-data.tar.xz" <<'PY'
import sys
import tarfile
from importlib.metadata import distribution
from pathlib import Path

from watermark_cli.data.clinical import clinical_files

dist = distribution("pydicom-data")
site = Path(dist.locate_file(""))
data = {path.name for split in ("train", "held_out") for _, path in clinical_files(split)}
with tarfile.open(sys.argv[1], "w:xz") as archive:
    for relative in dist.files:
        parts = relative.parts
        if "__pycache__" in parts or (parts[:2] == ("data_store", "data") and relative.name not in data):
            continue
        archive.add(site / relative, arcname=str(relative))
PY
echo "$KIT: $(du -sh "$KIT" | cut -f1) for Python $PY; the tracked tree: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) (the tool carries 64 MiB in all)"
