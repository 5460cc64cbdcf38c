"""Decoding untrusted files in a process of their own, so that a decoder that crashes takes only
that process with it.

`read_image` turns every exception a decoder raises into a one-line error, native panics
included; what it cannot catch is a native decoder that kills the interpreter (a segfault, an
abort, the kernel's out-of-memory killer). `IsolatedReader` runs `read_image` in one long-lived
child process and gets the image back through a pipe. When the child dies on a file, that file
gets one line naming the signal, a new child is started for the next file, and the batch goes
on. The child also holds what decoders print (Rust panics write a backtrace to stderr) away
from the user's terminal, limits its own address space, and is stopped when one file takes
longer than `timeout_s`.

The cost is one extra interpreter per run (started while the model loads, about 0.3 s) and a
copy of each image through the pipe (about 1 ms per MB): `benchmarks/decode_isolation.py`
measures both.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..errors import BadInputError, WmError
from .image import read_image
from .medical_image import DEFAULT_MAX_PIXELS, MedicalImage

#: A file that takes longer than this to decode is treated as a decoder that hangs.
DECODE_TIMEOUT_S = 600.0


class IsolatedReader:
    """`read_image` in a child process that is replaced when it dies. Use as a context manager,
    or call `close()`; `read(path)` has `read_image`'s contract (an image or a BadInputError)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, timeout_s: float = DECODE_TIMEOUT_S) -> None:
        self.max_pixels = int(max_pixels)
        self.timeout_s = float(timeout_s)
        self._process = None
        self._connection = None
        self.crashes = 0  # children lost to a file (for the batch summary and the benchmarks)

    def __enter__(self) -> "IsolatedReader":
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, path: str | Path) -> MedicalImage:
        path = Path(path)
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            self._connection.send(str(path))
            if not self._connection.poll(self.timeout_s):
                self._stop()
                raise BadInputError(f"{path}: decoding took longer than {self.timeout_s:g} s; stopped")
            answer = self._connection.recv()
        except (EOFError, OSError):
            raise BadInputError(f"{path}: the image decoder crashed on this file ({self._lost_child()}); "
                                "file not read") from None
        if isinstance(answer, MedicalImage):
            return answer
        message, exit_code = answer
        error = BadInputError(message)
        error.exit_code = exit_code
        raise error

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()  # the child sees end of file and exits
            except OSError:
                pass
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._process = self._connection = None

    # -- the child ------------------------------------------------------------------------------

    def _start(self) -> None:
        import multiprocessing

        # 'spawn': the parent has torch's thread pool running, and forking it can deadlock.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=_serve, args=(theirs, self.max_pixels), name="wm-decoder", daemon=True)
        process.start()
        theirs.close()
        self._process, self._connection = process, ours

    def _stop(self) -> None:
        self._process.kill()
        self._process.join()
        self._connection.close()
        self._process = self._connection = None
        self.crashes += 1

    def _lost_child(self) -> str:
        process = self._process
        process.join(timeout=5)
        code = process.exitcode
        self._connection.close()
        self._process = self._connection = None
        self.crashes += 1
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


def _address_space_limit(max_pixels: int) -> int:
    """Room for the decoder's libraries plus several copies of the largest image allowed; a
    decoder that asks for more gets a MemoryError (a one-line error) instead of the machine."""
    return 2 * 2**30 + 16 * max_pixels


def _serve(connection, max_pixels: int) -> None:
    """The child: read paths from the pipe, answer each with the image or (message, exit code)."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # decoders' own chatter (a Rust panic's backtrace) never reaches the user
    os.environ["RUST_BACKTRACE"] = "0"
    limit = _address_space_limit(max_pixels)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ValueError, OSError):
        pass  # a lower hard limit is already in place
    import pydicom  # noqa: F401 - imported while the parent loads its model
    import pydicom.pixels  # noqa: F401 - the decoders too

    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer = read_image(path, max_pixels)
        except WmError as error:
            answer = (str(error), error.exit_code)
        except Exception as error:  # read_image converts decoder errors; anything else is a bug
            answer = (f"{path}: unexpected {type(error).__name__} while reading: {error}".splitlines()[0], 2)
        try:
            connection.send(answer)
        except (EOFError, OSError):
            return
        except Exception as error:  # an image that cannot be pickled back
            connection.send((f"{path}: cannot pass the decoded image back ({type(error).__name__})", 2))
