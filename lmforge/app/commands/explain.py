"""The `lmforge explain ...` and `lmforge report` commands."""
from __future__ import annotations

import argparse
import json

from . import Command, add_device_arguments

EXAMPLES = {
    "attention": """examples:
  lmforge explain attention runs/gpt-tiny/final --text "The cat sat on the mat" --out attn.png   # layers x heads
  lmforge explain attention runs/gpt-tiny/final --text "The cat sat on the mat" --layer 1 --out layer1.png
  lmforge explain attention runs/bert-tiny/final --text "猫坐在垫子上" --layer 0 --head 2 --out head.png
  lmforge explain attention runs/gpt-tiny/final --text "def f(x):" --json > weights.json""",
    "attribution": """examples:
  lmforge explain attribution runs/classify/final --text "a gripping, beautifully acted film" --out attr.html
  lmforge explain attribution runs/classify/final --text "a dull film" --target neg --out attr.png
  lmforge explain attribution runs/gpt-tiny/final --text "The capital of France is" --target " Paris" --out a.html
  lmforge explain attribution runs/gpt-tiny/final --text "def add(a, b):" --method gradient_x_input --json""",
    "lens": """examples:
  lmforge explain lens runs/gpt-tiny/final --text "The cat sat on the" --out lens.png
  lmforge explain lens runs/gpt-tiny/final --text "for i in range(" --top-k 3 --json""",
    "neighbors": """examples:
  lmforge explain neighbors runs/bert-tiny/final --word good --k 10
  lmforge explain neighbors runs/gpt-tiny/final --word function --json""",
    "report": """examples:
  lmforge report runs/gpt-tiny --out report.html           # config, curves, metrics, attention, attributions, card
  lmforge report runs/classify --out clf.html --samples 5  # classifiers add per-class metrics and a confusion matrix

The page is one file: images are inlined, nothing is fetched, it opens in any browser offline.""",
}


