"""Benchmark: ``program.evaluate`` against the same requests sent through raw litellm.

What it measures, in one process and one event loop:

* **raw litellm** -- ``n`` calls to ``litellm.acompletion`` at ``--concurrency`` (an
  ``asyncio.Semaphore``), with exactly the messages, ``response_format`` and call options that
  promptfit sends (built with the generator's own ``messages()``);
* **promptfit, cache off** -- ``program.evaluate`` on the same ``n`` examples: one
  ``pf.Generator``, ``ExactMatch`` reward, ``LanguageModel(max_concurrency=..., cache=False)``
  so every example really reaches the server (replies are parsed and validated as usual);
* **promptfit, cache on** -- a second evaluation with a warm in-memory cache: 0 LM calls;
* **framework only** (diagnostic, reported separately) -- the raw loop and the evaluation again
  with ``litellm.acompletion`` replaced by replayed server replies, to isolate promptfit's CPU.

The LLM is :class:`~promptfit.testing.FakeLLMServer` (a real OpenAI-compatible HTTP server in a
child process, so its CPU is not counted) with ``--latency-ms`` of latency per request. For each
run it records wall time and this process's CPU time (``time.process_time``, all threads), and
checks with the server's own counters how many requests arrived. Runs alternate their order and
repeat ``--repeats`` times; the table shows medians.

Usage::

    LITELLM_LOCAL_MODEL_COST_MAP=True python benchmarks/evaluate.py \\
        --n 1000 --concurrency 64 --latency-ms 50 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import promptfit as pf
from promptfit.data.data_model import json_schema_of
from promptfit.language_models._litellm import litellm
from promptfit.language_models.request import response_format
from promptfit.testing.fake_server import FakeLLMServer

API_KEY = "sk-bench"
TIMEOUT = 60.0
INSTRUCTIONS = "Solve the arithmetic question. Reply with the number only."
WALL_RATIO_TARGET = 1.2
FRAMEWORK_CPU_TARGET_MS = 1.0


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer")


def make_dataset(n: int, seed: int = 0) -> tuple[list[Query], list[Answer]]:
    """``n`` distinct questions ``a op b`` with their answers."""
    rng = random.Random(seed)
    xs: list[Query] = []
    ys: list[Answer] = []
    for i in range(n):
        a, b = rng.randint(0, 999) + i * 1000, rng.randint(0, 999)
        op = rng.choice("+-*")
        result = a + b if op == "+" else a - b if op == "-" else a * b
        xs.append(Query(question=f"What is {a} {op} {b}?"))
        ys.append(Answer(answer=str(result)))
    return xs, ys


@dataclass
class Run:
    """One timed run."""

    wall: float
    cpu: float
    calls: int
    server_requests: int
    reward: float | None = None
    gc_seconds: float = 0.0
    full_gcs: int = 0


@dataclass
class Series:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


class GCMeter:
    """Time spent in Python's cyclic garbage collector, and how many full collections ran.

    A full (generation 2) collection walks every container object in the process -- about
    half a million after importing litellm -- so one more or one fewer in a run moves its CPU
    time by a few hundred milliseconds; the column makes that visible.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    def __enter__(self) -> GCMeter:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def _timed(
    work: Callable[[], Awaitable[tuple[int, float | None]]], srv: FakeLLMServer, settle: float
) -> Run:
    """Run ``work`` once; wall time until it returns, CPU time including a settle period.

    litellm finishes some bookkeeping (logging callbacks) in background tasks and threads after
    a call returns; the settle sleep lets that work land in the CPU figure of the run that
    caused it rather than in the next one. An idle sleep costs no CPU. Every run starts from
    a full collection, so each side starts with the same (empty) young generations.
    """
    before = (await asyncio.to_thread(srv.stats))["requests"]
    gc.collect()
    with GCMeter() as meter:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        calls, reward = await work()
        wall = time.perf_counter() - t0
        await asyncio.sleep(settle)
        cpu = time.process_time() - cpu0
    after = (await asyncio.to_thread(srv.stats))["requests"]
    return Run(wall, cpu, calls, after - before, reward, meter.seconds, meter.full)


