import math

import pytest
import torch

from watermark_cli.constrained.sequential_penalty import PenaltySchedule, PerSampleConstraint, SequentialPenalty


def test_schedule_grows_geometrically_every_period_and_stops_at_the_cap():
    schedule = PenaltySchedule(tau_initial=0.1, growth=1.1, period=10, tau_max=500.0)
    assert schedule.tau_at(0) == pytest.approx(0.1)
    assert schedule.tau_at(9) == pytest.approx(0.1)
    assert schedule.tau_at(10) == pytest.approx(0.11)
    assert schedule.tau_at(25) == pytest.approx(0.1 * 1.1**2)
    # 0.1 * 1.1^k reaches 500 at k = ln(5000)/ln(1.1) ≈ 89.4 growth periods.
    assert schedule.tau_at(890) < 500.0
    assert schedule.tau_at(900) == pytest.approx(500.0)
    assert schedule.tau_at(10**9) == pytest.approx(500.0)


def test_schedule_rejects_shrinking_or_empty_settings():
    with pytest.raises(ValueError):
        PenaltySchedule(growth=0.9)
    with pytest.raises(ValueError):
        PenaltySchedule(period=0)
    with pytest.raises(ValueError):
        PenaltySchedule(tau_initial=1.0, tau_max=0.5)


def test_penalty_is_tau_times_mean_hinge_of_the_violations():
    penalty = SequentialPenalty(PerSampleConstraint("psnr", 40.0, "ge"), PenaltySchedule(2.0, 2.0, 1, 100.0))
    values = torch.tensor([42.0, 39.0, 37.0, 40.0])
    term, report = penalty.penalty(values)
    assert float(term) == pytest.approx(2.0 * (0 + 1 + 3 + 0) / 4)
    assert report.fraction_satisfied == pytest.approx(0.5)
    assert report.max_violation == pytest.approx(3.0)
    penalty.advance()
    term, _ = penalty.penalty(values)
    assert float(term) == pytest.approx(4.0 * 1.0)


def test_squared_hinge_and_le_sense():
    penalty = SequentialPenalty(PerSampleConstraint("mse", 0.1, "le"), PenaltySchedule(1.0, 1.0, 1, 1.0),
                                shape="squared_hinge")
    term, report = penalty.penalty(torch.tensor([0.05, 0.3, 0.1]))
    assert float(term) == pytest.approx((0.2**2) / 3)
    assert report.fraction_satisfied == pytest.approx(2 / 3)


def test_penalty_gradient_pushes_only_violating_samples_towards_the_bound():
    penalty = SequentialPenalty(PerSampleConstraint("psnr", 40.0, "ge"))
    values = torch.tensor([45.0, 35.0], requires_grad=True)
    term, _ = penalty.penalty(values)
    term.backward()
    assert values.grad[0] == 0.0
    assert values.grad[1] < 0.0  # descending the penalty raises the violating PSNR


def test_state_round_trip_restores_tau():
    penalty = SequentialPenalty(PerSampleConstraint("psnr", 40.0), PenaltySchedule(0.1, 1.5, 3, 10.0))
    penalty.advance(7)
    copy = SequentialPenalty(PerSampleConstraint("other", 0.0))
    copy.load_state_dict(penalty.state_dict())
    assert copy.tau == pytest.approx(penalty.tau) and copy.constraint.name == "psnr"
    assert math.isclose(copy.tau, 0.1 * 1.5**2)


def test_minimising_with_growing_tau_drives_violations_to_zero():
    """A toy per-sample problem: loss pulls x_i up to 10, the constraint says x_i <= b_i."""
    bounds = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.zeros(4, requires_grad=True)
    penalty = SequentialPenalty(PerSampleConstraint("x", 0.0, "le"), PenaltySchedule(0.1, 1.5, 20, 50.0))
    optimiser = torch.optim.Adam([x], lr=0.01)
    for _ in range(2000):
        loss = (x - 10.0).square().mean()
        term, report = penalty.penalty(x - bounds)
        optimiser.zero_grad()
        (loss + term).backward()
        optimiser.step()
        penalty.advance()
    assert report.max_violation < 0.05
    assert torch.all(x > bounds - 0.5)  # and it did not give up the task: x sits at its bound


