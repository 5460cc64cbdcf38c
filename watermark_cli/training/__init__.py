"""`wm train`: the training data, the loop under per-image PSNR constraints, and its artifacts.

Lives here: what a run is configured with (`config`: TrainConfig, the presets, options from a
YAML file, --set and flags), the training loop (`loop`), checkpoints and bit-exact resume
(`checkpoints`), the model card, metrics.csv and metrics.png (`artifacts`), crops of training
images (`data`), data-parallel training (`distributed`). Within the folder config ← checkpoints,
artifacts ← loop, without a cycle. May import wm's core, io, model, attacks and constrained.

`config` imports torch and cooper at import time (the network's and the constraint method's
settings are its fields), and so does every module built on it: their names are loaded on first
use, so that importing `training.data` (which other commands read image files with) stays light.
"""

from .data import FRAME_VIEWS, FramePool, SampleOrder, TrainingSamples, collect_image_files, split_by_file
from .distributed import Cluster, start_cluster

# Name → the module that defines it, for the modules that import torch at import time.
_LOADED_ON_FIRST_USE = {
    **dict.fromkeys(("DEFAULT_MARGIN_DB", "PRESETS", "ConfigFile", "TrainConfig", "coerce_option", "config_for_preset",
                     "config_options", "option_homes", "parse_assignments", "read_config_file", "validate_config"),
                    "config"),
    **dict.fromkeys(("CHECKPOINT_FILE", "load_checkpoint", "resume_config", "save_checkpoint"), "checkpoints"),
    **dict.fromkeys(("METRICS_FILE", "PLOT_FILE"), "artifacts"),
    **dict.fromkeys(("EpochMetrics", "TrainResult", "TrainingInterrupted", "crop_psnr", "load_training_data",
                     "marked_for_evaluation", "train"), "loop"),
}


def __getattr__(name: str):
    home = _LOADED_ON_FIRST_USE.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import artifacts, checkpoints, config, loop  # torch and cooper, now that a name of theirs is asked for

    return getattr({"config": config, "checkpoints": checkpoints, "artifacts": artifacts, "loop": loop}[home], name)


__all__ = ["FRAME_VIEWS", "Cluster", "FramePool", "SampleOrder", "TrainingSamples", "collect_image_files",
           "split_by_file", "start_cluster", *_LOADED_ON_FIRST_USE]
