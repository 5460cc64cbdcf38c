"""Shared fixtures: a small synthetic dataset and a model trained on it once per session."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


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
