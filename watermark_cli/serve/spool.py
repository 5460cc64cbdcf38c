"""The crash-safe spool of `wm serve`: every instance is in exactly one state, on disk.

    received/NAME.dcm   as it arrived (written and fsynced before the sender hears "success")
    marked/NAME.dcm     marked, waiting to be forwarded (the received file is then removed)
    done/NAME.json      forwarded (the marked file is then removed)
    failed/NAME.json    could not be marked (and NAME.dcm beside it, as it arrived, while failed/
                        holds fewer instances than the spool's bound), or marked
                        and refused by every try to forward it (NAME.dcm: the marked file)

Beside the states:

    content/NAME.sha256         SHA-256 of the data set as first received (its transfer syntax
                                included), written before the received file: what tells a
                                retransmission from another instance that claims the same UID
    conflict/NAME.DIGEST.dcm    an instance that arrived with an already spooled SOP Instance
    conflict/NAME.DIGEST.json   UID and other content: kept (never forwarded, never dropped), with
                                who sent it and when, for a person to judge
    security.jsonl              the audit of refused associations and conflicts, one JSON line
                                each, appended and fsynced

NAME is a hash of the original SOP Instance UID, so a second receipt of the same instance finds
the first one's state and never makes a second, different marked instance. Every step is an
atomic write (io.writing) followed by the removal of the previous state's file, so a kill or a
power cut between the two leaves an instance in two states, which the restart resolves towards
the later one; it never leaves none. After a crash the node marks what is received and forwards
what is marked: an instance can then reach the destination twice, as the very same instance
(same SOP Instance UID, same bytes), which a PACS stores once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import BadInputError
from ..io.writing import fsync_folder, remove_stale_temporaries, write_atomically
from ..jsonout import json_line

STATES = ("received", "marked", "done", "failed")
CONTENT, CONFLICT = "content", "conflict"
SECURITY_LOG = "security.jsonl"


class Spool:
    def __init__(self, root: Path, max_instances: int) -> None:
        self.root = Path(root)
        self.max_instances = max_instances
        for state in (*STATES, CONTENT, CONFLICT):
            try:
                (self.root / state).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise BadInputError(f"spool {self.root}: cannot create {state}/ ({error.strerror or error})") from None
            remove_stale_temporaries(self.root / state)
        if not os.access(self.root, os.W_OK):
            raise BadInputError(f"spool {self.root}: not writable")

    @staticmethod
    def name(sop_instance_uid: str) -> str:
        return hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()[:40]

    def path(self, state: str, name: str) -> Path:
        return self.root / state / (f"{name}.json" if state == "done" else f"{name}.dcm")

    def state_of(self, name: str) -> str | None:
        """The latest state the instance reached (see the module docstring)."""
        if self.path("done", name).exists():
            return "done"
        if (self.root / "failed" / f"{name}.json").exists():
            return "failed"
        for state in ("marked", "received"):
            if self.path(state, name).exists():
                return state
        return None

    def counted(self) -> int:
        """What the bound counts: instances not yet forwarded and conflicts waiting for a person
        (so that a flood of conflicting copies fills the spool's quota, not the disk)."""
        return self.pending() + len(self.conflicts())

    def pending(self) -> int:
        """Instances received or marked and not yet forwarded: what the bound counts."""
        return self._instances("received") + self._instances("marked")

    def _instances(self, state: str) -> int:
        """How many instances (NAME.dcm) the folder of `state` holds."""
        return sum(1 for entry in os.scandir(self.root / state)
                   if entry.name.endswith(".dcm") and not entry.name.startswith("."))

    def is_full(self) -> bool:
        return self.counted() >= self.max_instances

    # ---- content and conflicts ----------------------------------------------------------------

    def record_content(self, name: str, digest: str) -> None:
        """Written before the received file, so every spooled instance has its digest."""
        write_atomically(self.root / CONTENT / f"{name}.sha256", digest)

    def content_of(self, name: str) -> str | None:
        try:
            return (self.root / CONTENT / f"{name}.sha256").read_text(encoding="ascii").strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def keep_conflict(self, name: str, digest: str, encoded: bytes, facts: dict) -> Path:
        """Keep a conflicting instance (once per distinct content) with its facts; its path."""
        stem = f"{name}.{digest[:16]}"
        kept = self.root / CONFLICT / f"{stem}.dcm"
        if not kept.exists():
            write_atomically(kept, encoded)
        write_atomically(self.root / CONFLICT / f"{stem}.json", json_line(facts))
        return kept

    def conflicts(self) -> list[dict]:
        """The facts of every conflict waiting for a person, oldest first."""
        import json

        found = []
        for entry in sorted(os.scandir(self.root / CONFLICT), key=lambda entry: entry.name):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    found.append(json.loads(Path(entry.path).read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    found.append({"file": entry.name, "why": "unreadable conflict record"})
        found.sort(key=lambda facts: str(facts.get("time", "")))
        return found

    def audit_security(self, facts: dict) -> None:
        """One line in security.jsonl, appended in one write and fsynced before the caller goes on."""
        line = json_line(facts)
        line = line if line.endswith("\n") else line + "\n"
        descriptor = os.open(self.root / SECURITY_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def receive(self, name: str, encoded: bytes) -> Path:
        return write_atomically(self.path("received", name), encoded)

    def marked(self, name: str) -> None:
        """The marked file is in place: the received copy goes."""
        _remove(self.path("received", name))

    def done(self, name: str, facts: dict) -> None:
        write_atomically(self.path("done", name), json_line(facts))
        _remove(self.path("marked", name))

    def failed(self, name: str, facts: dict) -> None:
        """Set aside an instance that cannot be marked: whole while failed/ holds fewer instances
        than the spool's bound (so that failures cannot fill the disk, nor the quota that the node
        needs to go on serving), else its facts alone."""
        received = self.path("received", name)
        if received.exists():
            if self._instances("failed") < self.max_instances:
                os.replace(received, self.root / "failed" / received.name)
            else:
                facts = {**facts, "instance_kept": False, "why_not_kept": "failed/ holds as many instances as "
                                                                          "the spool's bound"}
                received.unlink()
        write_atomically(self.root / "failed" / f"{name}.json", json_line(facts))
        fsync_folder(self.root / "received")

    def not_forwarded(self, name: str, facts: dict) -> None:
        """A marked instance that cannot be forwarded: moved to failed/ with why."""
        marked = self.path("marked", name)
        if marked.exists():
            os.replace(marked, self.root / "failed" / marked.name)
        write_atomically(self.root / "failed" / f"{name}.json", json_line(facts))
        fsync_folder(self.root / "marked")

    def names(self, state: str) -> list[str]:
        """Every name with a file in `state` (received or marked), oldest first."""
        entries = [entry for entry in os.scandir(self.root / state)
                   if entry.name.endswith(".dcm") and not entry.name.startswith(".")]
        entries.sort(key=lambda entry: entry.stat().st_mtime)
        return [entry.name[:-4] for entry in entries]

    def waiting(self, state: str) -> list[str]:
        """Names in `state` (received or marked) that no later state holds, oldest first."""
        later = STATES[STATES.index(state) + 1:]
        return [name for name in self.names(state) if self.state_of(name) not in later]

    def resolve_doubles(self) -> None:
        """After a crash: remove the earlier copy of an instance that reached a later state."""
        for state in ("received", "marked"):
            for name in self.names(state):
                if STATES.index(self.state_of(name)) > STATES.index(state):
                    _remove(self.path(state, name))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_folder(path.parent)
