"""`lmforge report`: one self-contained HTML page for a run: config, curves, metrics, an attention sample,
attributions on validation texts and the model card."""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import numpy as np

from ...explain import html
from ...explain.attention import capture_attention
from ...explain.attribution import attribute
from ...explain.plots import attention_figure, curves_figure
from ...files import read_json
from ...models.contract import is_decoder, transformer_blocks

MAX_SAMPLE_TOKENS = 32  # LM samples: short enough to read as a row of coloured tokens


def _locate(path: Path) -> tuple[Path | None, Path]:
    """(run directory or None, model directory) for a run directory or a model directory inside one."""
    from ...modeldir import ModelDirError
    from ...train.checkpoint import list_checkpoints

    if not path.exists():
        raise FileNotFoundError(f"run directory '{path}' does not exist")
    if (path / "model.safetensors").is_file():  # a model directory: final/, best/ or checkpoints/step-N/
        for run in (path.parent, path.parent.parent):
            if (run / "metrics.jsonl").is_file() or (run / "config.toml").is_file():
                return run, path
        return None, path
    for candidate in [path / "final", path / "best", *reversed(list_checkpoints(path / "checkpoints"))]:
        if (candidate / "model.safetensors").is_file():
            return path, candidate
    raise ModelDirError(f"'{path}' holds no model: expected final/, best/ or checkpoints/step-N/ "
                        "(is it the run directory of a finished `lmforge train`?)")


def _progress(message: str) -> None:
    print(f"report: {message}", file=sys.stderr, flush=True)


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>\n{body}\n"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _read_metrics(run: Path | None) -> list[dict]:
    if run is None or not (run / "metrics.jsonl").is_file():
        return []
    records = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest is still worth showing
    return records


def _metrics_section(run: Path | None, meta: dict, labels: list[str]) -> str:
    from ...infer.metrics import save_confusion_png

    parts = []
    final = meta.get("metrics") or {}
    if final:
        parts.append(html.table(["metric", "value"], [[k, v] for k, v in final.items()]))
    report = None
    if run is not None and (run / "eval.json").is_file():
        report = read_json(run / "eval.json")
    if report and "per_class" in report:
        parts.append(f"<p>Validation: accuracy <b>{report['accuracy']:.4f}</b>, macro-F1 <b>{report['macro_f1']:.4f}</b> "
                     f"on {report.get('examples', '?')} examples.</p>")
        parts.append(html.table(["label", "precision", "recall", "f1", "support"],
                                [[name, r["precision"], r["recall"], r["f1"], r["support"]]
                                 for name, r in report["per_class"].items()]))
        with tempfile.TemporaryDirectory(prefix="lmforge-report-") as scratch:
            png = save_confusion_png(report["confusion"], report.get("labels", labels), Path(scratch) / "c.png",
                                     "validation confusion").read_bytes()
        parts.append(html.image(png, "confusion matrix"))
    elif report:
        parts.append(html.table(["validation", "value"], [[k, v] for k, v in report.items()
                                                           if isinstance(v, (int, float, str))]))
    elif labels:
        parts.append(_note("No eval.json in the run directory: the run had no validation set."))
    return "\n".join(parts) or _note("No evaluation was recorded for this run.")


def _classifier_samples(config, count: int) -> tuple[list[tuple[str, str | None]], str]:
    """Validation texts (with their true labels) of a classifier run, and where they came from."""
    from ...data.labeled import read_labeled
    from ...tasks.classify import split_validation

    data = config.data
    source = data.test or data.train
    if not source or not Path(source).is_file():
        return [], f"the run's labeled data ({source or 'none'}) is not found from here"

    def read(path):
        return read_labeled(path, data.text_field, data.label_field, data.text_pair_field, data.encoding_errors,
                            allow_empty_label=True)

    labeled = read(data.train)
    train_rows = labeled
    labeled, val = split_validation(data, config.train.seed, read, labeled)
    if labeled.pairs:
        return [], "attributions of text pairs are not drawn"
    if val is None:
        return list(zip(train_rows.texts[:count], train_rows.labels[:count])), f"training rows of {data.train}"
    return list(zip(val.texts[:count], val.labels[:count])), f"validation rows of {data.test or data.train}"


def _lm_samples(run: Path | None, lm, val_fraction: float, count: int) -> tuple[list[tuple[str, str]], str]:
    """(context, actual next text) pairs cut from the validation end of the run's token file."""
    from ...data.tokens import open_tokens

    bin_path = run / "data" / "tokens.bin" if run is not None else None
    if bin_path is None or not bin_path.is_file() or not bin_path.with_suffix(".json").is_file():
        return [], "the run's token file (data/tokens.bin) is not there"
    tokens = open_tokens(bin_path)
    width = min(MAX_SAMPLE_TOKENS, lm.config.model.block_size - 1)
    start = int(len(tokens) * (1 - val_fraction)) if val_fraction > 0 else 0
    where = "the validation split" if val_fraction > 0 else "the training text (the run had no validation split)"
    if len(tokens) - start < width + 1:
        return [], "the validation split is too short for a sample"
    offsets = np.linspace(start, len(tokens) - width - 1, num=count).astype(int)
    samples = []
    for offset in offsets:
        window = [int(t) for t in tokens[offset:offset + width + 1]]
        context = lm.tokenizer.decode(window[:-1], skip_special_tokens=False)
        if context.strip():
            samples.append((context, lm.tokenizer.decode(window[-1:], skip_special_tokens=False)))
    return samples, where


