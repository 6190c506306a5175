"""Guide 10: custom callbacks and the training lifecycle.

Built-in callbacks cover the common needs; your own logic (a Slack message, a custom stopping
rule, a probe set evaluated every epoch) plugs into the same hooks. Three ways to write one,
from most to least structured:

* **Subclass** ``pf.callbacks.Callback`` and override Keras-named hooks: ``on_train_begin``,
  ``on_epoch_begin``, ``on_train_batch_begin``/``_end``, ``on_test_*`` (validation),
  ``on_epoch_end``, ``on_train_end``, plus ``on_checkpoint_saved`` and ``on_train_error``.
  A hook may be ``async def``: the loop awaits it, so it can call an LM or do network I/O
  without blocking the event loop that runs the batch's concurrent LM calls. Implement
  ``state_dict``/``load_state_dict`` for progress that must survive a crash (guide 07) and
  ``get_config`` to describe it as JSON.
* **Events**: ``events = pf.callbacks.Events()`` and ``@events.on("epoch_end")`` on plain or
  async functions. Each gets a ``TrainState`` (epoch, step, global step, logs, program) with
  ``state.stop_training()``.
* **LambdaCallback**: one function per hook, for one-liners.

The lifecycle of ``fit``::

    on_train_begin
      on_epoch_begin(epoch)
        on_train_batch_begin(batch) ... on_train_batch_end(batch, logs)   per batch
        on_test_begin ... on_test_batch_* ... on_test_end                 validation data
      on_epoch_end(epoch, logs)                                           with val_* keys
    on_train_end(logs)                                                    always runs
    on_train_error(error) comes just before on_train_end when fit raises

Within a hook, callbacks run in list order. ``fit`` puts ``History`` first and the progress bar
after your callbacks; callbacks that snapshot the run (``BackupAndRestore``) always run last,
so their snapshot includes what every other callback did. Setting
``self.program.stop_training = True`` ends the run after the current batch (validation and
``on_epoch_end`` still run), exactly as in Keras.

Run it::

    python guides/10_custom_callbacks_and_lifecycle.py --lm fake
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import arithmetic, calculator, cli, describe_backend, section

import promptfit as pf
from promptfit.callbacks.callback import HOOKS

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


class HookRecorder(pf.callbacks.Callback):
    """Record every hook, to print the lifecycle."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.calls: list[str] = []

    def _record(self, hook: str, *args: Any) -> None:
        index = [str(a) for a in args if isinstance(a, int)]
        self.calls.append(hook + (f"({index[0]})" if index else ""))


# Override every hook with a recorder (a real callback overrides only the hooks it needs;
# the loop skips hooks a callback does not override, so unused hooks cost nothing).
for _hook in HOOKS:

    def _make(hook: str) -> Any:
        async def method(self: HookRecorder, *args: Any) -> None:
            self._record(hook, *args)

        return method

    setattr(HookRecorder, _hook, _make(_hook))


class ProbeEvaluator(pf.callbacks.Callback):
    """An async hook that calls the LM: answer fixed probe questions after every epoch.

    Awaiting inside the hook keeps the event loop free; the calls are counted in the run's
    usage (so a BudgetStopping sees them too).
    """

    def __init__(self, probes: list[str]) -> None:
        super().__init__()
        self.probes = probes
        self.answers: dict[int, list[str | None]] = {}

    async def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        outputs = await self.program.predict([{"question": q} for q in self.probes], verbose=0)
        self.answers[epoch] = [o.answer if o is not None else None for o in outputs]

    # Progress that must survive a crash goes in state_dict (BackupAndRestore saves it).
    def state_dict(self) -> dict[str, Any]:
        return {"answers": {str(k): v for k, v in self.answers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.answers = {int(k): v for k, v in state["answers"].items()}

    def get_config(self) -> dict[str, Any]:
        return {"probes": self.probes}


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    x, y = arithmetic(4, step=7, start=3)
    validation = arithmetic(2, offset=90, step=7, start=3)

    section("1. The lifecycle of fit (2 epochs x 2 batches, with validation)")
    program = await calculator()
    recorder = HookRecorder("recorder")
    await program.fit(
        x, y, epochs=2, batch_size=2, validation_data=validation, callbacks=[recorder], verbose=0
    )
    text = " ".join(recorder.calls)
    for hook in ("on_epoch_begin", "on_train_end"):  # one line per epoch
        text = text.replace(f" {hook}", f"\n{hook}")
    print(text)

    section("2. An async hook that calls the LM")
    program = await calculator()
    probe = ProbeEvaluator(["What is 100 + 23?", "What is 7 * 8?"])
    await program.fit(x, y, epochs=2, batch_size=2, callbacks=[probe], seed=0, verbose=0)
    for epoch, answers in probe.answers.items():
        print(f"after epoch {epoch}: {answers}")

    section("3. Events: decorate functions instead of subclassing")
    events = pf.callbacks.Events()

    @events.on("train_start")
    def announce(state: pf.callbacks.TrainState) -> None:
        print(f"  training {state.program.name} for {state.num_epochs} epochs")

    @events.on("step_end")
    def progress(state: pf.callbacks.TrainState) -> None:
        print(f"  step {state.global_step}/{state.max_steps}: reward {state.logs['reward']:.2f}")

    @events.on("epoch_end")
    async def stop_when_perfect(state: pf.callbacks.TrainState) -> None:
        if state.logs.get("val_reward", 0.0) >= 1.0:
            print(f"  epoch {state.epoch}: perfect on validation, stopping")
            state.stop_training()

    program = await calculator()
    history = await program.fit(
        x, y, epochs=5, batch_size=2, validation_data=validation, callbacks=[events], verbose=0
    )
    print("epochs run:", len(history.epoch))

    section("4. LambdaCallback for one-liners")
    costs: list[int] = []
    log_calls = pf.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: costs.append(logs["lm_calls"]),
        on_train_end=lambda logs: print("  LM calls per epoch:", costs),
    )
    program = await calculator()
    await program.fit(x, y, epochs=3, batch_size=2, callbacks=[log_calls], verbose=0)

    section("5. Order between callbacks, and what happens on an error")
    first, second = HookRecorder("first"), HookRecorder("second")

    def explode(batch: int, logs: dict[str, Any] | None) -> None:
        raise RuntimeError("a callback failed")

    program = await calculator()
    try:
        await program.fit(
            x,
            y,
            epochs=1,
            batch_size=2,
            verbose=0,
            callbacks=[first, pf.callbacks.LambdaCallback(on_train_batch_end=explode), second],
        )
    except RuntimeError as error:
        print("fit raised:", error)
    print("first :", first.calls)
    print("second:", second.calls, "<- its batch_end never ran; error and train_end did")

    section("6. Callbacks as JSON")
    stopper = pf.callbacks.EarlyStopping(monitor="val_reward", patience=2)
    config = pf.callbacks.serialize(stopper)
    print("serialize  :", config)
    rebuilt = pf.callbacks.deserialize(config)
    print("deserialize:", type(rebuilt).__name__, rebuilt.patience)
    # Your own classes must be registered first: a config never imports code by name.
    pf.saving.register_serializable("guide10")(ProbeEvaluator)
    print("custom     :", pf.callbacks.serialize(ProbeEvaluator(["What is 1 + 1?"])))


if __name__ == "__main__":
    asyncio.run(main())
