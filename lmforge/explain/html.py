"""Self-contained HTML: one page, inline CSS, images as data URIs, nothing fetched from the network."""
from __future__ import annotations

import base64
from html import escape


STYLE = """
body { font-family: "DejaVu Sans", "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; color: #222; background: #fff; line-height: 1.45; }
h1 { font-size: 26px; border-bottom: 2px solid #1f4e79; padding-bottom: 6px; }
h2 { font-size: 20px; color: #1f4e79; margin-top: 32px; }
pre { background: #f4f6f8; padding: 10px; overflow-x: auto; font-size: 12px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
td, th { border: 1px solid #ccd; padding: 3px 10px; text-align: left; }
th { background: #e8eef5; }
img { max-width: 100%; border: 1px solid #dde; }
.tokens { font-size: 20px; line-height: 1.8; padding: 8px; border: 1px solid #dde; border-radius: 4px; }
.tok { display: inline-block; padding: 0 3px; margin: 2px 1px; border-radius: 3px; white-space: pre; }
.note { color: #555; font-size: 13px; }
.legend span { padding: 2px 8px; margin-right: 6px; border-radius: 3px; }
.card { border-left: 4px solid #1f4e79; padding-left: 14px; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around `body` (already HTML)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def image(png: bytes, alt: str) -> str:
    """An <img> carrying the PNG inline as a data URI."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(header: list[str], rows: list[list]) -> str:
    """A plain HTML table; floats shown to 4 significant digits."""
    def cell(value) -> str:
        return escape(f"{value:.4g}" if isinstance(value, float) else str(value))

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _colour(score: float, scale: float) -> str:
    # green for evidence towards the target, red against it; opacity by strength
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    rgb = "46,125,50" if score >= 0 else "198,40,40"
    return f"rgba({rgb},{0.08 + 0.8 * strength:.3f})"


def attribution_tokens(attribution) -> str:
    """The tokens of an Attribution as coloured spans, each with its score as a tooltip."""
    scale = max((abs(float(s)) for s in attribution.scores), default=0.0)
    spans = "".join(f'<span class="tok" style="background:{_colour(float(s), scale)}" title="{float(s):+.4f}">'
                    f"{escape(t)}</span>" for t, s in zip(attribution.tokens, attribution.scores))
    return f'<div class="tokens">{spans}</div>'


def attribution_summary(attribution) -> str:
    """One paragraph: target, prediction, probability, method and the completeness check."""
    what = "class" if attribution.kind == "class" else "continuation"
    parts = [f"target {what} <b>{escape(repr(attribution.target))}</b> "
             f"(probability {attribution.probability:.3f}); the model predicts <b>{escape(repr(attribution.predicted))}</b>"]
    if attribution.true_label is not None:
        parts.append(f"true label <b>{escape(attribution.true_label)}</b>")
    method = attribution.method.replace("_", " ")
    if attribution.completeness_error is not None:
        difference = attribution.output - attribution.baseline_output
        verdict = "passes" if attribution.completeness_passes else "MISSES"
        parts.append(f"{method} ({attribution.steps} steps, {attribution.baseline} baseline): scores sum to "
                     f"{float(attribution.scores.sum()):+.4f}, log-probability moved {difference:+.4f} from the baseline, "
                     f"completeness {verdict} (error {attribution.completeness_error:.2e})")
    else:
        parts.append(method)
    return '<p class="note">' + "; ".join(parts) + "</p>"


LEGEND = ('<p class="legend note"><span style="background:rgba(46,125,50,.6)">towards the target</span>'
          '<span style="background:rgba(198,40,40,.6)">against it</span> (hover a token for its score)</p>')


def attribution_page(attribution) -> str:
    """A standalone page for one Attribution: the text coloured by score, the summary and a table."""
    rows = [[i, t, float(s)] for i, (t, s) in enumerate(zip(attribution.tokens, attribution.scores))]
    body = (f"<h1>Why {escape(repr(attribution.target))}?</h1>"
            f"<p>Text: {escape(attribution.text)}</p>{attribution_tokens(attribution)}{LEGEND}"
            f"{attribution_summary(attribution)}<h2>Scores</h2>{table(['#', 'token', 'attribution'], rows)}")
    return page(f"lmforge attribution: {attribution.target}", body)


def markdown(text: str) -> str:
    """Headings, bullet lists and paragraphs of a model card as HTML (everything escaped)."""
    out, paragraph, items = [], [], []

    def flush():
        if paragraph:
            out.append(f"<p>{escape(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{escape(stripped.lstrip('#').strip())}</h{level}>")
        elif stripped.startswith(("- ", "* ")):
            if paragraph:
                flush()
            items.append(stripped[2:])
        elif not stripped:
            flush()
        else:
            if items:
                flush()
            paragraph.append(stripped)
    flush()
    return "\n".join(out)
