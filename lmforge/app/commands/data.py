"""`lmforge data ...`: the data passes from the command line. Each subcommand is one entry of SUBCOMMANDS
(name, help, examples, a function adding its arguments, its handler), so a new pass is one more entry."""
from __future__ import annotations

import argparse
import json
import os

from ...errors import DataError
from . import Command


def _scrub_arguments(p):
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or folders (.txt .md .jsonl .csv .tsv)")
    p.add_argument("out", help="output folder (same file names and formats; written only when everything succeeded)")
    p.add_argument("--mode", choices=["placeholder", "pseudonym"], default="placeholder",
                   help="placeholder: [EMAIL]; pseudonym: [EMAIL_3f9a1c2b], the same tag for the same value")
    p.add_argument("--types", help="comma-separated PII types to replace (default: all); see the report for names")
    p.add_argument("--salt", default="", help="pseudonym key (default: a random one, so tags differ between runs)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--report", help="also write the JSON report (counts per type) to this file")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _scrub(args) -> int:
    from ...data.pii import KINDS
    from ...data.scrub import scrub_corpus

    kinds = [k.strip().upper() for k in args.types.split(",") if k.strip()] if args.types else None
    if kinds and set(kinds) - set(KINDS):
        raise DataError(f"--types: unknown {', '.join(sorted(set(kinds) - set(KINDS)))}; known: {', '.join(KINDS)}")
    report = scrub_corpus(args.inputs, args.out, mode=args.mode, kinds=kinds, salt=args.salt,
                          workers=max(1, args.workers), progress=not args.quiet, overwrite=args.overwrite)
    _write_report(report, args.report)
    print(json.dumps(report, indent=1))
    return 0


def _dedup_arguments(p):
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or folders")
    p.add_argument("out", help="output folder")
    p.add_argument("--near", type=float, default=0.8, help="Jaccard similarity of word 5-grams above which two "
                   "documents are near duplicates (default 0.8); 1 or --exact-only for exact duplicates only")
    p.add_argument("--exact-only", action="store_true", help="remove only exact duplicates (after whitespace/case)")
    p.add_argument("--lines", action="store_true", help="each line of a text file is a document (default: the file)")
    p.add_argument("--text-field", default="text", help="field/column of the text in .jsonl/.csv (default: text)")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true")


def _dedup(args) -> int:
    from ...data.dedup import dedup_corpus

    report = dedup_corpus(args.inputs, args.out, near=None if args.exact_only else args.near, text_field=args.text_field,
                          lines=args.lines, progress=not args.quiet, overwrite=args.overwrite)
    _write_report(report, args.report)
    print(json.dumps(report, indent=1))
    return 0


def _contamination_arguments(p):
    p.add_argument("--train", nargs="+", required=True, metavar="PATH", help="training corpus files or folders")
    p.add_argument("--eval", required=True, help="evaluation file: .csv/.tsv/.jsonl (one item a row) or .txt (a line)")
    p.add_argument("--text-field", default="text", help="text field/column of the training records (default: text)")
    p.add_argument("--eval-text-field", help="text column of the evaluation file (default: --text-field)")
    p.add_argument("-n", type=int, default=8, help="n-gram length in words (a CJK character is a word); default 8")
    p.add_argument("--threshold", type=float, default=0.5, help="share of an item's n-grams found in the training "
                   "text from which it counts as contaminated (default 0.5)")
    p.add_argument("--drop", action="store_true", help="write the evaluation file without contaminated items to --out")
    p.add_argument("--out", help="with --drop: the cleaned evaluation file (same format as --eval)")
    p.add_argument("--report", help="write the full JSON report (every item's overlap) to this file")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _contamination(args) -> int:
    from ...data.contamination import drop_contaminated, find_contamination, write_report

    if args.drop and not args.out:
        raise DataError("--drop needs --out FILE for the cleaned evaluation file")
    report = find_contamination(args.train, args.eval, n=args.n, threshold=args.threshold, text_field=args.text_field,
                                eval_text_field=args.eval_text_field, progress=not args.quiet)
    if args.drop:
        kept = drop_contaminated(args.eval, report, args.out, text_field=args.eval_text_field or args.text_field,
                                 overwrite=args.overwrite)
        report["kept"], report["cleaned_eval"] = kept, args.out
    if args.report:
        write_report(report, args.report)
    shown = {k: v for k, v in report.items() if k != "overlaps"}
    shown["flagged"] = shown["flagged"][:20]
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    return 0


