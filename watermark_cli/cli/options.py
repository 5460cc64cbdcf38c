"""Options and argument parsers shared by the commands: model, key, JSON, the quality floor."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import BadInputError
from ..keys import KeyUse, key_warning, resolve_key
from .app import stderr

# The panels `--help` groups options into.
OUTPUT, QUALITY, KEY, INTEGRITY, BATCH = ("Output", "Quality floor", "Model, key and payload",
                                         "Restoration record and signature", "Batches and limits")


def examples(*lines: tuple[str, str]) -> str:
    """A command's help epilog: example command lines, each followed by what it does."""
    return "[bold]Examples[/]\n\n" + "\n\n".join(f"  {escape(command)}\n    [dim]→ {escape(what)}[/]"
                                                 for command, what in lines)


ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", rich_help_panel=KEY, help="Model folder or shipped model name (`wm models`).")]
KeyOption = Annotated[Optional[str], typer.Option(
    "--key", rich_help_panel=KEY, help="Secret key of the payload (visible to other users in `ps`: prefer --key-file or WM_KEY). "
                  "A passphrase is stretched (seconds) and, for marking, must not be easy to guess; `wm keygen` "
                  "makes a key. Default: the public default key, which detects but neither hides nor authenticates.")]
KeyFileOption = Annotated[Optional[Path], typer.Option(
    "--key-file", rich_help_panel=KEY, help="File holding the secret key, e.g. one made by `wm keygen FILE` (one "
                                            "trailing newline is dropped).")]
RecipientOption = Annotated[Optional[Path], typer.Option(
    "--recipient", rich_help_panel=INTEGRITY, help="The recipient's X.509 certificate (PEM, RSA): the restoration record is encrypted for it "
                        "(CMS; DICOM's Encrypted Attributes Sequence) instead of under --key.")]
RecipientKeyOption = Annotated[Optional[Path], typer.Option(
    "--recipient-key", rich_help_panel=INTEGRITY, help="The recipient's private key (PEM, unencrypted), with --recipient, to open a record "
                            "encrypted for it.")]
JsonOption = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUTPUT, help="Machine-readable JSON on stdout (errors too: one object each).")]
PsnrOption = Annotated[float, typer.Option(
    "--psnr-min", rich_help_panel=QUALITY, help="PSNR floor in dB that every written frame keeps.")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=1, max=64, rich_help_panel=BATCH,
    help="Files at once (default: one per core, up to 4, or up to 16 with the networks on a GPU).")]
# The default is io.image.DEFAULT_MAX_PIXELS (kept literal here: importing io.image would slow `wm --help`).
MaxPixelsOption = Annotated[int, typer.Option(
    "--max-pixels", min=1, rich_help_panel=BATCH, help="Refuse, before decoding, any image whose header declares more pixels "
                                "(rows x columns x frames).")]


def key_for_marking(key: str | None, key_file: Path | None) -> bytes | None:
    """The key for making marks: a passphrase that is easy to guess is refused (keys.py)."""
    return resolve_key(key, key_file, KeyUse.mark)


def key_for_reading(key: str | None, key_file: Path | None) -> bytes | None:
    """The key for reading, verifying or restoring: any key opens what it made; a weak one is
    warned about on stderr (the marks it made are as weak)."""
    secret = resolve_key(key, key_file, KeyUse.read)
    warning = key_warning(secret)
    if warning is not None:
        stderr.print(escape(warning), highlight=False, soft_wrap=True)
    return secret


def recipient_for_opening(certificate: Path | None, private_key: Path | None):
    """--recipient and --recipient-key, loaded (None without them); they go together."""
    if certificate is None and private_key is None:
        return None
    if certificate is None or private_key is None:
        raise BadInputError("--recipient and --recipient-key go together: the certificate and its private key")
    from ..integrity.envelope import load_recipient

    return load_recipient(certificate, private_key)


def parse_window(window: str | None) -> tuple[float, float] | None:
    from ..views import parse_window as parse

    return None if window is None else parse(window, "--window")


def message_bytes(message: str, hex_message: bool) -> bytes:
    if not hex_message:
        from ..payload import has_control_characters

        try:
            encoded = message.encode("utf-8")
        except UnicodeEncodeError:  # argument bytes that are not UTF-8 arrive as lone surrogates
            raise BadInputError("MESSAGE is not valid UTF-8 text; give bytes with --hex") from None
        if has_control_characters(message):
            raise BadInputError("MESSAGE holds control characters (a terminal would act on them when it is "
                                "read back); give such bytes with --hex")
        return encoded
    try:
        return bytes.fromhex(message)
    except ValueError:
        raise BadInputError(f"--hex message is not hexadecimal: {message!r}") from None


