"""``pf.callbacks.serialize`` / ``deserialize``: callbacks described as plain JSON.

Why: a training run should be describable in a JSON or YAML file and rebuilt exactly, and a
typo in such a file must fail with a message that says what is wrong and what is valid --
before any LM money is spent. Names resolve through promptfit's own table and the
serialization registry only; nothing is imported because a file named it.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks import serialization
from promptfit.callbacks.budget_stopping import BudgetStopping
from promptfit.callbacks.prediction_logger import PredictionLogger
from promptfit.callbacks.serialization import builtin_callbacks, deserialize, serialize
from promptfit.callbacks.terminate_on_error import TerminateOnError
from promptfit.errors import ConfigurationError, SerializationError

MINE = (
    "BudgetStopping",
    "Events",
    "History",
    "LambdaCallback",
    "PredictionLogger",
    "ProgbarLogger",
    "TerminateOnError",
)
OTHERS = {
    "EarlyStopping": "early_stopping",
    "ProgramCheckpoint": "program_checkpoint",
    "BackupAndRestore": "backup_and_restore",
    "CSVLogger": "csv_logger",
    "Monitor": "monitor",
}


@pf.saving.register_serializable(package="test_serialization")
class CountEpochs(pf.callbacks.Callback):
    def __init__(self, start: int = 0, label: str = "epochs") -> None:
        super().__init__()
        self.start = start
        self.label = label

    def get_config(self) -> dict[str, Any]:
        return {"start": self.start, "label": self.label}


@pf.saving.register_serializable()  # "custom>CustomDefault"
class CustomDefault(pf.callbacks.Callback):
    pass


@pf.saving.register_serializable(package="test_serialization")
def not_a_callback() -> None:
    return None


class Unregistered(pf.callbacks.Callback):
    pass


def test_builtin_table_has_every_available_callback_class():
    table = builtin_callbacks()
    for name in MINE:
        assert issubclass(table[name], pf.callbacks.Callback), name
    for name, module in OTHERS.items():
        exists = importlib.util.find_spec(f"promptfit.callbacks.{module}") is not None
        assert (name in table) == exists, name
    assert "Callback" not in table and "CallbackList" not in table


def test_missing_callback_modules_are_skipped(monkeypatch):
    monkeypatch.setattr(serialization, "_MODULES", (*serialization._MODULES, "not_written_yet"))
    assert "BudgetStopping" in builtin_callbacks()


@pytest.mark.parametrize(
    "callback",
    [
        BudgetStopping(max_cost=1.5, max_calls=100, verbose=1),
        TerminateOnError(max_failed_calls=4),
        PredictionLogger("runs/p.jsonl", every_n_epochs=2, num_samples=3, seed=5),
        pf.callbacks.History(),
        pf.callbacks.ProgbarLogger(verbose=2),
    ],
    ids=lambda c: type(c).__name__,
)
def test_round_trip_through_json(callback):
    config = serialize(callback)
    assert config["class_name"] == type(callback).__name__
    rebuilt = deserialize(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(callback)
    assert rebuilt.get_config() == callback.get_config()


def test_prefixed_and_bare_string_names():
    budget = deserialize({"class_name": "promptfit>BudgetStopping", "config": {"max_tokens": 9}})
    assert isinstance(budget, BudgetStopping) and budget.max_tokens == 9
    terminate = deserialize("TerminateOnError")
    assert isinstance(terminate, TerminateOnError) and terminate.max_failure_rate == 1.0
    no_config = deserialize({"class_name": "History"})
    assert isinstance(no_config, pf.callbacks.History)


def test_registered_custom_classes():
    config = serialize(CountEpochs(start=3))
    assert config == {
        "class_name": "test_serialization>CountEpochs",
        "config": {"start": 3, "label": "epochs"},
    }
    rebuilt = deserialize(config)
    assert isinstance(rebuilt, CountEpochs) and rebuilt.start == 3
    # A class registered in the default package may be named without it.
    assert isinstance(deserialize({"class_name": "CustomDefault", "config": {}}), CustomDefault)
    assert isinstance(deserialize({"class_name": "custom>CustomDefault"}), CustomDefault)


def test_unknown_class_lists_the_known_ones():
    with pytest.raises(SerializationError, match="Unknown callback class 'EarlyStoping'") as info:
        deserialize({"class_name": "EarlyStoping", "config": {}})
    message = str(info.value)
    for name in MINE:
        assert name in message
    assert "register_serializable" in message
    with pytest.raises(SerializationError, match=r"not a pf\.callbacks\.Callback"):
        deserialize({"class_name": "test_serialization>not_a_callback"})
    with pytest.raises(SerializationError, match="Unknown callback class"):
        deserialize({"class_name": "elsewhere>Thing"})


def test_unknown_argument_names_class_and_argument():
    with pytest.raises(ConfigurationError, match="BudgetStopping") as info:
        deserialize({"class_name": "BudgetStopping", "config": {"max_calls": 5, "max_cals": 6}})
    assert "'max_cals'" in str(info.value) and "max_calls" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"CountEpochs.*'begin'"):
        deserialize({"class_name": "test_serialization>CountEpochs", "config": {"begin": 1}})
    with pytest.raises(ConfigurationError, match=r"LambdaCallback.*on_epoch_finish"):
        deserialize({"class_name": "LambdaCallback", "config": {"on_epoch_finish": "x"}})


def test_invalid_values_are_rejected_by_the_constructor():
    with pytest.raises(ConfigurationError, match="max_cost"):
        deserialize({"class_name": "BudgetStopping", "config": {"max_cost": -1}})
    with pytest.raises(ConfigurationError, match="PredictionLogger"):
        deserialize({"class_name": "PredictionLogger", "config": {}})  # missing filepath


@pytest.mark.parametrize(
    "bad",
    [
        ["BudgetStopping"],
        {"config": {}},
        {"class_name": "", "config": {}},
        {"class_name": "History", "config": [1]},
        {"class_name": "History", "confg": {}},
    ],
)
def test_malformed_descriptions(bad):
    with pytest.raises(SerializationError):
        deserialize(bad)


def test_serialize_needs_a_known_or_registered_class_and_plain_json():
    with pytest.raises(SerializationError, match="register_serializable"):
        serialize(Unregistered())
    with pytest.raises(SerializationError, match="plain JSON"):
        serialize(CountEpochs(label=object()))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="Callback"):
        serialize("EarlyStopping")  # type: ignore[arg-type]
