"""Throughput of `wm embed FOLDER` with the local engine and with Dask, and the scheduler's memory
for a long listing.

    .venv/bin/python benchmarks/scale.py [--copies 4] [--paths 100000]

Part 1: a folder of real pydicom-data images (CT 512², NM 1024x256, MR 484², CT 128², each
`--copies` times) is marked by the real command line with `--engine local` and `--engine dask`
at 1 and 2 workers; prints images per second, seconds per image and the Dask overhead per image
against the local engine at the same worker count (model loading and cluster start-up included,
as a user sees them).

Part 2: `--paths` synthetic paths stream through the Dask engine's own submission loop (a no-op
task per path, the same bounded number in flight) on a LocalCluster; prints the scheduler process's
resident memory before and at the end: the listing never becomes a task graph the scheduler holds.

On a real cluster: start `dask-scheduler` and `dask-worker tcp://SCHEDULER:8786 --nworkers N
--nthreads 1` on each node (with `DASK_DISTRIBUTED__WORKER__DAEMON=False` so that workers isolate
their decoders), then run `wm embed SRC MSG -o OUT --engine dask --scheduler tcp://SCHEDULER:8786`
on a machine that sees the same storage.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = ["693_UNCR.dcm", "JPEG2000_UNC.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "CT_small.dcm"]


def timed_embed(source: Path, out: Path, engine: str, workers: int) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "watermark_cli", "embed", str(source), "scale-bench", "-o",
                             str(out), "--engine", engine, "--workers", str(workers), "--json"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"embed failed: {result.stderr.strip()}")
    return time.perf_counter() - started


def noop(path: str) -> int:
    return len(path)


def scheduler_memory(paths: int) -> tuple[float, float]:
    """The scheduler's resident MiB before and after `paths` no-op tasks went through the Dask
    engine's own submission loop (marking.cluster), as `wm embed --scheduler` drives it."""
    from distributed import Client, LocalCluster, WorkerPlugin

    from watermark_cli.marking.cluster import _run_on_cluster

    class NothingToLoad(WorkerPlugin):
        pass

    def rss() -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        before = client.run_on_scheduler(rss)
        listing = (f"/archive/study{i // 200}/series{i % 9}/image{i}.dcm" for i in range(paths))
        for _ in _run_on_cluster(listing, lambda path: (noop, path), lambda threads: NothingToLoad(),
                                 lambda path, why: None, 2, cluster.scheduler_address, lambda: False):
            pass
        return before, client.run_on_scheduler(rss)


def main() -> None:
    from watermark_cli.data.clinical import clinical_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--paths", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "src"
        source.mkdir()
        for copy in range(args.copies):
            for name in FILES:
                shutil.copyfile(clinical_file(name), source / f"{copy}_{name}")
        n = args.copies * len(FILES)
        print("| engine | workers | images | wall s | images/s | s/image | overhead s/image vs local |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        local = {}
        for workers in (1, 2):
            for engine in ("local", "dask"):
                seconds = timed_embed(source, Path(folder) / f"out-{engine}-{workers}", engine, workers)
                if engine == "local":
                    local[workers] = seconds
                overhead = f"{(seconds - local[workers]) / n:+.2f}" if engine == "dask" else "–"
                print(f"| {engine} | {workers} | {n} | {seconds:.1f} | {n / seconds:.2f} | {seconds / n:.2f} | "
                      f"{overhead} |", flush=True)
    before, after = scheduler_memory(args.paths)
    print(f"\nscheduler memory streaming {args.paths:,} paths: {before:.0f} MiB before, {after:.0f} MiB after")


if __name__ == "__main__":
    main()
