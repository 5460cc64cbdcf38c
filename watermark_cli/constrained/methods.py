"""Ways to train under one inequality constraint per sample, behind one interface.

The problem: minimise mean_i loss_i subject to c(x_i) satisfying a `PerSampleConstraint` for
every training sample i (samples are named by a stable index 0..N-1). A method turns the task
loss and the batch's constraint values into the objective the primal optimiser descends, and
keeps whatever state it needs (penalty coefficients, Lagrange multipliers) between steps:

- `sequential` (ours; arXiv 2601.16812): loss + mean_i tau_i * phi(violation_i), tau growing
  on a schedule (see sequential_penalty for the global / per-sample, hinge / squared-hinge,
  open / closed-loop variants);
- `fixed`: the same penalty with a constant weight lambda (a grid of weights = one run each);
- `lagrangian`: one Lagrange multiplier per training sample (cooper's `IndexedMultiplier`),
  gradient descent on the model and projected ascent on the multipliers (SGD or nuPI);
- `augmented-lagrangian`: cooper's augmented Lagrangian, same multipliers, penalty rho;
- `projection`: no term at all; the caller enforces the constraint inside its forward pass
  (for images: rescaling the residual), so the method only reports.

Like the penalty module this knows nothing about images. The training loop calls, per step:

    objective, report = method.objective(loss, values, indices, observed_values, observed_indices)
    objective.backward(); optimiser.step()
    method.after_step(observed_values, observed_indices)

`values`/`indices` are this process's batch (differentiable values); `observed_*` are the
detached values and indices of every process's batch (the same tensors when there is one
process), so that coefficients and multipliers stay identical across data-parallel processes.

Scale: cooper sums `multiplier_i * violation_i` over the observed constraints while the task
loss is a mean over the batch. The violations handed to cooper for the primal update are
divided by the batch size, so every method adds a mean over the batch: lambda_i plays the role
tau_i plays in the penalty, in the same units. The multipliers ascend on the raw violations.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cooper
import torch

from .sequential_penalty import (SHAPES, ConstraintReport, PenaltySchedule, PerSampleConstraint, SequentialPenalty,
                                 batch_report)

METHODS = ("sequential", "fixed", "lagrangian", "augmented-lagrangian", "projection")
TAU_SCOPES = ("global", "per-sample")
TAU_SCHEDULES = ("open-loop", "closed-loop")
DUAL_OPTIMIZERS = ("sgd", "nupi")


@dataclass(frozen=True)
class MethodSettings:
    method: str = "sequential"
    shape: str = "hinge"  # sequential and fixed
    tau_scope: str = "global"
    tau_schedule: str = "open-loop"
    tau_initial: float = 0.1
    tau_growth: float = 1.25
    tau_period: int = 100
    tau_max: float = 500.0
    tau_required_decrease: float = 0.1  # closed loop: the fall in violation that stops growth
    fixed_weight: float = 1.0
    dual_optimizer: str = "sgd"
    dual_lr: float = 0.05  # lagrangian; the augmented Lagrangian ascends with step rho
    nupi_kp: float = 1.0
    penalty_rho: float = 1.0  # augmented Lagrangian

    def check(self) -> None:
        """ValueError with a message meant for the user when a setting is out of range."""
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown penalty shape {self.shape!r} (choose from {', '.join(SHAPES)})")
        if self.tau_scope not in TAU_SCOPES:
            raise ValueError(f"unknown tau scope {self.tau_scope!r} (choose from {', '.join(TAU_SCOPES)})")
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"unknown tau schedule {self.tau_schedule!r} (choose from {', '.join(TAU_SCHEDULES)})")
        if self.dual_optimizer not in DUAL_OPTIMIZERS:
            raise ValueError(f"unknown dual optimizer {self.dual_optimizer!r} (choose from {', '.join(DUAL_OPTIMIZERS)})")
        for name in ("fixed_weight", "dual_lr", "penalty_rho"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.nupi_kp) and self.nupi_kp >= 0):
            raise ValueError(f"nupi_kp must be >= 0, got {self.nupi_kp!r}")
        try:
            self.schedule()  # PenaltySchedule checks its own numbers
        except ValueError as error:
            raise ValueError(f"tau schedule (tau_initial, tau_growth, tau_period, tau_max): {error}") from None

    def schedule(self) -> PenaltySchedule:
        return PenaltySchedule(self.tau_initial, self.tau_growth, self.tau_period, self.tau_max,
                               closed_loop=self.tau_schedule == "closed-loop",
                               required_decrease=self.tau_required_decrease)


class ConstraintMethod:
    """The interface every method implements; the defaults suit a method with no state."""

    name = "none"
    projects = False  # True: the caller enforces the constraint in its forward pass

    def objective(self, loss: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                  observed_values: torch.Tensor, observed_indices: torch.Tensor
                  ) -> tuple[torch.Tensor, ConstraintReport]:
        raise NotImplementedError

    def after_step(self, observed_values: torch.Tensor, observed_indices: torch.Tensor) -> None:
        """Bookkeeping after the primal step: record violations, update dual variables."""

    def end_of_epoch(self, held_out_satisfied: bool) -> None:
        """What held-out data said at the end of an epoch (the closed-loop schedule listens)."""

    def coefficient_summary(self) -> tuple[float, float]:
        """(mean, max) of the penalty coefficients or multipliers; NaN where there are none."""
        return math.nan, math.nan

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PenaltyMethod(ConstraintMethod):
    """`sequential` and `fixed`: a penalty term with coefficients owned by a SequentialPenalty."""

    def __init__(self, name: str, penalty: SequentialPenalty) -> None:
        self.name = name
        self.penalty = penalty

    def objective(self, loss, values, indices, observed_values, observed_indices):
        term, report = self.penalty.penalty(values, indices)
        return loss + term, report

    def after_step(self, observed_values, observed_indices) -> None:
        self.penalty.record(observed_values, observed_indices)
        self.penalty.advance()

    def end_of_epoch(self, held_out_satisfied: bool) -> None:
        self.penalty.observe_held_out(held_out_satisfied)

    def coefficient_summary(self) -> tuple[float, float]:
        return self.penalty.coefficient_summary()

    def state_dict(self) -> dict:
        return {"penalty": self.penalty.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.penalty.load_state_dict(state["penalty"])


class ProjectionMethod(ConstraintMethod):
    """The constraint is met by construction in the caller's forward pass; only report it."""

    name = "projection"
    projects = True

    def __init__(self, constraint: PerSampleConstraint) -> None:
        self.constraint = constraint

    def objective(self, loss, values, indices, observed_values, observed_indices):
        report = batch_report(self.constraint.violation(values.detach()), math.nan, 0.0)
        return loss, report


