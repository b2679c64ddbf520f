"""Command line: one dispatcher over app/commands (a command is one module there). `lmforge COMMAND --help`
shows examples."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ._version import __version__
from .app.commands import all_commands
from .errors import ConfigError, DataError, ModelDirError


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: the usage, then one line starting with `error:`."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmforge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain, fine-tune and use GPT- and BERT-style language models.",
        epilog="Start with `lmforge demo`, then `lmforge train configs/gpt-tiny.toml`. "
               "Each command has --help with examples.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in all_commands():
        p = commands.add_parser(entry.name, help=entry.help, description=entry.description or entry.help,
                                epilog=entry.examples, formatter_class=argparse.RawDescriptionHelpFormatter)
        entry.add_arguments(p)
        p.set_defaults(command_entry=entry)
    return parser


def _overrides_anywhere(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse, letting section.key=value overrides (train's, distill's) stand anywhere (after --resume too)."""
    args, extra = parser.parse_known_args(argv)
    takes = args.command_entry.overrides and hasattr(args, "overrides")
    stray = [item for item in extra if not takes or item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


TEXT_ARGUMENTS = ("prompt", "stop", "text", "text_field")  # paths may hold any bytes; these go to a tokenizer


def _check_text_arguments(args) -> None:
    """Text arguments must be valid UTF-8: the shell hands other bytes to Python as lone surrogates."""
    for name in TEXT_ARGUMENTS:
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as error:
                    raw, at = os.fsencode(item), len(os.fsencode(item[:error.start]))
                    flag = "text" if name == "text" and isinstance(value, str) else "--" + name.replace("_", "-")
                    raise ValueError(f"argument {flag} is not valid UTF-8 text (byte 0x{raw[at]:02x} at offset {at} "
                                     f"of {raw!r}); pass UTF-8 text (check the terminal's encoding or the file it "
                                     "came from)") from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmforge` command; returns the exit status."""
    args = _overrides_anywhere(_parser(), argv)
    warnings.showwarning = _show_warning
    try:
        _check_text_arguments(args)
        return args.command_entry.run(args)
    except (ConfigError, DataError, ModelDirError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
