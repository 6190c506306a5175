"""Callbacks: hooks into fit, evaluate and predict, with Keras' names."""

from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.budget_stopping import BudgetStopping
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.callback_list import CallbackList
from promptfit.callbacks.csv_logger import CSVLogger
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.callbacks.events import EVENTS, Events
from promptfit.callbacks.history import History
from promptfit.callbacks.lambda_callback import LambdaCallback
from promptfit.callbacks.monitor import Monitor
from promptfit.callbacks.prediction_logger import PredictionLogger
from promptfit.callbacks.progbar_logger import ProgbarLogger
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.callbacks.serialization import deserialize, serialize
from promptfit.callbacks.terminate_on_error import TerminateOnError
from promptfit.callbacks.train_state import TrainState

__all__ = [
    "EVENTS",
    "BackupAndRestore",
    "BudgetStopping",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "Events",
    "History",
    "LambdaCallback",
    "Monitor",
    "PredictionLogger",
    "ProgbarLogger",
    "ProgramCheckpoint",
    "TerminateOnError",
    "TrainState",
    "deserialize",
    "serialize",
]
