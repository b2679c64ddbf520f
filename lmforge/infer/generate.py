"""Text generation from decoders: greedy, temperature, top-k, top-p, repetition penalty, stop strings,
streaming, batches of prompts (left-padded), with or without a KV cache."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..tokenizer import Tokenizer


# outside these the scaled logits overflow float32 and sampling fails; no useful setting lies beyond them
SCALE_RANGE = (1e-4, 1e4)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past the end-of-text token (benchmarks, fixed-length output)

    def check(self) -> None:
        """A ValueError naming the first setting sampling cannot use (NaN and infinity included)."""
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        low, high = SCALE_RANGE
        if not (self.temperature == 0 or low <= self.temperature <= high):
            raise ValueError(f"temperature must be 0 (greedy) or between {low:g} and {high:g}, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not low <= self.repetition_penalty <= high:
            raise ValueError(f"repetition_penalty must be between {low:g} and {high:g} (1 = off), "
                             f"got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in 0 ... 2**64-1, got {self.seed}")


def next_token(logits: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor, cfg: SamplingConfig,
               generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, V)."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen.scatter_(1, history, history_mask)
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest set reaching top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p below float32's range would drop it)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _encode_prompts(tokenizer: Tokenizer, prompts: list[str], context: int | None, reserve: int) -> list[list[int]]:
    encoded = []
    limit = max(1, context - min(reserve, context // 2)) if context else None
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if not ids:
            if tokenizer.eos_id is None:
                raise ValueError("empty prompt and the tokenizer has no end-of-text token to start from")
            ids = [tokenizer.eos_id]
        if limit is not None and len(ids) > limit:
            warnings.warn(f"prompt of {len(ids)} tokens is longer than the room in the context "
                          f"({limit} of {context} tokens); keeping its last {limit} tokens", stacklevel=3)
            ids = ids[-limit:]
        encoded.append(ids)
    return encoded


@torch.no_grad()
def generate(model, tokenizer: Tokenizer, prompts: list[str], cfg: SamplingConfig, *, use_cache: bool = True,
             on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Continue each prompt; returns the generated continuations (prompt not included).

    `on_text(row, piece)` is called with each new piece of decoded text as it is produced (streaming).
    Past the context length the window slides: the cache is rebuilt from the last half of the context. The model
    makes its own cache (`model.make_cache`: KV caches for a Transformer, the state for an RNN) and says how far
    it sees (`model.context_length`; None for a recurrent model, which carries its state on without limit).
    """
    cfg.check()
    model.eval()
    device = next(model.parameters()).device
    context = getattr(model, "context_length", model.config.block_size)
    rows = _encode_prompts(tokenizer, prompts, context, cfg.max_new_tokens)
    B, width = len(rows), max(map(len, rows))
    pad = tokenizer.pad_id
    tokens = torch.full((B, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B, width), dtype=torch.bool, device=device)
    for i, ids in enumerate(rows):  # left padding, so every row's next token is at the same column
        tokens[i, width - len(ids):] = torch.tensor(ids, device=device)
        mask[i, width - len(ids):] = True
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = None if cfg.ignore_eos else tokenizer.eos_id
    generated: list[list[int]] = [[] for _ in range(B)]
    texts, done = [""] * B, [False] * B
    padded = not bool(mask.all())
    cache, cache_start, fed = None, 0, 0  # the cache holds columns cache_start..fed-1 of `tokens`
    for _ in range(cfg.max_new_tokens):
        if use_cache:
            if cache is None or (context and tokens.size(1) - cache_start > context):
                keep = context if cache is None else context // 2
                cache_start = fed = max(0, tokens.size(1) - keep) if context else 0
                cache = model.make_cache(B, context, dtype=next(model.parameters()).dtype, device=device)
            window, window_mask = tokens[:, fed:], mask[:, cache_start:]
            fed = tokens.size(1)
        else:
            start = max(0, tokens.size(1) - context) if context else 0
            window, window_mask = tokens[:, start:], mask[:, start:]
        positions = (window_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -window.size(1):]
        logits = model(window, positions=positions if padded else positions[0],
                       pad_mask=window_mask if padded else None, cache=cache if use_cache else None)[:, -1]
        choice = next_token(logits, tokens, mask, cfg, generator)
        tokens = torch.cat([tokens, choice[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        for i in range(B):
            if done[i]:
                continue
            token = int(choice[i])
            if eos is not None and token == eos:
                done[i] = True
                continue
            generated[i].append(token)
            text = tokenizer.decode(generated[i])
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                continue
            for stop in cfg.stop:
                cut = text.find(stop)
                if cut >= 0:
                    text, done[i] = text[:cut], True
            if on_text is not None and len(text) > len(texts[i]):
                on_text(i, text[len(texts[i]):])
            texts[i] = text
        if all(done):
            break
    for i in range(B):
        if not done[i]:
            texts[i] = tokenizer.decode(generated[i])
    return texts
