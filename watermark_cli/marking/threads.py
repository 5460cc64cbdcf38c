"""The files of a batch marked or read on several threads of one process.

Why threads: nearly all of a file's time goes to numpy, scipy, torch, hashlib and lzma, which
release the GIL, so two threads on two cores mark or read two files at once (a 512² CT: about
0.55 of one thread's time per file, `benchmarks/speed.py`) with one model in memory and no
start-up per worker. Worker processes (`--workers`) stay for isolation and for many cores.

Each thread decodes its files in an `IsolatedReader` of its own (a decoder that crashes costs
one file, as in a single-threaded run), the networks run with cores ÷ threads torch threads, and
results come back in the order of the files, so that reports and audit lines read as before.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..io.isolation import IsolatedReader
from ..io.medical_image import DEFAULT_MAX_PIXELS

#: More threads than this gain little on the machines wm runs on, and each holds an image.
MOST_THREADS = 4

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_threads(files: int, requested: int | None = None) -> int:
    """The threads a batch of `files` runs on: `requested` (the user's `--threads`), else one per
    core up to MOST_THREADS; never more than there are files."""
    wanted = requested if requested is not None else min(os.cpu_count() or 1, MOST_THREADS)
    return max(1, min(wanted, files))


class ReaderPerThread:
    """`IsolatedReader`s, one for each thread that reads: `read(path)` has `read_image`'s
    contract. Use as a context manager; closing it closes every reader."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels
        self._local = threading.local()
        self._readers: list[IsolatedReader] = []
        self._idle: list[IsolatedReader] = []  # started, not yet any thread's
        self._lock = threading.Lock()

    def prestart(self, count: int) -> "ReaderPerThread":
        """Start `count` readers now (their interpreters start while, say, the model loads)."""
        for _ in range(count):
            reader = self._started()
            with self._lock:
                self._idle.append(reader)
        return self

    def _started(self) -> IsolatedReader:
        """A new reader, closed with the others."""
        reader = IsolatedReader(self.max_pixels).__enter__()
        with self._lock:
            self._readers.append(reader)
        return reader

    def __enter__(self) -> "ReaderPerThread":
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    def read(self, path):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            with self._lock:
                reader = self._idle.pop() if self._idle else None
            if reader is None:
                reader = self._started()
            self._local.reader = reader
        return reader.read(path)


@contextmanager
def torch_threads_for(threads: int):
    """While `threads` files run at once, each network call gets cores ÷ threads torch threads
    (two files on two cores with one torch thread each: 195 ms per CT; with two each: 220 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_threads(work: Callable[[Item], Result], items: Iterable[Item], threads: int,
               stop_requested: Callable[[], bool] = lambda: False,
               alone: Callable[[Item], bool] = lambda item: False) -> Iterator[Result]:
    """`work(item)` for every item on `threads` threads, results in the items' order. Once
    `stop_requested()` is true no new item is started; those already started are finished and
    yielded. A few items run ahead of the one being yielded (two per thread), no more. An item
    for which `alone(item)` holds (a huge image) runs with no other beside it."""
    from concurrent.futures import ThreadPoolExecutor

    if threads <= 1:
        for item in items:
            if stop_requested():
                return
            yield work(item)
        return
    remaining = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wm-file") as pool, torch_threads_for(threads):
        pending: deque = deque()  # (future, whether it runs alone)
        waiting: list = []  # an item taken from `remaining` that must wait for the others to finish

        def start_more() -> None:
            while len(pending) < 2 * threads and not stop_requested():
                if pending and pending[-1][1]:
                    return  # nothing starts beside an item that runs alone
                item = waiting.pop() if waiting else next(remaining, _END)
                if item is _END:
                    return
                by_itself = alone(item)
                if by_itself and pending:
                    waiting.append(item)  # started once those before it are done
                    return
                pending.append((pool.submit(work, item), by_itself))

        start_more()
        while pending:
            result = pending.popleft()[0].result()
            start_more()
            yield result


_END = object()
