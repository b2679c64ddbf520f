"""Logit lens for decoders: the final norm and the LM head applied to the residual stream after the
embeddings and after every block, to see at which depth each position's prediction forms."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.contract import is_decoder
from .inputs import device_of, encode_text, evaluation_mode, model_name, require_attention, token_labels


@dataclass
class LogitLens:
    """Top-k next-token predictions read at each depth: arrays (depths, T, k); depth 0 is the embeddings,
    depth i the output of block i-1, and the last depth is the model's own prediction."""

    tokens: list[str]
    ids: list[int]
    depths: list[str]
    top_ids: np.ndarray
    top_tokens: list[list[list[str]]]
    top_probs: np.ndarray

    def plot(self, path: str | Path) -> Path:
        """Save a PNG grid: one row per depth, one column per position, the top token written in each cell."""
        from .plots import lens_figure

        return lens_figure(self, path)


@torch.no_grad()
def logit_lens(model, tokenizer, text: str, *, top_k: int = 1, out: str | Path | None = None) -> LogitLens:
    """The logit lens of `text`: what the final norm + LM head make of each layer's residual stream."""
    require_attention(model, "the logit lens")
    if not is_decoder(model):  # require_attention above: a Transformer decoder, so ln_f and lm_head are there
        raise ValueError(f"the logit lens reads a decoder's next-token head (gpt, llama); this model is "
                         f"'{model_name(model)}'")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k})")
    ids = encode_text(model, tokenizer, text, keep="end")
    streams: list[torch.Tensor] = []
    handles = [model.h[0].register_forward_pre_hook(lambda module, args: streams.append(args[0]))]
    handles += [block.register_forward_hook(lambda module, args, output: streams.append(output))
                for block in model.h]
    try:
        with evaluation_mode(model):
            model(torch.tensor([ids], device=device_of(model)))
            # the last stream goes through ln_f exactly as the model's forward does, so the last row is its prediction
            probs = torch.stack([model.lm_head(model.ln_f(stream[0])).float().softmax(-1) for stream in streams])
    finally:
        for handle in handles:
            handle.remove()
    k = min(top_k, probs.size(-1))
    top_probs, top_ids = probs.topk(k, dim=-1)
    top_ids_np = top_ids.cpu().numpy()
    top_tokens = [[token_labels(tokenizer, row) for row in depth] for depth in top_ids_np]
    depths = ["embeddings"] + [f"layer {i}" for i in range(len(model.h))]
    lens = LogitLens(token_labels(tokenizer, ids), ids, depths, top_ids_np, top_tokens, top_probs.cpu().numpy())
    if out is not None:
        lens.plot(out)
    return lens