def test_per_sample_tau_grows_only_for_samples_last_seen_violated():
    penalty = SequentialPenalty(PerSampleConstraint("psnr", 40.0, "ge"), PenaltySchedule(1.0, 2.0, 1, 100.0),
                                num_samples=4)
    penalty.record(torch.tensor([39.0, 41.0]), torch.tensor([0, 1]))  # 0 violated, 1 fine, 2 and 3 unseen
    penalty.advance()
    taus = penalty.schedule.tau_after(penalty.growths)
    assert taus.tolist() == [2.0, 1.0, 1.0, 1.0]
    term, report = penalty.penalty(torch.tensor([38.0, 38.0]), torch.tensor([0, 1]))
    assert float(term) == pytest.approx((2.0 * 2 + 1.0 * 2) / 2)
    assert report.tau == pytest.approx(1.5)
    with pytest.raises(ValueError):
        penalty.penalty(torch.tensor([38.0]))  # per-sample coefficients need the sample indices


def test_closed_loop_grows_only_while_the_violation_does_not_fall_enough():
    schedule = PenaltySchedule(1.0, 2.0, 1, 100.0, closed_loop=True, required_decrease=0.5)
    penalty = SequentialPenalty(PerSampleConstraint("x", 0.0, "le"), schedule)
    for violation, expected_tau in [(4.0, 2.0),   # first checkpoint: nothing to compare with, grow
                                    (3.0, 4.0),   # fell by 25 % < 50 %: grow
                                    (1.0, 4.0),   # fell by 67 %: the current tau works, hold it
                                    (0.9, 8.0),   # stalled: grow
                                    (0.0, 8.0)]:  # satisfied: hold
        penalty.record(torch.tensor([violation]))
        penalty.advance()
        assert penalty.tau == pytest.approx(expected_tau)
    penalty.record(torch.tensor([5.0]))
    penalty.observe_held_out(satisfied=True)  # held-out data meet the constraint: stop growing
    penalty.advance()
    assert penalty.tau == pytest.approx(8.0)


def test_per_sample_closed_loop_state_round_trip():
    schedule = PenaltySchedule(0.5, 1.5, 2, 10.0, closed_loop=True)
    penalty = SequentialPenalty(PerSampleConstraint("x", 0.0, "le"), schedule, "squared_hinge", num_samples=3)
    penalty.record(torch.tensor([1.0, -1.0]), torch.tensor([0, 2]))
    penalty.advance(3)
    copy = SequentialPenalty(PerSampleConstraint("x", 0.0, "le"), num_samples=3)
    copy.load_state_dict(penalty.state_dict())
    for p in (penalty, copy):
        p.record(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0, 1, 2]))
        p.advance(2)
    assert torch.equal(copy.growths, penalty.growths) and copy.shape == "squared_hinge"
    assert copy.coefficient_summary() == penalty.coefficient_summary()


def test_tau_stops_growing_at_the_cap_and_does_not_count_past_it():
    penalty = SequentialPenalty(PerSampleConstraint("x", 0.0, "le"), PenaltySchedule(1.0, 2.0, 1, 8.0))
    penalty.advance(50)
    assert penalty.tau == pytest.approx(8.0) and int(penalty.growths[0]) == 3


def test_the_constrained_folder_imports_nothing_else_of_wm():
    """The method is reusable for any per-sample constraint: its folder may import itself and
    third-party libraries, never the rest of wm (checked in a fresh interpreter, and in the source
    so that a lazy import inside a function cannot hide)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import watermark_cli.constrained as constrained

    folder = Path(constrained.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}:{node.lineno} imports from outside constrained/"
                assert not (node.module or "").startswith("watermark_cli"), f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("watermark_cli") for a in node.names), f"{path.name}:{node.lineno}"
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, watermark_cli.constrained; "
                               "print(' '.join(m for m in sys.modules if m.startswith('watermark_cli')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert loaded and all(m == "watermark_cli" or m.startswith("watermark_cli.constrained") for m in loaded), loaded
