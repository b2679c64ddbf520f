"""Merge a LoRA model directory's adapters into plain weights, checked on a probe batch."""
from __future__ import annotations

from pathlib import Path

import torch

from ...bundle import Bundle
from ...compress.lora import find_step, lora_modules, merge_lora
from ...errors import ModelDirError
from ...modeldir import load_model_dir, save_model_dir
from ...models.contract import has_classifier


def _probe(model, vocab_size: int, block_size: int):
    """The model's outputs on a fixed random batch: compared before and after merging."""
    ids = torch.randint(0, vocab_size, (2, min(16, block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if has_classifier(model):
            return model.classify(ids).float()
        return model(ids).float()


def merge_model_dir(src: str | Path, dst: str | Path) -> dict:
    """Write DST: SRC's model with its LoRA adapters folded into the weights (a plain model directory).

    Returns what was merged and the largest output difference merging made on a probe batch."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"'{dst}' already exists; choose a new destination for the merged model")
    model, tokenizer, config, meta = load_model_dir(src)
    step = find_step(meta)
    if step is None or not lora_modules(model):
        raise ModelDirError(f"'{src}' has no LoRA adapters (its config.json lists no 'lora' compression step): "
                            "nothing to merge; LoRA models come from training with train.lora.rank set")
    before = _probe(model, config.vocab_size, config.block_size)
    layers = merge_lora(model)
    difference = float((_probe(model, config.vocab_size, config.block_size) - before).abs().max())
    rest = [s for s in meta.get("compression") or [] if s is not step]
    meta = {k: v for k, v in meta.items() if k != "compression"}
    if rest:
        meta["compression"] = rest
    meta["lora_merged"] = {k: step[k] for k in ("rank", "alpha", "targets") if k in step}
    save_model_dir(dst, Bundle(model, tokenizer, config, meta))
    return {"layers": layers, "rank": step.get("rank"), "max_difference": difference, "path": str(dst)}
