"""A two-step program: plain code prepares the input, a ChainOfThought solves it.

Not every step of an LLM program should be an LLM call. Here questions come in words ("What
is seven times eight?"); turning number words into digits is a job for ten lines of Python,
which are exact, free and instant. The language model only does what needs it: reading the
normalised question and reasoning to the answer.

* ``pf.FunctionModule(normalize, data_model=Normalized)`` wraps the Python function as a step.
  It has no trainable variables; register the function with
  ``@pf.saving.register_serializable`` so the saved program can name it (a program file never
  imports code by name).
* ``pf.ChainOfThought(data_model=Answer, ...)`` is a generator whose output gets a
  ``thinking`` field placed *before* the answer, so the model reasons first. ``ExactMatch``
  compares only the fields of the ground truth, so ``thinking`` is not graded.
* ``InstructionOptimizer`` trains the one prompt in the program: a proposer LM rewrites the
  ChainOfThought's instructions from the examples it got right and wrong. On the fake backend
  the solver answers correctly only when its instructions say "step by step", and the
  proposer's brain writes instructions that do.

Run it::

    python examples/two_step/main.py                 # embedded offline model
    python examples/two_step/main.py --lm fake       # deterministic test server
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "guides"))
from _common import cli, describe_backend, language_model, output_dir, section

import promptfit as pf


class Question(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question, possibly in words")


class Normalized(pf.DataModel):
    question: str = pf.Field(description="The question with numbers and operators as symbols")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer, digits only", max_length=12)


NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBERS = {word: str(value) for value, word in enumerate(NUMBER_WORDS.split())}
OPERATORS = {"plus": "+", "minus": "-", "times": "*"}


@pf.saving.register_serializable("two_step")
def normalize(question: Question) -> Normalized:
    """'What is seven times eight?' -> 'What is 7 * 8?' (step 1: plain, exact code)."""
    words = {**NUMBERS, **OPERATORS}
    text = re.sub(r"[A-Za-z]+", lambda m: words.get(m[0].lower(), m[0]), question.question)
    return Normalized(question=text)


def dataset(pairs: list[tuple[int, str, int]]) -> tuple[list[dict[str, str]], ...]:
    """Questions in words and their answers, from ``(a, operator word, b)`` triples."""
    names = {int(v): w for w, v in NUMBERS.items()}
    compute = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    x = [{"question": f"What is {names[a]} {op} {names[b]}?"} for a, op, b in pairs]
    y = [{"answer": str(compute[op](a, b))} for a, op, b in pairs]
    return x, y


TRAIN = dataset([(7, "times", 8), (12, "plus", 9), (20, "minus", 6), (3, "times", 4)])
VALIDATION = dataset([(15, "plus", 5), (9, "times", 9), (11, "minus", 2)])


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    solver_lm = language_model("arith", hint="step by step")
    proposer_lm = language_model("propose", text="Solve it step by step.")

    inputs = pf.Input(data_model=Question)
    normalized = await pf.FunctionModule(normalize, data_model=Normalized, name="normalize")(inputs)
    answer = await pf.ChainOfThought(
        data_model=Answer,
        language_model=solver_lm,
        instructions="Answer the arithmetic question.",
        name="solver",
    )(normalized)
    program = pf.Program(inputs=inputs, outputs=answer, name="word_calculator")
    program.summary()
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=pf.optimizers.InstructionOptimizer(language_model=proposer_lm),
    )

    section("Step by step, on one question")
    question = Question(question="What is seven times eight?")
    step_one = await program.get_module("normalize")(question)
    print("after step 1 (code):", step_one.question)
    result = await program(question)
    print("after step 2 (LM)  :", repr(result))

    section("Train the solver's instructions")
    before = await program.evaluate(*VALIDATION, verbose=0)
    history = await program.fit(
        *TRAIN, epochs=2, batch_size=4, validation_data=VALIDATION, seed=0, verbose=2
    )
    after = await program.evaluate(*VALIDATION, verbose=0)
    print("validation reward:", before["reward"], "->", after["reward"])
    print("instructions now :", program.get_variables()["solver/prompt"]["instructions"])
    print("LM calls (solver + proposer):", sum(history.history["lm_calls"]))

    section("Save and load (the function is found through the registry)")
    path = program.save(output_dir() / "word_calculator.json")
    loaded = pf.load_program(path, language_models={solver_lm.name: solver_lm})
    print([type(m).__name__ for m in loaded.modules])
    print(await loaded(Question(question="What is six plus seven?")))


if __name__ == "__main__":
    asyncio.run(main())
