"""Marking and reading a folder on a Dask cluster (`wm embed|extract --engine dask`).

The same jobs as `embed_files` and `read_mark` (marking.files), spread over Dask distributed
workers: a `LocalCluster` of `workers` processes on this machine, or a running cluster at
`scheduler` (dask-scheduler + dask-worker, dask-jobqueue on Slurm, dask-kubernetes). What goes over the
network is paths and results, never pixels: every worker reads and writes the shared storage
itself. Each worker process loads the model once (a worker plugin) and decodes in its own
isolated reader. At most a few tasks per worker are in flight at a time, so a listing of
millions of paths never becomes a task graph the scheduler has to hold.

Exactly once in effect: outputs are written atomically (a whole file or none), the audit log
is written by this process alone, from results as they arrive (cli.marking), and a task that
Dask retries because its worker died finds the output the dead worker may have finished and
audits that file instead of marking it again.

Imported only for `--engine dask` (Dask is the optional extra `wm[dask]`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

from distributed import WorkerPlugin

from ..errors import WmError
from ..io.image import read_image
from ..io.isolation import IsolatedReader
from ..io.writing import remove_temporaries_of
from ..keys import KeyFileReference
from ..model.device import model_device
from ..model.store import load_model
from .files import EmbedSettings, FileOutcome, MarkReading, _run_one, read_mark, recovered_result
from .image import codec_for, legacy_codec_for, older_readers

_IN_FLIGHT_PER_WORKER = 4
_PLUGIN_NAME = "wm-marking"


# ---- on the workers --------------------------------------------------------------------------

class _ModelPlugin(WorkerPlugin):
    """Loads the model and opens an isolated reader once per worker process; `worker.wm` then
    holds them (and what `_more_state` adds) for every task that worker runs. `key` is the key,
    or a KeyFileReference that each worker reads (the key then never travels). `device`: where
    each worker runs the networks (under `auto`, a worker with a GPU uses it)."""

    name = _PLUGIN_NAME

    def __init__(self, model: str | None, key, max_pixels: int, threads: int, device: str = "cpu") -> None:
        super().__init__()
        self.model, self.key, self.max_pixels, self.threads, self.device = model, key, max_pixels, threads, device

    def setup(self, worker) -> None:
        import torch

        key = self.key.read() if isinstance(self.key, KeyFileReference) else self.key
        torch.set_num_threads(self.threads)
        loaded = load_model(self.model, model_device(self.device))
        # A daemonic worker process (Dask's default) may not start the reader's child process:
        # it then decodes in process. Workers started with distributed.worker.daemon = False
        # (as LocalCluster here is) isolate their decoders.
        reader = None if multiprocessing.current_process().daemon else IsolatedReader(self.max_pixels).__enter__()
        read = reader.read if reader is not None else (lambda path: read_image(path, self.max_pixels))
        worker.wm = {"loaded": loaded, "codec": codec_for(loaded, key), "reader": reader, "read": read,
                     **self._more_state(loaded, key)}

    def _more_state(self, loaded, key) -> dict:
        return {}

    def teardown(self, worker) -> None:
        state = getattr(worker, "wm", None)
        if state and state["reader"] is not None:
            state["reader"].close()


class MarkingPlugin(_ModelPlugin):
    """For `wm embed`: the embed settings travel once per worker, not with every task (without
    their key when a `key_file` reference is given: each worker reads the key itself)."""

    def __init__(self, settings: EmbedSettings, threads: int, key_file: KeyFileReference | None = None) -> None:
        from dataclasses import replace

        super().__init__(settings.model, key_file or settings.key, settings.max_pixels, threads, settings.device)
        self.settings = settings if key_file is None else replace(settings, key=None)

    def _more_state(self, loaded, key) -> dict:
        from dataclasses import replace

        return {"settings": replace(self.settings, key=key)}


class ReadingPlugin(_ModelPlugin):
    """For `wm extract`: the current codec, the older models' and, for the format-1 hint, the legacy one."""

    def _more_state(self, loaded, key) -> dict:
        return {"legacy": legacy_codec_for(loaded, key), "older": older_readers(loaded, key)}


def _worker_state() -> dict:
    from distributed import get_worker

    return get_worker().wm


def mark_on_worker(source: str, destination: str) -> FileOutcome:
    """One file, on whichever worker Dask chose (the task's whole payload: two paths)."""
    state = _worker_state()
    settings, loaded, codec, read = state["settings"], state["loaded"], state["codec"], state["read"]
    source_path, destination_path = Path(source), Path(destination)
    if destination_path.exists() and not settings.overwrite:
        # A retry after the worker that had this task died: its output may be whole and in place.
        try:
            result = recovered_result(source_path, destination_path, settings, loaded, codec, read)
        except WmError:
            result = None
        if result is not None:
            return FileOutcome(source_path, destination_path, result=result)
    return _run_one(source_path, destination_path, settings, loaded, codec, read)


