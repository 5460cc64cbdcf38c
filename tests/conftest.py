"""Shared fixtures (a small synthetic dataset, a model trained on it once per session) and the
two lanes of the suite.

Lanes: `--lane fast` (what `bash scripts/test.sh` runs) leaves out the tests marked `slow` and
fails any other test whose setup and call take more than WM_FAST_TEST_SECONDS (default 8; more
in proportion on a machine loaded beyond one task per core) — so the fast lane stays fast as tests
are added; `--lane slow` runs the tests marked `slow` alone; `--lane all` (the default of a plain
`pytest`) runs every test, without the time guard. `bash scripts/test.sh --all`, what CI runs, is
the fast lane on two processes (the guard off) and then the slow lane: on two processes, a test
file to each at a time, but its tests marked `exclusive` (servers, Dask clusters, processes
killed or timed: they want the machine) one at a time after the rest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Before anything asks torch whether there is a GPU: counted through NVML, the question starts no
# CUDA in the test process, whose runs of wm may fork workers that use the GPU (`model.device`).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# A fast test takes well under 2 s; the guard leaves room for a busy machine (a real `wm` process
# alone starts in about 2.5 s: torch, the model).
FAST_TEST_SECONDS = float(os.environ.get("WM_FAST_TEST_SECONDS", "8"))


def pytest_addoption(parser) -> None:
    parser.addoption("--lane", choices=("fast", "slow", "all"), default="all",
                     help="fast: leave out tests marked slow and fail a test of the fast lane that takes more than "
                          "WM_FAST_TEST_SECONDS; slow: only the tests marked slow; all: every test (default)")


def _fast_lane(config) -> bool:
    return config.getoption("--lane") == "fast"


def pytest_collection_modifyitems(config, items) -> None:
    lane = config.getoption("--lane")
    if lane == "all":
        return
    keep_slow = lane == "slow"
    left_out = [item for item in items if bool(item.get_closest_marker("slow")) != keep_slow]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if bool(item.get_closest_marker("slow")) == keep_slow]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In the fast lane a test that took too long fails, naming its time: mark it `slow` (it then
    runs in `--all` and CI) or make it faster. Setup counts: a costly fixture is a costly test."""
    outcome = yield
    report = outcome.get_result()
    if not _fast_lane(item.config):
        return
    spent = item.stash.setdefault(_SPENT, {})
    spent[report.when] = report.duration
    if report.when == "call" and report.passed:
        total = spent.get("setup", 0.0) + report.duration
        # A machine busier than one task per core (other lanes' processes, a cold disk) gets
        # longer in proportion; an idle one holds a test to FAST_TEST_SECONDS.
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        allowed = FAST_TEST_SECONDS * max(1.0, load)
        if total > allowed:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} took {total:.1f} s (setup {spent.get('setup', 0.0):.1f} s), over the "
                               f"fast lane's {allowed:.0f} s (load {load:.1f} per core): mark it @pytest.mark.slow "
                               "or make it faster")


_SPENT = pytest.StashKey[dict]()


def fixed_key(label: str) -> str:
    """A key in the form `wm keygen` writes (keys.GENERATED_PREFIX and 64 hex digits), fixed per
    label. Tests use these: a passphrase costs seconds of scrypt in every process that uses it
    (tests/test_keys.py exercises passphrases)."""
    return "wm-key-v1:" + hashlib.sha256(label.encode("utf-8")).hexdigest()


def ct_slice_file(folder: Path, suffix: str, dtype) -> tuple[Path, np.ndarray]:
    """The 693_UNCR CT slice as an 8-bit (a soft-tissue window) or 16-bit PNG/TIFF, and its values."""
    import tifffile
    from PIL import Image

    from watermark_cli.data.clinical import clinical_file
    from watermark_cli.io.image import read_image

    ct = read_image(clinical_file("693_UNCR.dcm")).pixels[0].astype(np.int32)
    values = (np.clip((ct + 100) * 255 // 300, 0, 255) if dtype == np.uint8 else ct - ct.min()).astype(dtype)
    source = folder / f"slice{suffix}"
    if suffix == ".png":
        Image.fromarray(values).save(source)
    else:
        tifffile.imwrite(source, values)
    return source, values


def stored_values(path: Path) -> np.ndarray:
    """The file's values as an independent reader (Pillow, tifffile) decodes them."""
    import tifffile
    from PIL import Image

    return np.asarray(Image.open(path)) if path.suffix == ".png" else tifffile.imread(path)


@dataclass
class CommandResult:
    code: int
    stdout: str
    stderr: str


def run_wm(*args: str, cwd: Path | None = None) -> CommandResult:
    """Run the real command line in a subprocess: real exit codes, real stderr."""
    completed = subprocess.run(
        [sys.executable, "-m", "watermark_cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )
    return CommandResult(completed.returncode, completed.stdout, completed.stderr)


def run_wm_here(*args: str) -> CommandResult:
    """The same command line in this process (`main()` with these arguments): the same one-line
    errors and exit codes, without a new interpreter importing torch. For argument and message
    checks; the end-to-end runs keep `run_wm`."""
    import contextlib
    import io

    from watermark_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["wm", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return CommandResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict[str, Path]:
    from watermark_cli.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "train", 48, size=256, seed=11)
    write_synthetic_dataset(root / "held_out", 6, size=256, seed=12)
    return {"train": root / "train", "held_out": root / "held_out"}


@pytest.fixture(scope="session")
def trained_model(synthetic_data, tmp_path_factory) -> Path:
    """A few seconds of real training through `wm train` (quick preset, shortened)."""
    out = tmp_path_factory.mktemp("model") / "quick"
    result = run_wm("train", synthetic_data["train"], "--preset", "quick", "--epochs", "4",
                    "--steps-per-epoch", "50", "--out", out, "--json")
    assert result.code == 0, result.stderr
    return out
