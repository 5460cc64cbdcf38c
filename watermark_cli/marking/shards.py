"""Deterministic shards of a folder job (`wm embed --shard I/N`): for Slurm job arrays and
`xargs`, each run marks the files of its shard, with the same resumability as any folder run
(outputs that exist are skipped), and the N shards are disjoint and together complete.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import BadInputError


def shard_of(relative: str, count: int) -> int:
    """Which of `count` shards a file belongs to: stable across machines, runs and Python versions."""
    return int.from_bytes(hashlib.sha256(relative.encode("utf-8", "surrogateescape")).digest()[:8], "big") % count


def shard(jobs: list[tuple[Path, Path]], root: Path, index: int, count: int) -> list[tuple[Path, Path]]:
    return [job for job in jobs if shard_of(job[0].relative_to(root).as_posix(), count) == index]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise BadInputError(f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4 ... 3/4)")
    return int(index), int(count)
