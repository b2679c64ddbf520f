"""The compression commands (`lmforge lora merge`, `prune`, `quantize`, `distill`, `compare`) on the top-level
command line. Each module of this package that has a command contributes one entry to COMMANDS:
name -> (help, examples, add_arguments(parser), handler(args) -> exit code)."""
from __future__ import annotations

import argparse

COMMANDS: dict[str, tuple] = {}

from .distill import COMMAND as DISTILL  # noqa: E402 - each module's entry after the registry it joins

COMMANDS["distill"] = DISTILL

from .lora_cli import COMMAND as LORA  # noqa: E402

COMMANDS["lora"] = LORA


def add_compress_commands(commands) -> None:
    """Register every entry of COMMANDS on the top-level subparsers."""
    for name, (help_text, examples, add_arguments, handler) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, description=help_text, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(handler=handler)
