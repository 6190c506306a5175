"""The event-decorator API: ``events.on("epoch_end")`` handlers receiving a TrainState.

Why: ``Events`` is the quick way to hook into training without a Callback subclass, so its
events must fire at the same moments as the Keras hooks they map to, with counters that agree
with ``fit`` (and with backups), and ``state.stop_training()`` must behave exactly like
``program.stop_training = True``. Fits run against the fake LLM server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import arithmetic_data

import promptfit as pf
from promptfit.callbacks.events import EVENTS, Events
from promptfit.callbacks.serialization import deserialize, serialize
from promptfit.callbacks.train_state import TrainState
from promptfit.errors import ConfigurationError, SerializationError


def _record_all(events: Events, seen: list[TrainState]) -> None:
    """Register a sync handler for half the events and an async one for the others."""
    for i, name in enumerate(EVENTS):
        if i % 2:

            async def handler(state: TrainState) -> None:
                await asyncio.sleep(0)
                seen.append(state)

        else:

            def handler(state: TrainState) -> None:
                seen.append(state)

        events.on(name)(handler)


def test_unknown_event_names_the_valid_ones():
    events = Events()
    with pytest.raises(ConfigurationError, match="epoch_end") as info:
        events.on("epoch_finished")
    assert "'epoch_finished'" in str(info.value) and "checkpoint_saved" in str(info.value)
    with pytest.raises(ConfigurationError, match="must be a function"):
        events.on("epoch_end", 42)


def test_events_fire_in_order_with_fit_counters(calc_program):
    events = Events()
    seen: list[TrainState] = []
    _record_all(events, seen)
    x, y = arithmetic_data(7)

    async def main() -> pf.Program:
        program = await calc_program()
        await program.fit(
            x[:5],
            y[:5],
            batch_size=2,
            epochs=2,
            verbose=0,
            validation_data=(x[5:], y[5:]),
            callbacks=[events],
        )
        return program

    program = asyncio.run(main())
    one_epoch = ["epoch_start", *["step_start", "step_end"] * 3, "eval_start", "eval_end"]
    assert [s.event for s in seen] == [
        "train_start",
        *one_epoch,
        "epoch_end",
        *one_epoch,
        "epoch_end",
        "train_end",
    ]
    assert all(s.program is program and s.num_epochs == 2 and s.max_steps == 6 for s in seen)
    step_ends = [s for s in seen if s.event == "step_end"]
    assert [(s.epoch, s.batch, s.step, s.global_step) for s in step_ends] == [
        (0, 0, 1, 1),
        (0, 1, 2, 2),
        (0, 2, 3, 3),
        (1, 0, 1, 4),
        (1, 1, 2, 5),
        (1, 2, 3, 6),
    ]
    step_starts = [s for s in seen if s.event == "step_start"]
    assert [(s.batch, s.step, s.global_step) for s in step_starts[3:]] == [
        (0, 0, 3),
        (1, 1, 4),
        (2, 2, 5),
    ]
    epoch_ends = [s for s in seen if s.event == "epoch_end"]
    assert [(s.epoch, s.step, s.global_step, s.batch) for s in epoch_ends] == [
        (0, 3, 3, None),
        (1, 3, 6, None),
    ]
    assert epoch_ends[1].logs == program.history.to_dataframe().iloc[1].to_dict()
    assert "val_reward" in epoch_ends[0].logs and "reward" in step_ends[0].logs
    eval_end = next(s for s in seen if s.event == "eval_end")
    assert eval_end.logs["reward"] == epoch_ends[0].logs["val_reward"]
    assert seen[-1].event == "train_end" and seen[-1].global_step == 6


def test_stop_training_from_a_handler_stops_after_the_step(calc_program):
    events = Events()
    seen: list[str] = []

    @events.on("step_end")
    def stop_at_second_step(state: TrainState) -> None:
        seen.append(f"step_end {state.global_step}")
        if state.global_step == 2:
            assert not state.should_stop
            state.stop_training()
            assert state.should_stop

    @events.on("epoch_end")
    async def epoch_end(state: TrainState) -> None:
        seen.append(f"epoch_end {state.epoch} step {state.step}")

    @events.on("train_end")
    def train_end(state: TrainState) -> None:
        seen.append("train_end")

    async def main() -> Any:
        program = await calc_program()
        x, y = arithmetic_data(8)
        return await program.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[events])

    history = asyncio.run(main())
    assert seen == ["step_end 1", "step_end 2", "epoch_end 0 step 2", "train_end"]
    assert history.epoch == [0]


def test_error_event_carries_the_exception_then_train_end_runs(calc_program):
    events = Events()
    seen: list[tuple[str, Any]] = []

    @events.on("step_end")
    def explode(state: TrainState) -> None:
        raise ValueError(f"bad step {state.global_step}")

    @events.on("error")
    async def on_error(state: TrainState) -> None:
        seen.append(("error", state.error))

    @events.on("train_end")
    def on_end(state: TrainState) -> None:
        seen.append(("train_end", state.error))

    async def main() -> None:
        program = await calc_program()
        x, y = arithmetic_data(4)
        await program.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[events])

    with pytest.raises(ValueError, match="bad step 1"):
        asyncio.run(main())
    assert [name for name, _ in seen] == ["error", "train_end"]
    assert isinstance(seen[0][1], ValueError) and seen[1][1] is None


def test_checkpoint_saved_and_standalone_evaluate(calc_program):
    events = Events()
    seen: list[TrainState] = []
    _record_all(events, seen)

    async def main() -> None:
        program = await calc_program()
        callbacks = pf.callbacks.CallbackList([events], program=program)
        await callbacks.on_checkpoint_saved("/runs/ckpt-3.json", {"val_reward": 0.5})
        x, y = arithmetic_data(3)
        await program.evaluate(x, y, verbose=0, callbacks=[events])

    asyncio.run(main())
    assert [s.event for s in seen] == ["checkpoint_saved", "eval_start", "eval_end"]
    assert seen[0].checkpoint_path == "/runs/ckpt-3.json"
    assert seen[0].logs == {"val_reward": 0.5}
    # Outside fit there are no epochs: counters are zero and max_steps is -1.
    assert (seen[2].epoch, seen[2].global_step, seen[2].max_steps) == (0, 0, -1)
    assert seen[2].logs["reward"] == 1.0


def test_fire_supports_custom_loops_and_handlers_lists():
    events = Events()
    calls: list[int] = []

    @events.on("step_end")
    async def first(state: TrainState) -> None:
        calls.append(state.global_step)

    second = events.on("step_end", lambda state: calls.append(-state.global_step))
    assert events.handlers("step_end") == [first, second]
    asyncio.run(events.fire("step_end", TrainState(event="step_end", global_step=7)))
    assert calls == [7, -7]
    with pytest.raises(ConfigurationError):
        asyncio.run(events.fire("nope", TrainState()))
    with pytest.raises(RuntimeError, match="no program"):
        TrainState().stop_training()


@pf.saving.register_serializable(package="test_events")
def _announce(state: TrainState) -> None:
    del state


def test_events_config_round_trip_with_registered_handlers():
    events = Events()
    events.on("epoch_end", _announce)
    events.on("train_end", _announce)
    config = json.loads(json.dumps(serialize(events)))
    assert config == {
        "class_name": "Events",
        "config": {
            "handlers": {
                "epoch_end": ["test_events>_announce"],
                "train_end": ["test_events>_announce"],
            }
        },
    }
    rebuilt = deserialize(config)
    assert rebuilt.handlers("epoch_end") == [_announce]
    assert rebuilt.handlers("step_end") == []
    events.on("step_end", lambda state: None)
    with pytest.raises(SerializationError, match="register_serializable"):
        events.get_config()
    with pytest.raises(ConfigurationError, match="Events"):
        deserialize({"class_name": "Events", "config": {"handler": {}}})
