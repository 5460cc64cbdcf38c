"""wm: medical image watermarking with a per-image PSNR guarantee.

The package's folders name its architecture, and data flows one way through them (file → pixels
→ model → guard → file; tests/test_architecture.py holds each folder to its allowed imports):
`cli` (the command line), `io` (files in and out), `integrity` (codecs of the restoration record
and signatures), `model` (networks and the model store; the shipped models sit in the checkout's
top-level `models/`), `marking` (pixels → mark → file, and restore and verify), `constrained`
(learning under per-sample constraints; imports nothing else of wm), `attacks`, `training`,
`evaluation`, `diagnostic` (the classifier check) and `data` (image sets). The core every folder
may use stays at the top: `errors`, `keys`, `hashing`, `jsonout`, `views` (how a reader views a
frame), `quality`, `allocation`, `guard`, `payload` and `polar`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wm")  # one version, pyproject's
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
