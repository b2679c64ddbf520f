"""Continuous batching for decoders: sequences join and leave a running batch between decoding steps,
all sharing one KV cache.

Every row's newest token sits at the same cache column (`self.column`), so one forward step serves them
all: a row that joins is placed so its prompt ends at that column, with the columns before its start
masked out. When the column reaches the context length, the columns no live row uses are dropped.

The cache holds as many columns as the rows use, grown by doubling (from GROW) up to the context: a join, a
leave and a shift copy what is in use, not the whole context (an 8,192-token model's full-width cache made every
join copy gigabytes).
"""
from __future__ import annotations

import torch

from ..models.contract import is_decoder
from ..models.layers import make_cache

GROW = 256  # cache columns to start with; grown by doubling up to the context


class BatchDecoder:
    """Rows join with `add(prompt_ids)` (which returns their next-token logits), advance together with
    `step({row: token})`, and leave with `remove(row)`; row ids stay valid until removed."""

    def __init__(self, model):
        if not is_decoder(model):
            raise ValueError("continuous batching needs a decoder (gpt, llama)")
        if not model.config.is_transformer:  # its rows share one KV cache; a recurrent state has no columns to align
            raise ValueError(f"continuous batching (lmforge serve) needs a Transformer decoder (gpt, llama); arch "
                             f"'{model.config.arch}' keeps a recurrent state: use `lmforge generate` or LM.generate")
        self.model = model.eval()
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.context = model.config.block_size
        self.cache = self._empty_cache()
        self.column = 0  # cache columns 0..column-1 are filled
        self.rows: list[int] = []  # row ids, in cache order
        self.starts: list[int] = []  # the first cache column of each row
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, row: int) -> int:
        """How many tokens of `row` are in the cache."""
        return self.column - self.starts[self.rows.index(row)]

    @torch.no_grad()
    def add(self, prompt: list[int]) -> tuple[int, torch.Tensor]:
        """Prefill a new row with `prompt`; returns (row id, logits (vocab,) for its next token)."""
        if not 0 < len(prompt) < self.context:
            raise ValueError(f"a prompt must have 1 to {self.context - 1} tokens, got {len(prompt)}")
        single = make_cache(self.model.config, 1, len(prompt), dtype=self.dtype, device=self.device)
        logits = self.model(torch.tensor([prompt], device=self.device), cache=single, last_only=True)[0, -1]
        if not self.rows:
            self.column, self.cache = 0, self._empty_cache()  # what a busier time grew is freed
        self._reserve(len(prompt))
        if len(prompt) > self.column:
            self._shift(len(prompt) - self.column)
        start = self.column - len(prompt)
        for layer, new in zip(self.cache, single):
            k = new.k.new_zeros(1, *layer.k.shape[1:])
            v = torch.zeros_like(k)
            k[:, :, start:self.column], v[:, :, start:self.column] = new.k, new.v
            layer.k, layer.v = torch.cat([layer.k, k]), torch.cat([layer.v, v])
        row = self._next_id
        self._next_id += 1
        self.rows.append(row)
        self.starts.append(start)
        return row, logits

    def remove(self, row: int) -> None:
        """Drop a row (finished or cancelled); its cache memory is freed."""
        index = self.rows.index(row)
        keep = torch.tensor([i for i in range(len(self.rows)) if i != index], dtype=torch.long, device=self.device)
        for layer in self.cache:
            layer.k, layer.v = layer.k.index_select(0, keep), layer.v.index_select(0, keep)
        del self.rows[index], self.starts[index]

    @torch.no_grad()
    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        """Feed one token to every row; returns each row's next-token logits (vocab,)."""
        if set(tokens) != set(self.rows):
            raise ValueError(f"step needs one token for each of the rows {self.rows}, got {sorted(tokens)}")
        if self.column >= self.context:
            self._compact()
        if self.column >= self.context:
            raise ValueError(f"a row already fills the context of {self.context} tokens")
        self._reserve(self.column + 1)
        ids = torch.tensor([[tokens[row]] for row in self.rows], device=self.device)
        starts = torch.tensor(self.starts, device=self.device)
        positions = (self.column - starts)[:, None]
        columns = torch.arange(self.column + 1, device=self.device)
        pad_mask = columns[None, :] >= starts[:, None]
        for layer in self.cache:
            layer.length = self.column
        logits = self.model(ids, positions=positions, pad_mask=pad_mask, cache=self.cache)[:, -1]
        self.column += 1
        return {row: logits[i] for i, row in enumerate(self.rows)}

    def _empty_cache(self):
        return make_cache(self.model.config, 0, min(self.context, GROW), dtype=self.dtype, device=self.device)

    def _reserve(self, columns: int) -> None:
        """Make the cache at least `columns` wide (doubling, at most the context), keeping the filled columns."""
        have = self.cache[0].k.size(2)
        if columns > have:
            for layer in self.cache:
                layer.widen(min(self.context, max(columns, 2 * have)), keep=self.column)

    def _shift(self, by: int) -> None:
        # move every row right by `by` columns, so a longer prompt fits before the current column
        for layer in self.cache:
            for name in ("k", "v"):
                old = getattr(layer, name)
                new = torch.zeros_like(old)
                new[:, :, by:self.column + by] = old[:, :, :self.column]
                setattr(layer, name, new)
        self.starts = [s + by for s in self.starts]
        self.column += by

    def _compact(self) -> None:
        # drop the columns before the oldest live row's start
        by = min(self.starts)
        if by == 0:
            return
        for layer in self.cache:
            for name in ("k", "v"):
                old = getattr(layer, name)
                new = torch.zeros_like(old)
                new[:, :, :self.column - by] = old[:, :, by:self.column]
                setattr(layer, name, new)
        self.starts = [s - by for s in self.starts]
        self.column -= by
