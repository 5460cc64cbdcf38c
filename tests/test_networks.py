import torch

from watermark_cli.model.networks import CarrierDecoder, CarrierEncoder, NetworkConfig, run_in_strips, tile_to

CONFIG = NetworkConfig(n_bits=64, tile=32, strength_channels=4, decoder_channels=4, decoder_maps=2, carrier_smoothing=1.0)


def test_networks_take_any_size_from_64_px():
    torch.manual_seed(0)
    encoder, decoder = CarrierEncoder(CONFIG), CarrierDecoder(CONFIG)
    bits = torch.randint(0, 2, (2, 64)).float()
    for height, width in [(64, 64), (64, 200), (97, 131)]:
        images = torch.rand(2, 1, height, width)
        residual = encoder(images, bits)
        assert residual.shape == images.shape
        assert decoder(images + residual).shape == (2, 64)


def test_residual_is_one_tile_repeated_from_the_top_left():
    pattern = torch.arange(4.0).view(1, 2, 2)
    tiled = tile_to(pattern, 5, 3)
    assert tiled.shape == (1, 5, 3)
    assert torch.equal(tiled[0, 4], tiled[0, 0]) and torch.equal(tiled[0, :, 2], tiled[0, :, 0])


def test_every_shift_logits_equal_the_read_out_of_the_rolled_fold():
    torch.manual_seed(1)
    decoder = CarrierDecoder(CONFIG)
    images = torch.rand(1, 1, 96, 128)
    every = decoder.logits_for_every_shift(images)
    assert torch.allclose(every[:, :, 0, 0], decoder(images), atol=1e-4)
    fold = decoder.normalised_fold(images)
    for shift in [(5, 7), (31, 0), (16, 16)]:
        rolled = torch.roll(fold, shifts=(-shift[0], -shift[1]), dims=(-2, -1))
        expected = decoder.readout(rolled.flatten(1))
        assert torch.allclose(every[:, :, shift[0], shift[1]], expected, atol=1e-4)


def test_smoothing_moves_energy_to_low_frequencies():
    torch.manual_seed(3)
    sharp = CarrierEncoder(NetworkConfig(n_bits=64, carrier_smoothing=0.0))
    smooth = CarrierEncoder(NetworkConfig(n_bits=64, carrier_smoothing=1.0))
    smooth.carriers.data.copy_(sharp.carriers.data)
    bits = torch.randint(0, 2, (1, 64)).float()

    @torch.no_grad()
    def high_frequency_share(pattern):
        spectrum = torch.fft.fft2(pattern).abs().square()
        freq = torch.fft.fftfreq(32).abs()
        high = (freq.view(-1, 1) > 0.25) | (freq.view(1, -1) > 0.25)
        return float(spectrum[..., high].sum() / spectrum.sum())

    assert high_frequency_share(smooth.message_tile(bits)) < 0.05 < high_frequency_share(sharp.message_tile(bits))


def test_encoder_runs_in_bf16_with_a_smoothed_carrier():
    """Training on a GPU runs the networks in bf16 (autocast); the FFT smoothing of the carrier
    tile must happen in float32, since FFTs take no bf16 (on a CPU as on CUDA)."""
    import torch

    from watermark_cli.model.networks import CarrierEncoder, NetworkConfig

    torch.manual_seed(0)
    encoder = CarrierEncoder(NetworkConfig(n_bits=64, tile=32, carrier_smoothing=1.0))
    images, bits = torch.rand(2, 1, 64, 64), torch.randint(0, 2, (2, 64)).float()
    exact = encoder(images, bits)
    low_precision = encoder.to(torch.bfloat16)(images.to(torch.bfloat16), bits)
    assert torch.isfinite(low_precision).all()
    assert torch.allclose(low_precision.float(), exact, rtol=0.05, atol=0.05 * exact.abs().max().item())


def test_networks_in_strips_give_the_values_of_one_pass():
    # Inference on a CPU runs the three-layer CNNs in cache-sized strips of rows; the halo makes
    # every output pixel see what it sees in one pass (widths that give strips of 16 to 128 rows,
    # a batch, a frame shorter than one strip, and the strip height that does not divide).
    torch.manual_seed(0)
    config = NetworkConfig(n_bits=64, tile=32)
    networks = (CarrierDecoder(config).features, CarrierEncoder(config).strength)
    for shape in ((2, 1, 300, 517), (1, 1, 200, 2100), (1, 1, 40, 256), (1, 1, 1000, 256)):
        images = torch.rand(*shape)
        for network in networks:
            whole = network(images)
            with torch.inference_mode():
                strips = run_in_strips(network, images)
            assert strips.shape == whole.shape
            assert torch.allclose(strips, whole, rtol=0, atol=1e-5)
    with torch.enable_grad():  # training: one pass, gradients kept
        assert run_in_strips(networks[0], torch.rand(1, 1, 300, 64)).requires_grad


def test_the_fold_adds_every_pixel_onto_its_place_in_the_tile():
    """Whole tiles: their mean. A frame with part tiles (96², 160², a crop): every pixel's value
    added onto its place (row mod T, col mod T), the sums over the mean count, and the gradient
    reaches the part tiles' pixels, which the mark is written on too."""
    torch.manual_seed(4)
    decoder = CarrierDecoder(CONFIG)  # 32-px tiles
    whole = torch.randn(2, 2, 64, 96)
    assert torch.allclose(decoder.fold(whole), whole.view(2, 2, 2, 32, 3, 32).mean(dim=(2, 4)), atol=1e-6)
    maps = torch.randn(1, 2, 48, 80, requires_grad=True)
    sums, counts = torch.zeros(2, 32, 32, dtype=torch.float64), torch.zeros(32, 32, dtype=torch.float64)
    for row in range(48):
        for col in range(80):
            sums[:, row % 32, col % 32] += maps[0, :, row, col].detach().double()
            counts[row % 32, col % 32] += 1
    assert torch.allclose(decoder.fold(maps)[0].double(), sums / counts.mean(), atol=1e-5)
    decoder.fold(maps)[0, 0, 5, 7].backward()
    assert maps.grad[0, 0, 37, 71] == maps.grad[0, 0, 5, 7] != 0  # a part tile's pixel counts as a whole one's
    try:
        decoder.fold(torch.zeros(1, 2, 31, 80))
    except ValueError as error:
        assert "smaller than one 32×32 tile" in str(error)
    else:
        raise AssertionError("a frame under one tile was folded")
