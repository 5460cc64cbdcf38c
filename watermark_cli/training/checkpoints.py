"""Checkpoints of a `wm train` run: one file, `checkpoint.pt`, written atomically after every
epoch, from which `--resume` continues bit-exactly.

A checkpoint holds the configuration by flat key, the data, the model, the optimiser, the
constraint method's state, the sample order, the history, the best model so far and every random
state of every process. Loading one reads tensors and plain containers only: it runs no code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..io.writing import write_atomically
from ..model.store import load_torch_tensors
from .config import TrainConfig, config_for_preset, config_options
from .data import FramePool

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(output: Path, state: dict) -> None:
    """Write `state` (the loop's, see loop.py) as the checkpoint of `output`."""
    import torch

    write_atomically(output / CHECKPOINT_FILE, lambda handle: torch.save(state, handle))  # always whole


def load_checkpoint(output: Path) -> dict:
    """The checkpoint in `output`, checked to be one of wm's; a one-line error otherwise."""
    path = Path(output) / CHECKPOINT_FILE
    if not path.is_file():
        raise BadInputError(f"no checkpoint to resume from in {output} (expected {CHECKPOINT_FILE})")
    from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType

    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
    except OSError as error:
        raise BadInputError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not is_zip:  # torch.save has written zip files since torch 1.6; anything else is not wm's
        raise BadInputError(f"{path} is not a wm training checkpoint (not a torch file); refused unread")
    # Tensors and plain containers only: loading a checkpoint never runs code from it.
    checkpoint = load_torch_tensors(path, "checkpoint", allowed_globals=(nuPIInitType,))
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != 1 \
            or any(key not in checkpoint for key in _CHECKPOINT_KEYS) or not isinstance(checkpoint["config"], dict) \
            or "preset" not in checkpoint["config"] or not isinstance(checkpoint["data"], list):
        raise BadInputError(f"{path} is not a wm training checkpoint")
    return checkpoint


_CHECKPOINT_KEYS = ("config", "data", "train_files", "validation_files", "world_size", "epoch", "step", "seconds",
                    "model", "optimiser", "method", "order", "history", "best", "rng")


def resume_config(output: Path, epochs: int | None = None, device: str | None = None) -> tuple[TrainConfig, list[Path]]:
    """The configuration and data of the run checkpointed in `output`, with epochs and device
    optionally changed (a longer run; another machine)."""
    checkpoint = load_checkpoint(output)
    values = dict(checkpoint["config"])
    preset = values.pop("preset")
    values.pop("parity_bytes", None)  # format 1's Reed-Solomon parity: gone with payload v2
    if epochs is not None:
        values["epochs"] = epochs
    if device is not None:
        values["device"] = device
    return config_for_preset(preset, **values), [Path(p) for p in checkpoint["data"]]


def check_resumable(checkpoint: dict, config: TrainConfig, train_pool: FramePool, validation_pool: FramePool,
                    cluster) -> None:
    """A resumed run must be the checkpointed one: the same configuration but for epochs and
    device, the same files, the same number of processes, and not past its last epoch."""
    saved = dict(checkpoint["config"])
    current = config_options(config)
    changed = sorted(k for k in current if k not in ("epochs", "device") and saved.get(k) != current[k])
    if changed:
        raise BadInputError(f"cannot resume with a different configuration ({', '.join(changed)} changed); "
                            "only epochs and device may change")
    if checkpoint["train_files"] != absolute_paths(train_pool.files) or \
            checkpoint["validation_files"] != absolute_paths(validation_pool.files):
        raise BadInputError("the training data differ from the checkpoint's; resume with the same data")
    if int(checkpoint["world_size"]) != cluster.world_size:
        raise BadInputError(f"the checkpoint was written by {checkpoint['world_size']} process(es); "
                            f"resume with the same number (now {cluster.world_size})")
    if int(checkpoint["epoch"]) > config.epochs:
        raise BadInputError(f"the checkpoint is at epoch {checkpoint['epoch']}, past --epochs {config.epochs}")


def absolute_paths(paths) -> list[str]:
    """Paths as a checkpoint records them: absolute, so a run may resume from another folder."""
    return [str(Path(p).resolve()) for p in paths]


def rng_state(rng: random.Random, device) -> dict:
    """Every random state the loop draws from: this process's Python generator, the global
    Python, NumPy and torch generators and the GPU's."""
    import torch

    numpy_state = np.random.get_state()
    state = {
        "python": rng.getstate(),
        "python_global": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, rng: random.Random, device) -> None:
    """Put back every random state `rng_state` saved."""
    import torch

    def as_tuple(value):  # what was saved as a tuple may come back as a list
        return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

    rng.setstate(as_tuple(state["python"]))
    random.setstate(as_tuple(state["python_global"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