def _augment_arguments(p):
    from ...data.augment import METHODS

    p.add_argument("source", help="labeled .csv/.tsv/.jsonl file")
    p.add_argument("out", help="output file, same format: the original rows, each followed by its augmented copies")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    p.add_argument("--n", type=int, default=2, help="augmented copies per row (default 2)")
    p.add_argument("--alpha", type=float, default=0.1, help="share of words changed per copy (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--only-new", action="store_true", help="write only the augmented copies")
    p.add_argument("--overwrite", action="store_true")


def _augment(args) -> int:
    from ...data.augment import augment_file

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report = augment_file(args.source, args.out, methods=methods, n=args.n, alpha=args.alpha, seed=args.seed,
                          text_field=args.text_field, label_field=args.label_field, keep_original=not args.only_new,
                          overwrite=args.overwrite)
    print(json.dumps(report))
    return 0


def _synthesize_arguments(p):
    p.add_argument("model", help="decoder model directory (a run's final/)")
    p.add_argument("--prompts", required=True, help="text file, one prompt a line")
    p.add_argument("--n", type=int, required=True, help="distinct samples to write")
    p.add_argument("--out", required=True, help="output .jsonl: {\"prompt\", \"text\"} per line")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--near", type=float, default=0.8, help="near-duplicate threshold among samples (default 0.8)")
    p.add_argument("--no-scrub", action="store_true", help="keep PII-shaped strings in the samples")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _synthesize(args) -> int:
    from ..workflows.synthesize import read_prompts, synthesize

    report = synthesize(args.model, read_prompts(args.prompts), args.n, args.out, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                        near=args.near, scrub=not args.no_scrub, overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(report))
    return 0


