"""The audit trail: one JSON line per marked file, appended as each file is written.

A line says what went in and what came out (paths, SHA-256 of the files and of their stored
pixel values), what was hidden (the payload as stored: its bytes, never the key), with which
model (name and weights hash), and what it cost in quality (the PSNR in every view a reader
uses and which one bound, the nominal PSNR, SSIM, max abs error) and whether the mark read
back. Lines are only ever appended, each in one write and fsynced before the next file is
reported, so an interrupted batch leaves a log that matches the files on disk: at most the file
being reported when the run was killed lacks its line, and the next run over the folder audits
it (`recovered`). A line torn by a power cut is cut off before the next line is appended.
What a line holds is `marking.batch.audit_line`'s to say; this module keeps the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from ..jsonout import json_line
from .writing import fsync_folder

AUDIT_FILE_NAME = "wm-audit.jsonl"

def default_audit_path(output: Path, is_folder: bool) -> Path:
    """Inside the output folder, or beside the output file."""
    return (output if is_folder else output.parent) / AUDIT_FILE_NAME


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInputError(f"--audit {self.path}: is a folder; give a file path")

    def check_writable(self) -> None:
        """Fail before any image is marked if the log could not be written (creating nothing:
        a run that marks no file leaves no log)."""
        existing = self.path if self.path.exists() else self.path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir() and existing != self.path:
            raise BadInputError(f"{self.path}: cannot write the audit log ({existing} is not a folder)")
        if not os.access(existing, os.W_OK):
            raise BadInputError(f"{self.path}: cannot write the audit log (no write permission on {existing})")

    def outputs(self) -> set[str]:
        """The outputs (resolved paths) the log has a whole line for."""
        import json

        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return set()
        except OSError as error:
            raise BadInputError(f"{self.path}: cannot read the audit log ({error.strerror or error})") from None
        found = set()
        for line in text.splitlines():
            try:
                found.add(json.loads(line)["output"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: its file is audited again
        return found

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._append_line(record)

    def _append_line(self, record: dict) -> None:
        # Append-only, the whole line in one write(2) on an O_APPEND descriptor (whole lines from
        # concurrent writers never interleave), fsynced (and the folder too when the log is new),
        # so a killed run leaves every line it reported; an atomic rewrite of a growing log would
        # cost a copy per line.
        line = json_line(record, compact=True).encode("utf-8")
        try:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                _cut_torn_line(fd)
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_folder(self.path.parent)
        except OSError as error:
            raise BadInputError(f"{self.path}: cannot append to the audit log ({error.strerror or error})") from None


def _cut_torn_line(fd: int) -> None:
    """A log that does not end with a newline ends with a line torn by a crash: cut it off, so
    that the next line starts on a line of its own (its file is audited again on the next run)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    newline = tail.rfind(b"\n")
    os.ftruncate(fd, start + newline + 1 if newline >= 0 else 0 if start == 0 else size)