async def build_program(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    generator = pf.Generator(
        data_model=Answer, language_model=lm, instructions=INSTRUCTIONS, name="solver"
    )
    outputs = await generator(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="arith")
    program.compile(reward=pf.rewards.ExactMatch())
    return program


def raw_requests(
    program: pf.Program, lm: pf.LanguageModel, xs: list[Query]
) -> list[dict[str, Any]]:
    """The exact request promptfit sends for each example, as ``acompletion`` kwargs."""
    generator = program.get_module("solver")
    assert isinstance(generator, pf.Generator)
    schema = json_schema_of(Answer)
    requests = []
    for x in xs:
        request: dict[str, Any] = {
            "model": lm.model,
            "messages": generator.messages(x),
            "temperature": lm.temperature,
            "api_base": lm.api_base,
            "response_format": response_format(Answer.__name__, schema),
        }
        requests.append(request)
    # Same body as promptfit's own request builder (guards against the two drifting apart).
    if hasattr(lm, "_request"):
        assert requests[0] == lm._request(requests[0]["messages"], Answer.__name__, schema)
    return requests


async def raw_litellm(requests: list[dict[str, Any]], concurrency: int) -> int:
    """Send every request through ``litellm.acompletion``; returns the replies received."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(request: dict[str, Any]) -> bool:
        async with semaphore:
            response = await litellm.acompletion(
                **request, api_key=API_KEY, timeout=TIMEOUT, num_retries=0, max_retries=0
            )
        return bool(response.choices[0].message.content)

    results = await asyncio.gather(*(one(r) for r in requests))
    return sum(results)


async def promptfit_evaluate(
    program: pf.Program, xs: list[Query], ys: list[Answer], batch_size: int
) -> tuple[int, float]:
    logs = await program.evaluate(xs, ys, batch_size=batch_size, verbose=0)
    return int(logs["lm_calls"]), float(logs["reward"])


class RecordedLiteLLM:
    """Stand-in for ``litellm.acompletion`` replaying real replies (framework-only runs).

    It yields to the event loop once, like a request would, and returns the reply the server
    gave to the same final user message. Used only for the diagnostic rows that isolate
    promptfit's own CPU cost; the main table always goes through the real litellm.
    """

    def __init__(self) -> None:
        self.replies: dict[str, Any] = {}

    def recording(self) -> contextlib.AbstractContextManager[None]:
        real = litellm.acompletion

        async def record(**kwargs: Any) -> Any:
            response = await real(**kwargs)
            self.replies[kwargs["messages"][-1]["content"]] = response
            return response

        return _patched_acompletion(record)

    def replaying(self) -> contextlib.AbstractContextManager[None]:
        replies = self.replies

        async def replay(**kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return replies[kwargs["messages"][-1]["content"]]

        return _patched_acompletion(replay)


@contextlib.contextmanager
def _patched_acompletion(fn: Callable[..., Awaitable[Any]]) -> Iterator[None]:
    real = litellm.acompletion
    litellm.acompletion = fn
    try:
        yield
    finally:
        litellm.acompletion = real


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


@dataclass
class Results:
    raw: Series
    pf_off: Series
    pf_on: Series
    raw_stub: Series
    pf_stub: Series


def _paired(a: Series, b: Series, attr: str) -> list[float]:
    """``a/b`` per repeat (runs of one repeat ran back to back, so share the machine's load)."""
    return [getattr(x, attr) / getattr(y, attr) for x, y in zip(a.runs, b.runs, strict=True)]


def render(args: argparse.Namespace, res: Results) -> tuple[str, dict[str, Any]]:
    n = args.n
    raw, pf_off, pf_on = res.raw, res.pf_off, res.pf_on
    wall_ratio = pf_off.median("wall") / raw.median("wall")
    framework_ms = (pf_off.median("cpu") - raw.median("cpu")) / n * 1000
    paired_wall = statistics.median(_paired(pf_off, raw, "wall"))
    paired_cpu_ms = statistics.median(
        (p.cpu - r.cpu) / n * 1000 for p, r in zip(pf_off.runs, raw.runs, strict=True)
    )
    rows = [
        ("raw litellm.acompletion", raw),
        ("promptfit evaluate, cache off", pf_off),
        ("promptfit evaluate, cache on (warm)", pf_on),
    ]
    lines = [
        "| run | wall (s) | CPU (s) | CPU per example (ms) | GC time (s) | full GCs | LM calls "
        "| server requests | reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, series in rows:
        reward = series.runs[0].reward
        lines.append(
            f"| {name} | {_fmt(series.median('wall'))} | {_fmt(series.median('cpu'))} "
            f"| {_fmt(series.median('cpu') / n * 1000, 2)} | {_fmt(series.median('gc_seconds'))} "
            f"| {series.median('full_gcs'):g} "
            f"| {int(series.median('calls'))} "
            f"| {int(series.median('server_requests'))} "
            f"| {'-' if reward is None else _fmt(reward, 3)} |"
        )
    ok_wall = wall_ratio <= WALL_RATIO_TARGET
    ok_cpu = framework_ms <= FRAMEWORK_CPU_TARGET_MS
    stub_ms = (res.pf_stub.median("cpu") - res.raw_stub.median("cpu")) / n * 1000
    lines += [
        "",
        "| metric | value | target |",
        "|---|---:|---|",
        f"| wall ratio promptfit/raw (ratio of medians) | {wall_ratio:.3f} "
        f"| <= {WALL_RATIO_TARGET} ({'met' if ok_wall else 'missed'}) |",
        f"| wall ratio promptfit/raw (median of paired repeats) | {paired_wall:.3f} "
        f"| <= {WALL_RATIO_TARGET} ({'met' if paired_wall <= WALL_RATIO_TARGET else 'missed'}) |",
        f"| framework CPU per call beyond litellm (medians) | {framework_ms:.3f} ms "
        f"| <= {FRAMEWORK_CPU_TARGET_MS} ms ({'met' if ok_cpu else 'missed'}) |",
        f"| framework CPU per call beyond litellm (median of paired repeats) "
        f"| {paired_cpu_ms:.3f} ms | <= {FRAMEWORK_CPU_TARGET_MS} ms "
        f"({'met' if paired_cpu_ms <= FRAMEWORK_CPU_TARGET_MS else 'missed'}) |",
        f"| framework-only CPU per call, litellm replaced by replayed replies "
        f"| {stub_ms:.3f} ms | diagnostic |",
        f"| ideal wall: ceil(n / concurrency) x latency "
        f"| {-(-n // args.concurrency) * args.latency_ms / 1000:.3f} s | |",
    ]
    summary = {
        "n": n,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "repeats": args.repeats,
        "batch_size": args.batch_size or n,
        "wall_ratio": wall_ratio,
        "wall_ratio_paired_median": paired_wall,
        "framework_cpu_ms_per_call": framework_ms,
        "framework_cpu_ms_per_call_paired_median": paired_cpu_ms,
        "framework_only_cpu_ms_per_call": stub_ms,
        "runs": {
            series.name: [r.__dict__ for r in series.runs]
            for series in (raw, pf_off, pf_on, res.raw_stub, res.pf_stub)
        },
    }
    return "\n".join(lines), summary


async def bench(args: argparse.Namespace) -> int:
    n, concurrency = args.n, args.concurrency
    batch_size = args.batch_size or n
    xs, ys = make_dataset(n)
    warm_xs, warm_ys = make_dataset(min(n, 2 * concurrency), seed=1)
    res = Results(*(Series(name) for name in ("raw", "pf_off", "pf_on", "raw_stub", "pf_stub")))
    recorder = RecordedLiteLLM()

    def log(label: str, run: Run) -> None:
        print(
            f"  {label}: wall {run.wall:.3f} s, cpu {run.cpu:.3f} s (gc {run.gc_seconds:.3f} s, "
            f"{run.full_gcs} full), calls {run.calls}, server {run.server_requests}, "
            f"reward {run.reward}",
            file=sys.stderr,
        )

    with FakeLLMServer() as srv:
        model = FakeLLMServer.model("arith", latency_ms=args.latency_ms)

        def make_lm(cache: bool) -> pf.LanguageModel:
            return pf.LanguageModel(
                model,
                api_base=srv.base_url,
                api_key=API_KEY,
                max_concurrency=concurrency,
                cache=cache,
                timeout=TIMEOUT,
            )

        program = await build_program(make_lm(cache=False))
        lm = program.language_models[0]
        requests = raw_requests(program, lm, xs)
        warm_requests = raw_requests(program, lm, warm_xs)

        async def run_raw() -> tuple[int, float | None]:
            return await raw_litellm(requests, concurrency), None

        async def run_pf() -> tuple[int, float | None]:
            return await promptfit_evaluate(program, xs, ys, batch_size)

        # Warm up: imports, litellm's first-call setup, the HTTP connection pool.
        await raw_litellm(warm_requests, concurrency)
        await promptfit_evaluate(program, warm_xs, warm_ys, batch_size)

        # The comparison: the same n requests, alternating which side goes first.
        for repeat in range(args.repeats):
            order = ["raw", "pf"] if repeat % 2 == 0 else ["pf", "raw"]
            for which in order:
                run = await _timed(run_raw if which == "raw" else run_pf, srv, args.settle)
                (res.raw if which == "raw" else res.pf_off).runs.append(run)
                log(f"repeat {repeat + 1}/{args.repeats} {which:>3}", run)

        # Cache on: one (untimed) evaluation fills the cache; the timed ones make no LM call.
        # The filling run also records the replies replayed by the framework-only rows.
        cached_program = await build_program(make_lm(cache=True))
        with recorder.recording():
            await promptfit_evaluate(cached_program, xs, ys, batch_size)

        async def run_cached() -> tuple[int, float | None]:
            return await promptfit_evaluate(cached_program, xs, ys, batch_size)

        for repeat in range(args.repeats):
            run = await _timed(run_cached, srv, args.settle)
            res.pf_on.runs.append(run)
            log(f"repeat {repeat + 1}/{args.repeats} cached", run)

        # Diagnostic: promptfit's own CPU with litellm out of the picture (replayed replies).
        with recorder.replaying():
            await raw_litellm(requests[:concurrency], concurrency)  # warm-up
            for repeat in range(max(args.repeats, 5)):
                order = ["raw", "pf"] if repeat % 2 == 0 else ["pf", "raw"]
                for which in order:
                    run = await _timed(run_raw if which == "raw" else run_pf, srv, 0.0)
                    (res.raw_stub if which == "raw" else res.pf_stub).runs.append(run)
                    log(f"framework-only {repeat + 1} {which:>3}", run)

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await promptfit_evaluate(program, xs, ys, batch_size)
            profiler.disable()
            profiler.dump_stats(args.profile)
            stats = pstats.Stats(args.profile, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(40)

    table, summary = render(args, res)
    print(
        f"promptfit benchmark: evaluate {n} examples, concurrency {concurrency}, "
        f"latency {args.latency_ms:g} ms, batch_size {batch_size}, "
        f"median of {args.repeats} (alternating order)"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, litellm {_version('litellm')}, "
        f"pydantic {_version('pydantic')}, promptfit {pf.__version__}, "
        f"load average before/after {args.load_before} / {_load()}"
    )
    print()
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    wrong = [r for r in res.raw.runs + res.pf_off.runs if r.calls != n or r.server_requests != n]
    wrong += [r for r in res.pf_on.runs if r.calls != 0 or r.server_requests != 0]
    if wrong:
        print("ERROR: a run did not make exactly the expected number of calls", file=sys.stderr)
        return 1
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "?"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="examples (and LM calls) per run")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="evaluate() batch size (default: n, so concurrency alone bounds the calls)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.25,
        help="idle seconds after each run before reading CPU time (background bookkeeping)",
    )
    parser.add_argument("--json", help="also write the raw numbers to this JSON file")
    parser.add_argument(
        "--profile", help="after the timed runs, cProfile one promptfit run into this file"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or args.repeats < 1:
        parser.error("--n, --concurrency and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_before = _load()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
