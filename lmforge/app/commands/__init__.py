"""Every `lmforge` command is one module of this package exporting `COMMAND` (or a list `COMMANDS`).

A new command is one new file: `cli.main` finds it here, adds its parser and runs it. Modules import only
light things at the top (argparse, json); torch and the library are imported inside `run`, so
`lmforge --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

# the order `lmforge --help` lists them in; a command not named here follows, alphabetically
ORDER = ("train", "generate", "chat", "eval", "fill-mask", "classify", "convert", "serve", "data", "lora", "distill",
         "prune", "quantize", "compare", "explain", "report", "audit", "bench-arch", "plot", "demo")


@dataclass(frozen=True)
class Command:
    """One command: its name, one-line help, an examples epilog, how it adds its arguments and how it runs.
    `overrides=True` lets `section.key=value` settings stand anywhere on its command line; `description` (default:
    the help) opens its --help page."""

    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    overrides: bool = False
    description: str | None = None


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype for a command that runs a model (checked by lmforge.devices before loading)."""
    parser.add_argument("--device", default="auto",
                        help="where the model runs: auto (the GPU when there is one), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="convert the weights to this dtype after loading (default: as saved)")


def all_commands() -> list[Command]:
    """Every Command of this package's modules, in ORDER."""
    found: dict[str, Command] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", None) or [getattr(module, "COMMAND", None)]:
            if command is not None:
                if command.name in found:
                    raise RuntimeError(f"two modules define the command {command.name!r}")
                found[command.name] = command
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found.values(), key=lambda c: (rank.get(c.name, len(ORDER)), c.name))
