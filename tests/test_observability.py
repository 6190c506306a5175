"""enable_observability / the MLflow span backend, on the embedded SQLite store (no server).

One store is created for the whole module (creating an MLflow SQLite database runs its
migrations, which is slow); each test writes to its own experiment in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Answer, arithmetic_data

from promptfit.callbacks.monitor import Monitor
from promptfit.observability import (
    MLflowSpanBackend,
    disable_observability,
    enable_observability,
    span,
    span_backend,
)
from promptfit.observability.enable import HTTP_DEFAULTS, http_defaults
from promptfit.observability.mlflow_backend import (
    is_unreachable,
    mark_reachable,
    report_unreachable,
    scrub_secrets,
)

SECRET = "sk-test-secret-key"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture()
def in_store_dir(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Work in the module's store directory; observability is always off afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # else it would be used instead
    monkeypatch.chdir(store_dir)
    yield store_dir
    disable_observability()


def _traces(uri: str, experiment: str) -> list[Any]:
    import mlflow

    mlflow.flush_trace_async_logging()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return list(client.search_traces(locations=[experiment_id], max_results=200))


# -- unit ------------------------------------------------------------------------------------
def test_scrub_secrets_names_values_and_known_keys() -> None:
    data = {
        "api_key": "anything",
        "nested": [{"Authorization": "x"}, f"error: Incorrect API key {SECRET}"],
        "max_tokens": 10,
        "tokens": 5,
        "note": "uses my-private-value here",
    }
    clean = scrub_secrets(data, secrets=["my-private-value"])
    assert clean["api_key"] == "***" and clean["nested"][0]["Authorization"] == "***"
    assert SECRET not in json.dumps(clean) and "my-private-value" not in json.dumps(clean)
    assert clean["max_tokens"] == 10 and clean["tokens"] == 5


def test_http_defaults_are_scoped_and_never_override_the_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "42")
    with http_defaults(), http_defaults():  # re-entrant
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "42"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "42"


def test_one_warning_per_outage_and_stale_failures_do_not_open_a_new_one() -> None:
    import time
    import warnings

    uri = "file:///not-a-server-outage-test"  # not http: no health probe thread is started
    mark_reachable(uri)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        report_unreachable(uri, ConnectionRefusedError("Connection refused"))
        report_unreachable(uri, "Read timed out", late=True)  # same outage: no second warning
        assert is_unreachable(uri) and len(records) == 1
        assert "connection refused" in str(records[0].message)

        started = time.monotonic()  # a call begins during the outage...
        mark_reachable(uri)  # ...the server comes back (another thread saw it)...
        report_unreachable(uri, "Connection reset", started_at=started)  # ...then it fails
        report_unreachable(uri, "Failed to send trace: timed out", late=True)  # queued export
        assert not is_unreachable(uri) and len(records) == 1

        report_unreachable(uri, "Connection refused", started_at=time.monotonic())  # new outage
        assert is_unreachable(uri) and len(records) == 2
    mark_reachable(uri)


# -- the embedded store ------------------------------------------------------------------------
def test_default_is_embedded_sqlite_with_artifacts_beside_it(
    in_store_dir: Path, calc_program: Callable[..., Any]
) -> None:
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = enable_observability()  # no URI, no server: ./mlflow.db
    assert uri == f"sqlite:///{in_store_dir.resolve() / 'mlflow.db'}"
    assert (in_store_dir / "mlflow.db").exists()
    assert isinstance(span_backend(), MLflowSpanBackend)

    program = asyncio.run(calc_program())
    x, y = arithmetic_data(6)
    asyncio.run(program.fit(x, y, epochs=2, batch_size=3, verbose=0))
    monitors = [c for c in program.fit_state.callbacks if isinstance(c, Monitor)]
    assert len(monitors) == 1  # attached automatically

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("promptfit")
    assert experiment.artifact_location.startswith((in_store_dir / "mlartifacts").as_uri())
    run = client.get_run(monitors[0].run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward")) == [0, 1]
    assert list((in_store_dir / "mlartifacts").rglob("calc.json"))  # the program artifact
    assert SECRET not in json.dumps([run.data.params, run.data.tags])

    traces = _traces(uri, "promptfit")
    linked = [
        t for t in traces if t.info.request_metadata.get("mlflow.sourceRun") == run.info.run_id
    ]
    assert linked
    spans = {s.span_id: s for s in linked[-1].data.spans}
    lm_span = next(s for s in spans.values() if s.span_type == "CHAT_MODEL")
    assert spans[lm_span.parent_id].name == "answer"
    assert spans[spans[lm_span.parent_id].parent_id].name == "calc"

    disable_observability()
    assert span_backend() is None
    assert mlflow.get_tracking_uri() == previous
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_concurrent_fits_link_their_traces_to_their_own_runs(
    in_store_dir: Path, calc_program: Callable[..., Any]
) -> None:
    import mlflow

    uri = enable_observability(experiment_name="concurrent")

    async def both() -> list[tuple[Any, Monitor]]:
        programs = [await calc_program(), await calc_program()]  # separate LMs (tags)
        monitors = [Monitor(run_name=f"fit-{i}") for i in range(2)]
        x, y = arithmetic_data(6)
        await asyncio.gather(
            *(
                p.fit(x, y, epochs=2, batch_size=3, verbose=0, callbacks=[m])
                for p, m in zip(programs, monitors, strict=True)
            )
        )
        await programs[0](x[0])  # after the fit: traced, but linked to no run
        return list(zip(programs, monitors, strict=True))

    pairs = asyncio.run(both())
    traces = _traces(uri, "concurrent")
    client = mlflow.MlflowClient(uri)
    by_run: dict[str | None, set[str]] = {}
    for trace in traces:
        run_id = trace.info.request_metadata.get("mlflow.sourceRun")
        models = {s.attributes["model"] for s in trace.data.spans if s.span_type == "CHAT_MODEL"}
        by_run.setdefault(run_id, set()).update(models)
    for program, monitor in pairs:
        assert client.get_run(monitor.run_id).info.status == "FINISHED"
        (lm,) = program.language_models
        assert by_run[monitor.run_id] == {lm.model}, by_run  # only its own fit's calls
    assert by_run.get(None) == {pairs[0][0].language_models[0].model}  # the call after fit


def test_nesting_follows_tasks_across_anyio_task_groups(in_store_dir: Path) -> None:
    uri = enable_observability(experiment_name="nesting")

    async def lm_call(example: int, module: str) -> None:
        with span(
            "lm.call", "CHAT_MODEL", {"messages": [{"role": "user", "content": module}]}
        ) as h:
            await anyio.sleep(random.random() / 100)  # interleave the tasks
            h.set_attributes({"model": "m", "prompt_tokens": 3, "completion_tokens": 2})
            h.set_outputs({"example": example, "module": module})

    async def module(example: int, name: str) -> None:
        with span(name, "CHAIN", {"example": example}):
            await anyio.sleep(random.random() / 100)
            await lm_call(example, name)

    async def example(index: int) -> None:
        with span("program", "CHAIN", {"example": index}):
            async with anyio.create_task_group() as group:  # parallel branches
                for name in ("left", "right"):
                    group.start_soon(module, index, name)

    async def batch() -> None:
        async with anyio.create_task_group() as group:  # one task per example, like fit
            for index in range(8):
                group.start_soon(example, index)

    asyncio.run(batch())
    traces = _traces(uri, "nesting")
    assert len(traces) == 8  # one trace per example, never merged
    for trace in traces:
        spans = {s.span_id: s for s in trace.data.spans}
        assert len(spans) == 5
        root = next(s for s in spans.values() if s.parent_id is None)
        index = root.inputs["example"]
        for lm in (s for s in spans.values() if s.name == "lm.call"):
            parent = spans[lm.parent_id]
            assert parent.name == lm.outputs["module"] and parent.inputs["example"] == index
            assert spans[parent.parent_id] is root and lm.outputs["example"] == index
            assert lm.attributes["mlflow.chat.tokenUsage"]["total_tokens"] == 5


def test_lm_failure_is_an_error_span_and_keys_never_reach_a_trace(
    in_store_dir: Path, make_lm: Callable[..., Any]
) -> None:
    uri = enable_observability(experiment_name="errors")
    lm = make_lm("arith", fail_first=5, lm_kwargs={"max_retries": 0})

    async def call() -> Any:
        with span("program", "CHAIN", {"question": "What is 1 + 2?"}) as handle:
            generation = await lm.generate([{"role": "user", "content": "What is 1 + 2?"}], Answer)
            handle.set_attributes({"error": f"Incorrect API key provided: {SECRET}"})
            return generation

    generation = asyncio.run(call())
    assert generation.value is None and generation.error
    (trace,) = _traces(uri, "errors")
    lm_span = next(s for s in trace.data.spans if s.span_type == "CHAT_MODEL")
    assert lm_span.status.status_code == "ERROR" and lm_span.attributes["error"]
    assert lm_span.attributes["cache_hit"] is False and lm_span.attributes["model"]
    assert SECRET not in trace.to_json()
