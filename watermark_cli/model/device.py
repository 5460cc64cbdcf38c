"""Where a network runs: the one device picker of wm (`--device auto|cpu|cuda`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BadInputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(requested: str = "auto", index: int = 0) -> "torch.device":
    """`auto`: the GPU when there is one, else the CPU; `cuda` without a GPU is a clear error.
    `index` picks the GPU of this process (its local rank under torchrun)."""
    import torch

    if requested not in DEVICE_CHOICES:
        raise BadInputError(f"--device must be auto, cpu or cuda (got {requested!r})")
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", index) if requested == "cuda" else torch.device("cpu")


def model_device(requested: str = "auto") -> str:
    """What `load_model` takes for `--device` of embed, extract, evaluate and serve: 'cpu' or
    'cuda:0' (a worker process with a GPU of its own uses it under `auto`)."""
    return str(pick_device(requested))
