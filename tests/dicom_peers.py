"""Real DICOM peers on loopback ports for the tests and benchmarks: an Orthanc archive with its own
temporary configuration and storage, and the dcmtk tools. Both are Debian packages that
scripts/setup_env.sh installs; a missing one fails the caller with that advice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; scripts/setup_env.sh installs it (Debian packages dcmtk, orthanc)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds: float, what: str, alive=None):
    """Poll `condition` until it holds. `seconds` is the wait on an idle machine: a busy one gets
    longer in proportion to its load (no fixed deadline that flakes), and `alive()` turning false
    (a process that died) ends the wait at once."""
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the process exited")
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        waited = time.monotonic() - started
        if waited > seconds * max(1.0, load):
            raise AssertionError(f"timed out after {waited:.0f} s waiting for {what} (load {load:.1f} per core)")
        time.sleep(0.2)


class Orthanc:
    """An Orthanc on loopback ports with its own storage, started and stopped by the test."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.http, self.dicom = folder, free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "wm-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": []}))
        self.process = None

    def start(self) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([tool("Orthanc"), str(self.config)], stdout=log, stderr=log)
        wait_for(lambda: self._get("/system") is not None, 30, "Orthanc to start",
                 alive=lambda: self.process.poll() is None)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as response:
                return response.read()
        except OSError:
            return None

    def instances(self) -> list[str]:
        return json.loads(self._get("/instances") or b"[]")

    def file(self, instance: str, folder: Path) -> Path:
        path = folder / f"{instance}.dcm"
        path.write_bytes(self._get(f"/instances/{instance}/file"))
        return path
