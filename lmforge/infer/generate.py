"""Text generation from decoders: greedy, temperature, top-k, top-p, repetition penalty, stop strings,
streaming, batches of prompts (left-padded), with or without a KV cache."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..preflight import available_memory
from ..tokenizer import Tokenizer
from .packed import packed_linears
from .prompt_cache import PromptCache
from .static import static_decoder, static_supported

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
        logits = nucleus(logits, cfg.top_p)
    return draw(logits.softmax(-1), generator)


# a CPU sorts SmolLM2's 49,152 probabilities in ~3.4 ms (a quarter of a decoding step) and takes the top 1,024 in
# ~0.1: the nucleus is looked for among those first, and the whole vocabulary sorted only when they fall short
NUCLEUS_CANDIDATES = 1024


def nucleus(logits: torch.Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> torch.Tensor:
    """`logits` (B, V) with every token outside its row's nucleus at -inf: the smallest set of most likely tokens
    whose probabilities reach `top_p` (the most likely token always stays, for a top_p below float32's range)."""
    probs = logits.softmax(-1)
    ranked, order = None, None
    if logits.device.type == "cpu" and candidates < logits.size(-1):  # a GPU sorts fast, and this reads back
        ranked, order = probs.topk(candidates, dim=-1)
        if not bool((ranked.sum(-1) >= top_p).all()):  # the nucleus reaches past the candidates
            ranked = None
    if ranked is None:
        ranked, order = probs.sort(-1, descending=True)
    cumulative = ranked.cumsum(-1)
    drop = cumulative - ranked >= top_p  # the probability before a token already reaches top_p
    drop[:, 0] = False
    kept = logits.gather(1, order).masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, kept)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `probs` (B, V), drawn with those probabilities: the first token whose cumulative
    probability (float64) passes a uniform number below the row's total. torch.multinomial takes ~1 ms for a
    49,152-token row on a CPU, this ~0.05; a token of probability 0 is never drawn."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=torch.float64, device=probs.device, generator=generator)
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    # clamped: a row of NaN (a broken model) finds no place and would index past the vocabulary
    return torch.searchsorted(cdf, x, right=True).squeeze(1).clamp_(max=probs.size(-1) - 1)


