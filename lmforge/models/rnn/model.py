"""Recurrent models, the field's baseline before attention: an embedding, stacked LSTM / GRU / tanh-RNN layers,
dropout and an output layer tied to the embedding. The recurrent state is the generation cache. As a classifier
(bi)directional: the final states, or the mean or max of the outputs over the real tokens, feed a linear head."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if TYPE_CHECKING:  # annotations only: config.py reads the family registry in models/
    from ...config import ModelConfig


CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentState:
    """The generation cache of a recurrent model: its state after the tokens fed so far (None before any)."""

    def __init__(self):
        self.state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0


class RecurrentLM(nn.Module):
    """forward(ids) -> next-token logits (B, T, vocab). Positions are implicit in the recurrence, so it has no
    context limit: a cache carries the state on for as long as generation goes. With model.bidirectional it is a
    classifier only (no language-model head): classify(ids, pad_mask) -> class logits (B, n_labels)."""

    context_length = None  # no window: the state summarises everything fed so far

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.is_causal = not cfg.bidirectional  # a backward reader sees the future: an encoder, not a decoder
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        embd = cfg.dropout if cfg.embd_dropout is None else cfg.embd_dropout
        self.embd_drop = nn.Dropout(embd)  # model.embd_dropout (default model.dropout) on the token embeddings
        self.rnn = CELLS[cfg.arch](cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
                                   bidirectional=bool(cfg.bidirectional))
        self.lm_head = None if cfg.bidirectional else nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.classifier = nn.Linear(self.feature_size, len(cfg.labels)) if cfg.labels else None
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        if cfg.arch == "lstm":
            # forget gate bias 1 (gate order i, f, g, o): the state is kept by default early in training,
            # so gradients reach further back (Jozefowicz et al., 2015)
            width = cfg.n_embd
            for name, param in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        param[width:2 * width].fill_(1.0)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.bias)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.wte.weight

    @property
    def feature_size(self) -> int:
        """Width of the pooled text vector the classifier reads (both directions side by side)."""
        return self.config.n_embd * (2 if self.config.bidirectional else 1)

    def make_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> RecurrentState:
        """An empty generation cache (the state is created by the first forward)."""
        return RecurrentState()

    def _run(self, x, state, pad_mask):
        """The recurrence over x (B, T, n_embd). Where pad_mask (B, T) is False the state is kept unchanged, so
        left padding before a prompt leaves the state exactly as it would be without it."""
        if pad_mask is None or bool(pad_mask.all()):
            return self.rnn(x, state)
        outputs = []
        for t in range(x.size(1)):
            out, new = self.rnn(x[:, t:t + 1], state)
            keep = pad_mask[:, t]
            if state is None:
                state = _zeros_like(new)
            state = _where(keep, new, state)
            outputs.append(out)
        return torch.cat(outputs, 1), state

    def hidden_states(self, ids, *, pad_mask=None, cache: RecurrentState | None = None):
        """Top-layer outputs (B, T, n_embd). With bptt set, gradients stop at every bptt-th step while the state
        flows on (truncated backpropagation through time inside a window)."""
        T = ids.size(1)
        if pad_mask is not None:
            pad_mask = pad_mask[:, -T:].bool()  # a cache-era mask covers past + T columns
        x = self.embd_drop(self.wte(ids))
        state = cache.state if cache is not None else None
        chunk = self.config.bptt if self.config.bptt and torch.is_grad_enabled() else T
        outputs = []
        for start in range(0, T, chunk):
            if start and state is not None:
                state = _detach(state)
            part_mask = pad_mask[:, start:start + chunk] if pad_mask is not None else None
            out, state = self._run(x[:, start:start + chunk], state, part_mask)
            outputs.append(out)
        if cache is not None:
            cache.state, cache.length = state, cache.length + T
        return self.drop(torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0])

    def forward(self, ids, *, positions=None, pad_mask=None, cache: RecurrentState | None = None,
                last_only: bool = False):
        # positions are accepted for the shared generation loop and ignored: order lives in the recurrence
        if self.lm_head is None:
            raise ValueError(f"a bidirectional {self.config.arch} is a classifier: it has no next-token head "
                             "(use classify)")
        hidden = self.hidden_states(ids, pad_mask=pad_mask, cache=cache)
        return self.lm_head(hidden[:, -1:] if last_only else hidden)

    def features(self, ids, *, pad_mask=None):
        """The pooled text vectors (B, feature_size) of right-padded rows, before dropout. Rows are packed to their
        lengths, so the padding is never read: a text gives the same vector alone or in any batch."""
        lengths = (pad_mask.long().sum(-1) if pad_mask is not None
                   else torch.full((ids.size(0),), ids.size(1), device=ids.device)).clamp(min=1)
        packed = pack_padded_sequence(self.embd_drop(self.wte(ids)), lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        pooling = self.config.pooling
        if pooling == "cls":  # the top layer's final state of each direction (backward: after reading token 0)
            final = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, width)
            return final[-2:].transpose(0, 1).flatten(1) if self.config.bidirectional else final[-1]
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=ids.size(1))
        real = (torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None])[..., None]
        if pooling == "mean":
            return (outputs * real).sum(1) / lengths[:, None].to(outputs.dtype)
        return outputs.masked_fill(~real, float("-inf")).amax(1)

    def classify(self, ids, *, pad_mask=None, token_type_ids=None):
        """Class logits (B, n_labels) from the pooled outputs (model.pooling) of each right-padded row."""
        if self.classifier is None:
            raise ValueError("this model has no classification head (model.labels is empty)")
        return self.classifier(self.drop(self.features(ids, pad_mask=pad_mask)))

    def describe(self) -> str:
        """One line for the model card."""
        cfg = self.config
        name = {"lstm": "LSTM", "gru": "GRU", "rnn": "tanh-RNN"}[cfg.arch]
        if cfg.bidirectional or cfg.labels:
            pooled = {"cls": "final states", "mean": "mean of the outputs", "max": "max of the outputs"}[cfg.pooling]
            return (f"A {'bidirectional ' if cfg.bidirectional else ''}{name} classifier: {cfg.n_layer} layers of "
                    f"width {cfg.n_embd}{' each way' if cfg.bidirectional else ''}, the {pooled} over the real tokens "
                    f"feeding a linear head; inputs up to {cfg.block_size} tokens")
        return (f"A {name} language model: {cfg.n_layer} layers of width {cfg.n_embd}, trained on windows of "
                f"{cfg.block_size} tokens" + (f" (backpropagation truncated every {cfg.bptt})" if cfg.bptt else ""))


def _zeros_like(state):
    return tuple(torch.zeros_like(s) for s in state) if isinstance(state, tuple) else torch.zeros_like(state)


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _where(keep, new, old):
    # states are (layers, B, width): keep selects rows
    pick = lambda n, o: torch.where(keep[None, :, None], n, o)  # noqa: E731
    return tuple(pick(n, o) for n, o in zip(new, old)) if isinstance(new, tuple) else pick(new, old)
