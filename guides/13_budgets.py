"""Guide 13: budgets, BudgetStopping and TerminateOnError.

A neural network's epoch costs electricity; a prompt-training epoch costs an invoice. Two
callbacks put a ceiling on that:

* ``BudgetStopping(max_cost=..., max_tokens=..., max_calls=...)`` stops training once the run
  has consumed a budget. It counts *every* LM of the run (the program's, an ``LMAsJudge``
  reward's, the optimizer's proposer) and every call made during ``fit``, validation and
  callbacks included. It checks after each training batch and each epoch, so the spend can
  exceed the limit by at most one batch (or one validation pass). Stopping is graceful:
  validation and ``on_epoch_end`` still run, so checkpoints and logs see the last epoch. With
  ``BackupAndRestore``, a resumed run continues counting from what was already spent.
* ``TerminateOnError`` is promptfit's ``TerminateOnNaN``. A failed LM call does not crash
  ``fit`` (the prediction is ``None`` and scores 0), which keeps one flaky request from killing
  a long run. But when the provider is down, the quota is exhausted or the model cannot
  produce the schema, every batch then "trains" on zeros while paying for retries. This
  callback stops the run when a batch's predictions fail (``max_failure_rate``, by default
  1.0: all of them) or when failed calls in an epoch reach ``max_failed_calls``.
* Before either, ``fit`` and ``evaluate`` stop a run whose first LM calls all fail the same
  way (a dead server, a wrong model name): they raise ``LMCallsFailingError`` quoting the
  server and saying what to try. ``fail_fast=False`` turns that into one warning, for runs
  that should go on and leave the decision to ``TerminateOnError``.

Cost comes from litellm's price table for hosted models. The local and test models are free,
so this guide gives its model a made-up price (litellm's ``input_cost_per_token`` and
``output_cost_per_token``, passed through ``pf.LanguageModel``) to show ``max_cost`` at work.

Run it::

    python guides/13_budgets.py --lm fake
"""

from __future__ import annotations

import asyncio
import logging
import warnings

from _common import arithmetic, calculator, cli, describe_backend, language_model, section

import promptfit as pf

# Query, Answer, arithmetic() and calculator() are shared by guides 04-13: see _common.py.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    x, y = arithmetic(8, step=9, start=4)
    validation = arithmetic(2, offset=30, step=9, start=4)

    section("1. A budget of LM calls")
    program = await calculator(language_model("arith", min_examples=2))
    budget = pf.callbacks.BudgetStopping(max_calls=20, verbose=1)
    history = await program.fit(
        x, y, epochs=10, batch_size=4, validation_data=validation, callbacks=[budget], verbose=0
    )
    print(f"ran {len(history.epoch)} of 10 epochs; stopped_reason={budget.stopped_reason}")
    print("consumed:", budget.consumed)

    section("2. A budget in money")
    # litellm warns that a custom price has no cache pricing; irrelevant here.
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    priced = language_model(
        "arith",
        min_examples=2,
        tag="priced",
        input_cost_per_token=5e-6,  # a made-up $5 per million prompt tokens
        output_cost_per_token=15e-6,  # and $15 per million completion tokens
    )
    program = await calculator(priced)
    budget = pf.callbacks.BudgetStopping(max_cost=0.01, verbose=1)
    history = await program.fit(
        x, y, epochs=10, batch_size=4, validation_data=validation, callbacks=[budget], verbose=0
    )
    print("cost per epoch:", [round(c, 5) for c in history.history["cost"]])
    print(f"ran {len(history.epoch)} of 10 epochs; spent ${budget.consumed['cost']:.5f}")

    section("3. Several limits: the first one reached stops the run")
    program = await calculator(language_model("arith", min_examples=2, tag="tokens"))
    budget = pf.callbacks.BudgetStopping(max_tokens=2_000, max_calls=1_000)
    history = await program.fit(x, y, epochs=10, batch_size=4, callbacks=[budget], verbose=0)
    print(f"stopped_reason={budget.stopped_reason}, tokens={budget.consumed['tokens']}")
    print("its configuration:", budget.get_config())

    section("4. A dead provider: fail fast, or TerminateOnError")
    # A provider that cannot be reached: nothing listens on port 9. Every call fails after
    # its retries and becomes a None prediction.
    dead = pf.LanguageModel(
        model="openai/any-model",
        api_base="http://127.0.0.1:9/v1",
        api_key="sk-unused",
        max_retries=1,
        retry_min_wait=0.01,
    )
    program = await calculator(dead)
    try:
        await program.fit(x, y, epochs=5, batch_size=4, verbose=0)
    except pf.errors.LMCallsFailingError as error:
        print("fit stopped at once:", str(error).split(". The first error")[0])
    # fail_fast=False: one warning, and the run goes on until TerminateOnError stops it.
    guard = pf.callbacks.TerminateOnError()  # default: stop when a whole batch failed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the one warning, already shown above
        history = await program.fit(
            x, y, epochs=5, batch_size=4, callbacks=[guard], verbose=0, fail_fast=False
        )
    # 8 failed calls for 4 examples: the optimizer also scored a candidate prompt on the batch.
    print(f"ran {len(history.epoch)} of 5 epochs, {history.history['failed_calls']} failed calls")
    print("stopped_reason:", guard.stopped_reason)

    section("5. A stricter guard: a share of failures, or a count per epoch")
    # fail_first=1 with max_retries=0: on the fake backend, the first attempt of every request
    # fails (a flaky provider). Other backends rarely fail, and the guard stays quiet.
    flaky = language_model("arith", fail_first=1, tag="flaky", max_retries=0)
    program = await calculator(flaky)
    guard = pf.callbacks.TerminateOnError(max_failure_rate=0.5, max_failed_calls=3)
    # Every first attempt fails and retries are off, so the run's first calls all fail:
    # fail_fast=False leaves the decision to the guard.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = await program.fit(
            x, y, epochs=3, batch_size=4, callbacks=[guard], verbose=0, fail_fast=False
        )
    print(f"ran {len(history.epoch)} of 3 epochs; stopped_reason: {guard.stopped_reason}")


if __name__ == "__main__":
    asyncio.run(main())