def read_mark_on_worker(source: str, accept_format_1: bool) -> MarkReading:
    """One file's mark, read on a worker (the task's payload: a path and a flag)."""
    state = _worker_state()
    return read_mark(Path(source), state["read"], state["loaded"], state["codec"], state["legacy"], accept_format_1,
                     state["older"])


# ---- on the client ---------------------------------------------------------------------------

def embed_files_on_cluster(jobs: list[tuple[Path, Path]], settings: EmbedSettings, workers: int = 2,
                           scheduler: str | None = None,
                           stop_requested: Callable[[], bool] = lambda: False,
                           key_file: Path | None = None) -> Iterator[FileOutcome]:
    """`embed_files` on Dask: yields each file's outcome as it completes. With `key_file` (the
    file settings.key was read from, on storage the workers share), each worker reads the key
    from it: the key never goes through the scheduler."""
    key = KeyFileReference.of(key_file, settings.key) if key_file is not None else None

    def failed(job: tuple[Path, Path], why: str) -> FileOutcome:
        return FileOutcome(job[0], job[1], exit_code=1, error=f"{job[0]}: failed on the cluster ({why})")

    try:
        yield from _run_on_cluster(jobs, lambda job: (mark_on_worker, str(job[0]), str(job[1])),
                                   lambda threads: MarkingPlugin(settings, threads, key), failed, workers, scheduler,
                                   stop_requested)
    finally:
        # A worker killed while writing (its file then written again by another) leaves a
        # temporary file behind. A local cluster's workers are closed by now; a remote worker
        # still on an abandoned task finds its temporary file gone and writes nothing.
        remove_temporaries_of(job[1] for job in jobs)


def read_marks_on_cluster(paths: list[Path], model: str | None, key, max_pixels: int, accept_format_1: bool,
                          workers: int = 2, scheduler: str | None = None,
                          stop_requested: Callable[[], bool] = lambda: False,
                          key_file: Path | None = None, device: str = "cpu") -> Iterator[MarkReading]:
    """`read_mark` of every file on Dask: yields each file's reading as it completes. With
    `key_file`, as for `embed_files_on_cluster`: the workers read the key themselves."""
    key = KeyFileReference.of(key_file, key) if key_file is not None else key

    def failed(path: Path, why: str) -> MarkReading:
        return MarkReading(path, error=f"{path}: failed on the cluster ({why})")

    yield from _run_on_cluster(paths, lambda path: (read_mark_on_worker, str(path), accept_format_1),
                               lambda threads: ReadingPlugin(model, key, max_pixels, threads, device), failed, workers,
                               scheduler, stop_requested)


def _run_on_cluster(items: list, task_of: Callable, plugin_for: Callable, failed: Callable, workers: int,
                    scheduler: str | None, stop_requested: Callable[[], bool]) -> Iterator:
    """Run `task_of(item)` = (function, *arguments) for every item on a cluster (`scheduler`, or
    a LocalCluster of `workers` processes) with the plugin `plugin_for(threads per worker)`;
    yield results as they complete, `failed(item, why)` for a task that failed on every worker
    it was tried on. At most a few tasks per worker are submitted at a time; once
    `stop_requested()`, no more."""
    import os

    from distributed import Client, LocalCluster, as_completed

    if scheduler:
        cluster, client = None, Client(scheduler)
    else:
        import dask

        with dask.config.set({"distributed.worker.daemon": False}):  # so workers may isolate decoders
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        threads = max(1, (os.cpu_count() or 1) // n_workers) if cluster is not None else 1
        client.register_plugin(plugin_for(threads), name=_PLUGIN_NAME)
        pending, running, item_of = iter(items), as_completed(), {}

        def submit_next() -> bool:
            item = next(pending, None)
            if item is None:
                return False
            function, *arguments = task_of(item)
            future = client.submit(function, *arguments, pure=False, retries=2)
            item_of[future.key] = item
            running.add(future)
            return True

        for _ in range(n_workers * _IN_FLIGHT_PER_WORKER):
            if not submit_next():
                break
        for future in running:
            item = item_of.pop(future.key)
            try:
                yield future.result()
            except Exception as error:  # failed on every worker it was tried on
                yield failed(item, f"{type(error).__name__}: {(str(error).splitlines() or ['no message'])[0]}")
            if not stop_requested():
                submit_next()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
