"""Learning under one inequality constraint per sample: the sequential penalty method and others.

Lives here: constraints as declared objects, the penalty schedule, the Lagrangian baselines.
Imports nothing else of wm (a test enforces it): any per-sample constraint can use it.
"""

from .methods import ConstraintMethod, MethodSettings, build_method
from .sequential_penalty import ConstraintReport, PenaltySchedule, PerSampleConstraint, SequentialPenalty

__all__ = ["ConstraintMethod", "ConstraintReport", "MethodSettings", "PenaltySchedule", "PerSampleConstraint",
           "SequentialPenalty", "build_method"]
