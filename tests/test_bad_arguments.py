"""Bad API arguments are typed errors before any LM call (issue 11, item 10).

The ``LanguageModel(...)`` constructor arguments are tested with the LM client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.errors import ConfigurationError, DataError, PromptfitError
from tests.conftest import arithmetic_data

X, Y = arithmetic_data(4)


def _calls(program: pf.Program) -> int:
    return sum(lm.usage.calls for lm in program.all_language_models())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"validation_split": "0.5"}, ConfigurationError, "validation_split"),
        ({"initial_epoch": "1", "epochs": 3}, ConfigurationError, "initial_epoch"),
        ({"initial_epoch": 0.5, "epochs": 3}, ConfigurationError, "initial_epoch"),
        ({"seed": object()}, ConfigurationError, "seed"),
        ({"seed": True}, ConfigurationError, "seed"),
        ({"verbose": "loud"}, ConfigurationError, "verbose"),
        ({"verbose": True}, ConfigurationError, "verbose"),
        ({"callbacks": pf.callbacks.CSVLogger("never.csv")}, ConfigurationError, r"callbacks=\["),
        ({"callbacks": ["not a callback"]}, ConfigurationError, "callbacks"),
        # Found in the issue 11 audit: one instance twice logged every epoch twice.
        ({"callbacks": [pf.callbacks.History()] * 2}, ConfigurationError, "same History"),
        (
            {"callbacks": [BackupAndRestore("b1"), BackupAndRestore("b2")]},
            ConfigurationError,
            "2 BackupAndRestore",
        ),
        ({"epochs": True}, ConfigurationError, "epochs"),
        ({"epochs": 2.0}, ConfigurationError, "epochs"),
        ({"batch_size": True}, ConfigurationError, "batch_size"),
        ({"batch_size": 0}, ConfigurationError, "batch_size"),
        ({"validation_batch_size": 0}, ConfigurationError, "validation_batch_size"),
        ({"shuffle": "yes"}, ConfigurationError, "shuffle"),
        ({"validation_data": ([], [])}, DataError, "validation_data"),
        ({"validation_data": "xy"}, DataError, "validation_data"),
        ({"y": [{}] * 4}, DataError, r"`y\[0\]` gives no field"),
        (
            {"x": [{"question": "1+1", "qestion": "typo"}] * 4},
            DataError,
            r"unknown fields \['qestion'\]",
        ),
        ({"x": [{"question": "bad \ud800 text"}] * 4}, DataError, "surrogate"),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, type) else v.__name__,
)
def test_bad_fit_arguments_fail_before_any_lm_call(
    calc_program: Callable[..., Any], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def run() -> pf.Program:
        program = await calc_program()
        arguments: dict[str, Any] = {"x": X, "y": Y, "epochs": 1, "verbose": 0, **kwargs}
        with pytest.raises(error, match=match):
            await program.fit(**arguments)
        return program

    program = asyncio.run(run())
    assert _calls(program) == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.evaluate([], [], verbose=0), DataError, "empty"),
        (lambda p: p.evaluate(X, Y, verbose="loud"), ConfigurationError, "verbose"),
        (lambda p: p.evaluate(X, Y, batch_size=True), ConfigurationError, "batch_size"),
        (
            lambda p: p.predict(X, verbose=0, callbacks=pf.callbacks.History()),
            ConfigurationError,
            "list",
        ),
        (
            lambda p: p.predict([{"question": "1+1", "questoin": "2"}], verbose=0),
            DataError,
            "unknown fields",
        ),
    ],
    ids=[
        "evaluate-empty",
        "evaluate-verbose",
        "evaluate-batch-bool",
        "predict-callback",
        "predict-typo",
    ],
)
def test_bad_evaluate_and_predict_arguments(
    calc_program: Callable[..., Any], call: Callable[[pf.Program], Any], error: type, match: str
) -> None:
    async def run() -> pf.Program:
        program = await calc_program()
        with pytest.raises(error, match=match):
            await call(program)
        return program

    assert _calls(asyncio.run(run())) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": "4"}, "`k` must be an integer"),
        ({"k": True}, "`k`"),
        ({"min_reward": "1"}, "min_reward"),
    ],
)
def test_optimizer_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        pf.optimizers.RandomFewShot(**kwargs)


def test_errors_are_promptfit_errors() -> None:
    assert issubclass(ConfigurationError, PromptfitError) and issubclass(DataError, PromptfitError)


def test_a_lone_surrogate_in_a_data_model_instance_is_a_data_error(
    calc_program: Callable[..., Any],
) -> None:
    from tests.conftest import Query

    async def run() -> pf.Program:
        program = await calc_program()
        with pytest.raises(DataError, match="surrogate"):
            await program.evaluate([Query(question="bad \ud800")], [{"answer": "1"}], verbose=0)
        return program

    assert _calls(asyncio.run(run())) == 0
