"""The `wm` command line: one module per command group, one function per subcommand.

Lives here: argument parsing, progress, tables and JSON output; no marking logic of its own.
May import any part of wm; nothing in wm imports it. `main` is the console entry point.
"""

# Importing a command module registers its commands; `wm --help` lists them in this order.
from . import marking, integrity, keys, serve, training, evaluation, models, data, classifier  # noqa: F401  # isort: skip
from .app import app, main, reflow_help

reflow_help(app)

__all__ = ["app", "main"]
