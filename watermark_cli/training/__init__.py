"""`wm train`: the training data, the loop under per-image PSNR constraints, and its artifacts.

Lives here: what a run is configured with (`config`: TrainConfig, the presets, options from a
YAML file, --set and flags), the training loop (`loop`), checkpoints and bit-exact resume
(`checkpoints`), the model card, metrics.csv and metrics.png (`artifacts`), crops of training
images (`data`), data-parallel training (`distributed`). Within the folder config ← checkpoints,
artifacts ← loop, without a cycle. May import wm's core, io, model, attacks and constrained.
Importing it imports torch (the configuration holds the network's settings): only `wm train`
and the benchmarks do.
"""

from .artifacts import METRICS_FILE, PLOT_FILE
from .checkpoints import CHECKPOINT_FILE, load_checkpoint, resume_config, save_checkpoint
from .config import (DEFAULT_MARGIN_DB, PRESETS, ConfigFile, TrainConfig, coerce_option, config_for_preset,
                     config_options, option_homes, parse_assignments, read_config_file, validate_config)
from .data import FRAME_VIEWS, FramePool, SampleOrder, TrainingSamples, split_by_file
from .distributed import Cluster, start_cluster
from .loop import (EpochMetrics, TrainingInterrupted, TrainResult, crop_psnr, load_training_data,
                   marked_for_evaluation, train)

__all__ = ["CHECKPOINT_FILE", "DEFAULT_MARGIN_DB", "FRAME_VIEWS", "METRICS_FILE", "PLOT_FILE", "PRESETS", "Cluster",
           "ConfigFile", "EpochMetrics", "FramePool", "SampleOrder", "TrainConfig", "TrainResult", "TrainingInterrupted",
           "TrainingSamples", "coerce_option", "config_for_preset", "config_options", "crop_psnr",
           "load_checkpoint", "load_training_data", "marked_for_evaluation", "option_homes", "parse_assignments",
           "read_config_file", "resume_config", "save_checkpoint", "split_by_file", "start_cluster", "train",
           "validate_config"]
