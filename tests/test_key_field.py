"""The key field of keyed models: a pixel's value does not depend on how much of it is drawn,
training draws fields like inference does, and the host's signs survive what they must."""

import numpy as np
import pytest
import torch

from watermark_cli.model.key_field import host_signs, key_field, random_key_fields, sync_pilot_tile
from watermark_cli.model.networks import CarrierDecoder, CarrierEncoder, NetworkConfig
from conftest import fixed_key
from watermark_cli.payload import PayloadCodec, field_seed

SEED = field_seed(fixed_key("a test key"))


def test_a_region_of_the_field_is_that_region_of_the_whole():
    whole = key_field(SEED, 120, 150, sigma=1.0)
    part = key_field(SEED, 50, 60, sigma=1.0, top=17, left=33)
    assert np.array_equal(part, whole[17:67, 33:93])
    beyond = key_field(SEED, 40, 40, sigma=1.0, top=100, left=130)  # reaches past the whole's edge
    assert np.array_equal(beyond[:20, :20], whole[100:120, 130:150])


def test_the_field_has_unit_variance_and_differs_between_keys():
    field = key_field(SEED, 256, 256, sigma=1.0)
    other = key_field(field_seed(fixed_key("another key")), 256, 256, sigma=1.0)
    assert 0.9 < field.var() < 1.1
    assert abs(np.mean(field * other)) < 0.05
    trained = random_key_fields(4, 256, 256, 1.0, torch.zeros(1)).numpy()
    assert 0.9 < trained.var() < 1.1  # training sees fields like the ones inference draws


def test_the_codec_derives_the_field_seed_from_the_key_alone():
    assert PayloadCodec(256, key=fixed_key("k1")).field_seed == field_seed(fixed_key("k1")) != field_seed(fixed_key("k2"))
    assert PayloadCodec(256).field_seed == field_seed(None)  # the public default key: a public field


def test_host_signs_ignore_level_and_gain_and_agree_on_a_crop():
    rng = np.random.default_rng(0)
    host = rng.normal(size=(200, 200)).cumsum(axis=0).cumsum(axis=1) + rng.normal(scale=5.0, size=(200, 200))
    signs = host_signs(SEED, host, threshold=0.0)
    assert np.array_equal(signs, host_signs(SEED, 3.0 * host + 1000.0, threshold=0.0))
    crop = host_signs(SEED, host[30:180, 40:190], threshold=0.0)
    interior = (slice(15, -15), slice(15, -15))  # beyond the kernel's reach of the crop's edges
    assert np.array_equal(crop[interior], signs[30:180, 40:190][interior])
    # Other keys' kernels give other signs (on this very smooth host, one key's signs agree with
    # another's by 0.25 on average, and by up to 0.65); a flat host owns none above a threshold.
    agreement = [abs(np.mean(signs * host_signs(field_seed(fixed_key(f"other {i}")), host, 0.0))) for i in range(8)]
    assert np.mean(agreement) < 0.35
    assert not host_signs(SEED, np.full((64, 64), 7.0), threshold=1e-6).any()


def test_host_signs_are_the_thresholded_mirror_padded_band_pass():
    # Computed in float32: the very signs of the float64 filter wherever the filtered value is
    # not within float32's rounding of the threshold (or of 0).
    from scipy.signal import fftconvolve

    from watermark_cli.model.key_field import host_kernel

    rng = np.random.default_rng(1)
    for shape in ((512, 512), (97, 301), (4400, 40)):  # a cached kernel spectrum, odd sizes, one too big to cache
        host = rng.normal(size=shape).cumsum(axis=0).cumsum(axis=1)
        host = (host - host.min()) / np.ptp(host)  # a reader's frame: in [0, 1]
        filtered = fftconvolve(np.pad(host, 12, mode="symmetric"), host_kernel(SEED), mode="valid")
        threshold = float(np.median(np.abs(filtered)))
        expected = np.where(np.abs(filtered) > threshold, np.sign(filtered), 0.0)
        clear = np.abs(np.abs(filtered) - threshold) > 1e-5 * float(np.abs(filtered).max())
        for _ in range(2):  # the second from the cache
            signs = host_signs(SEED, host, threshold)
            assert signs.dtype == np.float32 and np.array_equal(signs[clear], expected[clear])
            assert np.count_nonzero(signs != expected) <= max(2, 1e-4 * host.size)


def test_the_sync_pilot_is_public_fixed_and_has_no_mean():
    pilot = sync_pilot_tile(64, 1.0)
    assert np.array_equal(pilot, sync_pilot_tile(64, 1.0))
    assert abs(pilot.mean()) < 1e-5 and abs(np.sqrt(np.mean(pilot**2)) - 1.0) < 1e-4


KEYED = NetworkConfig(n_bits=64, tile=32, strength_channels=4, decoder_channels=4, carrier_smoothing=1.0,
                      key_field_sigma=1.0, pilot=0.3, sync_pilot=0.5)


def test_a_keyed_network_needs_the_field_and_its_mark_does_not_repeat():
    torch.manual_seed(0)
    encoder, decoder = CarrierEncoder(KEYED), CarrierDecoder(KEYED)
    images = torch.rand(1, 1, 128, 128)
    bits = torch.randint(0, 2, (1, 64)).float()
    with pytest.raises(ValueError, match="key field"):
        encoder(images, bits)
    field = torch.from_numpy(key_field(SEED, 128, 128, 1.0))[None, None]
    unkeyed = CarrierEncoder(NetworkConfig(**{**KEYED.to_dict(), "key_field_sigma": 0.0}))
    unkeyed.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        keyed_mark = encoder(images, bits, field)[0, 0]
        repeated = unkeyed(images, bits)[0, 0]
    # An unkeyed mark's tiles agree with each other; a keyed one's only in its public pilot.
    def tile_agreement(mark):
        a, b = mark[:32, :32].flatten(), mark[32:64, 64:96].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert tile_agreement(repeated) > 0.6
    assert tile_agreement(keyed_mark) < 0.4
    assert decoder(images + keyed_mark, field).shape == (1, 64)
