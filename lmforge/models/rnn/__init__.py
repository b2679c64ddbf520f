"""The recurrent baselines: LSTM, GRU and tanh-RNN language models."""
from ..family import DECODER, Family
from .model import CELLS, RecurrentLM, RecurrentState

FAMILY = Family(name="rnn", archs=tuple(CELLS), kind=DECODER, module=RecurrentLM, card="recurrent language model",
                transformer=False)

__all__ = ["CELLS", "FAMILY", "RecurrentLM", "RecurrentState"]