def _inspect_arguments(p):
    p.add_argument("file", help="chat .jsonl: OpenAI 'messages', ShareGPT 'conversations' or alpaca instruction/output")
    p.add_argument("--model", required=True, help="the model to tune (model directory or a path model.init takes): "
                   "its tokenizer and chat template render the rows")
    p.add_argument("-n", "--show", type=int, default=3, help="conversations to print (default 3)")
    p.add_argument("--block-size", type=int, help="cut conversations to this many tokens (default: the model's)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="mark trained tokens in green (auto: when printing to a terminal), else with [[ ]]")


def _inspect(args) -> int:
    import sys

    from ...infer.chat_encode import inspect_chat_file
    from ...modeldir import load_model_dir

    if args.show < 0 or (args.block_size is not None and args.block_size < 2):
        raise DataError("-n must be >= 0 and --block-size >= 2")
    bundle = load_model_dir(args.model)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(inspect_chat_file(args.file, bundle.tokenizer, bundle.meta, args.block_size or bundle.config.block_size,
                            args.show, color))
    return 0


def _write_report(report: dict, path: str | None) -> None:
    if path:
        from ...files import atomic_write_text
        atomic_write_text(path, json.dumps(report, indent=1))


SUBCOMMANDS = {
    "scrub": ("Replace personal data (e-mails, phones, cards, IBANs, IDs, IPs, secrets...) in a corpus.", """examples:
  lmforge data scrub corpus/ clean/ --report scrub.json
  lmforge data scrub notes.txt chats.jsonl clean/ --mode pseudonym --salt "$SECRET"
  lmforge data scrub corpus/ clean/ --types EMAIL,PHONE,CN_RESIDENT_ID --workers 2

Types: CN_RESIDENT_ID CREDIT_CARD EMAIL IBAN IP_ADDRESS PASSPORT_MRZ PHONE PRIVATE_KEY SECRET URL_CREDENTIALS US_SSN.
The output folder gets DATA_CARD.md and data_card.json (counts per type).""", _scrub_arguments, _scrub),
    "dedup": ("Remove exact and near-duplicate documents (MinHash/LSH); the first occurrence stays.", """examples:
  lmforge data dedup clean/ deduped/ --near 0.8
  lmforge data dedup corpus.txt deduped/ --lines --exact-only      # one document per line""",
              _dedup_arguments, _dedup),
    "contamination": ("Measure n-gram overlap of evaluation items with training text; optionally drop them.", """examples:
  lmforge data contamination --train deduped/ --eval test.csv
  lmforge data contamination --train corpus/ --eval test.jsonl --drop --out test.clean.jsonl --report contam.json""",
                      _contamination_arguments, _contamination),
    "augment": ("Label-preserving augmentation of a labeled file (EDA: synonym, insert, swap, delete).", """examples:
  lmforge data augment train.csv aug.csv --methods synonym,insert,swap,delete --n 2
  lmforge data augment train.jsonl aug.jsonl --methods synonym --n 4 --alpha 0.2 --seed 3""",
                _augment_arguments, _augment),
    "synthesize": ("Generate synthetic text with a trained decoder, deduplicated and scrubbed.", """examples:
  lmforge data synthesize runs/gpt/final --prompts prompts.txt --n 1000 --out synth.jsonl
  lmforge data synthesize runs/gpt/final --prompts prompts.txt --n 50 --out s.jsonl --temperature 0.7 --seed 1""",
                   _synthesize_arguments, _synthesize),
}


SUBCOMMANDS["inspect"] = ("Show how SFT sees a chat file: rendered conversations with the trained tokens marked.",
                          """examples:
  lmforge data inspect chats.jsonl --model runs/base/final
  lmforge data inspect alpaca.jsonl --model SmolLM2-135M-Instruct.Q4_1.gguf -n 5 --color never

Rows are rendered through the model's chat template (the built-in ChatML one when it has none); the loss of
train.objective=sft covers exactly the marked tokens: every assistant reply and the end-of-turn token after it.""",
                          _inspect_arguments, _inspect)


def _tokenize_arguments(p) -> None:
    p.add_argument("sources", nargs="+", metavar="SRC", help="files, folders or glob patterns")
    p.add_argument("--tokenizer", required=True, help="a tokenizer.json, or a model directory holding one")
    p.add_argument("--out", required=True, help="output folder (e.g. RUN_DIR/data)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--text-field", default="text", help="field/column of the text in .jsonl/.csv (default: text)")
    p.add_argument("--encoding-errors", choices=["replace", "strict"], default="replace")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _tokenize(args) -> int:
    from ...tokenizer import Tokenizer
    from ...data.tokenize import tokenize_corpus

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {args.workers})")
    info = tokenize_corpus(args.sources, Tokenizer.load(args.tokenizer), args.out, text_field=args.text_field,
                           errors=args.encoding_errors, workers=args.workers, progress=not args.quiet)
    print(json.dumps({k: info[k] for k in ("n_tokens", "dtype", "skipped")}))
    return 0


SUBCOMMANDS["tokenize"] = ("Tokenize a corpus into the memory-mapped token file training reads, on all cores.", """examples:
  lmforge data tokenize big-corpus/ --tokenizer runs/x/final/tokenizer.json --out runs/x/data
  lmforge data tokenize 'shards/*.jsonl' --text-field content --tokenizer my-model/ --out prepared/ --workers 8

tokenize streams the sources (constant memory), uses every core, shows progress, and is resumable: a
rerun after a kill keeps the finished parts, and one with unchanged sources and tokenizer does nothing.
Training reuses the token file when run.dir/data holds it for the same data.paths and tokenizer.path.""",
                           _tokenize_arguments, _tokenize)


def _add_arguments(group: argparse.ArgumentParser) -> None:
    """`lmforge data SUBCOMMAND`: one subparser per entry of SUBCOMMANDS."""
    sub = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for name, (help_text, examples, add_arguments, handler) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(handler=handler)


def _run(args) -> int:
    return args.handler(args)


COMMAND = Command("data", "Data passes: scrub, dedup, contamination, augment, synthesize, tokenize; inspect a chat file.",
                  "examples:\n  lmforge data scrub corpus/ clean/ --report scrub.json\n"
                  "  lmforge data dedup clean/ deduped/ --near 0.8\n"
                  "  lmforge data SUBCOMMAND --help", _add_arguments, _run,
                  description="Data passes. Each writes its output only when it succeeded.")
