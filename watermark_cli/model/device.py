"""Where a network runs: the one device picker of wm (`--device auto|cpu|cuda`).

Picking a GPU never starts CUDA in the process that picks it: a run of many files forks its
worker processes from that process (`marking.threads.in_processes`), and a process forked after
CUDA started cannot use the GPU. So the count of GPUs comes from NVML, and whether CUDA really
works there is tried once, in a short-lived child process.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from ..errors import BadInputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# torch counts GPUs through NVML under this setting, which leaves CUDA unstarted (torch's
# `cuda.is_available`: "will NOT poison fork").
_FORK_SAFE_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def pick_device(requested: str = "auto", index: int = 0) -> "torch.device":
    """`auto`: the GPU when there is one that works, else the CPU; `cuda` without a working GPU is
    a clear error. `index` picks the GPU of this process (its local rank under torchrun)."""
    import torch

    if requested not in DEVICE_CHOICES:
        raise BadInputError(f"--device must be auto, cpu or cuda (got {requested!r})")
    if requested == "cpu":
        return torch.device("cpu")
    usable, why = _gpu_usable(index)
    if requested == "cuda" and not usable:
        raise BadInputError(f"--device cuda was asked for but {why}")
    return torch.device("cuda", index) if usable else torch.device("cpu")


def model_device(requested: str = "auto") -> str:
    """What `load_model` takes for `--device` of embed, extract, evaluate and serve: 'cpu' or
    'cuda:0' (a worker process with a GPU of its own uses it under `auto`)."""
    return str(pick_device(requested))


@functools.lru_cache(maxsize=None)
def _gpu_usable(index: int) -> tuple[bool, str]:
    """(whether GPU `index` runs a CUDA operation, why not), without starting CUDA here. Asked
    once per process (forked workers inherit the answer)."""
    import torch

    os.environ.setdefault(_FORK_SAFE_CHECK, "1")
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    if torch.cuda.is_initialized():  # CUDA is running here already (training): it answered
        return index < torch.cuda.device_count(), f"there is no CUDA device {index}"
    import multiprocessing

    probe = multiprocessing.get_context("fork").Process(target=_touch_gpu, args=(index,), daemon=True)
    try:
        probe.start()
    except (AssertionError, OSError):  # a daemonic process (a Dask worker) has no children: it forks none either
        return _cuda_runs(index), f"CUDA device {index} is listed but CUDA does not run on it"
    probe.join(timeout=120)
    if probe.exitcode is None:
        probe.kill()
        probe.join()
        return False, f"CUDA device {index} did not answer within 120 s"
    return probe.exitcode == 0, f"CUDA device {index} is listed but CUDA does not run on it"


def _touch_gpu(index: int) -> None:
    """In a child process: exit 0 once a small CUDA operation has run on GPU `index`."""
    os._exit(0 if _cuda_runs(index) else 1)


def _cuda_runs(index: int) -> bool:
    """Whether a small CUDA operation runs on GPU `index` (CUDA starts in this process)."""
    try:
        import torch

        torch.ones(1, device=torch.device("cuda", index)).add_(1)
        torch.cuda.synchronize(index)
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True
