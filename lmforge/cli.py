"""Command line: thin — parses, calls the library, prints. `lmforge COMMAND --help` shows examples."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ._version import __version__

EXAMPLES = {
    "train": """examples:
  lmforge train configs/gpt-tiny.toml
  lmforge train configs/gpt-tiny.toml data.paths='["notes/*.txt"]' train.max_steps=2000
  lmforge train configs/shakespeare-char.toml train.dtype=bfloat16 run.name=shakespeare-bf16
  lmforge train configs/gpt-tiny.toml --resume runs/gpt-tiny        # continue after a stop or a kill
  lmforge train configs/gpt-tiny.toml --resume runs/gpt-tiny train.max_steps=3000   # extend a finished run
  lmforge train configs/classify.toml model.init=runs/bert-tiny/final data.train=train.csv data.test=test.csv
  lmforge train configs/classify.toml train.objective=regress data.train=scores.csv data.label_field=score
  lmforge train configs/classify.toml train.objective=multilabel data.train=tags.csv data.label_field=tags
  lmforge train configs/gpt-tiny.toml train.label_smoothing=0.1 train.l1=1e-6

Overrides are section.key=value with TOML values (numbers, true/false, "strings", [lists]).
Sections: model, tokenizer, data, train, run. The run directory gets config.toml, metrics.jsonl,
checkpoints/step-N/ and final/ (a model directory for generate, eval, fill-mask, classify).""",
    "generate": """examples:
  lmforge generate runs/gpt-tiny/final --prompt "Once upon a time" --max-new-tokens 200 --temperature 0.8 --top-p 0.95
  lmforge generate runs/gpt-tiny/final --prompt "def " --temperature 0 --stop "\\n\\n"
  lmforge generate runs/gpt-tiny/final --prompt "A" --prompt "B" --json      # a batch, one JSON line each
  lmforge generate runs/gpt-tiny/final --prompt "The" --num-beams 4 --length-penalty 1.0   # beam search""",
    "eval": """examples:
  lmforge eval runs/gpt-tiny/final --data held_out.txt            # loss, perplexity, tokens
  lmforge eval runs/gpt-tiny/final --data held_out.txt --json     # one JSON object on the last line
  lmforge eval runs/classify/final --data test.csv --json         # accuracy, macro_f1, per_class, confusion
  lmforge eval runs/scores/final --data test.csv                  # regression: mse, mae, pearson, spearman
  lmforge eval runs/tags/final --data test.csv --threshold 0.4    # multi-label: micro/macro F1, subset accuracy""",
    "fill-mask": """examples:
  lmforge fill-mask runs/bert-tiny/final "The [MASK] of the function is returned." --top-k 5
  lmforge fill-mask runs/bert-tiny/final "A [MASK] is a [MASK]." --json""",
    "classify": """examples:
  lmforge classify runs/classify/final --text "a gripping, beautifully acted film"
  lmforge classify runs/classify/final --file reviews.csv --json > predictions.jsonl
  lmforge classify runs/tags/final --text "..." --threshold 0.3   # multi-label: every tag at or over 0.3
  lmforge classify runs/scores/final --file reviews.txt           # regression: one score per text""",
    "convert": """examples:
  lmforge convert path/to/gpt2 my-gpt2                   # a Hugging Face directory -> an lmforge model directory
  lmforge convert runs/gpt-tiny/final hf-out --to hf     # lmforge -> Hugging Face (AutoModelFor*.from_pretrained)
  lmforge convert path/to/all-MiniLM-L6-v2 minilm        # sentence-transformers layouts work too

Hugging Face gpt2, bert and llama checkpoints (and their sequence classifiers) are read; any command that takes
a model directory also takes such a checkpoint directly, converting it in memory.""",
    "serve": """examples:
  lmforge serve runs/gpt-tiny/final --port 8000 --max-batch 8
  lmforge serve runs/gpt-tiny/final --api-key secret --max-queue 32 --timeout 60
  curl 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "gpt-tiny", "prompt": "Once", "max_tokens": 50, "stream": true}'
  lmforge serve runs/bert-tiny/final      # /v1/fill-mask, /v1/embeddings (and /v1/classify for a classifier)

OpenAI-compatible: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings; also /v1/fill-mask,
/v1/classify, /health, /metrics (Prometheus). Needs the serve extra: pip install 'lmforge[serve]'.""",
    "bench-arch": """examples:
  lmforge bench-arch --data input.txt --minutes 5 --archs lstm,gpt,llama --out arch.png
  lmforge bench-arch --data notes/ --minutes 2 --archs gru,gpt --set lstm:model.n_embd=512 --set train.batch_size=16

Each arch trains alone for the same wall-clock budget (evaluation not counted), with its learning-rate schedule
fitted to that budget; then a table (parameters, tokens/s, best val loss) and a PNG of val loss against time.
Finished archs are kept in --run-dir/<arch>/bench.json and reused by a later call with the same settings.""",
    "plot": """examples:
  lmforge plot runs/gpt-tiny                                  # writes runs/gpt-tiny/curves.png
  lmforge plot runs/lr-1e-3 runs/lr-3e-4 --out compare.png    # several runs overlaid
  tensorboard --logdir runs/                                  # the same metrics, live""",
    "demo": """examples:
  lmforge demo                  # what `make demo` runs: a small GPT and a small BERT on the built-in corpus
  lmforge demo --steps 300      # shorter""",
}


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
    from .app.commands import add_device_arguments

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("train", "Train a model from a TOML config (pretraining or fine-tuning).")
    p.add_argument("config", help="TOML recipe, e.g. configs/gpt-tiny.toml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that replace the file's")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = command("generate", "Generate text from a decoder model directory.")
    p.add_argument("model", help="model directory (a run's final/ or checkpoints/step-N/)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch); default: empty")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeating tokens")
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slower)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (sampling options unused)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam scores are divided by length ** this")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of streaming")
    add_device_arguments(p)

    p = command("eval", "Evaluate a model on held-out data.")
    p.add_argument("model", help="model directory")
    p.add_argument("--data", required=True, help="text file/folder/glob (LM) or labeled .csv/.tsv/.jsonl (classifier)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: a tag is predicted at this probability or more (default: saved, 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    add_device_arguments(p)

    p = command("fill-mask", "Predict the [MASK] tokens of a text with an encoder.")
    p.add_argument("model", help="model directory of a BERT-style model")
    p.add_argument("text", help="text with one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    add_device_arguments(p)

    p = command("classify", "Label texts with a classifier model directory.")
    p.add_argument("model", help="model directory of a classifier")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeatable)")
    source.add_argument("--file", help="a .txt (one text a line), .csv/.tsv or .jsonl file")
    p.add_argument("--text-field", default="text", help="column/field of the text in --file (default: text)")
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: give every tag at this probability or more (default: saved, 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    add_device_arguments(p)

    p = command("convert", "Convert a model between lmforge's and Hugging Face's directory formats.")
    p.add_argument("source", help="an lmforge model directory or a Hugging Face gpt2/bert/llama checkpoint directory")
    p.add_argument("destination", help="the directory to write (must not exist unless --force)")
    p.add_argument("--to", choices=["lmforge", "hf"], default="lmforge", help="output format (default: lmforge)")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")

    p = command("serve", "Serve a model directory over HTTP with an OpenAI-compatible API.")
    p.add_argument("model", help="model directory (decoder: completions and chat; encoder: fill-mask, classify)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the name clients use (default: the run's directory name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (1 turns batching off)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 + Retry-After")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ (401 otherwise)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take, queueing included")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens one request may ask for")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p = command("bench-arch", "Train several architectures for the same time each and compare their curves.")
    p.add_argument("--data", required=True, help="text file, folder or glob (a character tokenizer is trained on it)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time per arch (default 5)")
    p.add_argument("--archs", default="lstm,gpt,llama", help="comma-separated: gpt, llama, lstm, gru, rnn")
    p.add_argument("--out", default="arch.png", help="the curves' PNG; the numbers go beside it as .json")
    p.add_argument("--run-dir", default="runs/bench-arch", help="one run directory per arch goes here")
    p.add_argument("--block-size", type=int, default=64, help="training window, every arch (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--set", action="append", default=[], metavar="[ARCH:]section.key=value",
                   help="a config override for every arch, or for one with an ARCH: prefix (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = command("plot", "Draw a run's curves (loss, validation loss, lr, gradient norm, tokens/s) as a PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several are overlaid)")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png for one run, curves.png for several)")

    from .explain.cli import add_commands as add_explain_commands
    add_explain_commands(commands)  # explain attention|attribution|lens|neighbors, and report

    p = command("demo", "Pretrain a small GPT and a small BERT on the built-in corpus and show what they do.")
    p.add_argument("--steps", type=int, default=None, help="training steps for each model")
    p.add_argument("--run-dir", default="runs/demo", help="where the demo's runs go (replaced each time)")

    from .audit.commands import add_audit_command
    from .data.commands import add_data_command
    add_data_command(commands)  # lmforge data scrub|dedup|contamination|augment|synthesize
    add_audit_command(commands)  # lmforge audit memorization
    from .compress.commands import add_compress_commands
    add_compress_commands(commands)  # lora, prune, quantize, distill, compare
    from .app.commands import all_commands
    for entry in all_commands():  # the new shape: one module of app/commands per command
        p = commands.add_parser(entry.name, help=entry.help, description=entry.help, epilog=entry.examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        entry.add_arguments(p)
        p.set_defaults(handler=entry.run)
    return parser


def _overrides_anywhere(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse, letting section.key=value overrides (train's, distill's) stand anywhere (after --resume too)."""
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if not hasattr(args, "overrides") or item.startswith("-") or "=" not in item]
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


def _train(args) -> int:
    from .api import train_from_config
    from .config import load_config

    config = load_config(args.config, args.overrides)
    if args.resume:
        config.run.dir = args.resume
    lm, result = train_from_config(config, resume=bool(args.resume), progress=not args.quiet)
    if result.interrupted:
        return 130
    if result.rank:  # under torchrun only rank 0 reports
        return 0
    print(f"trained {result.step} steps in {result.seconds:.1f}s ({result.tokens_per_s:,.0f} tokens/s at the end)")
    if result.eval:
        print("final evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.eval.items()))
    if result.stopped_early:
        print(f"stopped early; final/ holds the best weights ({result.best:.4f})")
    print(f"model saved to {result.final_dir}")
    return 0


def _generate(args) -> int:
    from .api import LM
    from .infer.generate import SamplingConfig

    SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                   seed=args.seed).check()  # before the prompt is echoed: a refusal prints nothing else
    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    prompts = args.prompt or [""]
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed,
                   use_cache=not args.no_cache, num_beams=args.num_beams, length_penalty=args.length_penalty)
    if args.json or len(prompts) > 1:
        outputs = lm.generate(prompts, **options)
        for prompt, text in zip(prompts, outputs):
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) if args.json else prompt + text)
    else:
        sys.stdout.write(prompts[0])
        lm.generate(prompts[0], stream=True, **options)
        sys.stdout.write("\n")
    return 0


def _eval(args) -> int:
    from .api import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    result = lm.evaluate(args.data, batch_size=args.batch_size, threshold=args.threshold)
    if args.json:
        print(json.dumps(result))
    elif "per_label" in result:  # multi-label
        from .infer.text_reports import print_multilabel_report
        print_multilabel_report(result)
    elif "per_class" in result:  # a classifier: headline numbers, a per-class table, the confusion matrix
        print(f"accuracy: {result['accuracy']:.4f}\nmacro_f1: {result['macro_f1']:.4f}\nexamples: {result['examples']}")
        width = max(len("label"), *map(len, result["labels"]))
        print(f"\n{'label':<{width}}  precision  recall      f1  support")
        for name, row in result["per_class"].items():
            print(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
        print("\nconfusion (rows: true label, columns: predicted, in the order above):")
        for row in result["confusion"]:
            print("  " + " ".join(f"{count:6d}" for count in row))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def _fill_mask(args) -> int:
    from .api import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    predictions = lm.fill_mask(args.text, top_k=args.top_k)
    masks = predictions if predictions and isinstance(predictions[0], list) else [predictions]
    if args.json:
        print(json.dumps([[{"token": t, "probability": p} for t, p in mask] for mask in masks], ensure_ascii=False))
        return 0
    for number, mask in enumerate(masks, 1):
        if len(masks) > 1:
            print(f"[MASK] #{number}:")
        for token, probability in mask:
            print(f"  {probability:6.3f}  {token}")
    return 0


def _classify(args) -> int:
    from .api import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if args.file:
        from .data.labeled import read_texts_for_prediction
        texts = read_texts_for_prediction(args.file, args.text_field)
    else:
        texts = args.text
    results = lm.classify(texts, threshold=args.threshold)
    if not results or not isinstance(results[0][0], str):  # a multi-label or a regression head
        from .infer.text_reports import print_predictions
        print_predictions(texts, results, args.json)
        return 0
    for text, (label, probabilities) in zip(texts, results):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": probabilities}, ensure_ascii=False))
        else:
            shown = ", ".join(f"{name} {p:.3f}" for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]))
            print(f"{label}\t({shown})\t{text}")
    return 0


def _convert(args) -> int:
    from .api import LM

    from .files import check_destination

    destination = check_destination(args.destination, args.force)
    lm = LM.from_pretrained(args.source)
    (lm.save_hf if args.to == "hf" else lm.save)(destination)
    print(f"wrote {destination} ({'Hugging Face' if args.to == 'hf' else 'lmforge'} format): {lm!r}")
    return 0


def _serve(args) -> int:
    from .serve import require_serve_packages, serve

    try:
        require_serve_packages()
    except ModuleNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.max_batch < 1 or args.max_queue < 0 or args.timeout <= 0:
        raise ValueError(f"--max-batch must be >= 1, --max-queue >= 0 and --timeout > 0; got {args.max_batch}, "
                         f"{args.max_queue} and {args.timeout}")
    serve(args.model, host=args.host, port=args.port, model_name=args.model_name, max_batch=args.max_batch,
          max_queue=args.max_queue, api_key=args.api_key, timeout=args.timeout, max_tokens=args.max_tokens,
          device=args.device)
def _bench_arch(args) -> int:
    from .compare.arch import bench_arch

    archs = [name.strip() for name in args.archs.split(",") if name.strip()]
    bench_arch(args.data, args.minutes, archs, Path(args.out), Path(args.run_dir), args.block_size, args.batch_size,
               args.set, progress=not args.quiet)
    return 0


def _plot(args) -> int:
    from .train.plots import plot_runs

    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    print(f"wrote {plot_runs(args.runs, out)}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.run_dir), steps=args.steps)
    return 0


def _explain(args) -> int:
    from .explain.cli import run_explain

    return run_explain(args)


def _report(args) -> int:
    from .explain.cli import run_report

    return run_report(args)


HANDLERS = {"train": _train, "generate": _generate, "eval": _eval, "fill-mask": _fill_mask,
            "classify": _classify, "convert": _convert, "serve": _serve, "demo": _demo, "bench-arch": _bench_arch,
            "plot": _plot, "explain": _explain, "report": _report}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmforge` command; returns the exit status."""
    from .config import ConfigError
    from .data.corpus import DataError
    from .modeldir import ModelDirError

    args = _overrides_anywhere(_parser(), argv)
    warnings.showwarning = _show_warning
    try:
        _check_text_arguments(args)
        return (args.handler if hasattr(args, "handler") else HANDLERS[args.command])(args)  # groups set a handler
    except (ConfigError, DataError, ModelDirError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
