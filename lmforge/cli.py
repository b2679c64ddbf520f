"""Command line: one dispatcher over app/commands (a command is one module there). `lmforge COMMAND --help`
shows examples."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ._version import __version__
from .app.commands import ORDER, Command, all_commands
from .errors import ConfigError, DataError, ModelDirError


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: the usage, then one line starting with `error:`."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="an lmforge model directory or a Hugging Face gpt2/bert/llama checkpoint directory")
    p.add_argument("destination", help="the directory to write (must not exist unless --force)")
    p.add_argument("--to", choices=["lmforge", "hf"], default="lmforge", help="output format (default: lmforge)")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")


def _convert(args) -> int:
    """Run `lmforge convert` (moving to app/commands/convert.py)."""
    from .api import LM

    from .files import check_destination

    destination = check_destination(args.destination, args.force)
    lm = LM.from_pretrained(args.source)
    (lm.save_hf if args.to == "hf" else lm.save)(destination)
    print(f"wrote {destination} ({'Hugging Face' if args.to == 'hf' else 'lmforge'} format): {lm!r}")
    return 0


# commands still defined here until their module lands in app/commands (convert: the GGUF work moves it)
LEGACY = [Command("convert", "Convert a model between lmforge's and Hugging Face's directory formats.",
                  """examples:
  lmforge convert path/to/gpt2 my-gpt2                   # a Hugging Face directory -> an lmforge model directory
  lmforge convert runs/gpt-tiny/final hf-out --to hf     # lmforge -> Hugging Face (AutoModelFor*.from_pretrained)
  lmforge convert path/to/all-MiniLM-L6-v2 minilm        # sentence-transformers layouts work too

Hugging Face gpt2, bert and llama checkpoints (and their sequence classifiers) are read; any command that takes
a model directory also takes such a checkpoint directly, converting it in memory.""", _convert_arguments, _convert)]


def _commands() -> list[Command]:
    """Every command: app/commands' modules, then LEGACY's that no module defines yet, in ORDER."""
    found = all_commands()
    names = {command.name for command in found}
    rank = {name: i for i, name in enumerate(ORDER)}
    found += [command for command in LEGACY if command.name not in names]
    return sorted(found, key=lambda c: (rank.get(c.name, len(ORDER)), c.name))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmforge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain, fine-tune and use GPT- and BERT-style language models.",
        epilog="Start with `lmforge demo`, then `lmforge train configs/gpt-tiny.toml`. "
               "Each command has --help with examples.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in _commands():
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
