"""The constraint methods behind `wm train --method`, on tiny problems with known answers."""

import math

import pytest
import torch

from watermark_cli.constrained.methods import MethodSettings, build_method
from watermark_cli.model.networks import project_to_psnr
from watermark_cli.constrained.sequential_penalty import PerSampleConstraint

AT_MOST_ZERO = PerSampleConstraint("x", 0.0, "le")


def _one_step(method, values, indices):
    """objective, backward, then the method's bookkeeping; returns the objective and the report."""
    values = values.clone().requires_grad_(True)
    no_task_loss = 0.0 * values.sum()
    objective, report = method.objective(no_task_loss, values, indices, values.detach(), indices)
    objective.backward()
    method.after_step(values.detach(), indices)
    return objective, report, values.grad


def test_lagrangian_multipliers_ascend_on_the_violation_of_their_own_sample_only():
    method = build_method(MethodSettings(method="lagrangian", dual_lr=0.5), AT_MOST_ZERO, num_samples=4, batch_size=2)
    _one_step(method, torch.tensor([2.0, -1.0]), torch.tensor([3, 1]))
    multipliers = method.problem.multiplier.weight.detach().flatten()
    # lambda_3 = 0.5 * 2; lambda_1 = max(0, 0.5 * -1) = 0; samples 0 and 2 were not observed.
    assert multipliers.tolist() == [0.0, 0.0, 0.0, 1.0]
    objective, report, gradient = _one_step(method, torch.tensor([2.0, 4.0]), torch.tensor([3, 0]))
    # The term added to the loss is a mean over the batch: (lambda_3 * 2 + lambda_0 * 4) / 2.
    assert float(objective.detach()) == pytest.approx((1.0 * 2.0 + 0.0 * 4.0) / 2)
    assert gradient.tolist() == pytest.approx([0.5, 0.0])
    assert report.fraction_satisfied == 0.0 and report.max_violation == pytest.approx(4.0)
    assert method.coefficient_summary()[1] == pytest.approx(2.0)  # lambda_3 = 1 + 0.5 * 2


def test_augmented_lagrangian_is_the_method_of_multipliers_with_step_rho():
    method = build_method(MethodSettings(method="augmented-lagrangian", penalty_rho=2.0), AT_MOST_ZERO,
                          num_samples=2, batch_size=2)
    objective, _, gradient = _one_step(method, torch.tensor([1.5, -3.0]), torch.tensor([0, 1]))
    # lambda = 0: the primal term is the mean of rho/2 * max(0, g)^2, its gradient rho * max(0, g) / B.
    assert float(objective.detach()) == pytest.approx((0.5 * 2.0 * 1.5**2) / 2)
    assert gradient.tolist() == pytest.approx([2.0 * 1.5 / 2, 0.0])
    assert method.problem.multiplier.weight.detach().flatten().tolist() == pytest.approx([3.0, 0.0])


def test_nupi_dual_optimiser_adds_a_proportional_term_and_keeps_multipliers_non_negative():
    method = build_method(MethodSettings(method="lagrangian", dual_optimizer="nupi", dual_lr=1.0, nupi_kp=2.0),
                          AT_MOST_ZERO, num_samples=3, batch_size=3)
    for violation in ([1.0, -1.0, 0.5], [0.8, -1.0, -4.0]):
        _one_step(method, torch.tensor(violation), torch.tensor([0, 1, 2]))
    # First step as SGD: lambda = 1, 0, 0.5. Second: lambda += e + Kp * (e - e_previous), so
    # sample 0 gets 1 + 0.8 + 2 * (0.8 - 1) = 1.4 (SGD would give 1.8); sample 2 falls below zero.
    multipliers = method.problem.multiplier.weight.detach().flatten()
    assert multipliers.tolist() == pytest.approx([1.4, 0.0, 0.0])


