"""Usage is attributed per run (issue 11, item 4): fits that share a LanguageModel under
``asyncio.gather`` each count their own calls, and restoring one from a backup leaves the
other's counters alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from tests.conftest import Answer, Query, arithmetic_data


async def _program(lm: pf.LanguageModel, name: str) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="answer"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name=name)
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=pf.optimizers.RandomFewShot(k=2),
    )
    return program


async def _fit(program: pf.Program, n: int, batch_size: int, **kwargs: Any) -> Any:
    x, y = arithmetic_data(n)
    return await program.fit(
        x, y, batch_size=batch_size, epochs=2, verbose=0, seed=0, shuffle=False, **kwargs
    )


class CrashAtEpoch1(pf.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.armed and epoch == 1:
            raise RuntimeError("simulated crash")


def _alone(make_lm: Any, n: int, batch_size: int) -> list[int]:
    """lm_calls per epoch of a fit run alone on its own LM (the reference)."""

    async def main() -> Any:
        lm = make_lm("arith", lm_kwargs={"cache": False})
        return await _fit(await _program(lm, "alone"), n, batch_size)

    return asyncio.run(main()).history["lm_calls"]


def test_two_concurrent_fits_on_one_lm_count_their_own_calls(make_lm: Any) -> None:
    expected_a, expected_b = _alone(make_lm, 6, 3), _alone(make_lm, 10, 5)
    lm = make_lm("arith", latency_ms=10, lm_kwargs={"cache": False})

    async def main() -> tuple[Any, Any]:
        a, b = await _program(lm, "a"), await _program(lm, "b")
        return tuple(await asyncio.gather(_fit(a, 6, 3), _fit(b, 10, 5)))

    history_a, history_b = asyncio.run(main())
    assert history_a.history["lm_calls"] == expected_a
    assert history_b.history["lm_calls"] == expected_b
    assert all(t > 0 for t in history_a.history["tokens"])
    # The LM's own totals still hold every call.
    assert lm.usage.calls == sum(expected_a) + sum(expected_b)


def test_restoring_one_fit_leaves_the_other_fits_counters_alone(
    make_lm: Any, tmp_path: Path
) -> None:
    expected_a, expected_b = _alone(make_lm, 6, 3), _alone(make_lm, 10, 5)
    lm = make_lm("arith", latency_ms=10, lm_kwargs={"cache": False})
    backup_dir = tmp_path / "backup"
    crash = CrashAtEpoch1()

    async def crashed() -> None:
        program = await _program(lm, "a")
        await _fit(program, 6, 3, callbacks=[crash, pf.callbacks.BackupAndRestore(backup_dir)])

    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(crashed())
    crash.armed = False

    async def main() -> tuple[Any, Any, Any]:
        a, b = await _program(lm, "a"), await _program(lm, "b")
        budget = pf.callbacks.BudgetStopping(max_calls=1000)

        async def resume() -> Any:
            # Let b start first, so the restore happens while b is counting.
            await asyncio.sleep(0.03)
            return await _fit(a, 6, 3, callbacks=[crash, pf.callbacks.BackupAndRestore(backup_dir)])

        results = await asyncio.gather(resume(), _fit(b, 10, 5, callbacks=[budget]))
        return results[0], results[1], budget

    history_a, history_b, budget = asyncio.run(main())
    assert history_a.history["lm_calls"] == expected_a  # epoch 0 restored from the backup
    assert history_b.history["lm_calls"] == expected_b
    assert budget.consumed["calls"] == sum(expected_b)  # b's budget saw b's calls only
