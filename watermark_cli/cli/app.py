"""The `wm` command line: the app, its consoles and the helpers every command shares; `main`.

Heavy libraries (torch, torchvision, matplotlib) are imported inside the commands that need
them, so `wm --help` stays instant. Every failure the user can cause is a `WmError`: printed as
one line on stderr with its exit code (0 success, 1 negative answer, 2 bad input or usage).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import WmError
from ..jsonout import write_json_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Invisible watermarks for medical images, with a PSNR floor that every written image keeps.",
)

stdout = Console()
stderr = Console(stderr=True)
state = {"debug": False}


def _print_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        stdout.print(f"wm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for unexpected errors.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print wm's version and exit.")] = False) -> None:
    state["debug"] = debug


def emit_json(payload: dict) -> None:
    write_json_line(payload)
    state["json_written"] = True


class GracefulStop:
    """The first Ctrl-C (or another of `signal_names`) asks the work to stop at its next safe
    point: embedding lets the files being written finish and be audited, training finishes its
    step and writes the best model so far. A second one stops at once. Either way the atomic
    writes leave no partial file."""

    def __init__(self, message: str = "stopping after the file(s) being written (Ctrl-C again to stop now)",
                 signal_names: tuple[str, ...] = ("SIGINT",), speaks: bool = True) -> None:
        self._stop = False
        self._previous: dict = {}
        self._message = message
        self._signal_names = signal_names
        self._speaks = speaks

    def requested(self) -> bool:
        return self._stop

    def _handle(self, signum, frame) -> None:
        import signal

        if self._stop:
            # Only a second Ctrl-C escalates: a scheduler and torchrun's agent may both send
            # SIGTERM for the same stop.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._stop = True
        if self._speaks:
            stderr.print(self._message, highlight=False)

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self._signal_names:
                number = getattr(signal, name)
                if signal.getsignal(number) is signal.SIG_IGN:
                    continue  # a signal the caller chose to ignore (e.g. `nohup`) stays ignored
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for number, previous in self._previous.items():
            if previous is not None:  # None: a handler installed from C, which cannot be restored
                signal.signal(number, previous)


def format_db(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f}"


def print_summary_table(title: str, summary: dict) -> None:
    """A two-column measure/value table of a command's summary (what --json prints)."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value")
    for name, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else ", ".join(map(str, value)) if isinstance(
            value, list) else str(value)
        table.add_row(name.replace("_", " "), shown)
    stdout.print(table)


def open_model(name_or_path: str | None, device: str = "cpu"):
    """The model, its networks on `device` (`--device`: auto, cpu or cuda)."""
    from ..model.device import model_device
    from ..model.store import load_model

    return load_model(name_or_path, model_device(device))


class progress_bar:
    """A rich progress bar on stderr when `enabled`, else None (JSON mode, single items)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=stderr, transient=True)
        self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _unblock_stop_signals() -> None:
    """A blocked signal mask is inherited across exec: a parent that blocked SIGINT/SIGTERM (some
    thread libraries do) would leave Ctrl-C and a scheduler's stop without effect, and a batch
    could not be stopped gracefully. Ignored signals (`nohup`) stay ignored (see GracefulStop)."""
    import signal

    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):
        pass


def _fail(message: str, code: int) -> None:
    """The one way a command ends in error: one line on stderr and, under --json when the command
    printed no JSON of its own (its per-file lines already say what failed), one JSON object on
    stdout (a script reading stdout gets something to parse), then the exit code."""
    stderr.print(f"error: {escape(message)}", highlight=False, soft_wrap=True)
    if "--json" in sys.argv[1:] and not state.get("json_written"):
        emit_json({"error": message, "exit_code": code})
    sys.exit(code)


def reflow_help(typer_app: typer.Typer) -> None:
    """Join the lines of each paragraph of every command's docstring: typer keeps the line breaks
    of the later paragraphs, so an 80-column help broke each source line a second time."""
    import inspect

    for info in typer_app.registered_commands:
        text = info.help or inspect.getdoc(info.callback) or ""
        info.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in text.split("\n\n"))
    for group in typer_app.registered_groups:
        reflow_help(group.typer_instance)


# glibc's malloc hands blocks of 128 KB and up back to the kernel when they are freed, and a read
# allocates and frees hundreds of such arrays (feature maps, folds, spectra): each came back as
# fresh pages to fault in and zero, 15 to 25 ms of kernel time in an unmarked 512² CT's read of
# about 230. Served from the heap below 32 MB (glibc's largest setting), and kept while under
# 256 MB at its top, they are reused instead. Peak memory barely moves (`benchmarks/memory.py`,
# the 1955×1841 CR's embed: 1,194 MiB before, 1,221–1,227 after, numba's libraries included).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BLOCKS_BELOW = 32 << 20
_HEAP_KEPT_UP_TO = 256 << 20


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse (see `_HEAP_BLOCKS_BELOW`); nothing where
    the C library is another. Forked workers inherit it."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCKS_BELOW)
    mallopt(_M_TRIM_THRESHOLD, _HEAP_KEPT_UP_TO)


def main() -> None:
    import warnings

    state.update(debug=False, json_written=False, stopped_gracefully=False)  # one command per call

    # Libraries' warnings about the files they read (pydicom on a non-conformant value, Pillow
    # on a large image) are not for the user of a command line: what matters reaches them as
    # wm's own one-line errors and warnings. PYTHONWARNINGS still turns them back on.
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    _unblock_stop_signals()
    _keep_freed_memory()
    # Not standalone: usage errors come back as exceptions, so that they too are one line.
    try:
        code = app(standalone_mode=False)
        if code == 130 and not state.get("stopped_gracefully"):
            # typer turns a KeyboardInterrupt inside a command into this exit code
            stderr.print("interrupted; no partial file was left behind", highlight=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Abort:
        stderr.print("aborted", highlight=False)
        sys.exit(130)
    except typer.TyperException as error:
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        message = " ".join(message.split())
        if not message:  # e.g. `wm` alone: the help was printed, nothing else to say
            sys.exit(getattr(error, "exit_code", 2) or 2)
        _fail(f"{message} (see wm --help)", getattr(error, "exit_code", 2) or 2)
    except WmError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted; no partial file was left behind", highlight=False)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if state["debug"]:
            raise
        first_line = (str(error).splitlines() or [""])[0]
        _fail(f"unexpected {type(error).__name__}: {first_line} (rerun with --debug for details)", 2)

