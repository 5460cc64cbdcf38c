"""Marking a folder on a Dask cluster (`wm embed --engine dask`), and deterministic shards.

The same job as `embed_files` (marking.files), spread over Dask distributed workers: a
`LocalCluster` of `workers` processes on this machine, or a running cluster at `scheduler`
(dask-scheduler + dask-worker, dask-jobqueue on Slurm, dask-kubernetes). What goes over the
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

from .files import EmbedSettings, FileOutcome

_IN_FLIGHT_PER_WORKER = 4
_PLUGIN_NAME = "wm-marking"


# ---- on the workers --------------------------------------------------------------------------

class MarkingPlugin(WorkerPlugin):
    """Loads the model and opens an isolated reader once per worker process."""

    name = _PLUGIN_NAME

    def __init__(self, settings: EmbedSettings, threads: int) -> None:
        super().__init__()
        self.settings = settings
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        from ..io.isolation import IsolatedReader
        from ..model.store import load_model
        from .image import codec_for

        torch.set_num_threads(self.threads)
        loaded = load_model(self.settings.model)
        # A daemonic worker process (Dask's default) may not start the reader's child process:
        # it then decodes in process. Workers started with distributed.worker.daemon = False
        # (as LocalCluster here is) isolate their decoders.
        reader = None if multiprocessing.current_process().daemon else IsolatedReader(self.settings.max_pixels)
        worker.wm_marking = {"settings": self.settings, "loaded": loaded,
                             "codec": codec_for(loaded, self.settings.key),
                             "reader": reader.__enter__() if reader is not None else None}

    def teardown(self, worker) -> None:
        state = getattr(worker, "wm_marking", None)
        if state and state["reader"] is not None:
            state["reader"].close()


def mark_on_worker(source: str, destination: str) -> FileOutcome:
    """One file, on whichever worker Dask chose (the task's whole payload: two paths)."""
    from distributed import get_worker

    from ..errors import WmError
    from .files import _run_one, recovered_result

    from ..io.image import read_image

    state = get_worker().wm_marking
    settings, loaded, codec = state["settings"], state["loaded"], state["codec"]
    read = state["reader"].read if state["reader"] is not None else (
        lambda path: read_image(path, settings.max_pixels))
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


# ---- on the client ---------------------------------------------------------------------------

def embed_files_on_cluster(jobs: list[tuple[Path, Path]], settings: EmbedSettings, workers: int = 2,
                           scheduler: str | None = None,
                           stop_requested: Callable[[], bool] = lambda: False) -> Iterator[FileOutcome]:
    """`embed_files` on Dask: yields each file's outcome as it completes."""
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
        client.register_plugin(MarkingPlugin(settings, threads), name=_PLUGIN_NAME)
        pending, running, jobs_of = iter(jobs), as_completed(), {}
        for _ in range(n_workers * _IN_FLIGHT_PER_WORKER):
            if not _submit_next(client, pending, running, jobs_of):
                break
        for future in running:
            source, destination = jobs_of.pop(future.key)
            try:
                yield future.result()
            except Exception as error:  # a task that failed on every worker it was tried on
                yield FileOutcome(source, destination, exit_code=1,
                                  error=f"{source}: failed on the cluster ({type(error).__name__}: "
                                        f"{(str(error).splitlines() or ['no message'])[0]})")
            if not stop_requested():
                _submit_next(client, pending, running, jobs_of)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _submit_next(client, pending, running, jobs_of: dict) -> bool:
    job = next(pending, None)
    if job is None:
        return False
    future = client.submit(mark_on_worker, str(job[0]), str(job[1]), pure=False, retries=2)
    jobs_of[future.key] = job
    running.add(future)
    return True
