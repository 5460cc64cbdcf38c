"""Files of a batch marked and read on several threads, or read in forked processes: the same
files, values and answers as on one, in the files' order; a bad file still fails alone, and a
worker process that dies costs only the file it died on."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from conftest import fixed_key
from watermark_cli.data.clinical import clinical_file
from watermark_cli.errors import BadInputError
from watermark_cli.io.image import read_image
from watermark_cli.marking.files import EmbedSettings, embed_files, read_mark
from watermark_cli.marking.image import codec_for
from watermark_cli.marking.threads import (ReaderPerThread, default_threads, in_processes, in_threads, in_workers,
                                           runs_in_processes)
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

# Their slow tests want the machine to themselves (`scripts/test.sh --all`).
pytestmark = pytest.mark.exclusive

KEY = fixed_key("threads")


def test_results_come_back_in_order_and_a_stop_starts_nothing_new():
    started = []

    def slow_first(item: int) -> int:
        started.append(item)
        time.sleep(0.2 if item == 0 else 0.0)  # the first finishes last
        return item * item

    assert list(in_threads(slow_first, range(7), 3)) == [i * i for i in range(7)]
    names = set()
    assert list(in_threads(lambda i: names.add(threading.current_thread().name) or time.sleep(0.05) or i, range(6),
                           2)) == list(range(6))
    assert len(names) == 2 and all(name.startswith("wm-file") for name in names)

    started.clear()
    stop = threading.Event()
    results = []
    for result in in_threads(slow_first, range(20), 2, stop_requested=stop.is_set):
        results.append(result)
        stop.set()
    # What had started is finished and reported; nothing after the stop was started.
    assert results == [i * i for i in sorted(started)] and len(started) <= 2 * 2 + 1
    assert default_threads(1) == 1 and default_threads(10, 3) == 3 and default_threads(2, 8) == 2


def test_an_item_that_must_run_alone_has_nothing_beside_it():
    """A huge image is marked with no other in memory beside it (`files._marked_alone`)."""
    lock, running, seen = threading.Lock(), set(), {}

    def work(item: int) -> int:
        with lock:
            running.add(item)
        time.sleep(0.03)
        with lock:
            seen[item] = set(running)
            running.discard(item)
        return item

    huge = {3, 4, 9}
    assert list(in_threads(work, range(12), 3, alone=lambda item: item in huge)) == list(range(12))
    assert all(seen[item] == {item} for item in huge)  # nothing ran beside them
    assert any(len(seen[item]) > 1 for item in range(12) if item not in huge)  # the others did share


def test_processes_give_results_in_order_and_a_dying_worker_costs_only_its_item():
    parent = os.getpid()

    def square(item: int) -> tuple[int, int]:
        if item == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        time.sleep(0.1 if item == 0 else 0.0)  # the first finishes last
        return item * item, os.getpid()

    results = list(in_processes(square, range(9), 2, lost=lambda item: ("lost", item)))
    assert [result[0] for result in results] == [0, 1, 4, "lost", 16, 25, 36, 49, 64]
    workers = {pid for value, pid in results if value != "lost"}
    assert parent not in workers and len(workers) >= 2  # the work ran in worker processes, two at once

    stop = threading.Event()
    stopped = []
    for result in in_processes(lambda item: time.sleep(0.05) or item, range(40), 2, lost=lambda item: None,
                               stop_requested=stop.is_set):
        stopped.append(result)
        stop.set()
    # What had started is finished and reported, in order; nothing after the stop was started.
    assert stopped == list(range(len(stopped))) and len(stopped) <= 2 * 2 + 1

    # An item that runs alone has nothing beside it (the clock is the system's, shared by processes).
    def timed(item: int) -> tuple[int, float, float]:
        started = time.monotonic()
        time.sleep(0.05)
        return item, started, time.monotonic()

    spans = list(in_processes(timed, range(10), 2, lost=lambda item: None, alone=lambda item: item in (3, 7)))
    assert [item for item, _, _ in spans] == list(range(10))
    for item, start, end in spans:
        if item in (3, 7):
            assert not [other for other, s, e in spans if other != item and s < end and start < e]
    assert any(s < e2 and s2 < e for (i, s, e), (j, s2, e2) in zip(spans, spans[1:]) if {i, j}.isdisjoint({3, 7}))

    # Processes where each file at once has a core of its own, or whenever the networks are on a GPU.
    cores = os.cpu_count() or 1
    assert runs_in_processes(max(cores, 2), True) and runs_in_processes(2, False)
    assert not runs_in_processes(1, True) and not runs_in_processes(1, False)
    assert runs_in_processes(cores, True) == (cores > 1)
    assert default_threads(40, on_gpu=True) == min(cores, 16) and default_threads(40) == min(cores, 4)


class _Networks:
    """Stands for a `LoadedModel`: where its networks are, and where `move_to` put them."""

    def __init__(self) -> None:
        self.device = "cpu"

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    def move_to(self, device: str) -> "_Networks":
        self.device = device
        return self


def test_with_the_networks_on_a_gpu_each_forked_worker_moves_them_there_and_this_process_does_not(monkeypatch):
    """What `wm embed`/`extract --device cuda` do with several files (no GPU is needed to see it:
    the move is the stand-in's): the run's own copy stays on the CPU, every worker's is moved
    before its first file, and a run of one file at a time moves this process's."""
    from watermark_cli.marking import threads

    monkeypatch.setattr(threads, "gpu_workers_may_fork", lambda: True)  # CUDA not started here
    networks = _Networks()
    parent = os.getpid()
    seen = list(in_workers(lambda item: (item, os.getpid(), networks.device), range(6), 2, [networks], "cuda:0",
                           lost=lambda item: None))
    assert [item for item, _, _ in seen] == list(range(6))
    assert {device for _, _, device in seen} == {"cuda:0"} and parent not in {pid for _, pid, _ in seen}
    assert networks.device == "cpu"

    alone = list(in_workers(lambda item: (os.getpid(), networks.device), range(2), 1, [networks], "cuda:0",
                            lost=lambda item: None))
    assert alone == [(parent, "cuda:0")] * 2 and networks.device == "cuda:0"
    # Networks already on a GPU here are never forked with (CUDA would not work in the worker): threads.
    on_threads = list(in_workers(lambda item: os.getpid(), range(4), 2, [networks], "cuda:0", lost=lambda item: None))
    assert on_threads == [parent] * 4
    # Nor where CUDA started here otherwise (`device.gpu_workers_may_fork`): threads, the networks moved here.
    monkeypatch.setattr(threads, "gpu_workers_may_fork", lambda: False)
    networks = _Networks()
    on_threads = list(in_workers(lambda item: (os.getpid(), networks.device), range(4), 2, [networks], "cuda:0",
                                 lost=lambda item: None))
    assert on_threads == [(parent, "cuda:0")] * 4


class _NoRoomOnTheGpu(_Networks):
    def move_to(self, device: str) -> "_NoRoomOnTheGpu":
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 MiB")


def test_a_worker_that_cannot_move_the_networks_to_the_gpu_stops_the_run_with_one_line(monkeypatch):
    from watermark_cli.marking import threads

    monkeypatch.setattr(threads, "gpu_workers_may_fork", lambda: True)
    with pytest.raises(BadInputError) as refused:
        list(in_workers(lambda item: item, range(6), 2, [_NoRoomOnTheGpu()], "cuda:0", lost=lambda item: "lost"))
    assert str(refused.value) == "a worker process could not start: CUDA out of memory. Tried to allocate 2.00 MiB"


def test_work_that_needs_gradients_is_not_forked_where_a_forked_process_could_not_compute_them(monkeypatch):
    """A process that has itself used autograd in certain ways (a test suite, a long-lived caller)
    can leave its forked children unable to compute a gradient; a small frame's fitted mark needs
    one, so such work then runs on threads (`threads.autograd_survives_fork`, tried in a child)."""
    import subprocess
    import sys

    from watermark_cli.marking import threads

    fresh = subprocess.run([sys.executable, "-c", "import sys; from watermark_cli.marking.threads import "
                            "autograd_survives_fork as ok; sys.exit(0 if ok() else 1)"], timeout=120)
    assert fresh.returncode == 0  # a fresh process (a wm run) keeps it: its children compute gradients
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # two at once: a forked process each
    parent = os.getpid()
    where = lambda item: os.getpid()  # noqa: E731
    monkeypatch.setattr(threads, "autograd_survives_fork", lambda: True)
    assert parent not in list(in_workers(where, range(4), 2, [], "cpu", lost=lambda item: None, uses_autograd=True))
    monkeypatch.setattr(threads, "autograd_survives_fork", lambda: False)
    assert list(in_workers(where, range(4), 2, [], "cpu", lost=lambda item: None, uses_autograd=True)) == [parent] * 4
    assert parent not in list(in_workers(where, range(4), 2, [], "cpu", lost=lambda item: None))  # reads need none


@pytest.fixture(scope="module")
def shipped():
    loaded = load_model(None)
    return loaded, codec_for(loaded, KEY)


@pytest.mark.slow  # three embeds and six reads, twice: 8 to 9 s, over the fast lane's guard on a slow day
def test_two_threads_mark_and_read_what_one_does(tmp_path, shipped):
    loaded, codec = shipped
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "JPEG2000_UNC.dcm"):
        shutil.copy(clinical_file(name), folder / name)
    (folder / "broken.dcm").write_bytes(b"DICM, or so it says")
    sources = sorted(folder.iterdir())
    settings = EmbedSettings(b"T-42", QualityFloor(40.0), key=KEY)
    values = {}
    for threads in (1, 2):
        jobs = [(source, tmp_path / f"out{threads}" / source.name) for source in sources]
        (tmp_path / f"out{threads}").mkdir()
        outcomes = list(embed_files(jobs, settings, loaded, codec, threads=threads))
        assert [outcome.source for outcome in outcomes] == sources  # in the files' order
        assert [outcome.result is None for outcome in outcomes] == [source.name == "broken.dcm" for source in sources]
        assert "broken.dcm" in outcomes[-1].error
        values[threads] = [read_image(job[1]).pixels for job in jobs[:-1]]
    assert all(np.array_equal(a, b) for a, b in zip(values[1], values[2]))

    marked = sorted((tmp_path / "out2").glob("*.dcm")) + sources[:-1]  # three marked, three not
    with ReaderPerThread() as readers:
        readings = list(in_threads(lambda path: read_mark(path, readers.read, loaded, codec, None, False),
                                   marked, 2))
    assert [reading.source for reading in readings] == marked
    assert [reading.decoded.found for reading in readings] == [True] * 3 + [False] * 3
    assert {reading.decoded.message for reading in readings[:3]} == {b"T-42"}

    # Read in two forked processes (as `wm extract` does on a CPU): the same answers, though
    # this process had a decoder started (a worker starts its own).
    with ReaderPerThread().prestart(1) as readers:
        forked = list(in_processes(lambda path: read_mark(path, readers.read, loaded, codec, None, False),
                                   marked, 2, lost=lambda path: None))
    assert [(r.source, r.decoded.found, r.decoded.message, r.decoded.bit_errors) for r in forked] == [
        (r.source, r.decoded.found, r.decoded.message, r.decoded.bit_errors) for r in readings]
