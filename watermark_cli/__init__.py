"""wm: medical image watermarking with a per-image PSNR guarantee."""
__version__ = "0.1.0"
