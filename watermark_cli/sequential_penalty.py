"""The sequential penalty method for per-sample inequality constraints.

Lanzillotta et al. (arXiv 2601.16812) turn "minimise the task loss subject to one constraint
per sample" into a sequence of unconstrained problems:

    minimise  mean_i loss_i  +  tau_k * mean_i phi(violation_i)

where violation_i > 0 means sample i breaks its constraint and phi is the hinge max(0, .)
(optionally squared). The coefficient tau starts small, so the task is learned first, and grows
geometrically on a schedule until the violations vanish.

This module knows nothing about watermarks or images: a constraint is a declared object with a
bound and a sense, the penalty takes a tensor of per-sample constraint values, and the schedule
is advanced by whoever owns the training loop (per step or per epoch, the caller decides).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class PerSampleConstraint:
    """`value_i >= bound` (sense "ge") or `value_i <= bound` (sense "le") for every sample i."""

    name: str
    bound: float
    sense: Literal["ge", "le"] = "ge"

    def __post_init__(self) -> None:
        if self.sense not in ("ge", "le"):
            raise ValueError(f"constraint sense must be 'ge' or 'le', got {self.sense!r}")

    def violation(self, values: torch.Tensor) -> torch.Tensor:
        """Signed violation per sample: > 0 where the constraint is broken, <= 0 where it holds."""
        return self.bound - values if self.sense == "ge" else values - self.bound


@dataclass(frozen=True)
class PenaltySchedule:
    """tau_k = min(tau_max, tau_initial * growth ** (k // period)), k counted by `advance()`."""

    tau_initial: float = 0.1
    growth: float = 1.1
    period: int = 10
    tau_max: float = 500.0

    def __post_init__(self) -> None:
        if self.tau_initial <= 0 or self.tau_max < self.tau_initial:
            raise ValueError("need 0 < tau_initial <= tau_max")
        if self.growth < 1.0:
            raise ValueError("growth must be >= 1 (tau never shrinks)")
        if self.period < 1:
            raise ValueError("period must be a positive number of schedule steps")

    def tau_at(self, step: int) -> float:
        # Computed in log space so that very long runs cannot overflow before the cap applies.
        exponent = step // self.period
        log_tau = math.log(self.tau_initial) + exponent * math.log(self.growth)
        return min(self.tau_max, math.exp(min(log_tau, math.log(self.tau_max))))


@dataclass
class ConstraintReport:
    """What one batch says about the constraint, for logs and model selection."""

    tau: float
    penalty: float
    fraction_satisfied: float
    max_violation: float
    mean_violation: float


class SequentialPenalty:
    """Owns tau and turns per-sample constraint values into the penalty term."""

    def __init__(
        self,
        constraint: PerSampleConstraint,
        schedule: PenaltySchedule | None = None,
        shape: Literal["hinge", "squared_hinge"] = "hinge",
    ) -> None:
        if shape not in ("hinge", "squared_hinge"):
            raise ValueError(f"penalty shape must be 'hinge' or 'squared_hinge', got {shape!r}")
        self.constraint = constraint
        self.schedule = schedule or PenaltySchedule()
        self.shape = shape
        self.schedule_step = 0

    @property
    def tau(self) -> float:
        return self.schedule.tau_at(self.schedule_step)

    def advance(self, steps: int = 1) -> None:
        """Move the schedule forward (the caller decides whether a unit is a step or an epoch)."""
        self.schedule_step += steps

    def penalty(self, values: torch.Tensor) -> tuple[torch.Tensor, ConstraintReport]:
        """tau * mean_i phi(violation_i), differentiable, plus a detached report of the batch."""
        violation = self.constraint.violation(values)
        excess = torch.clamp(violation, min=0.0)
        phi = excess if self.shape == "hinge" else excess.square()
        term = self.tau * phi.mean()
        with torch.no_grad():
            detached = violation.detach().float()
            report = ConstraintReport(
                tau=self.tau,
                penalty=float(term.detach()),
                fraction_satisfied=float((detached <= 0).float().mean()),
                max_violation=float(detached.max().clamp(min=0.0)),
                mean_violation=float(detached.clamp(min=0.0).mean()),
            )
        return term, report

    def state_dict(self) -> dict:
        return {
            "constraint": asdict(self.constraint),
            "schedule": asdict(self.schedule),
            "shape": self.shape,
            "schedule_step": self.schedule_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.constraint = PerSampleConstraint(**state["constraint"])
        self.schedule = PenaltySchedule(**state["schedule"])
        self.shape = state["shape"]
        self.schedule_step = int(state["schedule_step"])
