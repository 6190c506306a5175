"""``mlflow.genai.optimize_prompts`` offline on the embedded model, on the benchmark's SST-2.

The question this answers: can MLflow's own prompt optimizer run with no network at all,
against the model promptfit ships (``local/gemma-3-270m``, served to litellm as the custom
provider ``local``), and how does it score on the same split as promptfit's optimizers?

How it is wired (everything through litellm, as in promptfit):

* the prompt ``sst2_sentiment`` is registered in a throw-away SQLite store;
* ``predict_fn(sentence)`` loads it (``mlflow.genai.load_prompt``, which ``optimize_prompts``
  redirects to each candidate), formats it and calls ``litellm.completion(model=
  "local/gemma-3-270m")`` with a JSON schema whose ``label`` is ``positive``/``negative``
  (promptfit's provider turns it into a llama.cpp grammar, so every answer is a valid label);
* the optimizer is ``MetaPromptOptimizer(reflection_model="local:/gemma-3-270m")``: MLflow
  converts the URI to the litellm model ``local/gemma-3-270m``; GEPA needs the ``gepa``
  package and is not tried;
* the scorer is an exact-match ``@scorer`` (no judge model);
* the test split is scored with the initial and the optimized prompt.

It prints one row: test accuracy before/after, LM calls (every litellm call, counted by a
litellm callback), wall time. Usage::

    LITELLM_LOCAL_MODEL_COST_MAP=True python benchmarks/mlflow_optimize_prompts.py \
        --train 40 --test 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL = "local/gemma-3-270m"
PROMPT = "sst2_sentiment"
INITIAL = (
    "Classify the sentiment of this movie review as positive or negative. "
    "Review: {{sentence}} Sentiment:"
)
# What the reflection model may write: any single line without braces, quotes or backslashes
# (llama.cpp's grammar emits pattern characters raw, so they must need no JSON escaping),
# then the placeholder MLflow checks for and the answer cue.
TEMPLATE_PATTERN = r"^[^{}\"\\\n\r\t]*\{\{sentence\}\} Sentiment:$"
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "sentiment",
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def load(split: str, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The optimizer benchmark's split (``benchmarks/_data.py``), first ``limit`` rows."""
    from _data import load_split  # type: ignore[import-not-found]

    x, y = load_split("sst2", split)  # type: ignore[arg-type]
    return x[:limit], y[:limit]


class CallCounter:
    """Counts every ``litellm.completion`` call, ours and MLflow's (its reflection calls go
    through ``litellm.completion`` too), by wrapping the module attribute."""

    def __init__(self) -> None:
        import litellm

        self.lock = threading.Lock()
        self.calls = 0
        original = litellm.completion

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.calls += 1
            return original(*args, **kwargs)

        litellm.completion = counted


def classify(template: str, sentence: str) -> str:
    import litellm

    content = template.replace("{{sentence}}", sentence).replace("{{ sentence }}", sentence)
    response = litellm.completion(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        response_format=SCHEMA,
        max_tokens=16,
        temperature=0.0,
    )
    try:
        return str(json.loads(response.choices[0].message.content)["label"])
    except (ValueError, KeyError, TypeError):
        return ""


def accuracy(template: str, xs: list[dict[str, Any]], ys: list[dict[str, Any]]) -> float:
    hits = sum(classify(template, x["sentence"]) == y["label"] for x, y in zip(xs, ys, strict=True))
    return hits / max(1, len(xs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40, help="training examples")
    parser.add_argument("--test", type=int, default=200, help="test examples")
    parser.add_argument(
        "--reflection-tokens", type=int, default=256, help="max tokens of the reflection reply"
    )
    parser.add_argument(
        "--free-json",
        action="store_true",
        help="let the reflection model write any JSON object (MLflow's own request)",
    )
    args = parser.parse_args()

    import mlflow
    from mlflow.genai.optimize.optimizers import MetaPromptOptimizer
    from mlflow.genai.scorers import scorer

    from promptfit.language_models.local import register_local_provider

    register_local_provider()
    counter = CallCounter()
    store = Path(tempfile.mkdtemp(prefix="mlflow-optimize-"))
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("optimize_prompts")
    prompt = mlflow.genai.register_prompt(PROMPT, INITIAL)

    train_x, train_y = load("train", args.train)
    test_x, test_y = load("test", args.test)

    def predict_fn(sentence: str) -> str:
        current = mlflow.genai.load_prompt(f"prompts:/{PROMPT}/{prompt.version}")
        return classify(current.template, sentence)

    @scorer
    def exact_match(outputs: Any, expectations: dict[str, Any]) -> float:
        return float(str(outputs).strip() == str(expectations.get("expected_response")))

    data = [
        {"inputs": {"sentence": x["sentence"]}, "expectations": {"expected_response": y["label"]}}
        for x, y in zip(train_x, train_y, strict=True)
    ]
    # MLflow asks the reflection model for a JSON object keyed by prompt name; a 270M base
    # model given only {"type": "json_object"} invents its own keys. MLflow applies lm_kwargs
    # last, so this schema (a llama.cpp grammar in the local provider) forces the right key.
    reflection_kwargs: dict[str, Any] = {"max_tokens": args.reflection_tokens}
    if not args.free_json:
        reflection_kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "improved_prompts",
                "schema": {
                    "type": "object",
                    # Free instructions, then the placeholder MLflow checks for and the
                    # answer cue: the grammar keeps the template usable.
                    "properties": {PROMPT: {"type": "string", "pattern": TEMPLATE_PATTERN}},
                    "required": [PROMPT],
                    "additionalProperties": False,
                },
            },
        }
    started = time.perf_counter()
    before = accuracy(INITIAL, test_x, test_y)
    calls_before = counter.calls
    error = ""
    optimized = INITIAL
    opt_started = time.perf_counter()
    try:
        result = mlflow.genai.optimize_prompts(
            predict_fn=predict_fn,
            train_data=data,
            prompt_uris=[prompt.uri],
            optimizer=MetaPromptOptimizer(
                reflection_model="local:/gemma-3-270m", lm_kwargs=reflection_kwargs
            ),
            scorers=[exact_match],
        )
        optimized = str(result.optimized_prompts[0].template)
    except Exception as exc:  # report the failure as the row's result
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    opt_seconds = time.perf_counter() - opt_started
    opt_calls = counter.calls - calls_before
    after = accuracy(optimized, test_x, test_y) if not error else float("nan")
    wall = time.perf_counter() - started
    print(
        "| optimizer | train | test | test acc. before | test acc. after | LM calls "
        "(optimize) | optimize s | wall s | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| mlflow MetaPromptOptimizer (local:/gemma-3-270m) | {len(train_x)} | {len(test_x)} "
        f"| {before:.3f} | {after:.3f} | {counter.calls} ({opt_calls}) | {opt_seconds:.0f} "
        f"| {wall:.0f} | {error or ('prompt unchanged' if optimized == INITIAL else '-')} |"
    )
    if optimized != INITIAL:
        print("\nOptimized prompt:\n" + optimized)
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
