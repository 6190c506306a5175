"""Callbacks: hooks into fit, evaluate and predict, with Keras' names."""

from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.callbacks.history import History
from promptfit.callbacks.progbar_logger import ProgbarLogger

__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger"]
