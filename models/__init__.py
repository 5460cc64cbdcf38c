"""The shipped models, one folder each (weights, card, metrics): see README.md here.

This file makes the folder the package `watermark_cli.shipped_models` of an installed wm (its
folders are that package's data), so that a plain `pip install .` carries the models."""
