"""InstructionOptimizer: it searches, rejects losing proposals, survives a failing proposer,
round-trips its config, and resumes mid-race from a backup.

Why these tests: an instruction optimizer can look as if it works when the proposer is simply
handed the winning text. Here the proposer is the fake server's ``propose`` brain, which
appends the first edit of ``PROPOSAL_EDITS`` that the optimizer's scored instructions do not
contain yet; the program's model answers right only when its instructions contain a word of
the *third* edit (``hint="double-check"``). The optimizer therefore reaches it only by racing
and rejecting the first two proposals and feeding their scores back to the proposer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.testing.fake_server import PROPOSAL_EDITS
from tests.conftest import arithmetic_data

START = "Answer with a number."
WINNING_EDIT = PROPOSAL_EDITS[2]  # "Double-check every sum."


def _instructions(program: pf.Program) -> str:
    return str(program.get_variables()["answer/prompt"]["instructions"])


async def _fit(program: pf.Program, epochs: int = 4, **kwargs: Any) -> Any:
    # 10 examples in batches of 5: a losing race takes 2 batches (futility), a winning one 2.
    return await program.fit(
        *arithmetic_data(10), epochs=epochs, batch_size=5, verbose=0, seed=0, **kwargs
    )


@pytest.fixture()
def build(
    calc_program: Callable[..., Any], make_lm: Callable[..., pf.LanguageModel]
) -> Callable[..., Any]:
    """Async factory: the hint-gated arithmetic program trained by an InstructionOptimizer."""

    async def factory(
        hint: str = "double-check", proposer: pf.LanguageModel | None = None, tag: str = ""
    ) -> tuple[pf.Program, pf.LanguageModel]:
        proposer = proposer or make_lm("propose", **({"tag": f"p-{tag}"} if tag else {}))
        optimizer = pf.optimizers.InstructionOptimizer(language_model=proposer)
        options = {"tag": f"a-{tag}"} if tag else {}
        program = await calc_program("arith", hint=hint, optimizer=optimizer, **options)
        return program, proposer

    return factory


def test_the_optimizer_searches_past_rejected_proposals(build: Callable[..., Any]) -> None:
    async def run() -> tuple[Any, pf.Program, pf.LanguageModel]:
        program, proposer = await build()
        assert _instructions(program) == START
        return await _fit(program), program, proposer

    history, program, proposer = asyncio.run(run())
    optimizer = program.optimizer
    assert isinstance(optimizer, pf.optimizers.InstructionOptimizer)
    # The brain wrote the winning text; the test never named it to the proposer.
    assert _instructions(program).endswith(WINNING_EDIT)
    # Two losing proposals raced 2 batches each (epochs 0 and 1), the third won at the end of
    # epoch 2 (2 looks of 5 wins): only epoch 3 runs on the new instructions.
    assert history.history["reward"] == [0.0, 0.0, 0.0, 1.0]
    assert optimizer.decisions["accepted"] == 1
    assert optimizer.decisions["rejected"] >= 2
    tried = [m["variables"]["answer/prompt"]["instructions"] for m in optimizer.population]
    for edit in PROPOSAL_EDITS[:3]:
        assert any(text.endswith(edit) for text in tried), (edit, tried)
    assert proposer.usage.calls >= 3
    # The proposer's calls are part of the run's usage.
    assert sum(history.history["lm_calls"]) >= proposer.usage.calls


def test_every_proposal_losing_keeps_the_instructions(build: Callable[..., Any]) -> None:
    async def run() -> tuple[Any, pf.Program]:
        program, _ = await build(hint="zebra")  # no edit contains it: nothing can win
        return await _fit(program, epochs=3), program

    history, program = asyncio.run(run())
    assert _instructions(program) == START
    assert program.optimizer.decisions["accepted"] == 0
    assert program.optimizer.decisions["rejected"] >= 2
    assert program.optimizer.moves == 0
    assert history.history["reward"] == [0.0, 0.0, 0.0]


def test_a_failing_proposer_leaves_the_run_and_the_instructions_alone(
    build: Callable[..., Any], make_lm: Callable[..., pf.LanguageModel]
) -> None:
    broken = make_lm(
        "propose", fail_first=100, error_status=500, lm_kwargs={"max_retries": 0, "cache": False}
    )

    async def run() -> tuple[Any, pf.Program]:
        program, _ = await build(proposer=broken)
        # fail_fast judges the run's first calls; the program's own calls succeed here.
        return await _fit(program, epochs=2), program

    # Not silent either: one warning names the proposer and quotes its server.
    with pytest.warns(RuntimeWarning, match="Injected failure") as record:
        history, program = asyncio.run(run())
    warned = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1 and broken.model in warned[0]
    assert len(history.epoch) == 2
    assert _instructions(program) == START
    assert program.optimizer.decisions == {"accepted": 0, "rejected": 0}
    assert broken.usage.failed_calls >= 1
    assert sum(history.history["failed_calls"]) == broken.usage.failed_calls


def test_config_round_trip(make_lm: Callable[..., pf.LanguageModel]) -> None:
    proposer = make_lm("propose", lm_kwargs={"max_tokens": 64})
    optimizer = pf.optimizers.InstructionOptimizer(
        language_model=proposer, num_candidates=2, num_examples=4, population_size=6,
        confidence=0.9, max_looks=3, max_lm_calls=500, seed=4,
    )  # fmt: skip
    config = json.loads(json.dumps(optimizer.get_config()))
    assert "sk-test-secret-key" not in json.dumps(config)
    clone = pf.optimizers.InstructionOptimizer.from_config(config)
    assert clone.get_config() == config
    assert (clone.num_candidates, clone.num_examples, clone.max_looks) == (2, 4, 3)
    assert clone.language_model.model == proposer.model


class Crash(pf.callbacks.Callback):
    """Raise at the end of the ``at``-th training batch of the fit (counting from 1)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.seen = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("simulated crash")


def test_state_resumes_mid_race_to_the_uninterrupted_result(
    build: Callable[..., Any], tmp_path: Path
) -> None:
    """A crash while the winning proposal is racing (batch 6 of 8) resumes to the same end."""

    async def run(backup: Path, crash_at: int) -> tuple[Any, pf.Program]:
        program, _ = await build(tag="resume")
        callbacks = [BackupAndRestore(backup, save_freq=1), Crash(crash_at)]
        return await _fit(program, callbacks=callbacks), program

    reference, ref_program = asyncio.run(run(tmp_path / "reference", -1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(run(tmp_path / "backup", 6))  # backup after batch 5: the race is open
    history, program = asyncio.run(run(tmp_path / "backup", -1))
    assert program.get_variables() == ref_program.get_variables()
    assert _instructions(program).endswith(WINNING_EDIT)
    state, ref_state = program.optimizer.state_dict(), ref_program.optimizer.state_dict()
    for key in ("population", "rejected", "decisions", "moves", "races"):
        assert state[key] == ref_state[key], key
    assert history.epoch == reference.epoch
    assert history.history["reward"] == reference.history["reward"]
    # The state itself round-trips through JSON into a fresh optimizer.
    clone = pf.optimizers.InstructionOptimizer.from_config(
        program.optimizer.get_config()  # type: ignore[union-attr]
    )
    clone.load_state_dict(json.loads(json.dumps(state)))
    assert clone.state_dict() == state
