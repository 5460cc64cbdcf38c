"""`wm serve`: a DICOM node that marks every image on its way to the archive."""

from .config import ServeConfig, load_config
from .node import MarkingNode

__all__ = ["MarkingNode", "ServeConfig", "load_config"]
