"""Beam search for decoders: keeps the `num_beams` most likely continuations, scored by their summed
log-probability divided by length ** length_penalty, and stops only when no live beam can still win."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from ..models.layers import make_cache
from .static import static_decoder


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, the end-of-text token excluded
    logprob: float  # summed log-probability, the end-of-text token's included
    score: float  # logprob / length ** length_penalty
    finished: bool  # ended by the end-of-text token (not by max_new_tokens)


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


def _best_reachable(logprob: float, length: int, max_new_tokens: int, length_penalty: float) -> float:
    """The highest score any continuation of a live beam could still reach: log-probabilities only fall, so
    with a positive penalty the longest length is the most favourable, otherwise the next one."""
    if length_penalty > 0:
        return _score(logprob, max_new_tokens, length_penalty)
    return _score(logprob, length + 1, length_penalty)


def _reorder(cache, rows: torch.Tensor) -> None:
    # each surviving beam takes over the keys and values of the beam it extends
    for layer in cache:
        layer.k, layer.v = layer.k.index_select(0, rows), layer.v.index_select(0, rows)


@torch.no_grad()
def beam_search(model, prompt: list[int], *, num_beams: int = 4, max_new_tokens: int = 50,
                length_penalty: float = 1.0, eos_id: int | Collection[int] | None = None,
                num_return: int = 1, static: bool | None = None) -> list[Hypothesis]:
    """The `num_return` best continuations of the token ids `prompt`, best first (KV cache, one prompt);
    `eos_id` may be several end tokens (a chat template's end of turn and the end of text).
    static: num_beams fixed cache rows, reordered and stepped inside one captured step (infer/static.py; the
    default on CUDA); otherwise the cache holds the live beams and is reordered between steps."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not 1 <= num_return <= num_beams:
        raise ValueError(f"the number of returned sequences must be between 1 and num_beams={num_beams}, got {num_return}")
    if max_new_tokens < 1:
        raise ValueError(f"beam search needs max_new_tokens >= 1, got {max_new_tokens}")
    if not prompt:
        raise ValueError("beam search needs a prompt of at least one token")
    if not model.config.is_transformer:  # beams reorder KV-cache rows; a recurrent state has no such hook yet
        raise ValueError(f"beam search needs a Transformer decoder (gpt, llama); arch '{model.config.arch}' keeps a "
                         "recurrent state: use num_beams=1 (greedy or sampling)")
    context = model.config.block_size
    if len(prompt) + max_new_tokens > context:
        raise ValueError(f"beam search keeps the whole sequence in the context: prompt of {len(prompt)} tokens + "
                         f"max_new_tokens {max_new_tokens} > block_size {context}; shorten one of them")
    ends = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    model.eval()
    param = next(model.parameters())
    step = _Stepper(model, prompt, num_beams, max_new_tokens,
                    param.device.type == "cuda" if static is None else static)
    logits = step.first
    beams: list[tuple[list[int], float]] = [([], 0.0)]  # live beams: tokens, summed log-probability
    finished: list[Hypothesis] = []
    for index in range(max_new_tokens):
        logprobs = logits.float().log_softmax(-1)  # (live beams, vocab)
        totals = torch.tensor([lp for _, lp in beams], device=logprobs.device)[:, None] + logprobs
        vocab = totals.size(1)
        # 2 x num_beams candidates: even if num_beams of them end here, num_beams others stay live
        top = totals.flatten().topk(min(2 * num_beams, totals.numel()))
        survivors: list[tuple[list[int], float]] = []
        parents: list[int] = []
        for rank, (total, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            parent, token = divmod(flat, vocab)
            tokens = beams[parent][0]
            if token in ends:
                if rank < num_beams:  # an end that is not among the best num_beams moves would never be chosen
                    finished.append(Hypothesis(tokens, total, _score(total, len(tokens) + 1, length_penalty), True))
                continue
            survivors.append((tokens + [token], total))
            parents.append(parent)
            if len(survivors) == num_beams:
                break
        finished = sorted(finished, key=lambda h: -h.score)[:num_beams]
        beams = survivors
        length = index + 1
        if length == max_new_tokens or not beams:
            break
        if len(finished) == num_beams:
            worst = finished[-1].score
            if all(_best_reachable(lp, length, max_new_tokens, length_penalty) <= worst for _, lp in beams):
                beams = []
                break
        logits = step(parents, [tokens[-1] for tokens, _ in beams])
    # beams cut by max_new_tokens compete with the ended ones
    finished += [Hypothesis(tokens, lp, _score(lp, len(tokens), length_penalty), False) for tokens, lp in beams]
    return sorted(finished, key=lambda h: -h.score)[:num_return]


class _Stepper:
    """The next logits of the live beams: `first` after the prompt, then step(parents, tokens) per step."""

    def __init__(self, model, prompt: list[int], num_beams: int, max_new_tokens: int, static: bool):
        self.model, self.beams = model, num_beams
        param = next(model.parameters())
        self.device = param.device
        ids = torch.tensor([prompt], device=self.device)
        if static:  # every row holds the prompt; dead rows are stepped too and never read
            self.decoder = static_decoder(model, num_beams, len(prompt) + max_new_tokens, reorder=True)
            self.first = self.decoder.prefill(ids.expand(num_beams, -1), torch.arange(len(prompt), device=self.device),
                                              None)[:1]
        else:
            self.decoder = None
            self.cache = make_cache(model.config, 1, model.config.block_size, dtype=param.dtype, device=self.device)
            self.first = model(ids, cache=self.cache, last_only=True)[:, -1]

    def __call__(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        live = len(parents)
        if self.decoder is None:
            _reorder(self.cache, torch.tensor(parents, device=self.device))
            return self.model(torch.tensor([[t] for t in tokens], device=self.device), cache=self.cache)[:, -1]
        padding = self.beams - live
        rows = torch.tensor(parents + parents[-1:] * padding, device=self.device)
        fed = torch.tensor(tokens + tokens[-1:] * padding, device=self.device)
        return self.decoder.step(fed, rows)[:live]


def beam_generate(model, tokenizer, prompts: list[str], *, num_beams: int = 4, max_new_tokens: int = 50,
                  length_penalty: float = 1.0, stop: tuple[str, ...] = (), ignore_eos: bool = False) -> list[str]:
    """The best beam's text for each prompt (prompt not included), cut at the first stop string."""
    outputs = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
        if not ids:
            raise ValueError("empty prompt and the tokenizer has no end-of-text token to start from")
        best = beam_search(model, ids, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           length_penalty=length_penalty, eos_id=None if ignore_eos else tokenizer.eos_id)[0]
        outputs.append(cut_at_stop(tokenizer.decode(best.tokens), stop))
    return outputs


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the earliest of the stop strings."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text
