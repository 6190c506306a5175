"""Guide 11: observability, traces of every program, module and LM call.

Metrics say a prompt is wrong on 20% of the validation set; a *trace* shows you why: what the
program received, what each module passed to the next, the exact messages sent to the LM, the
raw reply, the latency, the tokens, whether it came from the cache, and the error when a call
failed. One call turns this on for the whole process::

    pf.enable_observability()                      # embedded ./mlflow.db, no server needed
    pf.enable_observability("http://127.0.0.1:5000", experiment_name="my-project")

From then on:

* every call of a program becomes an MLflow **trace** whose root span is the program, with one
  span per module below it and one ``CHAT_MODEL`` span per LM call below the module that made
  it. Examples that ``fit`` runs concurrently each get their own trace (the span context
  follows each asyncio task);
* every ``fit`` gets a ``Monitor`` automatically (guide 09) and its traces are linked to the
  run, so a run's page lists the traces of its training.

It is built not to hurt the program it watches: while it is off, a span costs one global
lookup; while it is on, spans are recorded in memory and exported by MLflow's background
threads, so the event loop never waits for the tracking store; a store that cannot be reached
costs ONE warning, not one per call, and never an exception. API keys and key-shaped strings
are scrubbed from everything that is recorded. ``pf.disable_observability()`` flushes pending
traces and restores MLflow's previous settings.

Run it::

    python guides/11_observability.py --lm fake --out runs/guide11
    mlflow ui --backend-store-uri sqlite:///runs/guide11/mlflow.db
"""

from __future__ import annotations

import asyncio
import re

import mlflow
from _common import Answer, Query, cli, describe_backend, language_model, output_dir, section

import promptfit as pf

# Query and Answer are the data models shared by guides 04-13 (see _common.py); this guide's
# program adds a plain-code step between them, so it builds its own program below.


class Normalized(pf.DataModel):
    question: str = pf.Field(description="The question with number words replaced by digits")


WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "ten": "10"}


def normalize(query: Query) -> Normalized:
    """Plain code as a module: its inputs and outputs are traced like any other step."""
    return Normalized(question=re.sub(r"[a-z]+", lambda m: WORDS.get(m[0], m[0]), query.question))


def print_tree(trace: object) -> None:
    """Print a trace's spans as an indented tree."""
    spans = trace.data.spans  # type: ignore[attr-defined]
    children: dict[str | None, list[object]] = {}
    for span in spans:
        children.setdefault(span.parent_id, []).append(span)

    def show(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            ms = (span.end_time_ns - span.start_time_ns) / 1e6
            extra = ""
            if span.span_type == "CHAT_MODEL":
                attributes = span.attributes
                extra = (
                    f" cache_hit={attributes.get('cache_hit')}"
                    f" tokens={attributes.get('prompt_tokens', 0)}"
                    f"+{attributes.get('completion_tokens', 0)}"
                )
            print(f"  {'  ' * depth}{span.name} [{span.span_type}] {ms:.1f} ms{extra}")
            show(span.span_id, depth + 1)

    show(None, 0)


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    tracking_uri = f"sqlite:///{output_dir() / 'mlflow.db'}"

    section("1. Turn it on")
    uri = pf.enable_observability(tracking_uri=tracking_uri, experiment_name="guide-11")
    print("tracking to", uri)

    lm = language_model("arith", min_examples=2, api_key="sk-guide-11-not-a-real-key")
    inputs = pf.Input(data_model=Query)
    normalized = await pf.FunctionModule(normalize, data_model=Normalized, name="normalize")(inputs)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="solver"
    )(normalized)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calculator")

    section("2. Every call is a trace")
    await program(Query(question="What is two + three?"))
    await program(Query(question="What is two + three?"))  # the second answer is cached
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("guide-11")
    traces = client.search_traces(
        locations=[experiment.experiment_id], order_by=["timestamp_ms ASC"], flush=True
    )
    print(f"{len(traces)} traces; the spans of each:")
    for trace in traces:
        print(f"trace {trace.info.trace_id} ({trace.info.state})")
        print_tree(trace)

    section("3. What a span holds")
    llm_span = next(s for s in traces[0].data.spans if s.span_type == "CHAT_MODEL")
    print("inputs (messages):")
    for message in llm_span.inputs["messages"]:
        content = message["content"].replace("\n", " ")
        print(f"  [{message['role']}] {content[:90]}")
    print("outputs:", llm_span.outputs)
    print(
        "attributes:", {k: v for k, v in llm_span.attributes.items() if not k.startswith("mlflow.")}
    )
    text = str([t.to_dict() for t in traces])
    print("API key anywhere in the traces:", "sk-guide-11-not-a-real-key" in text)

    section("4. fit is tracked as a run, with its traces linked")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]), optimizer=pf.optimizers.RandomFewShot(k=2)
    )
    x = [{"question": f"What is {a} + {b}?"} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    y = [{"answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    await program.fit(x, y, epochs=2, batch_size=2, seed=0, verbose=0)  # no Monitor passed
    runs = client.search_runs([experiment.experiment_id])
    run = runs[0]
    print(f"run {run.info.run_name} ({run.info.status}) reward history:", end=" ")
    print([m.value for m in client.get_metric_history(run.info.run_id, "reward")])
    linked = client.search_traces(
        locations=[experiment.experiment_id], run_id=run.info.run_id, flush=True
    )
    print(f"traces linked to the run: {len(linked)}")

    section("5. Turn it off")
    pf.disable_observability()
    await program(Query(question="What is four + five?"))
    after = client.search_traces(locations=[experiment.experiment_id], max_results=1000)
    print("traces in the store:", len(after), "(the last call was not traced)")
    print(f"browse: mlflow ui --backend-store-uri {uri}")
    print("(the store is deleted at exit unless the guide runs with --out DIR)")


if __name__ == "__main__":
    asyncio.run(main())