def _attention_section(lm, texts: list[tuple[str, str]], where: str) -> str:
    """The report's attention heatmaps for the first sample text (every head, or the last layer's on big models)."""
    if not texts or transformer_blocks(lm.model) is None:
        return _section("Attention sample", _note(f"No sample: {where}." if not texts else
                                                  "This model has no attention layers."))
    _progress("attention sample")
    attention = capture_attention(lm.model, lm.tokenizer, texts[0][0])
    n_layer, n_head = attention.weights.shape[:2]
    layer = None if n_layer * n_head <= 24 else n_layer - 1
    png = attention_figure(attention, None, layer=layer)
    caption = "every layer and head" if layer is None else f"the heads of the last layer ({layer})"
    return _section("Attention sample", f"<p>Text from {escape(where)}: {escape(texts[0][0])}</p>"
                    f"{html.image(png, 'attention heatmaps')}" + _note(f"Showing {caption}."))


def _attributions_section(lm, meta: dict, labels: list[str], texts: list[tuple[str, str]], where: str,
                          steps: int) -> str:
    """Integrated-gradients attributions of each sample: the true class for a classifier, the next token for a
    decoder; a note for any other model."""
    single_label = (meta.get("classification") or {}).get("kind", "classify") == "classify"
    can_attribute = (bool(labels) and single_label) or (not labels and is_decoder(lm.model))
    if not (texts and can_attribute):
        reason = f"no sample: {where}" if not texts else \
            "attributions explain a single-label classifier's class or a decoder's next token; this model is neither"
        return _section("Attributions", _note(reason[0].upper() + reason[1:] + "."))
    parts = [_note(f"Integrated gradients (pad baseline) on {len(texts)} texts from {where}.")]
    for number, (text, extra) in enumerate(texts, 1):
        _progress(f"attributions {number}/{len(texts)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the page itself reports completeness and truncation
            if labels:
                result = attribute(lm.model, lm.tokenizer, text, steps=steps)
                result.true_label = extra
            else:
                result = attribute(lm.model, lm.tokenizer, text, extra, steps=steps)
        parts.append(html.attribution_tokens(result) + html.attribution_summary(result))
    return _section("Attributions", html.LEGEND + "\n".join(parts))


def build_report(path: str | Path, out: str | Path, *, samples: int = 3, steps: int = 32) -> Path:
    """Write the HTML report of the run at `path` to `out` (one file, images inlined) and return its path."""
    from ..facade import LM
    from ...config import ConfigError, load_config
    from ...files import atomic_write_text

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML page: give --out a .html name (got '{out}')")
    run, model_dir = _locate(Path(path))
    _progress(f"loading {model_dir}")
    lm = LM.from_pretrained(model_dir)
    meta = lm.meta
    labels = list(lm.config.model.labels)
    config = None
    if run is not None and (run / "config.toml").is_file():
        try:
            config = load_config(run / "config.toml")
        except ConfigError as error:
            warnings.warn(f"{run / 'config.toml'} could not be read ({error}); the report leaves out its samples")
    name = run.name if run is not None else model_dir.name
    body = [f"<h1>lmforge run report: {escape(str(name))}</h1>",
            f'<p class="note">Run {escape(str(run or "-"))}, model {escape(str(model_dir))}; {escape(repr(lm))}; '
            f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]

    model_cfg = lm.config.model
    summary = [["model", f"{model_cfg.arch}: {model_cfg.n_layer} layers, {model_cfg.n_head} heads, {model_cfg.n_embd} "
                         f"dimensions, context {model_cfg.block_size}"],
               ["tokenizer", f"{lm.tokenizer.kind}, {lm.tokenizer.vocab_size} tokens"]]
    summary += [[key, value] for key, value in (meta.get("training") or {}).items()]
    if labels:
        summary.append(["labels", ", ".join(labels)])
    body.append(_section("Run", html.table(["", ""], summary)))

    _progress("curves and metrics")
    records = _read_metrics(run)
    png = curves_figure(records, None) if records else None
    body.append(_section("Training curves", html.image(png, "loss curves") if png else
                         _note("No metrics.jsonl with training losses in the run directory.")))
    body.append(_section("Evaluation", _metrics_section(run, meta, labels)))

    if labels:
        texts, where = _classifier_samples(config, samples) if config is not None else ([], "no config.toml")
    else:
        val_fraction = config.data.val_fraction if config is not None else 0.1
        texts, where = _lm_samples(run, lm, val_fraction, samples)

    body.append(_attention_section(lm, texts, where))
    body.append(_attributions_section(lm, meta, labels, texts, where, steps))

    card = model_dir / "README.md"
    config_text = (run / "config.toml").read_text(encoding="utf-8") if config is not None else \
        json.dumps(meta.get("model", {}), indent=1)
    body.append(_section("Configuration", f"<pre>{escape(config_text)}</pre>"))
    body.append(_section("Model card", f'<div class="card">{html.markdown(card.read_text(encoding="utf-8"))}</div>'
                         if card.is_file() else _note("The model directory has no README.md.")))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html.page(f"lmforge report: {name}", "\n".join(body)))
    _progress(f"wrote {out}")
    return out
