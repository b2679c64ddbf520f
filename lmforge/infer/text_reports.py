"""Plain-text output of the multi-label and regression heads for the command line."""
from __future__ import annotations

import json


def print_multilabel_report(report: dict) -> None:
    """Headline numbers, then precision / recall / F1 / support per tag."""
    print(f"micro_f1: {report['micro_f1']:.4f}\nmacro_f1: {report['macro_f1']:.4f}\n"
          f"subset_accuracy: {report['subset_accuracy']:.4f}\nhamming_loss: {report['hamming_loss']:.4f}\n"
          f"threshold: {report['threshold']:g}\nexamples: {report['examples']}")
    width = max(len("tag"), *map(len, report["labels"]))
    print(f"\n{'tag':<{width}}  precision  recall      f1  support")
    for name, row in report["per_label"].items():
        print(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")


def print_predictions(texts: list[str], results: list, as_json: bool) -> None:
    """One line per text: a regression's score, or a multi-label model's tags (';'-joined) and probabilities."""
    for text, (prediction, values) in zip(texts, results):
        if isinstance(prediction, list):
            if as_json:
                print(json.dumps({"text": text, "labels": prediction, "probabilities": values}, ensure_ascii=False))
            else:
                shown = ", ".join(f"{name} {p:.3f}" for name, p in sorted(values.items(), key=lambda kv: -kv[1]))
                print(f"{';'.join(prediction) or '(none)'}\t({shown})\t{text}")
        elif as_json:
            print(json.dumps({"text": text, "score": prediction}, ensure_ascii=False))
        else:
            print(f"{prediction:.4f}\t{text}")
