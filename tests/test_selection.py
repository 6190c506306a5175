"""The selection protocol shared by every search optimizer, on the real test server.

* a challenger that is in truth no better is rejected in at least 90 % of races;
* all candidates of a step are scored concurrently (candidates x examples in flight);
* with validation data, each epoch ends on the best validated candidate;
* ``max_lm_calls`` bounds the fit's LM calls, and every call is in the logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError
from promptfit.optimizers.selection import Race, sign_test_p_value
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data


def test_sign_test_values() -> None:
    assert sign_test_p_value(0, 0) == 1.0
    assert sign_test_p_value(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p_value(3, 3) == pytest.approx(42 / 64)
    race = Race(key="k", variables={})
    race.add([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert (race.wins, race.losses, race.examples, race.looks) == (2, 0, 4, 1)
    assert not race.accepted(0.95, 5)
    race.add([1.0] * 6, [0.0] * 6)
    assert race.accepted(0.95, 5)  # 8 wins, no loss: p = 1/256 <= 0.05 / 5


def test_a_challenger_that_is_no_better_is_rejected_in_90_percent_of_races(
    calc_program: Callable[..., Any],
) -> None:
    """accuracy=0.6: every prompt (so every demonstration set) is right on 60 % of examples."""
    decisions = {"accepted": 0, "rejected": 0}

    async def run(seed: int) -> None:
        optimizer = pf.optimizers.RandomFewShot(k=2, num_candidates=2, seed=seed)
        program = await calc_program("arith", accuracy=0.6, optimizer=optimizer, seed=seed)
        x, y = arithmetic_data(48, offset=1000 * seed)
        await program.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=seed)
        for key in decisions:
            decisions[key] += optimizer.decisions[key]

    for seed in range(4):
        asyncio.run(run(seed))
    races = decisions["accepted"] + decisions["rejected"]
    assert races >= 20, decisions
    assert decisions["rejected"] / races >= 0.9, decisions


def test_candidates_are_scored_concurrently() -> None:
    """4 challengers x 8 examples: up to 32 requests in flight at once; one after another, a
    step could never have more than one batch (8) in flight. (Not ``== 32``: on a loaded
    machine the first replies can arrive before the client has sent the last requests.)"""

    async def run(server: FakeLLMServer) -> None:
        lm = pf.LanguageModel(
            model=FakeLLMServer.model("arith", min_examples=2, latency_ms=1000, tag="concurrency"),
            api_base=server.base_url,
            api_key="sk-test",
            cache=False,
            max_concurrency=64,
        )
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm, name="answer")(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        # k=3 on an 8-example pool: 4 distinct challengers.
        program.compile(
            reward=pf.rewards.ExactMatch(in_mask=["answer"]),
            optimizer=pf.optimizers.RandomFewShot(k=3, num_candidates=4),
        )
        await program.fit(*arithmetic_data(8), epochs=1, batch_size=8, verbose=0, seed=0)
        assert program.optimizer.decisions["accepted"] + len(program.optimizer.races) == 4

    with FakeLLMServer() as server:
        asyncio.run(run(server))
        assert 8 < server.stats()["max_in_flight"] <= 32


def test_each_epoch_ends_on_the_best_validated_candidate(
    calc_program: Callable[..., Any],
) -> None:
    """A lax rule (one look, confidence 0.5) moves often; validation picks among the moves."""
    ends: list[dict[str, Any]] = []

    class Record(pf.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            ends.append({"variables": self.program.get_variables(), "logs": dict(logs or {})})

    async def run() -> pf.optimizers.RandomFewShot:
        optimizer = pf.optimizers.RandomFewShot(k=2, num_candidates=3, confidence=0.5, max_looks=1)
        program = await calc_program("arith", accuracy=0.6, optimizer=optimizer)
        x, y = arithmetic_data(32)
        await program.fit(
            x,
            y,
            epochs=3,
            batch_size=4,
            validation_data=arithmetic_data(12, offset=500),
            verbose=0,
            seed=5,
            callbacks=[Record()],
        )
        return optimizer

    optimizer = asyncio.run(run())
    assert optimizer.moves >= 2 and len(optimizer.validated) >= 2
    best = max(v["val_reward"] for v in optimizer.validated.values())
    final = ends[-1]
    # The program ends on the best validated candidate, and fit's own validation (what
    # EarlyStopping and ProgramCheckpoint read) reports that candidate's score.
    assert final["logs"]["val_reward"] == pytest.approx(best)
    chosen = optimizer._key({k: v for k, v in final["variables"].items() if k == "answer/prompt"})
    assert optimizer.validated[chosen]["val_reward"] == pytest.approx(best)


def test_validation_also_judges_the_best_candidates_that_lost_their_race(
    calc_program: Callable[..., Any],
) -> None:
    """Races that end without a verdict must not hide a better candidate from validation.

    ``min_examples=2``: the prompt as written (no demonstrations) is always wrong, every
    2-demonstration set always right. ``confidence=0.999`` with ``max_looks=1`` drops every
    challenger after one 4-example look (4 wins give p = 1/16), so no race is ever won and no
    challenger is racing at the epoch end; the epoch end must still validate the candidates
    with the best training reward and move to one of them.
    """

    async def run() -> tuple[pf.optimizers.RandomFewShot, dict[str, Any]]:
        optimizer = pf.optimizers.RandomFewShot(
            k=2, num_candidates=2, confidence=0.999, max_looks=1
        )
        program = await calc_program("arith", min_examples=2, optimizer=optimizer)
        history = await program.fit(
            *arithmetic_data(16),
            epochs=1,
            batch_size=4,
            validation_data=arithmetic_data(6, offset=300),
            verbose=0,
            seed=3,
        )
        return optimizer, history.history

    optimizer, history = asyncio.run(run())
    assert optimizer.decisions["accepted"] == 0 and optimizer.decisions["rejected"] >= 2
    assert history["val_reward"] == [1.0]
    assert optimizer.moves == 1 and len(optimizer.validated) >= 2


@pytest.mark.parametrize("budget", [40, 97])
def test_max_lm_calls_bounds_the_fit_and_every_call_is_logged(
    calc_program: Callable[..., Any], budget: int
) -> None:
    async def run() -> tuple[Any, pf.Program, int]:
        optimizer = pf.optimizers.RandomFewShot(k=2, num_candidates=2, max_lm_calls=budget)
        program = await calc_program("arith", accuracy=0.7, optimizer=optimizer)
        start = program.usage_totals().calls
        history = await program.fit(
            *arithmetic_data(40),
            epochs=50,
            batch_size=5,
            validation_data=arithmetic_data(6, offset=300),
            verbose=0,
            seed=2,
        )
        return history, program, program.usage_totals().calls - start

    history, program, used = asyncio.run(run())
    assert program.optimizer.budget_exhausted
    assert len(history.epoch) < 50
    # Never over; the unspent rest is at most what the end kept back for validating
    # challengers that turned out not to need it ((2 + num_candidates) passes of 6 examples).
    assert budget - 4 * 6 - 5 <= used <= budget
    assert sum(history.history["lm_calls"]) == used


def test_bad_selection_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="confidence"):
        pf.optimizers.RandomFewShot(confidence=1.0)
    with pytest.raises(ConfigurationError, match="max_looks"):
        pf.optimizers.RandomFewShot(max_looks=0)
    with pytest.raises(ConfigurationError, match="max_lm_calls"):
        pf.optimizers.RandomFewShot(max_lm_calls=0)
