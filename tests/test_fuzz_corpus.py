"""Replay the fuzzing regression corpus (tests/fuzz_corpus, see its README.md).

Every image file there once broke `read_image` (or, under limits/, declares a far larger image
than it holds and must be refused quickly): it must now return an image or raise a WmError whose
message is one line naming the file. The message_key/ cases replay `message_bytes` and
`resolve_key`: a value or a one-line WmError.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from watermark_cli.errors import WmError

CORPUS = Path(__file__).parent / "fuzz_corpus"
IMAGE_FOLDERS = ("dicom", "png", "tiff", "jpeg", "limits")
IMAGES = sorted(p for folder in IMAGE_FOLDERS if (CORPUS / folder).is_dir()
                for p in (CORPUS / folder).iterdir() if p.is_file())
CASES = sorted((CORPUS / "message_key").glob("*.json")) if (CORPUS / "message_key").is_dir() else []
#: A file of the corpus is small; reading or refusing it must be quick (limits/ above all).
SECONDS_PER_FILE = 2.0


def test_corpus_is_present():
    assert IMAGES, f"no corpus files under {CORPUS}"
    assert list((CORPUS / "limits").iterdir()), "the limit files are missing"


#: The replaying process's address space: a decoder that tries to allocate a bomb fails at once
#: there instead of taking the machine's memory (some of these files ask a decoder for 20 GB).
ADDRESS_SPACE = 3 * 2**30

_REPLAY = r"""
import json, resource, sys, time, warnings
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
warnings.simplefilter("ignore")
from watermark_cli.errors import WmError
from watermark_cli.io.image import read_image
from watermark_cli.io.medical_image import MedicalImage
for line in sys.stdin:
    path = line.rstrip("\n")
    start = time.perf_counter()
    try:
        image = read_image(path)
        answer = {"outcome": "image" if isinstance(image, MedicalImage) else type(image).__name__}
    except WmError as error:
        answer = {"outcome": "WmError", "message": str(error)}
    except BaseException as error:
        answer = {"outcome": type(error).__name__, "message": str(error)}
    answer["seconds"] = time.perf_counter() - start
    print(json.dumps(answer), flush=True)
"""


class _Replayer:
    """`read_image` in a child process under ADDRESS_SPACE, replaced when a file kills it or takes
    longer than SECONDS_PER_FILE (so one bad file fails its own test, not the session)."""

    def __init__(self) -> None:
        self.process = None

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _REPLAY, str(ADDRESS_SPACE)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        cwd=Path(__file__).parent.parent)

    def read(self, path: Path) -> dict:
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], SECONDS_PER_FILE + 1)
        line = self.process.stdout.readline() if ready else ""
        if line:
            answer = json.loads(line)
            if "memory" in answer.get("message", ""):
                self.close()  # what a decoder leaves behind after a bomb must not fail the next file
            return answer
        self.close()
        return {"outcome": "no answer (the reading process died or hung)", "seconds": float("inf")}

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def replayer():
    reader = _Replayer()
    yield reader
    reader.close()


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_file_is_read_or_refused_in_one_line(path: Path, replayer):
    answer = replayer.read(path.resolve())
    assert answer["outcome"] in ("image", "WmError"), f"{answer['outcome']}: {answer.get('message', '')[:300]}"
    if answer["outcome"] == "WmError":
        message = answer["message"]
        assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
        assert path.name in message, f"the message does not name the file: {message!r}"
        # A file this small never needs gigabytes: running out of the replay's 3 GiB means a decoder
        # was handed a bomb (elsewhere it would have taken all the machine's memory).
        assert "not enough memory" not in message, f"a decoder tried to allocate a bomb: {message!r}"
    else:
        assert path.parent.name != "limits", f"{path.name} declares an enormous image and was read anyway"
    assert answer["seconds"] < SECONDS_PER_FILE, f"took {answer['seconds']:.1f} s"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_message_and_key_cases_give_a_value_or_one_line(path: Path, tmp_path: Path, monkeypatch):
    from watermark_cli.cli.options import message_bytes
    from watermark_cli.keys import resolve_key

    case = json.loads(path.read_text(encoding="utf-8"))
    monkeypatch.delenv("WM_KEY", raising=False)
    try:
        if case["function"] == "message":
            value = message_bytes(case["message"], case["hex_message"])
        elif case["function"] == "key":
            key_file = None
            if case.get("key_file") == "missing":
                key_file = tmp_path / "no-such-key"
            elif case.get("key_file") == "folder":
                key_file = tmp_path
            elif isinstance(case.get("key_file"), dict):
                key_file = tmp_path / "key-file"
                head = bytes.fromhex(case["key_file"]["head"])
                key_file.write_bytes((head * (case["key_file"]["bytes"] // max(len(head), 1) + 1))[: case["key_file"]["bytes"]])
            value = resolve_key(case.get("key"), key_file)
        else:
            monkeypatch.setenv("WM_KEY", case["env_WM_KEY"])
            value = resolve_key(None, None)
    except WmError as error:
        assert str(error).strip() and "\n" not in str(error).strip()
    else:
        assert value is None or isinstance(value, bytes)
