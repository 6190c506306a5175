"""Guide 01: your first program.

A promptfit *program* is to an LLM pipeline what a Keras model is to a network: a graph of
*modules* (layers) wired together by the *data* that flows between them. Three ideas carry the
whole library:

1. **Data models are the tensors.** Every input and output is a ``pf.DataModel`` (a pydantic
   model). Its JSON schema is what the language model is asked to produce, and validating the
   reply against it is what turns free text into a typed result. A field's ``description`` is
   part of the prompt, so write it for the model.
2. **Generators are the layers.** ``pf.Generator(data_model=Answer, language_model=lm)`` asks
   the LM for an ``Answer``. Its prompt is not a string buried in code but a *trainable
   variable*, plain JSON: ``{"instructions": ..., "examples": [...]}``. Training (guide 04)
   changes these variables, exactly as Keras training changes weights.
3. **The functional API builds the graph.** ``pf.Input`` gives a symbolic placeholder; calling
   a module on it records a node instead of calling the LM; ``pf.Program(inputs, outputs)``
   turns the recorded graph into something you can run, evaluate, train and save.

Everything that may wait on the network is ``async``: programs run many examples
concurrently, so ``await program(x)``, ``await program.evaluate(...)`` and friends are
coroutines. A script wraps them in ``asyncio.run(main())``.

Run it::

    python guides/01_first_program.py              # embedded offline model
    python guides/01_first_program.py --lm fake    # deterministic test server
"""

from __future__ import annotations

import asyncio

from _common import cli, describe_backend, language_model, output_dir, section

import promptfit as pf


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    # Constraints are part of the schema the model is asked for: max_length keeps a small
    # model from rambling (and, under constrained decoding, makes rambling impossible).
    answer: str = pf.Field(description="The numeric answer, digits only", max_length=12)


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    lm = language_model("arith")

    section("1. Declare the graph (no LM call happens here)")
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer,
        language_model=lm,
        instructions="Answer the arithmetic question with a number.",
        name="solver",
    )(inputs)
    print("inputs :", inputs)
    print("outputs:", outputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calculator")
    program.summary()

    section("2. Run it on one example")
    answer = await program(Query(question="What is 12 + 30?"))
    # A failed LM call gives None instead of raising: one bad request never kills a batch.
    print("program(Query('What is 12 + 30?')) ->", repr(answer))

    section("3. The prompt is data: look at what the generator sends")
    solver = program.get_module("solver")
    for message in solver.messages(Query(question="What is 12 + 30?")):
        print(f"[{message['role']}] {message['content'][:150]}")

    section("4. Trainable variables (what fit() will change)")
    for variable in program.trainable_variables:
        print(variable.path, "->", variable.value)

    section("5. Compile, evaluate, predict")
    # compile() sets how predictions are scored (and, later, how the program is trained).
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    # x and y may be DataModels, dicts or pandas DataFrames; y may give a subset of fields.
    x = [{"question": f"What is {a} + {b}?"} for a, b in [(2, 3), (10, 7), (21, 21), (8, 5)]]
    y = [{"answer": str(a + b)} for a, b in [(2, 3), (10, 7), (21, 21), (8, 5)]]
    scores = await program.evaluate(x, y, batch_size=4, verbose=0)
    print("evaluate ->", scores)
    predictions = await program.predict(x[:2], verbose=0)
    print("predict  ->", [p.answer if p is not None else None for p in predictions])

    section("6. Save and load")
    path = program.save(output_dir() / "calculator.json")
    print("saved to", path)
    # A program file holds structure and variables as JSON, never an API key. Hand the loader
    # the live client (or an api_key) to reconnect it. Like keras.saving.load_model, the loader
    # runs in safe_mode: a file that would send requests to a non-local api_base is refused
    # unless you pass your own client as here, or safe_mode=False for a file you trust.
    restored = pf.load_program(path, language_models={lm.name: lm})
    print("loaded:", restored.name, [m.name for m in restored.modules])
    print("same variables:", restored.get_variables() == program.get_variables())

    section("7. Two other ways to build the same thing")
    # Sequential: a chain of single-input modules, like keras.Sequential.
    sequential = pf.Sequential(
        [pf.Input(data_model=Query), pf.Generator(data_model=Answer, language_model=lm)],
        name="calculator_seq",
    )
    print("Sequential modules:", [m.name for m in sequential.modules])

    # Subclassing: arbitrary Python control flow in `async def call`, like a Keras subclass.
    class Calculator(pf.Program):
        def __init__(self) -> None:
            super().__init__(name="calculator_sub", input_data_model=Query)
            self.solver = pf.Generator(data_model=Answer, language_model=lm, name="sub_solver")

        async def call(self, query: Query) -> Answer | None:
            return await self.solver(query)

    subclassed = Calculator()
    print("Subclassed variables:", [v.path for v in subclassed.trainable_variables])
    print("Subclassed answer:", await subclassed(Query(question="What is 4 * 6?")))
    # A subclass is code, not a graph: a file rebuilds it only if the class is registered and
    # defines get_config()/from_config() (as in Keras). Simplest: build it in code and load the
    # trained variables into it.
    subclassed.save_variables(output_dir() / "calculator_sub.variables.json")
    again = Calculator()
    again.load_variables(output_dir() / "calculator_sub.variables.json")
    print("Subclassed variables restored:", again.get_variables() == subclassed.get_variables())


if __name__ == "__main__":
    asyncio.run(main())
