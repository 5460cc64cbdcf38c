"""The attack layers used during training: shapes, gradients, geometry."""

from __future__ import annotations

import math
import random

import pytest
import torch

from watermark_cli.errors import BadInputError
from watermark_cli.training import config_for_preset, validate_config
from watermark_cli.attacks.layers import (CROP_SMALLEST_SIDE, TRAINING_ATTACKS, _rotate_about_centre,
                                            crop_keeping_area, denoising_removal, median_3x3)


def _images(rows: int = 64, cols: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(4, 1, rows, cols, generator=generator) * 0.8 + 0.1


@pytest.mark.parametrize("name", sorted(TRAINING_ATTACKS))
def test_every_training_attack_passes_a_gradient_back_to_the_marked_image(name):
    images = _images().requires_grad_(True)
    attacked = TRAINING_ATTACKS[name](images, random.Random(1))
    assert attacked.shape[:2] == images.shape[:2] and torch.isfinite(attacked).all()
    if name != "crop":
        assert attacked.shape == images.shape
    attacked.square().sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_the_median_layer_is_scipys_3x3_median_with_mirrored_edges():
    from scipy.ndimage import median_filter

    images = _images(rows=19, cols=23)
    expected = median_filter(images.numpy(), size=(1, 1, 3, 3), mode="mirror")
    assert torch.equal(median_3x3(images), torch.from_numpy(expected))


def test_denoising_removal_over_subtracts_what_the_denoiser_takes_and_keeps_smooth_content():
    flat = torch.full((2, 1, 32, 32), 0.4)
    spiked = flat.clone()
    spiked[:, :, 16, 16] += 0.2
    left = []
    for seed in range(8):
        assert torch.allclose(denoising_removal(flat, random.Random(seed)), flat, atol=1e-6)
        left.append(float(denoising_removal(spiked, random.Random(seed))[0, 0, 16, 16]))
    # Some of the spike always goes; where the median took it whole, γ ≥ 1 takes it to or past the level.
    assert max(left) < 0.6 - 1e-3 and min(left) <= 0.4 + 1e-6


def test_rotation_by_zero_is_the_identity_and_turns_rigidly_on_non_square_images():
    images = _images(48, 96)
    assert torch.allclose(_rotate_about_centre(images, 0.0), images, atol=2e-5)  # grid rounding
    # A dot 20 px right of the centre of a 48×96 image, turned by 90°, lands 20 px above or below
    # the centre in the same column: the rotation is rigid in pixels, not in normalised units.
    dot = torch.zeros(1, 1, 48, 96)
    dot[0, 0, 24, 68] = 1.0
    turned = _rotate_about_centre(dot, 90.0)[0, 0]
    row, col = divmod(int(turned.argmax()), 96)
    assert abs(col - 48) <= 1 and abs(abs(row - 24) - 20) <= 1


def test_crop_keeps_half_to_all_of_the_area_from_the_top_left():
    images = _images(128, 128)
    rng = random.Random(3)
    for _ in range(200):
        kept = crop_keeping_area(images, rng)
        rows, cols = kept.shape[-2:]
        assert 0.5 - 0.02 <= rows * cols / 128**2 <= 1.0
        assert min(rows, cols) >= math.floor(128 * CROP_SMALLEST_SIDE)
        assert torch.equal(kept, images[..., :rows, :cols])


def test_the_crop_attack_is_refused_when_a_crop_could_hold_less_than_one_tile():
    with pytest.raises(BadInputError, match="crop attack"):
        validate_config(config_for_preset("quick", crop=64, tile=64, attacks=("identity", "crop")))
    validate_config(config_for_preset("quick", crop=128, tile=64, attacks=("identity", "crop")))


def test_training_runs_with_the_crop_and_rotation_layers(tmp_path):
    from watermark_cli.data.synthetic import write_synthetic_dataset
    from watermark_cli.training import train

    write_synthetic_dataset(tmp_path / "data", 6, size=128, seed=5)
    config = config_for_preset("quick", n_bits=128, epochs=1, steps_per_epoch=4, batch_size=4, train_samples=8,
                               validation_crops=4, validation_crop=64, attacks=("crop", "rotate"))
    result = train(config, [tmp_path / "data"], tmp_path / "model")
    assert (tmp_path / "model" / "weights.safetensors").exists()
    # Four steps teach nothing, but they must run through both geometric layers without a
    # non-finite loss (a degenerate crop or sampling grid gives NaN), and the card says so.
    import math

    import yaml

    assert math.isfinite(result.best.train_loss) and math.isfinite(result.best.val_bit_accuracy)
    card = yaml.safe_load((tmp_path / "model" / "card.yaml").read_text())
    assert card["training"]["config"]["attacks"] == ["crop", "rotate"]
