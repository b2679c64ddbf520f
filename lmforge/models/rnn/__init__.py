"""The recurrent baselines: LSTM, GRU and tanh-RNN language models."""
from .model import CELLS, RecurrentLM, RecurrentState

__all__ = ["CELLS", "RecurrentLM", "RecurrentState"]
