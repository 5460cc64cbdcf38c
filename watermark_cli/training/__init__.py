"""`wm train`: the training data, the loop under per-image PSNR constraints, and its artifacts.

Lives here: crops of training images, the training loop, checkpoints, data-parallel training.
May import wm's core, io, model, attacks and constrained.
"""