class PerSampleProblem(cooper.ConstrainedMinimizationProblem):
    """A cooper problem with one constraint object holding one multiplier per sample."""

    def __init__(self, constraint: PerSampleConstraint, cooper_constraint: cooper.Constraint) -> None:
        super().__init__()
        self.spec = constraint
        self.per_sample = cooper_constraint  # registered with cooper by attribute assignment

    @property
    def multiplier(self) -> cooper.multipliers.IndexedMultiplier:
        return self.per_sample.multiplier

    def compute_cmp_state(self, loss, values, indices, observed_values, observed_indices, scale=1.0) -> cooper.CMPState:
        # `violation`/`constraint_features` drive the primal update (this process's batch);
        # `strict_*` drive the dual update (every process's batch, detached).
        state = cooper.ConstraintState(
            violation=self.spec.violation(values) * scale,
            constraint_features=indices.long(),
            strict_violation=self.spec.violation(observed_values.detach()),
            strict_constraint_features=observed_indices.long(),
        )
        return cooper.CMPState(loss=loss, observed_constraints={self.per_sample: state})


class CooperMethod(ConstraintMethod):
    """`lagrangian` and `augmented-lagrangian` through cooper: one multiplier per sample."""

    def __init__(self, name: str, constraint: PerSampleConstraint, num_samples: int, batch_size: int,
                 settings: MethodSettings, device: torch.device | str) -> None:
        self.name = name
        self.constraint = constraint
        self.device = device
        augmented = name == "augmented-lagrangian"
        multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_samples, device=device)
        if augmented:
            # Handing cooper violation_i / B with coefficient rho * B gives the mean over the batch
            # of the usual augmented term with coefficient rho (the scale note above).
            rho = torch.tensor(settings.penalty_rho * batch_size, device=device)
            cooper_constraint = cooper.Constraint(
                cooper.ConstraintType.INEQUALITY, cooper.formulations.AugmentedLagrangian,
                multiplier=multiplier, penalty_coefficient=cooper.penalty_coefficients.DensePenaltyCoefficient(rho))
            # The method of multipliers ascends with step rho: lambda <- max(0, lambda + rho * g).
            dual_lr = settings.penalty_rho
        else:
            cooper_constraint = cooper.Constraint(cooper.ConstraintType.INEQUALITY, cooper.formulations.Lagrangian,
                                                  multiplier=multiplier)
            dual_lr = settings.dual_lr
        self.problem = PerSampleProblem(constraint, cooper_constraint)
        parameters = list(self.problem.dual_parameters())
        if settings.dual_optimizer == "nupi":
            self.dual_optimiser = cooper.optim.nuPI(parameters, lr=dual_lr, Kp=settings.nupi_kp, Ki=1.0, maximize=True)
        else:
            # Plain projected gradient ascent; IndexedMultiplier gives sparse gradients, which SGD takes.
            self.dual_optimiser = torch.optim.SGD(parameters, lr=dual_lr, maximize=True)
        self._dual_lagrangian = None

    def objective(self, loss, values, indices, observed_values, observed_indices):
        state = self.problem.compute_cmp_state(loss, values, indices, observed_values, observed_indices,
                                               scale=1.0 / values.shape[0])
        primal = state.compute_primal_lagrangian()
        # The dual Lagrangian is measured at the same point (simultaneous updates) and stepped in
        # after_step, once the primal optimiser has moved.
        self._dual_lagrangian = state.compute_dual_lagrangian()
        with torch.no_grad():
            multipliers = self.problem.multiplier(indices.long())
            report = batch_report(self.constraint.violation(values.detach()), float(multipliers.mean()),
                                  float((primal.lagrangian - loss).detach()))
        return primal.lagrangian, report

    def after_step(self, observed_values, observed_indices) -> None:
        self.dual_optimiser.zero_grad(set_to_none=True)
        if self._dual_lagrangian is not None and self._dual_lagrangian.lagrangian is not None:
            self._dual_lagrangian.backward()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse invariant checks")
                self.dual_optimiser.step()
            self.problem.multiplier.post_step_()  # projection onto lambda >= 0
        self._dual_lagrangian = None

    def coefficient_summary(self) -> tuple[float, float]:
        weights = self.problem.multiplier.weight.detach()
        return float(weights.mean()), float(weights.max())

    def state_dict(self) -> dict:
        return {"problem": self.problem.state_dict(), "dual_optimiser": self.dual_optimiser.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.problem.load_state_dict(state["problem"])
        self.problem.to(self.device)  # a loaded penalty coefficient arrives on the CPU
        self.dual_optimiser.load_state_dict(state["dual_optimiser"])


def build_method(settings: MethodSettings, constraint: PerSampleConstraint, num_samples: int,
                 batch_size: int, device: torch.device | str = "cpu") -> ConstraintMethod:
    """The method named by `settings.method`, for `num_samples` indexed training samples."""
    settings.check()
    if settings.method == "sequential":
        per_sample = num_samples if settings.tau_scope == "per-sample" else None
        return PenaltyMethod("sequential", SequentialPenalty(constraint, settings.schedule(), settings.shape, per_sample))
    if settings.method == "fixed":
        weight = settings.fixed_weight
        constant = PenaltySchedule(tau_initial=weight, growth=1.0, period=1, tau_max=weight)
        return PenaltyMethod("fixed", SequentialPenalty(constraint, constant, settings.shape))
    if settings.method == "projection":
        return ProjectionMethod(constraint)
    return CooperMethod(settings.method, constraint, num_samples, batch_size, settings, device)