def _explain_arguments(explain: argparse.ArgumentParser) -> None:
    """`explain WHAT MODEL`: attention, attribution, lens, neighbors."""
    raw = argparse.RawDescriptionHelpFormatter
    kinds = explain.add_subparsers(dest="explain_command", metavar="WHAT", required=True)

    def sub(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = kinds.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name], formatter_class=raw)
        parser.add_argument("model", help="model directory (a run's final/ or checkpoints/step-N/)")
        add_device_arguments(parser)
        return parser

    p = sub("attention", "Attention weights of every layer and head on a text, as heatmaps with token labels.")
    p.add_argument("--text", required=True, help="the text to look at")
    p.add_argument("--layer", type=int, default=None, help="only this layer (from 0)")
    p.add_argument("--head", type=int, default=None, help="only this head (from 0)")
    p.add_argument("--out", help="PNG file for the heatmaps")
    p.add_argument("--json", action="store_true", help="print tokens and the selected weights as JSON")

    p = sub("attribution", "Which tokens pushed a prediction: integrated gradients or gradient x input.")
    p.add_argument("--text", required=True, help="the input text")
    p.add_argument("--target", default=None, help="a class label (classifiers) or the text expected next (decoders); "
                                                  "default: the model's own prediction")
    p.add_argument("--kind", choices=["auto", "class", "next-token"], default="auto",
                   help="explain a class or the next token (default: class when the model has a classification head)")
    p.add_argument("--method", choices=["integrated_gradients", "gradient_x_input"], default="integrated_gradients")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps to start with, doubled until "
                                                         "the completeness check passes (default 50)")
    p.add_argument("--baseline", choices=["pad", "zero"], default="pad",
                   help="the 'absent' input: the pad token's embedding or zeros (default pad)")
    p.add_argument("--out", help="write a .html page, a .png chart or .json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub("lens", "Logit lens of a decoder: the top next-token prediction read after every layer.")
    p.add_argument("--text", required=True, help="the text to look at")
    p.add_argument("--top-k", type=int, default=1, help="predictions kept per position and depth (default 1)")
    p.add_argument("--out", help="PNG file for the depth x position grid")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")

    p = sub("neighbors", "Nearest tokens to a word in the model's embedding space (cosine similarity).")
    p.add_argument("--word", required=True, help="a word or token")
    p.add_argument("--k", type=int, default=10, help="how many neighbours (default 10)")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    """`report RUN --out FILE`."""
    p.add_argument("run", help="run directory (or a model directory inside one)")
    p.add_argument("--out", required=True, help="the .html file to write")
    p.add_argument("--samples", type=int, default=3, help="validation texts to attribute (default 3)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps to start with (default 32)")


def _attention(lm, args) -> None:
    result = lm.explain_attention(args.text, layer=args.layer, head=args.head, out=args.out)
    chosen = result.select(args.layer, args.head)
    if args.json:
        print(json.dumps({"tokens": result.tokens, "layer": args.layer, "head": args.head,
                          "weights": chosen.round(6).tolist()}, ensure_ascii=False))
        return
    mean = chosen.reshape(-1, *chosen.shape[-2:]).mean(0)  # over the selected heads and layers
    where = f"layer {args.layer}" if args.layer is not None else "all layers"
    where += f", head {args.head}" if args.head is not None else ", all heads"
    print(f"strongest attention per token ({where}, averaged):")
    for token, row in zip(result.tokens, mean):
        print(f"  {token!r:>16} -> {result.tokens[int(row.argmax())]!r} ({row.max():.3f})")
    if args.out:
        print(f"heatmaps saved to {args.out}")


def _attribution(lm, args) -> None:
    result = lm.attribute(args.text, args.target, kind=args.kind, method=args.method, steps=args.steps,
                          baseline=args.baseline, out=args.out)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    print(f"target {result.target!r} (probability {result.probability:.4f}); the model predicts {result.predicted!r}")
    for token, score in zip(result.tokens, result.scores):
        print(f"  {score:+.4f}  {token!r}")
    if result.completeness_error is not None:
        print(f"completeness: scores sum to {result.scores.sum():+.4f}, output moved "
              f"{result.output - result.baseline_output:+.4f} from the baseline (error {result.completeness_error:.2e})")
    if args.out:
        print(f"saved to {args.out}")


def _lens(lm, args) -> None:
    result = lm.logit_lens(args.text, top_k=args.top_k, out=args.out)
    if args.json:
        print(json.dumps({"tokens": result.tokens, "depths": result.depths, "top_tokens": result.top_tokens,
                          "top_probs": result.top_probs.round(6).tolist()}, ensure_ascii=False))
        return
    print("input:       " + " | ".join(result.tokens))
    for depth, row in zip(result.depths, result.top_tokens):
        print(f"{depth:<12} " + " | ".join(tokens[0] for tokens in row))
    if args.out:
        print(f"grid saved to {args.out}")


def _neighbors(lm, args) -> None:
    from ...explain import nearest_tokens

    result = nearest_tokens(lm.model, lm.tokenizer, args.word, args.k)
    if args.json:
        print(json.dumps({"word": result.word, "query_tokens": result.query_tokens,
                          "neighbors": [{"token": t, "cosine": c} for t, c in result.neighbors]}, ensure_ascii=False))
        return
    if len(result.query_tokens) > 1:
        print(f"{args.word!r} is {len(result.query_tokens)} tokens {result.query_tokens}: using their mean embedding")
    for token, cosine in result.neighbors:
        print(f"  {cosine:6.3f}  {token!r}")


def run_explain(args) -> int:
    """Handle `lmforge explain WHAT MODEL ...`."""
    from ..facade import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    {"attention": _attention, "attribution": _attribution, "lens": _lens, "neighbors": _neighbors}[
        args.explain_command](lm, args)
    return 0


def run_report(args) -> int:
    """Handle `lmforge report RUN --out report.html`."""
    from ..workflows.report import build_report

    path = build_report(args.run, args.out, samples=args.samples, steps=args.steps)
    print(f"report written to {path}")
    return 0


COMMANDS = [
    Command("explain", "See inside a model: attention, attributions, logit lens, neighbours.",
            "examples:\n" + "\n".join(EXAMPLES[k].removeprefix("examples:\n")
                                       for k in ("attention", "attribution", "lens", "neighbors")),
            _explain_arguments, run_explain,
            description="See why a model predicts what it does. Layers and heads count from 0."),
    Command("report", "Write one self-contained HTML page about a run.", EXAMPLES["report"], _report_arguments,
            run_report, description="Write one self-contained HTML page about a run: config, loss curves, metrics "
                                    "(confusion matrix for classifiers), an attention sample, attributions on "
                                    "validation texts and the model card."),
]
