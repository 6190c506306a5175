"""Guide 05: EarlyStopping.

Every epoch of prompt training costs LM calls, so an epoch that cannot improve anything is
money spent for nothing, and a prompt optimizer that keeps going after the validation reward
has plateaued starts fitting the quirks of the training batches. ``EarlyStopping`` ends the
run when the monitored value stops improving, with the rules of Keras 3:

* an epoch *improves* when ``current - min_delta > best`` (``mode="max"``; ``"min"`` mirrors
  it). ``mode="auto"`` infers the direction from the key: ``reward``, ``accuracy``, ``f1``...
  go up, ``cost``, ``tokens``, ``failed_calls``... go down;
* ``patience`` is how many monitored epochs without improvement are tolerated;
* ``restore_best_variables=True`` puts back the prompt of the best epoch at the end, instead of
  keeping the last one (Keras' ``restore_best_weights``);
* ``baseline`` is a value the monitor must beat for patience to reset, and
  ``start_from_epoch`` skips a warm-up.

promptfit adds ``stop_at``: stop *as soon as* the value reaches a target (``val_reward`` of
1.0, say) because nothing is left to gain and every further epoch only costs.

Monitor a ``val_`` key (give ``fit`` validation data): the training reward is measured on the
very batches the optimizer selected prompts on, so it is optimistic. A misspelt key warns once
and lists the keys that exist (``strict=True`` raises instead).

Run it::

    python guides/05_callbacks_early_stopping.py --lm fake
"""

from __future__ import annotations

import asyncio

from _common import arithmetic, calculator, cli, describe_backend, section

import promptfit as pf

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    x, y = arithmetic(6, step=3, start=2)
    validation = arithmetic(3, offset=40, step=3, start=2)

    section("1. Stop when val_reward stops improving")
    # calculator()'s model has min_examples=2: on the fake backend it is wrong until it has
    # two examples, so val_reward improves while training finds them.
    program = await calculator()
    stopper = pf.callbacks.EarlyStopping(
        monitor="val_reward", patience=1, restore_best_variables=True, verbose=1
    )
    history = await program.fit(
        x,
        y,
        epochs=6,
        batch_size=3,
        validation_data=validation,
        callbacks=[stopper],
        seed=0,
        verbose=0,
    )
    print("val_reward per epoch:", history.history["val_reward"])
    print(
        f"ran {len(history.epoch)} of 6 epochs; best {stopper.best} at epoch {stopper.best_epoch}"
    )
    print("stopped_epoch:", stopper.stopped_epoch, "| wait:", stopper.wait)

    section("2. Stop as soon as a target is reached")
    program = await calculator()
    target = pf.callbacks.EarlyStopping(monitor="val_reward", stop_at=1.0, verbose=1)
    history = await program.fit(
        x,
        y,
        epochs=6,
        batch_size=3,
        validation_data=validation,
        callbacks=[target],
        seed=0,
        verbose=0,
    )
    print(f"ran {len(history.epoch)} of 6 epochs; val_reward: {history.history['val_reward']}")

    section("3. A misspelt key is reported, not ignored")
    program = await calculator()
    # With mode="auto" the direction must be inferred from the name, and 'val_rewrad' says
    # nothing: fit fails in on_train_begin, before a single LM call is paid for.
    try:
        await program.fit(
            x,
            y,
            epochs=2,
            batch_size=3,
            validation_data=validation,
            verbose=0,
            callbacks=[pf.callbacks.EarlyStopping(monitor="val_rewrad")],
        )
    except pf.errors.ConfigurationError as error:
        print("ConfigurationError:", str(error)[:100], "...")
    # With an explicit mode the key is looked up at the first epoch end; strict=True raises
    # (the default warns once, listing the keys that do exist).
    try:
        await program.fit(
            x,
            y,
            epochs=2,
            batch_size=3,
            validation_data=validation,
            verbose=0,
            callbacks=[pf.callbacks.EarlyStopping(monitor="val_rewrad", mode="max", strict=True)],
        )
    except pf.errors.MonitorKeyError as error:
        print("MonitorKeyError:", str(error)[:160], "...")

    section("4. Its configuration is plain JSON")
    print(stopper.get_config())


if __name__ == "__main__":
    asyncio.run(main())
