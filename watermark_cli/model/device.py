"""Where a network runs: the one device picker of wm (`--device auto|cpu|cuda`).

Picking a GPU tries not to start CUDA in the process that picks it: a run of many files forks
its worker processes from that process (`marking.threads.in_workers`), and a process forked
after CUDA started cannot use the GPU. So torch counts the GPUs through NVML, and whether CUDA
really works is tried once in a short-lived child process. Where NVML cannot count them (no NVML
library, GPUs named by MIG UUIDs), torch asks CUDA itself, which starts its driver here: the
child then finds itself unable to use CUDA, the GPU is tried in this process instead, and the
run's files go on threads (`gpu_workers_may_fork` is then false).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadInputError
from ..forked_child import exit_code_in_forked_child

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# torch counts GPUs through NVML under this setting, which leaves CUDA unstarted (torch's
# `cuda.is_available`: "will NOT poison fork").
_FORK_SAFE_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# How long the child that tries the GPU may take (CUDA's start, a few seconds at most).
_PROBE_SECONDS = 60
# The child's exit codes: CUDA ran; it did not; it cannot be used in a forked process at all.
_RAN, _FAILED, _NOT_AFTER_FORK = 0, 1, 3


@dataclass(frozen=True)
class _GpuState:
    usable: bool
    why_not: str
    fork_safe: bool  # a worker forked from this process can still use the GPU


def pick_device(requested: str = "auto", index: int = 0) -> "torch.device":
    """`auto`: the GPU when there is one that works, else the CPU; `cuda` without a working GPU is
    a clear error. `index` picks the GPU of this process (its local rank under torchrun)."""
    import torch

    if requested not in DEVICE_CHOICES:
        raise BadInputError(f"--device must be auto, cpu or cuda (got {requested!r})")
    if requested == "cpu":
        return torch.device("cpu")
    state = _gpu_state(index)
    if requested == "cuda" and not state.usable:
        raise BadInputError(f"--device cuda was asked for but {state.why_not}")
    if not state.usable and state.why_not != _NONE:  # a GPU is there, but CUDA would not run on it
        print(f"wm: {state.why_not}; the networks run on the CPU", file=sys.stderr)
    return torch.device("cuda", index) if state.usable else torch.device("cpu")


def model_device(requested: str = "auto") -> str:
    """What `load_model` takes for `--device` of embed, extract, evaluate and serve: 'cpu' or
    'cuda:0' (a worker process with a GPU of its own uses it under `auto`)."""
    return str(pick_device(requested))


def gpu_workers_may_fork(index: int = 0) -> bool:
    """Whether processes forked from this one can use GPU `index`: false once CUDA started here
    (a model or a classifier on the GPU, or a GPU count that only CUDA could give)."""
    import torch

    return not torch.cuda.is_initialized() and _gpu_state(index).fork_safe


_NONE = "no CUDA device is available"


@functools.lru_cache(maxsize=None)
def _gpu_state(index: int) -> _GpuState:
    """Whether GPU `index` runs a CUDA operation, and whether a forked process still could.
    Asked once per process (forked workers inherit the answer)."""
    import torch

    os.environ.setdefault(_FORK_SAFE_CHECK, "1")
    if not torch.cuda.is_available():
        return _GpuState(False, _NONE, True)
    if torch.cuda.is_initialized():  # CUDA is running here already (training): it answered
        return _GpuState(index < torch.cuda.device_count(), f"there is no CUDA device {index}", False)
    unusable = f"CUDA device {index} is listed but CUDA does not run on it"
    try:
        exit_code = exit_code_in_forked_child(_touch_gpu, index, timeout_s=_PROBE_SECONDS)
    except TimeoutError:
        return _GpuState(False, f"CUDA device {index} did not answer within {_PROBE_SECONDS} s", False)
    # No child (a daemonic process, such as a Dask worker, forks none either), or CUDA's driver
    # started here already: try it here, fork nothing.
    if exit_code is None or exit_code == _NOT_AFTER_FORK:
        return _GpuState(_cuda_runs(index), unusable, False)
    return _GpuState(exit_code == _RAN, unusable, True)


def _touch_gpu(index: int) -> None:
    """In a forked child: exit with whether a small CUDA operation ran on GPU `index`."""
    import torch

    if torch.cuda._is_in_bad_fork():
        os._exit(_NOT_AFTER_FORK)
    os._exit(_RAN if _cuda_runs(index) else _FAILED)


def _cuda_runs(index: int) -> bool:
    """Whether a small CUDA operation runs on GPU `index` (CUDA starts in this process)."""
    try:
        import torch

        torch.ones(1, device=torch.device("cuda", index)).add_(1)
        torch.cuda.synchronize(index)
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True
