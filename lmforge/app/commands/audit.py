"""`lmforge audit ...`: audits of what a model can give back."""
from __future__ import annotations

import argparse
import json

from . import Command

EXAMPLES = """examples:
  lmforge audit memorization --config my.toml --canaries 20
  lmforge audit memorization --config configs/gpt-tiny.toml --canaries 8 --repetitions 0,1,4,16 train.max_steps=2000
  lmforge audit memorization --config my.toml --scrub run.name=audit-scrubbed     # canaries scrubbed before training

Canaries ("the phone number of <name> is 13xxxxxxxxx") are inserted k times into the config's training text;
exposure = log2(candidates+1) - log2(rank of the true number among random ones). Chance is about 1 bit."""


def _memorization_arguments(p):
    p.add_argument("--config", required=True, help="TOML recipe of a decoder (objective clm)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that replace the file's")
    p.add_argument("--canaries", type=int, default=20, help="how many canaries (default 20)")
    p.add_argument("--repetitions", default="0,1,4,16", help="insertion counts, assigned in turn (default 0,1,4,16)")
    p.add_argument("--candidates", type=int, default=1000, help="random secrets each canary is ranked among")
    p.add_argument("--scrub", action="store_true", help="scrub the corpus (canaries included) first: data.scrub=true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="write the JSON report to this file (default: RUN_DIR/memorization.json)")
    p.add_argument("--quiet", action="store_true")


def _memorization(args) -> int:
    from ..workflows.memorization import memorization_audit
    from ...config import ConfigError, load_config
    from ...files import atomic_write_text

    try:
        repetitions = [int(r) for r in args.repetitions.split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"--repetitions must be comma-separated integers, got {args.repetitions!r}") from None
    overrides = list(args.overrides) + (["data.scrub=true"] if args.scrub else [])
    config = load_config(args.config, overrides)
    report = memorization_audit(config, canaries=args.canaries, repetitions=repetitions, candidates=args.candidates,
                                seed=args.seed, progress=not args.quiet)
    path = args.report or str(config.run.path / "memorization.json")
    atomic_write_text(path, json.dumps(report, indent=1))
    print(f"exposure (bits; chance ~1, maximum {report['max_exposure']}) by repetitions, "
          f"{'scrubbed' if report['scrubbed'] else 'not scrubbed'}:")
    for reps, value in report["exposure_by_repetitions"].items():
        print(f"  {reps:>4} x  {value:6.2f}")
    print(f"report: {path}")
    return 0


def _add_arguments(group: argparse.ArgumentParser) -> None:
    """`lmforge audit SUBCOMMAND`."""
    sub = group.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("memorization", help="Train with inserted canaries and report their exposure.",
                       description="Train with inserted canaries and report their exposure.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _memorization_arguments(p)
    p.set_defaults(handler=_memorization)


def _run(args) -> int:
    return args.handler(args)


COMMAND = Command("audit", "Audits: memorization (canary exposure).", EXAMPLES, _add_arguments, _run,
                  overrides=True, description="Audits of what a trained model gives back.")