class Engine(str, Enum):
    local = "local"
    dask = "dask"


EngineOption = Annotated[Engine, typer.Option(
    "--engine", rich_help_panel=BATCH,
    help="Many files: local (this machine's processes) or dask (a Dask cluster: --scheduler, or a LocalCluster of "
         "--workers processes).")]
SchedulerOption = Annotated[Optional[str], typer.Option(
    "--scheduler", rich_help_panel=BATCH, help="With --engine dask: a running scheduler (tcp://host:8786).")]


class PsnrDomain(str, Enum):
    """Where the floor holds (design §1): every view a reader uses, the stored values, or one window."""

    view = "view"
    stored = "stored"
    window = "window"


class PsnrPeak(str, Enum):
    """The peak of `--psnr-domain stored`."""

    nominal = "nominal"
    range = "range"


def quality_floor(psnr_min: float, psnr_peak: PsnrPeak, psnr_domain: PsnrDomain, max_abs_error: float | None):
    """The floor of --psnr-min, --psnr-peak, --psnr-domain and --max-abs-error (QualityFloor
    checks itself; the floor's own error names the option here)."""
    from ..quality import QualityFloor, checked_psnr_min

    return QualityFloor(checked_psnr_min(psnr_min, "--psnr-min"), psnr_peak.value, psnr_domain.value, max_abs_error)


PsnrDomainOption = Annotated[PsnrDomain, typer.Option(
    "--psnr-domain", rich_help_panel=QUALITY, help="view (default): every view a reader uses — the frame's data range, each VOI window "
                          "the file declares (a CT also the brain, soft tissue, lung and bone presets) and --window; "
                          "8-bit PNG/TIFF/JPEG as stored. stored: the stored values against --psnr-peak. window: one "
                          "window only (--window, else the file's first).")]
PsnrPeakOption = Annotated[PsnrPeak, typer.Option(
    "--psnr-peak", rich_help_panel=QUALITY, help="With --psnr-domain stored: nominal (2^BitsStored-1 / dtype max) or range (max-min of the "
                        "original frame).")]
WindowOption = Annotated[Optional[str], typer.Option(
    "--window", rich_help_panel=QUALITY, help="A VOI window CENTER,WIDTH in modality units (HU for CT) that the floor must hold in too: "
                     "the view an export of yours will use.")]


# Choices as Enums: typer checks them and lists them in --help. They are written out here, not
# built from the modules that own them, because those import numpy, torch or cooper and `wm
# --help` must stay instant; tests/test_cli.py checks that each matches its owner's tuple.
def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


Compression = _choices("Compression", ("none", "rle", "jpeg2000"))  # io.image.DICOM_COMPRESSIONS
Preset = _choices("Preset", ("quick", "standard", "paper"))  # training.config.PRESETS
# constrained.methods.METHODS
Method = _choices("Method", ("sequential", "fixed", "lagrangian", "augmented-lagrangian", "projection"))
PenaltyShape = _choices("PenaltyShape", ("hinge", "squared_hinge"))  # constrained.sequential_penalty.SHAPES
TauScope = _choices("TauScope", ("global", "per-sample"))  # constrained.methods.TAU_SCOPES
TauSchedule = _choices("TauSchedule", ("open-loop", "closed-loop"))  # constrained.methods.TAU_SCHEDULES
DualOptimizer = _choices("DualOptimizer", ("sgd", "nupi"))  # constrained.methods.DUAL_OPTIMIZERS
Device = _choices("Device", ("auto", "cpu", "cuda"))  # model.device.DEVICE_CHOICES
DeviceOption = Annotated[Device, typer.Option(
    "--device", rich_help_panel=KEY, help="Where the networks run: auto (a GPU when there is one), cpu or cuda. The "
                                          "floor is measured on the stored values whatever the device.")]
Split = _choices("Split", ("train", "held_out"))  # data.clinical.SPLITS
Architecture = _choices("Architecture", ("small", "resnet18", "densenet121"))  # diagnostic.networks.ARCHITECTURES
LesionTask = _choices("LesionTask", ("nodules", "faint-brain"))  # data.lesions.LESION_TASKS
# attacks.codecs.ATTACKS (the names; each takes an optional :STRENGTH)
ATTACK_NAMES = ("identity", "png16", "noise", "window8", "jpeg", "jpeg2000", "blur", "contrast", "resize", "crop",
                "rotate")


def value_of(choice: Enum | None):
    """An Enum option's value (None stays None): what the modules below the CLI take."""
    return None if choice is None else choice.value