def test_fixed_weight_is_a_constant_hinge_penalty_and_projection_adds_nothing():
    fixed = build_method(MethodSettings(method="fixed", fixed_weight=3.0), AT_MOST_ZERO, num_samples=2, batch_size=2)
    for _ in range(5):
        objective, _, _ = _one_step(fixed, torch.tensor([1.0, -1.0]), torch.tensor([0, 1]))
    assert float(objective.detach()) == pytest.approx(3.0 * 1.0 / 2) and fixed.coefficient_summary() == pytest.approx((3.0, 3.0))
    projection = build_method(MethodSettings(method="projection"), AT_MOST_ZERO, num_samples=2, batch_size=2)
    objective, report, _ = _one_step(projection, torch.tensor([1.0, -1.0]), torch.tensor([0, 1]))
    assert float(objective.detach()) == 0.0 and report.fraction_satisfied == 0.5 and projection.projects
    assert all(math.isnan(v) for v in projection.coefficient_summary())


@pytest.mark.parametrize("settings", [
    MethodSettings(method="sequential", tau_period=20, tau_growth=1.5),
    MethodSettings(method="sequential", tau_scope="per-sample", tau_period=20, tau_growth=1.5),
    MethodSettings(method="sequential", tau_schedule="closed-loop", tau_period=20, tau_growth=1.5),
    MethodSettings(method="fixed", fixed_weight=50.0),
])
def test_penalty_methods_drive_a_toy_problem_to_its_constrained_optimum(settings):
    """The loss pulls every x_i to 10; sample i must keep x_i <= b_i. Mini-batches of 4 of 8."""
    bounds = torch.arange(1.0, 9.0)
    x = torch.zeros(8, requires_grad=True)
    method = build_method(settings, AT_MOST_ZERO, num_samples=8, batch_size=4)
    optimiser = torch.optim.Adam([x], lr=0.02)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2500):
        indices = torch.randperm(8, generator=generator)[:4]
        values = x[indices] - bounds[indices]
        objective, _ = method.objective((x[indices] - 10.0).square().mean(), values, indices, values.detach(), indices)
        optimiser.zero_grad()
        objective.backward()
        optimiser.step()
        method.after_step(values.detach(), indices)
    assert float((x - bounds).detach().max()) < 0.05
    assert torch.all(x > bounds - 0.5)  # the task was not given up: x sits at its bound


def test_unknown_settings_are_refused_with_a_message():
    for bad in (MethodSettings(method="magic"), MethodSettings(tau_scope="per-class"),
                MethodSettings(dual_optimizer="adam"), MethodSettings(fixed_weight=0.0),
                MethodSettings(tau_growth=0.5)):
        with pytest.raises(ValueError):
            bad.check()


def test_projection_meets_the_psnr_bound_exactly_and_leaves_weak_residuals_alone():
    torch.manual_seed(0)
    residual = torch.randn(3, 1, 16, 16) * torch.tensor([0.1, 0.001, 0.03]).view(3, 1, 1, 1)
    projected = project_to_psnr(residual, 40.0)
    psnr = -10 * torch.log10(projected.square().mean(dim=(1, 2, 3)))
    assert psnr[0] == pytest.approx(40.0, abs=1e-4) and psnr[2] == pytest.approx(40.0, abs=1e-4)
    assert torch.equal(projected[1], residual[1])  # already at 60 dB


def test_every_training_option_has_one_home_and_round_trips_by_its_flat_key():
    """TrainConfig holds the network's and the method's settings as their own classes (no field
    repeated); each flat key (`--set tau_growth=...`, YAML) lands in exactly one of them, and a
    configuration written by flat key (checkpoints, cards) comes back equal."""
    from dataclasses import fields

    from watermark_cli.constrained.methods import MethodSettings
    from watermark_cli.model.networks import NetworkConfig
    from watermark_cli.training import TrainConfig, config_for_preset, config_options, option_homes

    own = {f.name for f in fields(TrainConfig)} - {"network", "constraint"}
    assert not own & {f.name for f in fields(MethodSettings)} and not own & {f.name for f in fields(NetworkConfig)}
    homes = option_homes()
    assert homes["tau_growth"] == ("constraint", "tau_growth") and homes["tile"] == ("network", "tile")
    assert homes["penalty_shape"] == ("constraint", "shape") and "shape" not in homes
    config = config_for_preset("standard", tau_growth="1.5", tile=32, penalty_shape="squared_hinge", crop=96)
    assert config.constraint.tau_growth == 1.5 and config.network.tile == 32 and config.constraint.shape == "squared_hinge"
    options = config_options(config)
    assert config_for_preset(options.pop("preset"), **options) == config
    assert TrainConfig().constraint == MethodSettings() and TrainConfig().network == NetworkConfig()
