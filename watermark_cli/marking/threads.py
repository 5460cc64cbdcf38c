"""The files of a batch marked or read several at once: on threads of one process, or in worker
processes forked from it when there is a core for each.

Why threads: nearly all of a file's time goes to numpy, scipy, torch, hashlib and lzma, which
release the GIL, so two threads on two cores mark or read two files at once (a 512² CT: about
0.55 of one thread's time per file, `benchmarks/speed.py`) with one model in memory and no
start-up per worker. Worker processes (`--workers`) stay for isolation and for many cores.

Why forked processes where each file at once has a core of its own (`runs_in_processes`): an
unmarked image's read (every synchronisation candidate tried before "no watermark") holds the
GIL for about half its time (the list decoders, numpy's many small calls), so two threads on two
cores read only 1.3 to 1.5 times as fast as one; two processes of one torch thread each, close
to twice. Forked after the model is loaded, a worker starts in milliseconds and shares the
model's memory (`in_processes`). Where there are more cores than files at once, threads stay:
each gets cores ÷ threads torch threads, which a forked worker cannot have (below).

With the networks on a GPU the files run in forked processes too, one per core: the networks
take a GPU a fraction of a millisecond per frame, and what is left of a file (the searches, the
payload, the guard, the record, the writing: about 100 ms of a core's work for a 512² CT) is
what limits a run, which threads of one process (the GIL) could not spread over the cores. The
run loads the model on the CPU without starting CUDA (`model.device`), and each worker moves
its copy of the networks to the GPU as it starts, with a CUDA context of its own.

Each thread or process decodes its files in an `IsolatedReader` of its own (a decoder that
crashes costs one file, as in a single-threaded run), and results come back in the order of the
files, so that reports and audit lines read as before.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from ..errors import BadInputError
from ..forked_child import exit_code_in_forked_child
from ..io.isolation import IsolatedReader
from ..io.medical_image import DEFAULT_MAX_PIXELS, one_line
from ..model.device import gpu_workers_may_fork

#: More threads than this gain little on the machines wm runs on, and each holds an image.
MOST_THREADS = 4
#: With the networks on a GPU: files at once, a forked process each, at most (each holds a CUDA
#: context of a few hundred MB on the GPU).
MOST_GPU_PROCESSES = 16

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_threads(files: int, requested: int | None = None, on_gpu: bool = False) -> int:
    """How many of a batch's `files` run at once: `requested` (the user's `--threads`), else one
    per core up to MOST_THREADS, or with the networks on a GPU up to MOST_GPU_PROCESSES; never
    more than there are files."""
    most = MOST_GPU_PROCESSES if on_gpu else MOST_THREADS
    wanted = requested if requested is not None else min(os.cpu_count() or 1, most)
    return max(1, min(wanted, files))


class ReaderPerThread:
    """`IsolatedReader`s, one for each thread that reads: `read(path)` has `read_image`'s
    contract. Use as a context manager; closing it closes every reader. In a process forked
    from the one that made it (`in_processes`), it starts readers of that process's own: the
    parent's decoders answer only the parent."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels
        self._forget_readers()
        _ALL_READERS.add(self)

    def _forget_readers(self) -> None:
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


_ALL_READERS: "weakref.WeakSet[ReaderPerThread]" = weakref.WeakSet()


def _forget_inherited_readers() -> None:
    for readers in list(_ALL_READERS):
        readers._forget_readers()  # the parent's; it closes them


os.register_at_fork(after_in_child=_forget_inherited_readers)


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
                item, by_itself = _next_item(remaining, waiting, alone, busy=bool(pending))
                if item is _END:
                    return
                pending.append((pool.submit(work, item), by_itself))

        start_more()
        while pending:
            result = pending.popleft()[0].result()
            start_more()
            yield result


_END = object()


def _next_item(remaining: Iterator, waiting: list, alone: Callable[[object], bool], busy: bool) -> tuple[object, bool]:
    """The next item to start and whether it runs alone (`alone(item)`); (_END, False) when there
    is none, or when it runs alone and others are `busy`: it is then kept in `waiting`, which
    the next call takes first."""
    item = waiting.pop() if waiting else next(remaining, _END)
    if item is _END:
        return _END, False
    by_itself = alone(item)
    if by_itself and busy:
        waiting.append(item)  # started once those before it are done
        return _END, False
    return item, by_itself


