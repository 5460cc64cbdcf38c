"""A plain (non-editable) install carries the default model, which the checkout keeps in its
top-level `models/` folder: build a wheel, install it into a fresh virtual environment and mark a
real DICOM and a PNG from outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_installed_into_a_fresh_venv_marks_with_its_own_default_model(tmp_path):
    source = tmp_path / "source"
    for folder in ("watermark_cli", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(dist), str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("wm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "watermark_cli/shipped_models/default/weights.safetensors" in names
    assert "watermark_cli/shipped_models/default/card.yaml" in names
    assert "watermark_cli/shipped_models/wm-default-v2/weights.safetensors" in names  # its marks stay readable
    # pyproject lists the packages (one maps to models/): no folder of the package is left out.
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "watermark_cli").rglob("__init__.py")}
    assert folders <= {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("__init__.py")}

    # A fresh venv whose only extra path is the dependencies' site-packages (torch and the rest
    # are not installed twice); the .pth files there, the checkout's editable hook among them,
    # are not run for a path added this way.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, (256, 256)), 0), 1)
    image = (255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
    Image.fromarray(image).save(work / "scan.png")
    shutil.copy2(get_testdata_file("693_UNCR.dcm"), work / "ct.dcm")  # a real CT, 512², 14 of 16 bits
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WM_MODELS", "WM_KEY")}
    where = subprocess.run([python, "-c", "import watermark_cli, watermark_cli.model.store as s; "
                                          "print(watermark_cli.__file__); print(s.shipped_models_folder())"],
                           cwd=work, env=environment, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where

    wm = venv / "bin" / "wm"
    marked = subprocess.run([wm, "embed", "scan.png", "id-0042", "-o", "marked.png"], cwd=work, env=environment,
                            capture_output=True, text=True)
    assert marked.returncode == 0, marked.stderr
    read = subprocess.run([wm, "extract", "marked.png"], cwd=work, env=environment, capture_output=True, text=True)
    assert read.returncode == 0 and read.stdout.strip() == "id-0042", read.stderr
    marked = subprocess.run([wm, "embed", "ct.dcm", "ct-0042"], cwd=work, env=environment, capture_output=True, text=True)
    assert marked.returncode == 0, marked.stderr
    read = subprocess.run([wm, "extract", "ct.wm.dcm"], cwd=work, env=environment, capture_output=True, text=True)
    assert read.returncode == 0 and read.stdout.strip() == "ct-0042", read.stderr