def _encode_prompts(tokenizer: Tokenizer, prompts: list[str | list[int]], context: int | None,
                    reserve: int) -> list[list[int]]:
    encoded = []
    limit = max(1, context - min(reserve, context // 2)) if context else None
    for prompt in prompts:
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)  # text, or token ids as they are
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


@dataclass
class Continuation:
    """What one prompt got: the text, its tokens (without the end token) and why it ended."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (an end token or a stop string) or "length"


def generate(model, tokenizer: Tokenizer, prompts: list[str], cfg: SamplingConfig, *, use_cache: bool = True,
             on_text: Callable[[int, str], None] | None = None, static: bool | None = None,
             compile: bool = False) -> list[str]:
    """Continue each prompt; returns the generated continuations (prompt not included).

    `on_text(row, piece)` is called with each new piece of decoded text as it is produced (streaming).
    Past the context length the window slides: the cache is rebuilt from the last half of the context. The model
    makes its own cache (`model.make_cache`: KV caches for a Transformer, the state for an RNN) and says how far
    it sees (`model.context_length`; None for a recurrent model, which carries its state on without limit).
    static: decode through a fixed-shape cache (infer/static.py; captured as a CUDA graph on a GPU); None: on CUDA.
    compile: hand that fixed-shape step to torch.compile first (a one-time compile; fewer kernels per token).
    """
    return [c.text for c in continue_prompts(model, tokenizer, prompts, cfg, use_cache=use_cache, on_text=on_text,
                                             static=static, compile=compile)]


def continue_prompts(model, tokenizer: Tokenizer, prompts: list[str | list[int]], cfg: SamplingConfig, *,
                     use_cache: bool = True, on_text: Callable[[int, str], None] | None = None,
                     end_ids: tuple[int, ...] | None = None, static: bool | None = None,
                     compile: bool = False, prompt_cache: PromptCache | None = None) -> list[Continuation]:
    """`generate`, for prompts given as text or token ids, returning each Continuation's tokens and finish
    reason; a row ends at any of `end_ids` (default: the tokenizer's end-of-text; none with cfg.ignore_eos).
    `prompt_cache`: one prompt's KV cache kept from the previous call, so a prompt that repeats the previous one
    and its continuation prefills only what is new (a chat; one prompt, the growing cache only)."""
    cfg.check()
    model.eval()
    param = next(model.parameters())
    device = param.device
    context = model.context_length  # a Decoder: its window, or None (a recurrent state has none)
    rows = _encode_prompts(tokenizer, prompts, context, cfg.max_new_tokens)
    B, width = len(rows), max(map(len, rows))
    check_generation_fits(model, B, width, cfg.max_new_tokens)
    # prompts (left-padded, so every row's next token is at the same column) and then the new tokens, written in
    # place: nothing grows per step
    tokens = torch.full((B, width + cfg.max_new_tokens), tokenizer.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(tokens.shape, dtype=torch.bool, device=device)
    for i, ids in enumerate(rows):
        tokens[i, width - len(ids):width] = torch.tensor(ids, device=device)
        mask[i, width - len(ids):width] = True
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    if end_ids is None:
        end_ids = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
    ends = frozenset(() if cfg.ignore_eos else end_ids)
    end_tensor = torch.tensor(sorted(ends), dtype=torch.long, device=device)
    # text is decoded as it comes only when someone reads it (streaming) or it can end the row (stop strings)
    watcher = _TextWatcher(tokenizer, B, ends, cfg.stop, on_text) if on_text is not None or cfg.stop else None
    static = use_cache and static_supported(model) and (device.type == "cuda" if static is None else static)
    reuse = prompt_cache if prompt_cache is not None and B == 1 and use_cache and not static else None
    feeder = _Feeder(model, tokens, mask, context, use_cache, padded=not bool(mask[:, :width].all()), static=static,
                     compile=compile, prompt_cache=reuse)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    end = width
    # a compiled step makes its own linear kernels: inductor cannot lower oneDNN's packed weights
    with torch.inference_mode(), packed_linears(model, B, enabled=use_cache and not (compile and static)):
        for end in range(width, width + cfg.max_new_tokens):
            logits = feeder.next_logits(end)
            choice = next_token(logits, tokens.narrow(1, 0, end), mask.narrow(1, 0, end), cfg, generator)
            tokens.select(1, end).copy_(choice)
            mask.select(1, end).fill_(True)
            if watcher is not None:
                if watcher.add(choice.tolist()):
                    break
            elif ends:
                finished |= torch.isin(choice, end_tensor)
                # the check costs a device sync: every 8 steps (a finished row's extra tokens are cut below)
                if (end - width) % 8 == 7 and bool(finished.all()):
                    break
        else:
            end = width + cfg.max_new_tokens - 1
    if reuse is not None and feeder.start == 0:
        reuse.keep(model, feeder.cache, tokens[0, :feeder.fed].tolist())
    if watcher is not None:
        return watcher.final()
    found = []
    for row in tokens[:, width:end + 1].tolist():
        cut = next((i for i, token in enumerate(row) if token in ends), None)
        row = row if cut is None else row[:cut]
        found.append(Continuation(tokenizer.decode(row), row, "length" if cut is None else "stop"))
    return found


# bytes per generated token and row beyond the device buffers (a token id and its mask byte): the Python list
# of ids the text is decoded from and the text (measured ~40; small ints are not shared above 256)
HOST_BYTES_PER_TOKEN = 48
DEVICE_BYTES_PER_TOKEN = 9


def check_generation_fits(model, rows: int, width: int, max_new_tokens: int) -> None:
    """Refuse (ValueError) a generation whose token buffers and cache would not fit in memory, naming the most
    new tokens that would: sized up front, as training's memory pre-flight, not an allocator error midway."""
    param = next(model.parameters())
    config = getattr(model, "config", None)
    context = getattr(model, "context_length", getattr(config, "block_size", None))
    columns = width + max_new_tokens
    cache = 0
    if getattr(config, "is_transformer", False):  # keys and values, every layer, for the context's columns
        per_column = 2 * sum(config.kv_heads_at(i) for i in range(config.n_layer)) * config.head_dim
        cache = rows * min(context or columns, columns) * per_column * param.element_size()
    device_kind = "cpu" if param.device.type == "cpu" else str(param.device)
    checks = [(rows * columns * DEVICE_BYTES_PER_TOKEN + cache, device_kind, DEVICE_BYTES_PER_TOKEN, cache)]
    if param.device.type != "cpu":
        checks.append((rows * max_new_tokens * HOST_BYTES_PER_TOKEN, "cpu", HOST_BYTES_PER_TOKEN, 0))
    else:
        checks[0] = (checks[0][0] + rows * max_new_tokens * HOST_BYTES_PER_TOKEN, "cpu",
                     DEVICE_BYTES_PER_TOKEN + HOST_BYTES_PER_TOKEN, cache)
    for need, where, per_token, fixed in checks:
        free, what = available_memory(where)
        if free is None or need <= free // 2:  # half: the model, activations and the rest of the process share it
            continue
        fits = max(0, (free // 2 - fixed) // (rows * per_token) - width)
        raise ValueError(f"max_new_tokens={max_new_tokens:,} for {rows} prompt(s) needs {need / 2**30:.1f} GiB of "
                         f"token buffers and cache, more than half of the {free / 2**30:.1f} GiB {what}; at most "
                         f"about {fits:,} new tokens fit here (the model's context is {context} tokens; past it the "
                         "window slides)")


class _Feeder:
    """Runs the model over what it has not seen yet and returns the last position's logits: with a KV cache
    only the newest column (after one prefill of the whole left-padded batch), without it the whole window."""

    def __init__(self, model, tokens: torch.Tensor, mask: torch.Tensor, context: int | None, use_cache: bool,
                 padded: bool, static: bool = False, compile: bool = False, prompt_cache: PromptCache | None = None):
        self.model, self.tokens, self.mask, self.context = model, tokens, mask, context
        self.prompt_cache = prompt_cache
        self.use_cache, self.padded = use_cache, padded
        self.static = (static_decoder(model, tokens.size(0), min(context, tokens.size(1)), compile=compile)
                       if static else None)
        self.cache, self.start, self.fed = None, 0, 0  # the cache holds columns start..fed-1 of `tokens`
        self.positions = None  # (B, 1): position of the next column of each row, advanced in place

    def next_logits(self, end: int) -> torch.Tensor:
        """Logits (B, vocab) for the token at column `end`, from columns before it."""
        model, tokens, mask, context = self.model, self.tokens, self.mask, self.context
        if not self.use_cache:
            start = max(0, end - context) if context else 0
            window_mask = mask[:, start:end]
            positions = (window_mask.long().cumsum(-1) - 1).clamp(min=0)
            return model(tokens[:, start:end], positions=positions if self.padded else positions[0],
                         pad_mask=window_mask if self.padded else None, last_only=True)[:, -1]
        if self.cache is None or (context and end - self.start > context):
            # (re)start: prefill every row at once; past the context only the last half is kept
            keep = context if self.cache is None else context // 2
            self.start = self.fed = max(0, end - keep) if context else 0
            window_mask = mask[:, self.start:end]
            positions = (window_mask.long().cumsum(-1) - 1).clamp(min=0)
            self.positions = positions[:, -1:] + 1
            positions, pad_mask = (positions, window_mask) if self.padded else (positions[0], None)
            if self.static is not None:
                self.cache = self.static.cache
                logits = self.static.prefill(tokens[:, self.start:end], positions, pad_mask)
            else:
                logits = self._prefill(end, positions, pad_mask)
        elif self.static is not None:  # one fixed-shape step (a CUDA graph replay on a GPU)
            logits = self.static.step(tokens.select(1, end - 1))
        else:
            # one new column per row: without padding the model counts positions from its cache itself
            logits = model(tokens.narrow(1, end - 1, 1), positions=self.positions if self.padded else None,
                           pad_mask=mask.narrow(1, self.start, end - self.start) if self.padded else None,
                           cache=self.cache).select(1, -1)
            self.positions += 1
        self.fed = end
        return logits

    def _prefill(self, end: int, positions, pad_mask) -> torch.Tensor:
        """Fill a new growing cache with columns start..end-1, or only those past the prompt cache's prefix."""
        model, tokens = self.model, self.tokens
        param = next(model.parameters())
        capacity = min(self.context, tokens.size(1)) if self.context else None
        reused = 0
        if self.prompt_cache is not None and self.cache is None and self.start == 0 and capacity:
            self.cache, reused = self.prompt_cache.take(model, tokens[0, :end].tolist(), capacity, param.dtype,
                                                        param.device)
        if reused:  # one row without padding: the model counts positions on from its cache
            return model(tokens[:, reused:end], cache=self.cache, last_only=True)[:, -1]
        self.cache = model.make_cache(tokens.size(0), capacity, dtype=param.dtype, device=param.device)
        return model(tokens[:, self.start:end], positions=positions, pad_mask=pad_mask, cache=self.cache,
                     last_only=True)[:, -1]


class _TextWatcher:
    """Decodes each row's new tokens as they come: streams the new text, ends rows at end-of-text or a stop."""

    def __init__(self, tokenizer: Tokenizer, rows: int, ends: frozenset[int], stop: tuple[str, ...],
                 on_text: Callable[[int, str], None] | None):
        self.tokenizer, self.ends, self.stop, self.on_text = tokenizer, ends, stop, on_text
        self.generated: list[list[int]] = [[] for _ in range(rows)]
        self.texts, self.done = [""] * rows, [False] * rows

    def add(self, choice: list[int]) -> bool:
        """Take one new token per row; True when every row has ended."""
        for i, token in enumerate(choice):
            if self.done[i]:
                continue
            if token in self.ends:
                self.done[i] = True
                continue
            self.generated[i].append(token)
            text = self.tokenizer.decode(self.generated[i])
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                continue
            for stop in self.stop:
                cut = text.find(stop)
                if cut >= 0:
                    text, self.done[i] = text[:cut], True
            if self.on_text is not None and len(text) > len(self.texts[i]):
                self.on_text(i, text[len(self.texts[i]):])
            self.texts[i] = text
        return all(self.done)

    def final(self) -> list[Continuation]:
        """Each row's Continuation (a row cut short keeps its decoded tokens)."""
        return [Continuation(text if done else self.tokenizer.decode(ids), ids, "stop" if done else "length")
                for text, done, ids in zip(self.texts, self.done, self.generated)]
