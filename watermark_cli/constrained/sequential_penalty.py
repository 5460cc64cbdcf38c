"""The sequential penalty method for per-sample inequality constraints.

Lanzillotta et al. (arXiv 2601.16812) turn "minimise the task loss subject to one constraint
per sample" into a sequence of unconstrained problems:

    minimise  mean_i loss_i  +  mean_i tau_i * phi(violation_i)

where violation_i > 0 means sample i breaks its constraint and phi is the hinge max(0, .)
(optionally squared). The coefficient starts small, so the task is learned first, and grows
geometrically until the violations vanish. The variants, chosen by configuration:

- scope: one global tau (the paper's), or one tau_i per sample, grown only for the samples that
  were still violated when last seen (samples are named by an integer index 0..N-1);
- shape: hinge or squared hinge;
- schedule: open loop (the paper's: x growth every `period` schedule steps, up to a cap) or
  closed loop (at the same checkpoints, grow only where the violation has not fallen by at least
  `required_decrease` since the previous checkpoint, and not at all while the caller reports
  that the constraint holds on held-out data).

This module knows nothing about watermarks or images: a constraint is a declared object with a
bound and a sense, the penalty takes a tensor of per-sample constraint values (and their sample
indices), and whoever owns the training loop records what it observed and advances the
schedule (per step or per epoch, the caller decides). Recording is separate from the penalty
term so that a data-parallel loop can record the observations of every process and keep the
coefficients identical everywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

SHAPES = ("hinge", "squared_hinge")


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
    """tau = min(tau_max, tau_initial * growth ** g), g = the number of growths so far.

    Open loop, every checkpoint (each `period` calls of `advance`) is a growth. Closed loop, a
    checkpoint is a growth only where the violation measure has not fallen by `required_decrease`
    (a fraction of its value at the previous checkpoint) and held-out data still violate.
    """

    tau_initial: float = 0.1
    growth: float = 1.1
    period: int = 10
    tau_max: float = 500.0
    closed_loop: bool = False
    required_decrease: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.tau_initial <= self.tau_max) or not math.isfinite(self.tau_max):
            raise ValueError("need 0 < tau_initial <= tau_max < infinity")
        if not self.growth >= 1.0:
            raise ValueError("growth must be >= 1 (tau never shrinks)")
        if self.period < 1:
            raise ValueError("period must be a positive number of schedule steps")
        if not 0.0 <= self.required_decrease < 1.0:
            raise ValueError("required_decrease must be a fraction in [0, 1)")

    def tau_after(self, growths: torch.Tensor | int) -> torch.Tensor:
        """tau after `growths` growths, computed in log space so it cannot overflow before the cap."""
        growths = torch.as_tensor(growths, dtype=torch.float64)
        log_tau = math.log(self.tau_initial) + growths * math.log(self.growth)
        return torch.exp(torch.clamp(log_tau, max=math.log(self.tau_max)))

    def tau_at(self, step: int) -> float:
        """Open-loop tau after `step` calls of `advance` (the paper's schedule in closed form)."""
        return float(self.tau_after(step // self.period))


@dataclass
class ConstraintReport:
    """What one batch says about the constraint, for logs and model selection."""

    tau: float  # mean coefficient over the batch's samples
    penalty: float
    fraction_satisfied: float
    max_violation: float
    mean_violation: float


def batch_report(violation: torch.Tensor, coefficient: float, penalty: float) -> ConstraintReport:
    detached = violation.detach().float()
    return ConstraintReport(
        tau=coefficient,
        penalty=penalty,
        fraction_satisfied=float((detached <= 0).float().mean()),
        max_violation=float(detached.max().clamp(min=0.0)),
        mean_violation=float(detached.clamp(min=0.0).mean()),
    )


class SequentialPenalty:
    """Owns the coefficients tau (one, or one per sample) and turns constraint values into the
    penalty term. `num_samples=None`: a global tau; an int N: per-sample tau_i, i in 0..N-1."""

    def __init__(
        self,
        constraint: PerSampleConstraint,
        schedule: PenaltySchedule | None = None,
        shape: Literal["hinge", "squared_hinge"] = "hinge",
        num_samples: int | None = None,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"penalty shape must be 'hinge' or 'squared_hinge', got {shape!r}")
        if num_samples is not None and num_samples < 1:
            raise ValueError("a per-sample penalty needs at least one sample")
        self.constraint = constraint
        self.schedule = schedule or PenaltySchedule()
        self.shape = shape
        self.num_samples = num_samples
        self.schedule_step = 0
        slots = num_samples or 1
        # Growth counts rather than tau values: tau is then exactly the schedule's closed form.
        self.growths = torch.zeros(slots, dtype=torch.int64)
        # What was observed: per sample the latest positive violation (NaN: never seen); for a
        # global tau the sum and count of positive violations since the last checkpoint.
        self.latest_violation = torch.full((slots,), math.nan, dtype=torch.float64)
        self.violation_at_checkpoint = torch.full((slots,), math.nan, dtype=torch.float64)
        self.seen_since_checkpoint = torch.zeros(slots, dtype=torch.bool)
        self.window_sum = 0.0
        self.window_count = 0
        self.held_out_satisfied = False

    @property
    def per_sample(self) -> bool:
        return self.num_samples is not None

    @property
    def tau(self) -> float:
        """The global tau, or the mean tau_i over all samples."""
        return float(self.schedule.tau_after(self.growths).mean())

    def coefficient_summary(self) -> tuple[float, float]:
        """(mean, max) of the coefficients, for logs."""
        taus = self.schedule.tau_after(self.growths)
        return float(taus.mean()), float(taus.max())

    def _taus_for(self, indices: torch.Tensor | None) -> torch.Tensor:
        if not self.per_sample:
            return self.schedule.tau_after(self.growths[0])
        if indices is None:
            raise ValueError("a per-sample penalty needs the sample indices of the batch")
        return self.schedule.tau_after(self.growths[indices.detach().long().cpu()])

    def penalty(self, values: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, ConstraintReport]:
        """mean_i tau_i * phi(violation_i), differentiable, plus a detached report of the batch.
        Changes no state: call `record` with what was observed and `advance` after the step."""
        violation = self.constraint.violation(values)
        excess = torch.clamp(violation, min=0.0)
        phi = excess if self.shape == "hinge" else excess.square()
        taus = self._taus_for(indices)
        term = (taus.to(device=phi.device, dtype=phi.dtype) * phi).mean()
        with torch.no_grad():
            report = batch_report(violation, float(taus.mean()), float(term.detach()))
        return term, report

    @torch.no_grad()
    def record(self, values: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Remember the violations of the samples just seen (every process's, in data parallel)."""
        positive = self.constraint.violation(values.detach()).double().clamp(min=0.0).cpu()
        self.window_sum += float(positive.sum())
        self.window_count += positive.numel()
        if self.per_sample:
            if indices is None:
                raise ValueError("a per-sample penalty needs the sample indices of the batch")
            where = indices.detach().long().cpu()
            self.latest_violation[where] = positive
            self.seen_since_checkpoint[where] = True

    def observe_held_out(self, satisfied: bool) -> None:
        """Closed loop: whether the constraint currently holds on held-out data (no growth then)."""
        self.held_out_satisfied = bool(satisfied)

    def advance(self, steps: int = 1) -> None:
        """Move the schedule forward; every `period` steps is a checkpoint where tau may grow."""
        for _ in range(steps):
            self.schedule_step += 1
            if self.schedule_step % self.schedule.period == 0:
                self._checkpoint()

    def _checkpoint(self) -> None:
        schedule = self.schedule
        if not self.per_sample:
            measure = self.window_sum / self.window_count if self.window_count else math.nan
            if not schedule.closed_loop:
                grow = True
            else:
                previous = float(self.violation_at_checkpoint[0])
                grow = (not self.held_out_satisfied and measure > 0.0
                        and (math.isnan(previous) or measure > (1.0 - schedule.required_decrease) * previous))
            if self.window_count:
                self.violation_at_checkpoint[0] = measure
            if grow:
                self.growths += 1
        else:
            still_violated = self.latest_violation > 0.0  # NaN (never seen) compares False
            if not schedule.closed_loop:
                grow = still_violated
            elif self.held_out_satisfied:
                grow = torch.zeros_like(still_violated)
            else:
                previous = self.violation_at_checkpoint
                not_falling = torch.isnan(previous) | (self.latest_violation > (1.0 - schedule.required_decrease) * previous)
                grow = self.seen_since_checkpoint & still_violated & not_falling
            seen = self.seen_since_checkpoint
            self.violation_at_checkpoint[seen] = self.latest_violation[seen]
            self.seen_since_checkpoint.zero_()
            self.growths += grow.long()
        # Stop counting growths at the cap, so a later change of cap behaves as expected.
        cap = math.ceil(math.log(schedule.tau_max / schedule.tau_initial) / math.log(schedule.growth)) \
            if schedule.growth > 1.0 else 0
        self.growths.clamp_(max=cap)
        self.window_sum = 0.0
        self.window_count = 0

    def state_dict(self) -> dict:
        return {
            "constraint": asdict(self.constraint),
            "schedule": asdict(self.schedule),
            "shape": self.shape,
            "num_samples": self.num_samples,
            "schedule_step": self.schedule_step,
            "growths": self.growths.clone(),
            "latest_violation": self.latest_violation.clone(),
            "violation_at_checkpoint": self.violation_at_checkpoint.clone(),
            "seen_since_checkpoint": self.seen_since_checkpoint.clone(),
            "window_sum": self.window_sum,
            "window_count": self.window_count,
            "held_out_satisfied": self.held_out_satisfied,
        }

    def load_state_dict(self, state: dict) -> None:
        self.constraint = PerSampleConstraint(**state["constraint"])
        self.schedule = PenaltySchedule(**state["schedule"])
        self.shape = state["shape"]
        self.num_samples = state.get("num_samples")
        self.schedule_step = int(state["schedule_step"])
        slots = self.num_samples or 1
        if "growths" in state:
            self.growths = state["growths"].clone().long()
            self.latest_violation = state["latest_violation"].clone().double()
            self.violation_at_checkpoint = state["violation_at_checkpoint"].clone().double()
            self.seen_since_checkpoint = state["seen_since_checkpoint"].clone().bool()
            self.window_sum = float(state["window_sum"])
            self.window_count = int(state["window_count"])
            self.held_out_satisfied = bool(state["held_out_satisfied"])
        else:  # a state from before growth counts were kept: an open-loop global tau
            self.growths = torch.full((slots,), self.schedule_step // self.schedule.period, dtype=torch.int64)
        if self.growths.numel() != slots:
            raise ValueError(f"penalty state holds {self.growths.numel()} coefficients, expected {slots}")