def runs_in_processes(at_once: int, on_cpu: bool) -> bool:
    """Whether `at_once` files at a time run in forked processes (`in_processes`) rather than on
    threads: with the networks on a GPU always, on the CPU when there is no core left over for a
    second torch thread in any of them (the module docstring)."""
    return at_once > 1 and (not on_cpu or at_once >= (os.cpu_count() or 1))


def in_workers(work: Callable[[Item], Result], items: Iterable[Item], at_once: int, models: list, device: str,
               lost: Callable[[Item], Result], stop_requested: Callable[[], bool] = lambda: False,
               alone: Callable[[Item], bool] = lambda item: False,
               retry: Callable[[Item], Result] | None = None, uses_autograd: bool = False,
               forked: bool | None = None) -> Iterator[Result]:
    """`work(item)` for every item, `at_once` at a time, results in the items' order, with the
    networks of `models` (`store.LoadedModel`s, loaded on the CPU) on `device` ('cpu',
    'cuda:0'): in forked processes where `runs_in_processes` (each moving the networks to a GPU
    as it starts), else on threads of this process, the networks moved to `device` here first.
    Never forked for a GPU once this process has started CUDA itself (a classifier on the GPU,
    a GPU count only CUDA could give: `device.gpu_workers_may_fork`): a worker forked after that
    could not use it (then at most MOST_THREADS threads). A worker that cannot put the networks
    on the GPU answers every item with one `BadInputError` saying why. Work that `uses_autograd`
    (a small frame's mark fitted to its host, `host_fit`) is forked only where a forked process
    can still run it (`autograd_survives_fork`). `forked`: `forks_workers`' answer where the
    caller has it already (its autograd probe forks a child). `lost`, `stop_requested`, `alone`
    and `retry` as `in_processes` takes them."""
    if forked is None:
        forked = forks_workers(at_once, models, device, uses_autograd)
    if forked:
        on_start = None if device == "cpu" else partial(_networks_to, models, device)
        yield from in_processes(work, items, at_once, lost, stop_requested, alone, retry, on_start)
        return
    _networks_to(models, device)
    # A GPU's files at once are one per core (up to 16) for processes; threads of one process gain
    # little past MOST_THREADS (the interpreter lock), and each holds its images.
    threads = at_once if device == "cpu" else min(at_once, MOST_THREADS)
    yield from in_threads(work, items, threads, stop_requested, alone)


def forks_workers(at_once: int, models: list, device: str, uses_autograd: bool = False) -> bool:
    """Whether `in_workers` runs its items in forked processes (see there)."""
    on_cpu = device == "cpu"
    return (runs_in_processes(at_once, on_cpu) and all(model.on_cpu for model in models)
            and (on_cpu or gpu_workers_may_fork()) and (not uses_autograd or autograd_survives_fork()))


_autograd_lost_to_forks = False


def autograd_survives_fork() -> bool:
    """Whether a process forked from this one can compute a gradient. A process that has used
    autograd in some ways (seen in a test suite's process; a plain CPU gradient, torch.export,
    ONNX export and tracing do not do it) leaves every process forked from it refusing to ("Unable
    to handle autograd's threading in combination with fork-based multiprocessing"), and torch
    does not say whether that has happened: a child forked for the purpose tries one (a few ms).
    Once lost, it stays lost."""
    global _autograd_lost_to_forks
    if _autograd_lost_to_forks:
        return False
    try:
        survives = exit_code_in_forked_child(_compute_a_gradient) == 0
    except TimeoutError:
        survives = False
    _autograd_lost_to_forks = not survives
    return survives


def _compute_a_gradient() -> None:
    """In a forked child: exit 0 once a gradient was computed, 1 if it could not be."""
    try:
        import torch

        value = torch.ones(1, requires_grad=True)
        torch.autograd.grad(value.sum(), value)
    except BaseException:  # noqa: BLE001 - the exit code is the answer
        os._exit(1)
    os._exit(0)


def _networks_to(models: list, device: str) -> None:
    for model in models:
        model.move_to(device)


