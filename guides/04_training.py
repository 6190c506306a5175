"""Guide 04: training with ``fit``.

``await program.fit(x, y, epochs=..., batch_size=..., validation_data=...)`` is Keras' loop
with prompts in place of weights. Per training batch:

1. the program runs on every example of the batch, concurrently, recording what each
   generator received and produced (its *trace*);
2. the reward scores each prediction;
3. the **optimizer** proposes challengers (new few-shot examples or instructions) and scores
   all of them on the *same* batch at once. Each challenger *races* the current variables
   over successive batches: per example, did it earn more reward or less? It replaces them
   only when a sign test on those paired wins and losses says it is better at 95 %
   confidence (``confidence=``), so a challenger that is merely lucky on one batch does not
   win. Pairing on the same examples keeps an easy batch from flattering a candidate;
4. callbacks see ``on_train_batch_end`` with the running logs.

After each epoch, with validation data, the optimizer scores the epoch's winners and the
challengers still leading their race on the validation set and keeps the best; then the
validation data is evaluated (``val_*`` keys) and ``on_epoch_end`` fires, so
``EarlyStopping`` and ``ProgramCheckpoint`` see the chosen variables. ``fit`` returns a
``History``, as in Keras. ``max_lm_calls=`` on any optimizer bounds every LM call of the fit
(training, proposals, scoring, validation): that is how two optimizers are compared fairly.

Three optimizers ship with promptfit:

* ``RandomFewShot(k=...)`` collects demonstrations from predictions that earned full reward
  (and, with ``use_labels=True``, from your labelled pairs), then tries random sets of ``k``
  of them as the generator's few-shot examples. Cheap and strong: start here.
* ``InstructionOptimizer(language_model=...)`` shows a *proposer* LM the current instructions,
  the scores of earlier ones, and good and bad examples, and asks for better instructions
  (in the spirit of OPRO/GEPA). Use it when the task needs telling, not showing.
* ``BootstrapFewShot(...)`` (DSPy's ``BootstrapFewShotWithRandomSearch``): runs the program,
  or a stronger ``teacher`` (a program or a language model), keeps the whole-program runs that
  reached ``min_reward``, and gives *every* generator -- intermediate steps too -- the inputs
  and outputs it saw in those runs as demonstrations, mixed with labelled pairs where a
  generator maps ``x`` to ``y``. Demonstration sets are searched with the races above.

``seed=`` fixes shuffling and the optimizer's random choices: with a deterministic model the
same seed reproduces the run exactly. Every LM call of the run (program, reward judge,
optimizer proposer) is counted in the logs (``lm_calls``, ``tokens``, ``cost``).

On the ``fake`` backend the model is built to need help: with ``min_examples=2`` it answers
wrongly until its prompt holds two examples, and with ``hint="carefully"`` until its
instructions contain that word. Training visibly fixes both.

Run it::

    python guides/04_training.py --lm fake
"""

from __future__ import annotations

import asyncio

from _common import arithmetic, calculator, cli, describe_backend, language_model, section

import promptfit as pf

# From here on the guides share one task, defined in _common.py: arithmetic() makes the data
# and calculator() builds guide 01's Query -> "solver" -> Answer program, compiled with an
# ExactMatch reward and (unless told otherwise) a RandomFewShot optimizer.


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    x_train, y_train = arithmetic(8)
    x_val, y_val = arithmetic(4, offset=50)

    section("1. Few-shot training with RandomFewShot")
    lm = language_model("arith", min_examples=2)
    program = await calculator(
        lm,
        optimizer=pf.optimizers.RandomFewShot(k=2, num_candidates=1),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    before = await program.evaluate(x_val, y_val, verbose=0)
    print("validation reward before:", before["reward"])
    # verbose=2 prints one line per epoch, as Keras does when output is not a terminal.
    history = await program.fit(
        x_train,
        y_train,
        epochs=2,
        batch_size=4,
        validation_data=(x_val, y_val),
        seed=0,
        verbose=2,
    )
    after = await program.evaluate(x_val, y_val, verbose=0)
    print("validation reward after :", after["reward"])

    section("2. What training changed: the variables")
    prompt = program.get_variables()["solver/prompt"]
    print("instructions:", prompt["instructions"])
    for example in prompt["examples"]:
        print("example     :", example["inputs"], "->", example["outputs"])
    print("optimizer moves:", program.optimizer.moves)

    section("3. History")
    print("epochs :", history.epoch)
    print("keys   :", sorted(history.history))
    print(history.to_dataframe()[["reward", "val_reward", "lm_calls"]])

    section("4. Reproducible: same seed, same run")
    again = await calculator(
        language_model("arith", min_examples=2),
        optimizer=pf.optimizers.RandomFewShot(k=2),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    history_again = await again.fit(
        x_train, y_train, epochs=2, batch_size=4, validation_data=(x_val, y_val), seed=0, verbose=0
    )
    print("same variables:", again.get_variables() == program.get_variables())
    print("same rewards  :", history_again.history["reward"] == history.history["reward"])

    section("5. Instruction optimisation")
    # The proposer is just another LM; on the fake backend its 'propose' brain writes
    # instructions containing "Compute carefully", which the hint-gated model needs.
    # Instructions are short: cap the proposer's output (max_tokens) to keep proposals cheap.
    proposer = language_model("propose", text="Compute carefully.", max_tokens=64)
    program = await calculator(
        language_model("arith", hint="carefully"),
        optimizer=pf.optimizers.InstructionOptimizer(language_model=proposer, num_candidates=1),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    await program.fit(
        x_train, y_train, epochs=1, batch_size=4, validation_data=(x_val, y_val), seed=0, verbose=2
    )
    print("learned instructions:", program.get_variables()["solver/prompt"]["instructions"])
    print("proposer calls      :", proposer.usage.calls, "(counted in the logs' lm_calls)")

    section("6. Other ways to give data")
    # validation_split holds out the *last* fraction of the data (before shuffling), as Keras.
    # (`again` is the few-shot program of step 4: fit continues from its current variables.)
    history = await again.fit(
        x_train, y_train, epochs=1, batch_size=4, validation_split=0.25, seed=0, verbose=0
    )
    print(
        "validation_split=0.25 ->", {k: v[-1] for k, v in history.history.items() if "reward" in k}
    )

    section("7. BootstrapFewShot: a teacher and a budget")
    # The student needs two examples; the teacher (the same model without that handicap on
    # the fake backend) answers right at once. Its successful runs become demonstrations.
    teacher = language_model("arith")
    optimizer = pf.optimizers.BootstrapFewShot(
        max_bootstrapped_demos=2, max_labeled_demos=2, teacher=teacher, max_lm_calls=60
    )
    program = await calculator(language_model("arith", min_examples=2), optimizer=optimizer)
    history = await program.fit(
        x_train, y_train, epochs=10, batch_size=4, validation_data=(x_val, y_val), seed=0, verbose=0
    )
    calls = sum(history.history["lm_calls"])
    print("bootstrapped demonstrations:", {k: len(v) for k, v in optimizer.bootstrapped.items()})
    print("races won / lost           :", optimizer.decisions)
    print(f"LM calls                   : {calls} of max_lm_calls=60 (teacher's included)")
    print("epochs run                 :", len(history.epoch), "of 10")
    print("budget ended the fit       :", optimizer.budget_exhausted)
    print("val_reward                 :", history.history["val_reward"])
    examples = program.get_variables()["solver/prompt"]["examples"]
    print("demonstrations kept        :", [e["inputs"]["question"] for e in examples])


if __name__ == "__main__":
    asyncio.run(main())
