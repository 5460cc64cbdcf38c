"""`wm serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from .app import app, stdout
from .options import Device, KeyFileOption, ModelOption, key_for_marking


@app.command()
def serve(
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML settings (see docs/serve.md); flags override them.")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port to listen on (default 11112).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default 127.0.0.1; beyond loopback needs allow_addresses or mutual TLS in the config).")] = None,
    ae_title: Annotated[Optional[str], typer.Option("--ae-title", help="This node's AE title (default WM).")] = None,
    forward: Annotated[Optional[str], typer.Option("--forward", help="Destination HOST:PORT:AET (the archive).")] = None,
    spool: Annotated[Optional[Path], typer.Option("--spool", help="Spool folder (crash-safe; default wm-spool).")] = None,
    allow: Annotated[Optional[List[str]], typer.Option("--allow", help="A calling AE title to accept (repeatable; a name, not a credential); none: any title from an accepted caller.")] = None,
    model: ModelOption = None,
    device: Annotated[Optional[Device], typer.Option(
        "--device", help="Where the networks run: auto, cpu or cuda (default: the config's device, else cpu).")] = None,
    key_file: KeyFileOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, max=64, help="Instances marked at once.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the configuration and exit (0 valid, 2 not).")] = False,
) -> None:
    """Run a DICOM node that marks every image on its way to the archive.

    C-STORE in, mark under the view floor, C-STORE out to --forward, with a crash-safe spool.
    Exit 0 after SIGTERM once in-flight work is done."""
    from ..serve.config import load_config, parse_destination

    config = load_config(config_file, port=port, host=host, ae_title=ae_title, spool=spool, model=model,
                         device=device.value if device is not None else None, key_file=key_file, workers=workers, allow=tuple(allow) if allow else None,
                         forward=parse_destination(forward) if forward else None).check()
    key = key_for_marking(None, config.key_file)  # --key-file, the config's key_file, or WM_KEY: never a flag value
    if check:
        from ..model.device import model_device
        from ..model.store import load_model

        load_model(config.model, model_device(config.device))  # the model must load too, on its device
        stdout.print(f"configuration valid: {escape(config.ae_title)} on {escape(config.host)} port {config.port} → "
                     f"{escape(config.forward.ae_title)} at {escape(config.forward.host)}:{config.forward.port}, "
                     f"spool {escape(str(config.spool))}", highlight=False, soft_wrap=True)
        return
    from ..serve.node import MarkingNode

    MarkingNode(config, key).serve()
