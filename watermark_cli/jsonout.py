"""JSON for scripts: strictly valid (no NaN or Infinity, which many parsers reject)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def json_safe(value):
    """Non-finite floats become null; paths and numpy scalars become plain values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
