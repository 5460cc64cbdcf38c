"""`wm keygen`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import BadInputError
from ..keys import generated_key_text
from .app import app, emit_json, stdout
from .options import JsonOption, examples


@app.command(epilog=examples(
    ("wm keygen hospital.key", "a new 256-bit key, readable only by you"),
    ("wm embed scan.dcm --message R-0042 --key-file hospital.key", "mark with it"),
))
def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the key (never replaced if it exists).")],
    json_output: JsonOption = False,
) -> None:
    """Write a new secret key to PATH: 256 bits from the operating system's random source.

    The file is readable and writable by its owner alone (mode 0600) and written whole or not at
    all; an existing file is never replaced. Give it to any command with --key-file PATH (or its
    one line as WM_KEY). A generated key is used as it is; a passphrase is instead stretched for
    seconds on each run and refused when it is easy to guess. Keep a copy: without the key, no
    mark it made can be read and no file restored."""
    from ..io.writing import write_atomically

    if path.is_dir():
        raise BadInputError(f"{path}: is a folder; give the path of the key file to create")
    if path.exists() or path.is_symlink():
        raise BadInputError(f"{path}: already exists; a key file is never replaced (marks made with the key in it "
                            f"need it): give a new path")
    if not path.parent.is_dir():
        raise BadInputError(f"{path}: no such folder: {path.parent}")
    write_atomically(path, generated_key_text() + "\n", overwrite=False, private=True)
    if json_output:
        emit_json({"key_file": str(path), "bits": 256, "mode": "0600"})
        return
    stdout.print(f"wrote a new 256-bit key to {escape(str(path))} (readable only by you); "
                 f"use it with --key-file {escape(str(path))}", highlight=False, soft_wrap=True)