def in_processes(work: Callable[[Item], Result], items: Iterable[Item], processes: int,
                 lost: Callable[[Item], Result], stop_requested: Callable[[], bool] = lambda: False,
                 alone: Callable[[Item], bool] = lambda item: False,
                 retry: Callable[[Item], Result] | None = None,
                 on_start: Callable[[], None] | None = None) -> Iterator[Result]:
    """`in_threads` in `processes` worker processes forked from this one: `work(item)` for every
    item, results in the items' order (a few items run ahead, two per process), nothing new
    started once `stop_requested()`, nothing beside an item for which `alone(item)`; each worker
    calls `on_start()` first (the networks moved to a GPU: this process must not have started
    CUDA, `in_workers`). Each worker runs torch on one thread: a process forked
    after its parent's OpenMP threads started hangs in the first parallel region it opens
    (pytorch issue 41197: the threads it would wait for were not copied), and on one thread
    torch opens none. `work` and the items reach the workers by the fork, the results come back
    pickled.

    A worker that dies (the out-of-memory killer; a decoder's crash costs only its own
    `IsolatedReader`) breaks the pool: the items it had not finished are tried again in a new
    one, by `retry` (default: `work`), one at a time, so that the item that killed it takes no
    other with it; an item lost twice gives `lost(item)`."""
    if processes <= 1:
        yield from in_threads(work, items, 1, stop_requested)
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _forked_work
    remaining = iter(items)
    waiting: list = []  # an item that runs alone, waiting for those before it to finish
    # Items a broken pool took with it, in order: (item, times lost, its result if it had one).
    again: deque = deque()
    _forked_work = (work, retry or work, on_start)
    try:
        while True:
            pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_start_forked_worker, initargs=(os.getpid(),))
            pending: deque = deque()  # (item, times lost before, future, whether it runs alone)

            def start_more() -> None:
                while True:
                    by_itself = any(before or solo for _, before, _, solo in pending)
                    if len(pending) >= (1 if by_itself or again else 2 * processes):
                        return
                    if again:
                        item, before, done = again.popleft()
                        if before >= 2:  # lost twice: its answer is `lost(item)`
                            done = Future()
                            done.set_result(lost(item))
                        if done is not None:
                            pending.append((item, 0, done, False))
                            continue
                        if pending:  # a retried item runs alone
                            again.appendleft((item, before, None))
                            return
                        pending.append((item, before, pool.submit(_run_forked_work, item, True), True))
                        continue
                    if stop_requested():
                        return
                    item, solo = _next_item(remaining, waiting, alone, busy=bool(pending))
                    if item is _END:
                        return
                    pending.append((item, 0, pool.submit(_run_forked_work, item, False), solo))

            try:
                start_more()
                while pending:
                    try:
                        result = pending[0][2].result()
                    except BrokenProcessPool:
                        break
                    pending.popleft()
                    start_more()
                    yield result
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if not pending:
                return
            # Results already in stay; every other item in flight is tried again.
            again.extendleft(reversed([(item, before + 1, None) if _lost_with_pool(future) else (item, before, future)
                                       for item, before, future, _ in pending]))
    finally:
        _forked_work = None


def _lost_with_pool(future) -> bool:
    from concurrent.futures.process import BrokenProcessPool

    return not future.done() or future.cancelled() or isinstance(future.exception(), BrokenProcessPool)


# What `in_processes`' workers run (the work, what runs for an item tried again, and what each
# runs as it starts), set before they fork.
_forked_work: tuple[Callable, Callable, Callable[[], None] | None] | None = None


def _start_forked_worker(parent: int) -> None:
    import signal
    import sys

    import torch

    exit_with_parent(parent)
    # Ctrl-C reaches the whole process group: the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # see `in_processes`
    # A worker prints nothing (what goes wrong comes back as its result). The standard streams it
    # was forked with may have been in the middle of a write by another thread of the run (the
    # progress display) and so hold a lock no thread here will release: writing to them (a
    # warning, a flush as the worker exits) would wait for ever. New ones take their place.
    sys.stdout = sys.stderr = open(os.devnull, "w")
    on_start = _forked_work[2]
    if on_start is not None:
        global _start_failure
        try:
            on_start()
        except Exception as error:  # noqa: BLE001 - every item of this worker answers with it
            _start_failure = BadInputError(f"a worker process could not start: {one_line(error)}")


def exit_with_parent(parent: int) -> None:
    """Have the kernel kill this worker process when `parent`, the process that started it,
    dies (Linux; elsewhere nothing is done). A worker waits for its next file on a queue whose
    other end it holds itself, so a run killed outright (SIGKILL, the out-of-memory killer)
    would otherwise leave its workers waiting for ever."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# Why this worker could not start (`on_start` failed: the GPU out of memory, say), or None.
_start_failure: BadInputError | None = None


def _run_forked_work(item, tried_before: bool):
    if _start_failure is not None:
        raise _start_failure  # one clear error for the run, not every file "lost" twice
    work, retry, _ = _forked_work
    return (retry if tried_before else work)(item)
