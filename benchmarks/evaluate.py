"""Benchmark: promptfit's hot path (``evaluate``, ``fit``) against bare clients, litellm, DSPy.

Sections, each against :class:`~promptfit.testing.FakeLLMServer` (a real OpenAI-compatible
HTTP server in a child process, its CPU not counted as the client's) with ``--latency-ms`` of
latency per request:

* **clients** (``--concurrency 64 256``) -- the same ``--n`` requests (the generator's own
  messages and ``response_format``) from a bare aiohttp client, a bare httpx client, raw
  ``litellm.acompletion``, promptfit ``evaluate`` on each transport (``"litellm"`` and
  ``"http"``) and DSPy ``Evaluate`` when ``dspy`` is importable; wall time, CPU per call;
* **replicas** (``--replicas 1 2 4``) -- promptfit over 1, 2, 4 replicas of a server that
  serves ``--replica-slots`` requests at once, against a bare aiohttp client over the same
  replicas, with the replicas' CPU, the machine's busy share and its load average, at each
  ``--replica-latency-ms``;
* **fit** (``--fit``) -- ``fit`` with ``num_candidates=4`` (``RandomFewShot`` and
  ``BootstrapFewShot``) on ``--fit-n`` examples against ``evaluate`` on the same examples,
  wall time per LM call, CPU per call, LM calls, on each transport;
* **cache hits** -- re-evaluating the ``--n`` examples from a warm response cache.

Runs rotate their order per repeat and the tables show medians of ``--repeats``; every run
starts after a full collection and is checked against the server's own request counters.
See ``docs/benchmarks.md`` for the measured results and how to read them.

Usage::

    LITELLM_LOCAL_MODEL_COST_MAP=True python benchmarks/evaluate.py \\
        --n 1000 --concurrency 64 256 --latency-ms 50 --repeats 3 \\
        --replicas 1 2 4 --replica-latency-ms 50 200 --fit
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
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
    # With replicas the request names the first one (the transport sends it where it goes).
    api_base = lm.api_base[0] if isinstance(lm.api_base, list) else lm.api_base
    for x in xs:
        request: dict[str, Any] = {
            "model": lm.model,
            "messages": generator.messages(x),
            "temperature": lm.temperature,
            "api_base": api_base,
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


async def bare_aiohttp(
    url: str, requests: list[dict[str, Any]], concurrency: int, session: Any
) -> int:
    """The floor: the same request bodies POSTed by a bare aiohttp client, reply JSON parsed."""
    semaphore = asyncio.Semaphore(concurrency)
    bodies = [_body(r) for r in requests]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def one(body: dict[str, Any]) -> bool:
        async with semaphore, session.post(url, json=body, headers=headers) as response:
            data = json.loads(await response.text())
        return bool(data["choices"][0]["message"]["content"])

    return sum(await asyncio.gather(*(one(b) for b in bodies)))


async def bare_httpx(
    url: str, requests: list[dict[str, Any]], concurrency: int, client: Any
) -> int:
    """The same with httpx (the other candidate for the lean transport)."""
    semaphore = asyncio.Semaphore(concurrency)
    bodies = [_body(r) for r in requests]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def one(body: dict[str, Any]) -> bool:
        async with semaphore:
            response = await client.post(url, json=body, headers=headers)
        data = json.loads(response.text)
        return bool(data["choices"][0]["message"]["content"])

    return sum(await asyncio.gather(*(one(b) for b in bodies)))


def _body(request: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in request.items() if k != "api_base"}
    body["model"] = body["model"].split("/", 1)[1]
    return body


def dspy_available() -> bool:
    try:
        import dspy  # noqa: F401
    except ImportError:
        return False
    return True


def dspy_evaluate(
    model: str, api_base: str, xs: list[Query], ys: list[Answer], threads: int
) -> Any:
    """DSPy ``Evaluate`` with ``num_threads`` threads on the same questions (cache off)."""
    import dspy

    lm = dspy.LM(model, api_base=api_base, api_key=API_KEY, cache=False, temperature=0.0)

    class Solve(dspy.Signature):
        """Solve the arithmetic question. Reply with the number only."""

        question: str = dspy.InputField(desc="An arithmetic question")
        answer: str = dspy.OutputField(desc="The numeric answer")

    program = dspy.Predict(Solve)
    devset = [
        dspy.Example(question=x.question, answer=y.answer).with_inputs("question")
        for x, y in zip(xs, ys, strict=True)
    ]
    evaluate = dspy.Evaluate(
        devset=devset,
        metric=lambda example, pred, trace=None: example.answer == str(pred.answer),
        num_threads=threads,
        display_progress=False,
        provide_traceback=False,
    )
    # dspy.context, not dspy.configure: each run is called from another worker thread.
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        result = evaluate(program)
    score = float(getattr(result, "score", result)) / 100.0
    return len(devset), score


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _paired(a: Series, b: Series, attr: str) -> list[float]:
    """``a/b`` per repeat (runs of one repeat ran back to back, so share the machine's load)."""
    return [getattr(x, attr) / getattr(y, attr) for x, y in zip(a.runs, b.runs, strict=True)]


def render(n: int, concurrency: int, latency_ms: float, series: list[Series]) -> str:
    floor = series[0]
    lines = [
        f"concurrency {concurrency}: {n} calls, server latency {latency_ms:g} ms, floor "
        f"ceil(n / concurrency) x latency = {-(-n // concurrency) * latency_ms / 1000:.2f} s",
        "",
        "| client | wall (s) | CPU per call (ms) | wall / bare aiohttp (paired) | LM calls "
        "| server requests | reward |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in series:
        reward = s.runs[0].reward
        lines.append(
            f"| {s.name} | {_fmt(s.median('wall'))} | {_fmt(s.median('cpu') / n * 1000, 2)} "
            f"| {statistics.median(_paired(s, floor, 'wall')):.2f} | {int(s.median('calls'))} "
            f"| {int(s.median('server_requests'))} "
            f"| {'-' if reward is None else _fmt(reward, 3)} |"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> int:
    import aiohttp
    import httpx

    n = args.n
    xs, ys = make_dataset(n)
    out: list[str] = []
    keep: list[Any] = []  # programs stay alive until the loop closes their sessions
    summary: dict[str, Any] = {"n": n, "latency_ms": args.latency_ms, "runs": {}}
    wrong: list[str] = []

    def log(label: str, run: Run) -> None:
        print(
            f"  {label}: wall {run.wall:.3f} s, cpu {run.cpu:.3f} s, calls {run.calls}, "
            f"server {run.server_requests}, reward {run.reward}",
            file=sys.stderr,
        )

    with FakeLLMServer() as srv:
        model = FakeLLMServer.model("arith", latency_ms=args.latency_ms)
        url = srv.base_url.rstrip("/") + "/chat/completions"

        def make_lm(transport: str, concurrency: int, cache: bool = False) -> pf.LanguageModel:
            return pf.LanguageModel(
                model,
                api_base=srv.base_url,
                api_key=API_KEY,
                max_concurrency=concurrency,
                cache=cache,
                timeout=TIMEOUT,
                transport=transport,  # type: ignore[arg-type]
            )

        for concurrency in args.concurrency:
            batch_size = args.batch_size or n
            programs = {
                t: await build_program(make_lm(t, concurrency)) for t in ("litellm", "http")
            }
            keep.extend(programs.values())
            lm = programs["http"].language_models[0]
            requests = raw_requests(programs["http"], lm, xs)
            warm_xs, warm_ys = make_dataset(min(n, 2 * concurrency), seed=concurrency)
            warm = raw_requests(programs["http"], lm, warm_xs)
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=concurrency), timeout=TIMEOUT
            )
            works: dict[str, Callable[[], Awaitable[tuple[int, float | None]]]] = {}

            async def w_aiohttp(reqs: list[dict[str, Any]] = requests) -> tuple[int, None]:
                return await bare_aiohttp(url, reqs, concurrency, session), None  # noqa: B023

            async def w_httpx(reqs: list[dict[str, Any]] = requests) -> tuple[int, None]:
                return await bare_httpx(url, reqs, concurrency, client), None  # noqa: B023

            async def w_litellm(reqs: list[dict[str, Any]] = requests) -> tuple[int, None]:
                return await raw_litellm(reqs, concurrency), None  # noqa: B023

            works["bare aiohttp client (same requests)"] = w_aiohttp
            works["bare httpx client (same requests)"] = w_httpx
            works["raw litellm.acompletion"] = w_litellm
            for transport, program in programs.items():

                async def w_pf(p: pf.Program = program) -> tuple[int, float | None]:
                    return await promptfit_evaluate(p, xs, ys, batch_size)  # noqa: B023

                works[f"promptfit evaluate, transport={transport!r}"] = w_pf
            if args.dspy and dspy_available():

                async def w_dspy() -> tuple[int, float | None]:
                    return await asyncio.to_thread(
                        dspy_evaluate,
                        model,
                        srv.base_url,
                        xs,
                        ys,
                        concurrency,  # noqa: B023
                    )

                works[f"DSPy Evaluate, {concurrency} threads"] = w_dspy

            # Warm-up: imports, litellm's first-call setup, connection pools.
            await w_aiohttp(warm)
            await w_httpx(warm)
            await w_litellm(warm)
            for program in programs.values():
                await promptfit_evaluate(program, warm_xs, warm_ys, batch_size)

            series = {name: Series(name) for name in works}
            names = list(works)
            for repeat in range(args.repeats):
                order = names[repeat % len(names) :] + names[: repeat % len(names)]
                for name in order:
                    run = await _timed(works[name], srv, args.settle)
                    series[name].runs.append(run)
                    log(f"c={concurrency} repeat {repeat + 1} {name}", run)
                    if run.calls != n or run.server_requests != n:
                        wrong.append(f"{name}: {run.calls} calls, {run.server_requests} requests")
            await session.close()
            await client.aclose()
            out.append(render(n, concurrency, args.latency_ms, list(series.values())))
            summary["runs"][str(concurrency)] = {
                name: [r.__dict__ for r in s.runs] for name, s in series.items()
            }

        if args.replicas:
            out.append(await bench_replicas(args, xs, ys, wrong, keep))

        if args.fit:
            out.append(await bench_fit(args, srv, wrong, keep))

        if args.cache_hits:
            # Cache-hit re-evaluation: one (untimed) evaluation fills the cache.
            cached = await build_program(make_lm("auto", (args.concurrency or [64])[0], True))
            keep.append(cached)
            await promptfit_evaluate(cached, xs, ys, args.batch_size or n)

            async def w_cached() -> tuple[int, float | None]:
                return await promptfit_evaluate(cached, xs, ys, args.batch_size or n)

            hits = Series("promptfit evaluate, every reply cached")
            for repeat in range(args.repeats):
                run = await _timed(w_cached, srv, 0.0)
                hits.runs.append(run)
                log(f"cached {repeat + 1}", run)
                if run.calls != 0 or run.server_requests != 0:
                    wrong.append(f"cached: {run.calls} calls, {run.server_requests} requests")
            out.append(
                f"cache-hit re-evaluation of {n} examples: wall {_fmt(hits.median('wall'))} s, "
                f"CPU {_fmt(hits.median('cpu') / n * 1000, 3)} ms per example, 0 LM calls"
            )
            summary["runs"]["cached"] = [r.__dict__ for r in hits.runs]

    print(
        f"promptfit benchmark ({', '.join(_sections(args))}): server latency "
        f"{args.latency_ms:g} ms, median of {args.repeats} (order rotated per repeat)"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, litellm {_version('litellm')}, aiohttp "
        f"{_version('aiohttp')}, httpx {_version('httpx')}, dspy {_version('dspy')}, promptfit "
        f"{pf.__version__}, load average before/after {args.load_before} / {_load()}"
    )
    for block in out:
        print()
        print(block)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    if wrong:
        print("ERROR: runs did not make exactly the expected calls: " + "; ".join(wrong))
        return 1
    return 0


async def bench_fit(
    args: argparse.Namespace, srv: FakeLLMServer, wrong: list[str], keep: list[Any]
) -> str:
    """``fit`` with ``num_candidates=4`` against ``evaluate``, wall time per LM call.

    On the same server, with the same language model settings and transport: ``evaluate``
    on the ``--fit-n`` examples (one batch, ``max_concurrency`` bounding the calls), and
    one epoch of ``fit(batch_size=max_concurrency)`` on the same examples, whose every step
    runs the batch and then scores the four challengers together (4 x batch requests). The
    model answers right with probability 0.7 (deterministic per prompt), so the races have
    something to decide. The per-call ratio says whether ``fit`` keeps the language model as
    busy as ``evaluate`` does; CPU per call includes the optimizer's own work.
    """
    n, concurrency = args.fit_n, (args.concurrency or [64])[0]
    xs, ys = make_dataset(n, seed=11)
    model = FakeLLMServer.model("arith", latency_ms=args.latency_ms, accuracy=0.7)

    def optimizer(name: str) -> pf.optimizers.Optimizer:
        if name == "RandomFewShot":
            return pf.optimizers.RandomFewShot(k=2, num_candidates=4)
        return pf.optimizers.BootstrapFewShot(
            max_bootstrapped_demos=2, max_labeled_demos=2, num_candidates=4
        )

    async def run_once(transport: str, kind: str, seed: int) -> tuple[int, float | None]:
        lm = pf.LanguageModel(
            model,
            api_base=srv.base_url,
            api_key=API_KEY,
            max_concurrency=concurrency,
            cache=False,
            timeout=TIMEOUT,
            transport=transport,  # type: ignore[arg-type]
        )
        program = await build_program(lm)
        keep.append(program)
        if kind == "evaluate":
            calls, reward = await promptfit_evaluate(program, xs, ys, n)
            return calls, reward
        program.compile(reward=pf.rewards.ExactMatch(), optimizer=optimizer(kind))
        before = lm.usage.calls
        await program.fit(xs, ys, batch_size=concurrency, epochs=1, verbose=0, seed=seed)
        return lm.usage.calls - before, None

    kinds = ["evaluate", *args.fit_optimizers]
    series: dict[tuple[str, str], Series] = {}
    for transport in args.fit_transports:
        await run_once(transport, "evaluate", 0)  # warm-up: imports, pools
        for kind in kinds:
            series[transport, kind] = Series(f"{transport} {kind}")
        for repeat in range(args.repeats):
            for kind in kinds[repeat % len(kinds) :] + kinds[: repeat % len(kinds)]:

                async def work(t: str = transport, k: str = kind, r: int = repeat) -> Any:
                    return await run_once(t, k, r)

                run = await _timed(work, srv, args.settle)
                series[transport, kind].runs.append(run)
                print(
                    f"  fit bench {transport} {kind} repeat {repeat + 1}: wall {run.wall:.3f} s, "
                    f"cpu {run.cpu:.3f} s, calls {run.calls}, server {run.server_requests}",
                    file=sys.stderr,
                )
                if run.calls != run.server_requests:
                    wrong.append(
                        f"fit bench {transport} {kind}: {run.calls} calls, "
                        f"{run.server_requests} requests"
                    )
    lines = [
        f"fit against evaluate: {n} examples, server latency {args.latency_ms:g} ms, "
        f"max_concurrency={concurrency}; fit(batch_size={concurrency}, epochs=1), "
        "num_candidates=4 (RandomFewShot(k=2), BootstrapFewShot(2 bootstrapped + 2 labelled))",
        "",
        "| transport | run | wall (s) | LM calls | server requests | wall per call (ms) "
        "| CPU per call (ms) | per-call wall / evaluate's (paired) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (transport, kind), ser in series.items():
        base = series[transport, "evaluate"]
        ratios = [
            (r.wall / r.calls) / (b.wall / b.calls)
            for r, b in zip(ser.runs, base.runs, strict=True)
            if r.calls and b.calls
        ]
        per_call = statistics.median(r.wall / r.calls * 1000 for r in ser.runs if r.calls)
        cpu_call = statistics.median(r.cpu / r.calls * 1000 for r in ser.runs if r.calls)
        label = "evaluate" if kind == "evaluate" else f"fit, {kind}(num_candidates=4)"
        lines.append(
            f"| {transport} | {label} | {_fmt(ser.median('wall'))} | {int(ser.median('calls'))} "
            f"| {int(ser.median('server_requests'))} | {per_call:.2f} | {cpu_call:.2f} "
            f"| {statistics.median(ratios):.2f} |"
        )
    return "\n".join(lines)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a child process has used, from ``/proc`` (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def _machine_ticks() -> tuple[int, int] | None:
    """``(idle, total)`` CPU ticks of the whole machine since boot (Linux only)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values)
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class ReplicaRun:
    """One timed run over replicas, with where the CPU went."""

    wall: float
    client_cpu: float
    server_cpu: float | None
    machine_busy: float | None
    load: float
    calls: int


async def _timed_replicas(
    work: Callable[[], Awaitable[int]], servers: list[FakeLLMServer]
) -> ReplicaRun:
    """Wall time, this process's CPU, the servers' CPU and the machine's busy share.

    The servers' CPU is read from ``/proc`` for their processes; the machine's busy share
    counts every process on the machine (other users' included): near 100 % means the
    cores, not the spreading, bound the run.
    """
    pids = [s.pid for s in servers if s.pid is not None]
    gc.collect()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    servers0 = [_process_cpu(pid) for pid in pids]
    ticks0 = _machine_ticks()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    calls = await work()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ticks1 = _machine_ticks()
    servers1 = [_process_cpu(pid) for pid in pids]
    server_cpu: float | None = None
    if all(v is not None for v in (*servers0, *servers1)):
        server_cpu = sum(b - a for a, b in zip(servers0, servers1, strict=True))  # type: ignore[operator]
    busy: float | None = None
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        busy = 1 - (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
    return ReplicaRun(wall, cpu, server_cpu, busy, load, calls)


async def bare_replicas(
    urls: list[str], bodies: list[dict[str, Any]], slots: int, session: Any
) -> int:
    """The same bodies from a bare aiohttp client: ``slots`` workers per replica, pulling
    from one queue (the best a client can spread the load), reply JSON parsed."""
    queue = list(reversed(bodies))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    done = 0

    async def worker(url: str) -> None:
        nonlocal done
        while queue:
            body = queue.pop()
            async with session.post(url, json=body, headers=headers) as response:
                data = json.loads(await response.text())
            done += bool(data["choices"][0]["message"]["content"])

    await asyncio.gather(*(worker(url) for url in urls for _ in range(slots)))
    return done


async def bench_replicas(
    args: argparse.Namespace,
    xs: list[Query],
    ys: list[Answer],
    wrong: list[str],
    keep: list[Any],
) -> str:
    """Throughput over 1, 2, 4... replicas of a server that serves ``--replica-slots`` at once.

    promptfit: one ``LanguageModel(api_base=[...], max_concurrency=slots, transport="http")``,
    ``slots`` requests per replica in flight, the server's own slot limit
    (``FakeLLMServer(max_concurrency=slots)``) making the rest wait, as vLLM's
    ``max_num_seqs`` would. The bare aiohttp client over the same replicas, in the same
    repeats (order alternating), is the reference: when it does not scale better, the
    machine (the replicas and the client share its cores) bounds the run, not promptfit.
    """
    import aiohttp

    n, slots = len(xs), args.replica_slots
    blocks = []
    for latency in args.replica_latency_ms or [args.latency_ms]:
        lines = [
            f"replicas: {n} calls, each replica serves {slots} requests at once, latency "
            f"{latency:g} ms, {slots} requests in flight per replica; client CPU = this "
            "process, servers' CPU = the replica processes, machine busy = all processes "
            "on the machine (other users' included)",
            "",
            "| replicas | client | wall (s) | calls per s | speed-up vs 1 replica | floor (s) "
            "| client CPU per call (ms) | servers' CPU per call (ms) | machine CPU busy "
            "| load avg (1 min) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base: dict[str, float] = {}
        model = FakeLLMServer.model("arith", latency_ms=latency)
        for count in args.replicas:
            servers = [FakeLLMServer(max_concurrency=slots).start() for _ in range(count)]
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            try:
                lm = pf.LanguageModel(
                    model,
                    api_base=[s.base_url for s in servers],
                    api_key=API_KEY,
                    max_concurrency=slots,
                    cache=False,
                    timeout=TIMEOUT,
                    transport="http",
                )
                program = await build_program(lm)
                keep.append(program)  # its pooled sessions close with the loop, not mid-run
                bodies = [_body(r) for r in raw_requests(program, lm, xs)]
                urls = [s.base_url.rstrip("/") + "/chat/completions" for s in servers]
                warm_xs, warm_ys = make_dataset(2 * slots * count, seed=7)
                await promptfit_evaluate(program, warm_xs, warm_ys, len(warm_xs))
                await bare_replicas(urls, bodies[: 2 * slots * count], slots, session)

                async def w_pf(p: pf.Program = program) -> int:
                    return (await promptfit_evaluate(p, xs, ys, n))[0]

                async def w_bare(u: list[str] = urls, b: list[dict[str, Any]] = bodies) -> int:
                    return await bare_replicas(u, b, slots, session)  # noqa: B023

                works = {"promptfit (lean transport)": w_pf, "bare aiohttp client": w_bare}
                runs: dict[str, list[ReplicaRun]] = {name: [] for name in works}
                names = list(works)
                for repeat in range(args.repeats):
                    for name in names[repeat % 2 :] + names[: repeat % 2]:
                        run = await _timed_replicas(works[name], servers)
                        runs[name].append(run)
                        print(
                            f"  {count} replicas, {latency:g} ms, repeat {repeat + 1}, {name}: "
                            f"wall {run.wall:.3f} s, client cpu {run.client_cpu:.3f} s, "
                            f"servers cpu {run.server_cpu}, busy {run.machine_busy}, "
                            f"load {run.load:.2f}",
                            file=sys.stderr,
                        )
                        if run.calls != n:
                            wrong.append(f"{count} replicas, {name}: {run.calls} calls")
            finally:
                await session.close()
                for server in servers:
                    server.stop()
            floor = -(-n // (slots * count)) * latency / 1000
            for name, series in runs.items():
                wall = statistics.median(r.wall for r in series)
                base.setdefault(name, wall)
                server = [r.server_cpu for r in series if r.server_cpu is not None]
                busy = [r.machine_busy for r in series if r.machine_busy is not None]
                client_ms = statistics.median(r.client_cpu for r in series) / n * 1000
                server_ms = f"{statistics.median(server) / n * 1000:.2f}" if server else "?"
                busy_pct = f"{statistics.median(busy) * 100:.0f} %" if busy else "?"
                lines.append(
                    f"| {count} | {name} | {_fmt(wall)} | {n / wall:.0f} "
                    f"| {base[name] / wall:.2f} | {floor:.2f} | {client_ms:.2f} | {server_ms} "
                    f"| {busy_pct} | {statistics.median(r.load for r in series):.1f} |"
                )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _sections(args: argparse.Namespace) -> list[str]:
    """What this run measures, for the header."""
    sections = [f"clients at concurrency {c}, {args.n} calls" for c in args.concurrency]
    if args.replicas:
        sections.append(f"replicas {' '.join(map(str, args.replicas))}, {args.n} calls")
    if args.fit:
        sections.append(f"fit against evaluate, {args.fit_n} examples")
    if args.cache_hits:
        sections.append(f"cache hits, {args.n} examples")
    return sections or ["nothing"]


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
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[64, 256],
        help="requests in flight, one table per value (none: skip the clients' tables)",
    )
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
        "--replicas",
        type=int,
        nargs="*",
        default=[],
        help="also measure throughput over these numbers of server replicas (e.g. 1 2 4)",
    )
    parser.add_argument(
        "--replica-slots", type=int, default=16, help="requests each replica serves at once"
    )
    parser.add_argument(
        "--replica-latency-ms",
        type=float,
        nargs="*",
        default=[],
        help="server latency of the replica runs, one table per value (default: --latency-ms)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="also time fit (num_candidates=4) against evaluate, per LM call, on each transport",
    )
    parser.add_argument("--fit-n", type=int, default=200, help="training examples of --fit")
    parser.add_argument(
        "--fit-optimizers",
        nargs="+",
        choices=["RandomFewShot", "BootstrapFewShot"],
        default=["RandomFewShot", "BootstrapFewShot"],
        help="optimizers --fit times, each with num_candidates=4",
    )
    parser.add_argument(
        "--fit-transports",
        nargs="+",
        choices=["litellm", "http"],
        default=["litellm", "http"],
        help="transports --fit times",
    )
    parser.add_argument(
        "--no-cache-hits",
        dest="cache_hits",
        action="store_false",
        help="skip the cache-hit re-evaluation",
    )
    parser.add_argument(
        "--no-dspy", dest="dspy", action="store_false", help="skip DSPy even if importable"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or min(args.concurrency, default=1) < 1 or args.repeats < 1:
        parser.error("--n, --concurrency and --repeats must be >= 1")
    if args.fit_n < 1 or min([*args.replicas, 1]) < 1 or args.replica_slots < 1:
        parser.error("--fit-n, --replicas and --replica-slots must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_before = _load()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
