"""Optimizers on examples they never saw: promptfit against no search and against DSPy.

Why this exists: an optimizer that looks good on the data it selected on proves nothing. This
script trains each method on ``train`` (selecting on ``val`` where the method selects at all),
then scores it once on ``test``, which no optimizer and no callback ever sees. Every method
drives the same embedded model (``local/gemma-3-270m`` through litellm's ``local`` provider),
with the LM response caches off on both sides so that every counted call is a real one.

Methods (per data set, per budget, per seed):

* ``zero-shot``: the program as written (deterministic: one run).
* ``k random labelled``: ``k`` random labelled training pairs as demonstrations, no search.
* promptfit ``RandomFewShot``, ``BootstrapFewShot``, ``InstructionOptimizer`` (proposer: the
  same embedded model), each with ``max_lm_calls=<budget>`` (training batches, proposals,
  candidate scoring and validation all count).
* DSPy ``LabeledFewShot(k)`` (no search), ``BootstrapFewShotWithRandomSearch`` sized to the
  budget (``(num_candidate_programs + 3) x |valset|`` evaluations plus bootstrapping), and
  ``MIPROv2(auto="light")`` (its own fixed budget; reported with the calls it really made).
  DSPy uses ``JSONAdapter`` so the embedded model gets the same grammar-constrained JSON as
  promptfit (DSPy's default ``ChatAdapter`` falls back to it anyway after a parse failure).

LM calls are the calls made to train (test-set calls excluded; they are the same for all).
DSPy is an optional, benchmark-only dependency (``pip install -e '.[bench]'``, best in a
separate venv); without it the DSPy rows are skipped.

Also, ``--concurrency`` measures on the test server (``FakeLLMServer``) whether a fit with
``num_candidates=4`` keeps the LM at its concurrency bound: wall time per LM call of the fit
against that of ``evaluate``.

Run (see ``docs/benchmarks.md`` for the exact command and results)::

    python benchmarks/optimizers.py --datasets sst2 --json sst2.json
    python benchmarks/optimizers.py --merge sst2.json restaurant8k.json
    python benchmarks/optimizers.py --concurrency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import SLOTS, load_split

import promptfit as pf
from promptfit.optimizers.demonstrations import sample_diverse

MODEL = "local/gemma-3-270m"
API_BASE: str | None = None  # --api-base: an OpenAI-compatible server instead (smoke tests)
K = 4  # demonstrations per generator, for every method that uses them

INSTRUCTIONS = {
    "sst2": "Classify the sentiment of the movie review sentence as positive or negative.",
    "restaurant8k": (
        "Extract the restaurant booking details from the message: date, time, number of "
        "people, first name and last name. Copy each exactly as written in the message; use "
        "null for anything the message does not say."
    ),
}


# -- data models and scoring -------------------------------------------------------------------
class Sentence(pf.DataModel):
    sentence: str = pf.Field(description="A sentence from a movie review.")


class Sentiment(pf.DataModel):
    label: Literal["positive", "negative"] = pf.Field(description="The sentiment.")


class Message(pf.DataModel):
    text: str = pf.Field(description="The user's message to a restaurant booking system.")
    requested_slots: list[str] = pf.Field(description="What the system had just asked for.")


class Booking(pf.DataModel):
    date: str | None = pf.Field(default=None, description="The date, as written, or null.")
    time: str | None = pf.Field(default=None, description="The time, as written, or null.")
    people: str | None = pf.Field(default=None, description="Number of people, or null.")
    first_name: str | None = pf.Field(default=None, description="First name, or null.")
    last_name: str | None = pf.Field(default=None, description="Last name, or null.")


def _norm(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return None if text in ("", "null", "none") else text


def score(dataset: str, y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
    """SST-2: label match. Restaurant8k: slot F1 of the example.

    Restaurant8k counts the slots that are filled (not null) in the label or the prediction: a
    slot is a true positive when both fill it with the same text (case- and space-insensitive),
    and the example's score is ``2 TP / (filled in label + filled in prediction)``, 1.0 when
    neither fills any slot. Why not "all five slots right": the 270M model gets whole frames
    right too rarely (0 to 7 % in a first run) for any method to show a difference, and why
    not plain per-slot accuracy: most slots are null in most messages, so "always null"
    would already score high.
    """
    if dataset == "sst2":
        return float(_norm(y_true.get("label")) == _norm(y_pred.get("label")))
    truth = {s: _norm(y_true.get(s)) for s in SLOTS}
    pred = {s: _norm(y_pred.get(s)) for s in SLOTS}
    filled = sum(v is not None for v in truth.values()) + sum(v is not None for v in pred.values())
    if filled == 0:
        return 1.0
    hits = sum(truth[s] is not None and truth[s] == pred[s] for s in SLOTS)
    return 2 * hits / filled


def splits(dataset: str, n_train: int, n_val: int, n_test: int) -> dict[str, tuple[list, list]]:
    """Prefixes of the fixed splits (see benchmarks/data/README.md)."""
    out = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x, y = load_split(dataset, split)  # type: ignore[arg-type]
        out[split] = (x[:n], y[:n])
    return out


def val_subset(data: dict[str, tuple[list, list]], budget: int | None) -> tuple[list, list]:
    """The validation rows a budget pays for: ``budget // 8`` (at least 4), for every method.

    A search spends most of a small budget on validation passes, so both frameworks get the
    same, budget-sized validation set (at least 5 rows).
    """
    n = max(5, (budget or 40) // 8)
    x, y = data["val"]
    return x[:n], y[:n]


# -- promptfit -------------------------------------------------------------------------------
def language_model() -> pf.LanguageModel:
    extra = {"api_base": API_BASE, "api_key": "sk-none"} if API_BASE else {}
    return pf.LanguageModel(model=MODEL, cache=False, max_retries=1, max_tokens=96, **extra)


async def build(dataset: str, lm: pf.LanguageModel) -> pf.Program:
    in_model, out_model = (Sentence, Sentiment) if dataset == "sst2" else (Message, Booking)
    inputs = pf.Input(data_model=in_model)
    outputs = await pf.Generator(
        data_model=out_model, language_model=lm, instructions=INSTRUCTIONS[dataset], name="task"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name=dataset)
    return program


def compile_program(program: pf.Program, dataset: str, optimizer: Any = None) -> None:
    def reward(y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
        return score(dataset, y_true, y_pred)

    program.compile(reward=pf.rewards.FunctionReward(reward), optimizer=optimizer)


TEST_CACHE_DIR = Path(os.environ.get("PROMPTFIT_BENCH_CACHE", "/tmp/promptfit-bench-cache"))


async def pf_test_score(
    program: pf.Program, lm: pf.LanguageModel, data: dict[str, tuple[list, list]]
) -> float:
    """Score on test. The *test* calls go through a response cache shared by all runs.

    Why: runs often end on the same prompt (the zero-shot one when no challenger won), and the
    model is deterministic, so a repeated (prompt, input) gets the same answer; the cache only
    saves wall time on a shared 2-core machine. Training calls are never cached, so the LM
    call budgets stay real.
    """
    from promptfit.language_models.cache import ResponseCache

    TEST_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    lm.cache = ResponseCache(path=TEST_CACHE_DIR / "promptfit-test.sqlite")
    result = await program.evaluate(*data["test"], batch_size=len(data["test"][0]), verbose=0)
    return float(result["reward"])


async def run_promptfit(
    dataset: str, method: str, budget: int | None, seed: int, data: dict[str, tuple[list, list]]
) -> dict[str, Any]:
    lm = language_model()
    program = await build(dataset, lm)
    optimizer: Any = None
    if method == "pf RandomFewShot":
        optimizer = pf.optimizers.RandomFewShot(k=K, num_candidates=2, max_lm_calls=budget)
    elif method == "pf BootstrapFewShot":
        optimizer = pf.optimizers.BootstrapFewShot(
            max_bootstrapped_demos=K, max_labeled_demos=K, num_candidates=2, max_lm_calls=budget
        )
    elif method == "pf InstructionOptimizer":
        optimizer = pf.optimizers.InstructionOptimizer(
            language_model=lm, num_candidates=2, max_lm_calls=budget
        )
    compile_program(program, dataset, optimizer)
    started = time.perf_counter()
    calls0 = program.usage_totals().calls
    if method in ("k random labelled", "k random labelled, output-diverse"):
        x, y = data["train"]
        if method == "k random labelled":
            chosen = random.Random(seed).sample(range(len(x)), K)
            demos = [{"inputs": x[i], "outputs": y[i]} for i in chosen]
        else:  # the sampling rule the search optimizers use, without any search
            pool = [{"inputs": xi, "outputs": yi} for xi, yi in zip(x, y, strict=True)]
            demos = sample_diverse(random.Random(seed), pool, K)
        program.set_variables(
            {"task/prompt": {"instructions": INSTRUCTIONS[dataset], "examples": demos}}
        )
    elif optimizer is not None:
        await program.fit(
            *data["train"],
            batch_size=4,
            epochs=1000,  # the budget ends the fit
            validation_data=val_subset(data, budget),
            verbose=0,
            seed=seed,
        )
    train_seconds = time.perf_counter() - started
    train_calls = program.usage_totals().calls - calls0
    test = await pf_test_score(program, lm, data)
    return {"test": test, "calls": train_calls, "seconds": train_seconds}


# -- DSPy ------------------------------------------------------------------------------------
def dspy_available() -> bool:
    try:
        import dspy  # noqa: F401
    except ImportError:
        return False
    return True


def dspy_setup() -> Any:
    import dspy

    from promptfit.language_models.local import register_local_provider

    if MODEL.startswith("local/"):
        register_local_provider(MODEL)
    with contextlib.suppress(Exception):  # test calls only: see pf_test_score
        dspy.configure_cache(
            enable_disk_cache=True,
            enable_memory_cache=True,
            disk_cache_dir=str(TEST_CACHE_DIR / "dspy"),
        )
    return dspy


def dspy_program(dspy: Any, dataset: str) -> Any:
    if dataset == "sst2":

        class SST2(dspy.Signature):
            __doc__ = INSTRUCTIONS["sst2"]
            sentence: str = dspy.InputField(desc="A sentence from a movie review.")
            label: Literal["positive", "negative"] = dspy.OutputField(desc="The sentiment.")

        return dspy.Predict(SST2)

    class Restaurant(dspy.Signature):
        __doc__ = INSTRUCTIONS["restaurant8k"]
        text: str = dspy.InputField(desc="The user's message to a restaurant booking system.")
        requested_slots: list[str] = dspy.InputField(desc="What the system had just asked for.")
        date: str | None = dspy.OutputField(desc="The date, as written, or null.")
        time: str | None = dspy.OutputField(desc="The time, as written, or null.")
        people: str | None = dspy.OutputField(desc="Number of people, or null.")
        first_name: str | None = dspy.OutputField(desc="First name, or null.")
        last_name: str | None = dspy.OutputField(desc="Last name, or null.")

    return dspy.Predict(Restaurant)


def dspy_examples(dspy: Any, xs: list[dict], ys: list[dict]) -> list[Any]:
    return [dspy.Example(**x, **y).with_inputs(*x.keys()) for x, y in zip(xs, ys, strict=True)]


def dspy_metric(dataset: str) -> Callable[..., float]:
    fields = ["label"] if dataset == "sst2" else list(SLOTS)

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        truth = {f: example.get(f) for f in fields}
        pred = {f: getattr(prediction, f, None) for f in fields}
        return score(dataset, truth, pred)

    return metric


def _kwargs(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """Keep the keyword arguments ``fn`` accepts (DSPy's signatures move between versions)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def run_dspy(
    dataset: str, method: str, budget: int | None, seed: int, data: dict[str, tuple[list, list]]
) -> dict[str, Any]:
    dspy = dspy_setup()
    extra = {"api_base": API_BASE, "api_key": "sk-none"} if API_BASE else {}
    lm = dspy.LM(MODEL, cache=False, temperature=0.0, max_tokens=96, num_retries=1, **extra)
    # A reply that fails to parse scores 0 (as a failed promptfit prediction does) instead of
    # aborting the whole optimizer after DSPy's default 10 errors.
    dspy.configure(lm=lm, adapter=dspy.JSONAdapter(), max_errors=1_000_000)
    train = dspy_examples(dspy, *data["train"])
    val = dspy_examples(dspy, *data["val"])
    test = dspy_examples(dspy, *data["test"])
    metric = dspy_metric(dataset)
    student = dspy_program(dspy, dataset)
    started = time.perf_counter()
    if method == "dspy LabeledFewShot":
        from dspy.teleprompt import LabeledFewShot

        compiled = LabeledFewShot(k=K).compile(student, trainset=train, sample=True)
    elif method == "dspy BootstrapFewShotWithRandomSearch":
        from dspy.teleprompt import BootstrapFewShotWithRandomSearch

        # (num_candidate_programs + 3) candidates x |valset| evaluations, plus bootstrapping.
        # Calls ~ (C + 3) x |valset| evaluations + (C + 1) bootstrap runs of ~1.5 K traces.
        n_val = len(val_subset(data, budget)[0])
        n_candidates = max(1, int(((budget or 40) - 3 * n_val - 1.5 * K) // (n_val + 1.5 * K)))
        optimizer = BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=K,
            max_labeled_demos=K,
            num_candidate_programs=n_candidates,
            num_threads=1,
        )
        random.seed(seed)
        compiled = optimizer.compile(student, trainset=train, valset=val[:n_val])  # type: ignore[misc]
    elif method == "dspy MIPROv2 light":
        from dspy.teleprompt import MIPROv2

        optimizer = MIPROv2(
            **_kwargs(
                MIPROv2.__init__,
                metric=metric,
                auto="light",
                prompt_model=lm,
                task_model=lm,
                num_threads=1,
                seed=seed,
                verbose=False,
            )
        )
        compiled = optimizer.compile(
            student,
            **_kwargs(
                optimizer.compile,
                trainset=train,
                valset=val,
                max_bootstrapped_demos=K,
                max_labeled_demos=K,
                requires_permission_to_run=False,
                seed=seed,
            ),
        )
    else:
        raise ValueError(method)
    train_seconds = time.perf_counter() - started
    train_calls = len(lm.history)
    test_lm = dspy.LM(MODEL, cache=True, temperature=0.0, max_tokens=96, num_retries=1, **extra)
    compiled.set_lm(test_lm)  # test calls through the shared cache; training calls were not
    correct = 0.0
    for example in test:
        try:
            prediction = compiled(**example.inputs())
            correct += metric(example, prediction)
        except Exception:  # a failed parse scores 0, as a failed promptfit prediction does
            pass
    return {"test": correct / len(test), "calls": train_calls, "seconds": train_seconds}


# -- the grid --------------------------------------------------------------------------------
NO_SEARCH = [
    "zero-shot",
    "k random labelled",
    "k random labelled, output-diverse",
    "dspy LabeledFewShot",
]
SEARCH = [
    "pf RandomFewShot",
    "pf BootstrapFewShot",
    "dspy BootstrapFewShotWithRandomSearch",
    "pf InstructionOptimizer",
]
FIXED_BUDGET = ["dspy MIPROv2 light"]
ORDER = [*NO_SEARCH, *SEARCH]


JSONL: Path | None = None  # --json: every finished run is appended here at once


DONE: set[tuple[str, str, int | None, int]] = set()  # --json rows already there (resume)


def run_one(
    dataset: str, method: str, budget: int | None, seed: int, data: dict[str, tuple[list, list]]
) -> dict[str, Any]:
    if (dataset, method, budget, seed) in DONE:
        return {}
    try:
        if method.startswith("dspy"):
            result = run_dspy(dataset, method, budget, seed, data)
        else:
            result = asyncio.run(run_promptfit(dataset, method, budget, seed, data))
        error = None
    except Exception as exc:  # reported in the table, never hidden
        result, error = {"test": float("nan"), "calls": 0, "seconds": 0.0}, repr(exc)[:300]
    row = {"dataset": dataset, "method": method, "budget": budget, "seed": seed, **result}
    if error:
        row["error"] = error
    print(json.dumps(row), file=sys.stderr, flush=True)
    if JSONL is not None:
        with JSONL.open("a", encoding="utf-8") as handle:  # partial results survive a stop
            handle.write(json.dumps(row) + "\n")
    return row


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with_dspy = dspy_available() and not args.no_dspy
    if not with_dspy:
        print("DSPy is not installed: its rows are skipped.", file=sys.stderr)
    # Seed-major across data sets, then budget-major, slow methods last: if the run is stopped
    # early, every method has its first seeds on both data sets at the smaller budget.
    data = {name: splits(name, args.train, args.val, args.test) for name in args.datasets}
    methods = [m for m in args.methods if with_dspy or not m.startswith("dspy")]
    for seed in args.seeds:
        for dataset in args.datasets:
            for method in methods:
                if method == "zero-shot" and seed == args.seeds[0]:  # deterministic: one run
                    rows.append(run_one(dataset, method, None, 0, data[dataset]))
                elif method in NO_SEARCH and method != "zero-shot":
                    rows.append(run_one(dataset, method, None, seed, data[dataset]))
        for budget in args.budgets:
            for dataset in args.datasets:
                for method in methods:
                    if method in SEARCH:
                        rows.append(run_one(dataset, method, budget, seed, data[dataset]))
        for dataset in args.datasets:
            for method in methods:
                if method in FIXED_BUDGET:
                    rows.append(run_one(dataset, method, None, seed, data[dataset]))
    return rows


def _settled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop a failed row when the same run later succeeded (a resumed ``--json`` file)."""
    ok = {(r["dataset"], r["method"], r["budget"], r["seed"]) for r in rows if "error" not in r}
    return [
        r
        for r in rows
        if "error" not in r or (r["dataset"], r["method"], r["budget"], r["seed"]) not in ok
    ]


def table(rows: list[dict[str, Any]]) -> str:
    rows = _settled(rows)
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"], row["budget"]), []).append(row)
    lines = [
        "| data set | method | budget | runs | test score (mean ± sd) | LM calls (mean) "
        "| wall s (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, method, budget), items in groups.items():
        scores = [r["test"] for r in items if r["test"] == r["test"]]
        failed = len(items) - len(scores)
        mean = statistics.mean(scores) if scores else float("nan")
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        calls = statistics.mean(r["calls"] for r in items)
        seconds = statistics.mean(r["seconds"] for r in items)
        note = f" ({failed} failed)" if failed else ""
        lines.append(
            f"| {dataset} | {method} | {budget if budget is not None else '-'} | "
            f"{len(items)}{note} | {mean:.3f} ± {sd:.3f} | {calls:.0f} | {seconds:.0f} |"
        )
    return "\n".join(lines)


# -- concurrency check on the test server ----------------------------------------------------
async def _concurrency(n: int, latency_ms: float, concurrency: int) -> dict[str, float]:
    from promptfit.testing import FakeLLMServer

    class Query(pf.DataModel):
        question: str

    class Answer(pf.DataModel):
        answer: str

    xs = [{"question": f"What is {i} + {2 * i + 1}?"} for i in range(n)]
    ys = [{"answer": str(3 * i + 1)} for i in range(n)]
    out: dict[str, float] = {}
    with FakeLLMServer() as server:
        for kind in ("evaluate", "fit"):
            lm = pf.LanguageModel(
                model=FakeLLMServer.model("arith", accuracy=0.7, latency_ms=latency_ms, tag=kind),
                api_base=server.base_url,
                api_key="sk-test",
                cache=False,
                max_concurrency=concurrency,
            )
            inputs = pf.Input(data_model=Query)
            outputs = await pf.Generator(data_model=Answer, language_model=lm, name="a")(inputs)
            program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
            program.compile(
                reward=pf.rewards.ExactMatch(),
                optimizer=pf.optimizers.RandomFewShot(k=2, num_candidates=4),
            )
            started = time.perf_counter()
            if kind == "evaluate":
                await program.evaluate(xs, ys, batch_size=n, verbose=0)
            else:
                await program.fit(xs, ys, batch_size=concurrency, epochs=1, verbose=0, seed=0)
            seconds = time.perf_counter() - started
            out[f"{kind}_calls"] = lm.usage.calls
            out[f"{kind}_ms_per_call"] = 1000 * seconds / lm.usage.calls
    out["ratio"] = out["fit_ms_per_call"] / out["evaluate_ms_per_call"]
    return out


def main() -> None:
    global MODEL, API_BASE, JSONL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "restaurant8k"])
    parser.add_argument("--methods", nargs="+", default=[*ORDER, *FIXED_BUDGET])
    parser.add_argument("--budgets", type=int, nargs="+", default=[40, 120])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=100, help="training rows used")
    parser.add_argument("--val", type=int, default=16, help="validation rows used")
    parser.add_argument("--test", type=int, default=60, help="test rows scored")
    parser.add_argument("--no-dspy", action="store_true")
    parser.add_argument("--json", type=Path, help="append every run's row here (JSON Lines)")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the table of saved runs")
    parser.add_argument("--concurrency", action="store_true", help="the test-server check")
    parser.add_argument("--model", default=MODEL, help="litellm model (default: embedded)")
    parser.add_argument("--api-base", default=None, help="OpenAI-compatible server for --model")
    args = parser.parse_args()
    MODEL, API_BASE = args.model, args.api_base
    if args.concurrency:
        repeats = [asyncio.run(_concurrency(512, 50.0, 64)) for _ in range(3)]
        for r in repeats:
            print(json.dumps(r))
        ratio = statistics.median(r["ratio"] for r in repeats)
        print(f"fit(num_candidates=4) / evaluate wall time per LM call: median {ratio:.2f}")
        return
    if args.merge:
        rows = [
            json.loads(line)
            for path in args.merge
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        print(table(rows))
        return
    JSONL = args.json
    if JSONL is not None and JSONL.exists():  # resume: rows that finished without error stay
        for line in JSONL.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if row and "error" not in row:
                DONE.add((row["dataset"], row["method"], row["budget"], row["seed"]))
    rows = [row for row in grid(args) if row]
    if JSONL is not None:
        rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
