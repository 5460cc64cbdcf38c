"""JSON for scripts: strictly valid (no NaN or Infinity, which many parsers reject).

`json_line` is the one way wm writes a JSON line (the `--json` output, `wm serve`'s log, the audit
trail, the spool's notes), `write_json_line` the one way it prints one."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from pathlib import Path
from typing import TextIO


def json_safe(value):
    """Non-finite floats become null; paths and numpy scalars become plain values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (Path, bytes)):
        return str(value) if isinstance(value, Path) else value.hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def json_line(value, compact: bool = False) -> str:
    """`value` as one line of strict JSON, newline included; `compact`: no spaces, UTF-8 kept as
    is (the audit trail, read by programs); otherwise ASCII-safe (a terminal or a log collector)."""
    if compact:
        return dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"
    return dumps(value) + "\n"


def write_json_line(value, stream: TextIO | None = None) -> None:
    """Print `value` as one JSON line and flush (a script or a log collector reads line by line)."""
    import sys

    stream = stream or sys.stdout
    stream.write(json_line(value))
    stream.flush()
