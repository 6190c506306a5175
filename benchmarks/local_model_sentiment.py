"""How much do few-shot examples help the embedded model? A review-sentiment experiment.

Why this exists: the quickstart fits a program on ``promptfit/datasets/reviews.jsonl`` with the
embedded ``local/gemma-3-270m`` model. That only demonstrates something if (a) the untrained
program is visibly worse than a fitted one (examples raise accuracy) and (b) an evaluation is
fast enough to run on a laptop CPU. This script measures both, through the real path
(``litellm.acompletion`` -> ``promptfit.language_models.local``), and prints a table.

Split: rows 0-29 are the example pool (training set), rows 30-59 the evaluation set (15/15).
k examples are picked balanced (alternating positive/negative) from the pool.

Run: ``python benchmarks/local_model_sentiment.py [--shots 0 4 8] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from promptfit.language_models.local import register_local_provider
from promptfit.language_models.request import build_messages, render_system

DATA = Path(__file__).resolve().parents[1] / "promptfit" / "datasets" / "reviews.jsonl"
MODEL = "local/gemma-3-270m"

INSTRUCTIONS = {
    "task": "Classify the sentiment of the review as positive or negative.",
    "terse": "Label the text.",
}

ENUM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
    "additionalProperties": False,
}
STRING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string", "maxLength": 20}},
    "required": ["label"],
    "additionalProperties": False,
}
SCHEMAS = {"enum": ENUM_SCHEMA, "string": STRING_SCHEMA}


@dataclass
class Result:
    """One configuration's outcome on the evaluation set."""

    instructions: str
    schema: str
    shots: int
    accuracy: float
    positive_rate: float
    seconds_per_call: float
    eval_seconds: float
    cpu_seconds: float
    prompt_tokens: float


def load_rows() -> list[dict[str, str]]:
    """The 60 labelled reviews, in file order."""
    with DATA.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def balanced_examples(pool: list[dict[str, str]], k: int) -> list[dict[str, str]]:
    """The first k/2 positive and k/2 negative pool rows, interleaved (pos, neg, pos, ...)."""
    positives = [row for row in pool if row["label"] == "positive"]
    negatives = [row for row in pool if row["label"] == "negative"]
    chosen: list[dict[str, str]] = []
    for index in range(k // 2):
        chosen += [positives[index], negatives[index]]
    return chosen


async def evaluate(
    instructions: str, schema_name: str, shots: int, pool: list[dict[str, str]], rows: list[dict]
) -> Result:
    """Accuracy and timing of one configuration (rows one after another)."""
    schema = SCHEMAS[schema_name]
    system = render_system(INSTRUCTIONS[instructions], json.dumps(schema))
    examples = [
        ({"review": row["review"]}, {"label": row["label"]})
        for row in balanced_examples(pool, shots)
    ]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "sentiment", "schema": schema, "strict": True},
    }

    async def one(row: dict[str, str]) -> tuple[str, float, int]:
        started = time.perf_counter()
        response = await litellm.acompletion(
            model=MODEL,
            messages=build_messages(system, examples, {"review": row["review"]}),
            response_format=response_format,
            temperature=0,
            max_tokens=16,
        )
        elapsed = time.perf_counter() - started
        label = str(json.loads(response.choices[0].message.content)["label"]).strip().lower()
        return label, elapsed, response.usage.prompt_tokens

    started, cpu_started = time.perf_counter(), time.process_time()
    outcomes = []
    for row in rows:  # sequential: per-call latency is meaningful (the model serializes anyway)
        outcomes.append(await one(row))
    eval_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    labels = [label for label, _, _ in outcomes]
    correct = sum(label == row["label"] for label, row in zip(labels, rows, strict=True))
    return Result(
        instructions=instructions,
        schema=schema_name,
        shots=shots,
        accuracy=correct / len(rows),
        positive_rate=sum(label == "positive" for label in labels) / len(rows),
        seconds_per_call=statistics.mean(elapsed for _, elapsed, _ in outcomes),
        eval_seconds=eval_seconds,
        cpu_seconds=cpu_seconds,
        prompt_tokens=statistics.mean(tokens for _, _, tokens in outcomes),
    )


async def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--instructions", nargs="+", default=list(INSTRUCTIONS))
    parser.add_argument("--schemas", nargs="+", default=list(SCHEMAS))
    args = parser.parse_args()

    register_local_provider(MODEL)
    rows = load_rows()
    pool, evaluation = rows[:30], rows[30:]

    warm = time.perf_counter()
    hello = [{"role": "user", "content": "Hi"}]
    await litellm.acompletion(model=MODEL, messages=hello, max_tokens=1)
    print(
        f"model load + first call: {time.perf_counter() - warm:.1f}s; cpus: {os.cpu_count()}; "
        f"load average: {os.getloadavg()[0]:.1f}"
    )

    header = (
        f"{'instructions':<12} {'schema':<7} {'shots':>5} {'accuracy':>8} {'pos-rate':>8} "
        f"{'s/call':>7} {'eval(30)':>8} {'cpu(30)':>8} {'prompt-tok':>10}"
    )
    print(header)
    print("-" * len(header))
    for instructions in args.instructions:
        for schema_name in args.schemas:
            for shots in args.shots:
                result = await evaluate(instructions, schema_name, shots, pool, evaluation)
                print(
                    f"{result.instructions:<12} {result.schema:<7} {result.shots:>5} "
                    f"{result.accuracy:>8.0%} {result.positive_rate:>8.0%} "
                    f"{result.seconds_per_call:>7.2f} {result.eval_seconds:>7.1f}s "
                    f"{result.cpu_seconds:>7.1f}s "
                    f"{result.prompt_tokens:>10.0f}",
                    flush=True,
                )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
