"""Structured-output negotiation and "a run never fails silently" (issue 13), against servers.

The test server reproduces how real servers refuse a ``response_format`` they do not support
(``like=vllm|ollama|openai|llamacpp|fastapi``: their statuses and error bodies); every entry of
the matrix runs a real ``evaluate`` and checks the outputs, the mode the client ends in, and
that no request was wasted retrying a refused format.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import LMCallsFailingError, LMConfigurationError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data

# server -> (mode the client ends in, refused requests on the way there)
MATRIX: dict[str, tuple[str, int]] = {
    "": ("json_schema", 0),  # the test server as is: takes every format
    "vllm": ("json_object_schema", 1),
    "ollama": ("json_object_schema", 1),
    "llamacpp": ("json_object_schema", 1),
    "openai": ("json_object", 2),
    "fastapi": ("json_text", 3),
}


@pytest.fixture(params=["litellm", "http"])
def lm_transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both transports: their behaviour must be identical."""
    return str(request.param)


def _wire_model(lm: pf.LanguageModel) -> str:
    return lm.model.split("/", 1)[1]


def _lm_of(program: pf.Program) -> pf.LanguageModel:
    return program.language_models[0]


@pytest.mark.parametrize("like", list(MATRIX))
def test_matrix_evaluate_negotiates_the_expected_mode(
    like: str, calc_program: Callable[..., Any], llm_server: FakeLLMServer
) -> None:
    expected_mode, refusals = MATRIX[like]
    options: dict[str, Any] = {"like": like} if like else {}

    async def main() -> tuple[pf.Program, dict[str, float]]:
        program = await calc_program(**options)
        x, y = arithmetic_data(12)
        # One batch: all 12 calls are in flight at once while the mode is negotiated.
        return program, await program.evaluate(x, y, batch_size=12, verbose=0)

    before = llm_server.stats()
    program, logs = asyncio.run(main())
    after = llm_server.stats()
    lm = _lm_of(program)
    requests = after["by_model"][_wire_model(lm)] - before["by_model"].get(_wire_model(lm), 0)
    assert logs["reward"] == 1.0 and logs["failed_calls"] == 0
    assert lm.output_mode == expected_mode, lm.usage
    assert lm.usage.retries == 0, lm.usage
    assert (
        after["by_format"].get(expected_mode, 0) - before["by_format"].get(expected_mode, 0) == 12
    )
    # One refused request per mode stepped over, none retried, every request counted.
    assert after["format_rejected"] - before["format_rejected"] == refusals
    assert requests == 12 + refusals
    assert logs["lm_calls"] == 12 + refusals and logs["retries"] == 0
    assert lm.get_config()["structured_output_mode"] == expected_mode


def test_the_negotiated_mode_is_saved_logged_once_and_reused(
    make_lm: Callable[..., pf.LanguageModel],
    llm_server: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lm = make_lm("arith", like="llamacpp")
    gen = pf.Generator(data_model=Answer, language_model=lm, input_data_model=Query)

    async def ask(client: pf.LanguageModel, i: int) -> Any:
        return await client.generate(gen.messages(Query(question=f"{i} + 1")), Answer)

    with caplog.at_level(logging.INFO, logger="promptfit"):
        results = asyncio.run(_gather(ask(lm, i) for i in range(4)))
    assert [r.value.answer for r in results] == ["1", "2", "3", "4"]
    infos = [r for r in caplog.records if "negotiated" in r.getMessage()]
    assert len(infos) == 1 and "json_object_schema" in infos[0].getMessage()
    config = lm.get_config()
    assert config["structured_output"] == "auto"
    assert config["structured_output_mode"] == "json_object_schema"

    # A client rebuilt from the config (as load_program does) starts in the saved mode.
    before = llm_server.stats()["format_rejected"]
    again = pf.LanguageModel.from_config({**config, "cache": False}, api_key="sk-test")
    assert again.output_mode == "json_object_schema"
    result = asyncio.run(ask(again, 7))
    assert result.value is not None and result.value.answer == "8"
    assert llm_server.stats()["format_rejected"] == before


def test_a_second_client_of_the_same_endpoint_starts_in_the_negotiated_mode(
    make_lm: Callable[..., pf.LanguageModel],
    llm_server: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mode is remembered per endpoint (model, api_base) for the process: a new client
    of a server that was negotiated with sends no refused request and logs nothing again."""
    first = make_lm("arith", like="vllm")
    gen = pf.Generator(data_model=Answer, language_model=first, input_data_model=Query)
    messages = gen.messages(Query(question="2 + 3"))
    with caplog.at_level(logging.INFO, logger="promptfit"):
        assert asyncio.run(first.generate(messages, Answer)).value is not None
        assert first.output_mode == "json_object_schema"
        config = {**first.get_config(), "structured_output_mode": None, "cache": False}
        second = pf.LanguageModel(**config, api_key="sk-test")
        assert second.output_mode == "json_object_schema"
        assert second.get_config()["structured_output_mode"] == "json_object_schema"
        before = llm_server.stats()
        result = asyncio.run(second.generate(gen.messages(Query(question="4 + 4")), Answer))
        after = llm_server.stats()
    assert result.value is not None and result.value.answer == "8"
    assert after["format_rejected"] == before["format_rejected"]
    assert after["requests"] - before["requests"] == 1
    assert len([r for r in caplog.records if "negotiated" in r.getMessage()]) == 1
    # Another endpoint (another model name on the same server) negotiates on its own.
    other = make_lm("arith", like="vllm")
    assert other.output_mode == "json_schema"


def test_a_pinned_mode_is_never_negotiated_nor_retried(
    make_lm: Callable[..., pf.LanguageModel], llm_server: FakeLLMServer
) -> None:
    """llama-cpp-python refuses json_schema with a 500: pinned, that is one request, no retry."""
    lm = make_lm("arith", like="llamacpp", lm_kwargs={"structured_output": "json_schema"})
    gen = pf.Generator(data_model=Answer, language_model=lm, input_data_model=Query)
    before = llm_server.stats()["requests"]
    result = asyncio.run(lm.generate(gen.messages(Query(question="2 + 3")), Answer))
    assert result.value is None
    assert result.error is not None and "Input should be 'text' or 'json_object'" in result.error
    assert llm_server.stats()["requests"] - before == 1
    assert lm.usage.retries == 0 and lm.usage.calls == 1
    assert lm.output_mode == "json_schema"
    assert lm.get_config()["structured_output_mode"] is None


@pytest.mark.parametrize("mode", ["json_schema", "json_object_schema", "json_object", "json_text"])
def test_every_mode_can_be_pinned(
    mode: str, calc_program: Callable[..., Any], llm_server: FakeLLMServer
) -> None:
    async def main() -> tuple[pf.Program, dict[str, float]]:
        program = await calc_program(lm_kwargs={"structured_output": mode})
        x, y = arithmetic_data(4)
        return program, await program.evaluate(x, y, verbose=0)

    before = llm_server.stats()["by_format"].get(mode, 0)
    program, logs = asyncio.run(main())
    assert logs["reward"] == 1.0 and logs["lm_calls"] == 4
    assert llm_server.stats()["by_format"][mode] - before == 4
    assert _lm_of(program).output_mode == mode


def test_a_transient_500_that_is_not_about_the_format_is_still_retried(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith", like="llamacpp", fail_first=1, error_status=500)
    gen = pf.Generator(data_model=Answer, language_model=lm, input_data_model=Query)
    result = asyncio.run(lm.generate(gen.messages(Query(question="2 + 3")), Answer))
    assert result.value is not None and result.value.answer == "5"
    assert lm.usage.retries >= 1


# -- a run never fails silently ---------------------------------------------------------------


def test_evaluate_stops_early_when_every_first_call_fails_the_same_way(
    calc_program: Callable[..., Any], llm_server: FakeLLMServer
) -> None:
    async def main() -> None:
        program = await calc_program(error_rate=1.0, error_status=500, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(40)
        with pytest.raises(LMCallsFailingError) as info:
            await program.evaluate(x, y, batch_size=4, verbose=0)
        message = str(info.value)
        assert "first 5 LM calls" in message
        assert "Injected failure" in message  # the server's own words
        assert "fail_fast=False" in message and "server" in message

    before = llm_server.stats()["requests"]
    asyncio.run(main())
    # Stopped after the second batch of 4, not after all 40 examples.
    assert llm_server.stats()["requests"] - before <= 8


def test_a_server_answering_prose_in_every_mode_stops_the_run_early(
    calc_program: Callable[..., Any], llm_server: FakeLLMServer
) -> None:
    """200 with content that is not JSON, in every mode: each call fails with a different
    reply text, which is still one kind of failure, so the run stops after its first calls."""

    async def main() -> None:
        program = await calc_program(malformed_rate=1.0, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(40)
        with pytest.raises(LMCallsFailingError) as info:
            await program.evaluate(x, y, batch_size=4, verbose=0)
        message = str(info.value)
        assert "first 5 LM calls" in message
        assert "InvalidOutputError" in message and '{"answe' in message  # the reply, quoted
        assert "structured_output=" in message  # what to try

    before = llm_server.stats()["requests"]
    asyncio.run(main())
    assert llm_server.stats()["requests"] - before <= 8


@pytest.mark.parametrize(
    ("options", "lm_kwargs", "quoted", "hint"),
    [
        pytest.param(
            {"like": "llamacpp"},
            {"structured_output": "json_schema"},
            "Input should be 'text' or 'json_object'",
            "structured_output='auto'",
            id="pinned-json_schema-on-llamacpp",
        ),
        pytest.param(
            {"like": "openai"},
            {"structured_output": "json_object_schema"},
            "'schema' was unexpected",
            "structured_output='auto'",
            id="pinned-json_object_schema-on-openai",
        ),
        pytest.param(
            {"error_rate": 1.0, "error_status": 500},
            {},
            "Injected failure",
            "check its logs",
            id="500-for-everything",
        ),
    ],
)
def test_every_server_failure_stops_evaluate_quoting_the_server(
    options: dict[str, Any],
    lm_kwargs: dict[str, Any],
    quoted: str,
    hint: str,
    calc_program: Callable[..., Any],
    llm_server: FakeLLMServer,
) -> None:
    """A pinned mode the server refuses is an error (never a silent fallback), like any
    server that fails every call: the run stops quoting the server, before the data is spent,
    and a refused format is never retried."""

    async def main() -> pf.Program:
        program = await calc_program(**options, lm_kwargs=lm_kwargs)
        x, y = arithmetic_data(40)
        with pytest.raises(LMCallsFailingError) as info:
            await program.evaluate(x, y, batch_size=4, verbose=0)
        assert quoted in str(info.value) and hint in str(info.value)
        return program

    before = llm_server.stats()["requests"]
    program = asyncio.run(main())
    lm = _lm_of(program)
    sent = llm_server.stats()["requests"] - before
    assert sent <= 8 * (lm.max_retries + 1)
    if "structured_output" in lm_kwargs:  # refused, not retried, not negotiated away
        assert sent <= 8 and lm.usage.retries == 0
        assert lm.output_mode == lm_kwargs["structured_output"]


def test_a_wrong_model_name_stops_evaluate_at_once(
    llm_server: FakeLLMServer, lm_transport: str
) -> None:
    """A 404 model-not-found is a configuration error: raised at once with the server's words."""
    lm = pf.LanguageModel(
        model="openai/no-such-model",
        api_base=llm_server.base_url,
        api_key="sk-test",
        transport=lm_transport,
        cache=False,
    )

    async def main() -> None:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm)(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(40)
        await program.evaluate(x, y, batch_size=4, verbose=0)

    before = llm_server.stats()["requests"]
    with pytest.raises(LMConfigurationError, match="'no-such-model' does not exist") as info:
        asyncio.run(main())
    assert "model name" in str(info.value)
    assert llm_server.stats()["requests"] - before <= 4  # the first batch, no retry


@pytest.fixture()
def no_choices_server() -> Iterator[str]:
    """A server on 127.0.0.1 that answers every chat completion 200 with no choices."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b'{"id": "x", "object": "chat.completion", "choices": []}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_reply_without_choices_is_quoted_and_counted_on_both_transports(
    no_choices_server: str, lm_transport: str
) -> None:
    """A 200 that is not a chat completion: the run stops quoting the reply (not an
    IndexError), and every request sent is counted as a call, on both transports alike."""
    lm = pf.LanguageModel(
        model="openai/some-model",
        api_base=no_choices_server,
        api_key="sk-test",
        transport=lm_transport,
        cache=False,
        max_retries=0,
    )

    async def main() -> None:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm)(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(3)
        await program.evaluate(x, y, verbose=0)

    with pytest.raises(LMCallsFailingError, match="All 3 LM calls") as info:
        asyncio.run(main())
    assert "not a chat completion" in str(info.value) and '"choices":[]' in str(info.value).replace(
        " ", ""
    )
    assert lm.usage.calls == 3 and lm.usage.failed_calls == 3


class Checked(pf.DataModel):
    answer: str = pf.Field(description="The answer, checked")


@pytest.mark.parametrize("n", [24, 3])
def test_one_lm_failing_every_call_while_another_answers_is_warned_about(
    n: int, make_lm: Callable[..., pf.LanguageModel]
) -> None:
    """A two-step program whose second LM fails every call: the run's first calls are not all
    failures (the first LM answers), yet the reward is 0. One warning quotes the failing
    server: early (its first 5 calls) on a long run, at the end on a short one."""
    good = make_lm("arith")
    broken = make_lm("echo", error_rate=1.0, error_status=400, lm_kwargs={"max_retries": 0})

    async def main() -> dict[str, float]:
        inputs = pf.Input(data_model=Query)
        solved = await pf.Generator(data_model=Answer, language_model=good, name="solve")(inputs)
        checked = await pf.Generator(data_model=Checked, language_model=broken, name="check")(
            solved
        )
        program = pf.Program(inputs=inputs, outputs=checked)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(n)
        return await program.evaluate(x, y, batch_size=8, verbose=0)

    with pytest.warns(RuntimeWarning, match="Injected failure") as record:
        logs = asyncio.run(main())
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert broken.model in messages[0] and good.model not in messages[0]
    assert ("first 5" if n > 5 else f"All {n}") in messages[0]
    assert logs["failed_calls"] == n and broken.usage.failed_calls == n


def test_predict_does_not_return_a_list_of_none_silently(
    calc_program: Callable[..., Any], llm_server: FakeLLMServer
) -> None:
    """predict on a server that fails every call raises like evaluate (or warns, when asked
    to run on), instead of handing back one ``None`` per example without a word."""

    async def main() -> list[Any]:
        program = await calc_program(error_rate=1.0, error_status=400, lm_kwargs={"max_retries": 0})
        x, _ = arithmetic_data(40)
        with pytest.raises(LMCallsFailingError, match="Injected failure"):
            await program.predict(x, batch_size=4, verbose=0)
        with pytest.warns(RuntimeWarning, match="Injected failure"):
            return await program.predict(x[:6], batch_size=3, verbose=0, fail_fast=False)

    before = llm_server.stats()["requests"]
    predictions = asyncio.run(main())
    assert predictions == [None] * 6
    assert llm_server.stats()["requests"] - before <= 8 + 6  # the first run stopped early


def test_fail_fast_false_warns_once_and_runs_on(calc_program: Callable[..., Any]) -> None:
    async def main() -> dict[str, float]:
        program = await calc_program(error_rate=1.0, error_status=500, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(12)
        return await program.evaluate(x, y, batch_size=4, verbose=0, fail_fast=False)

    with pytest.warns(RuntimeWarning, match="Injected failure") as record:
        logs = asyncio.run(main())
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert logs["failed_calls"] == 12 and logs["reward"] == 0.0


def test_a_short_run_whose_every_call_fails_raises_at_its_end(
    calc_program: Callable[..., Any],
) -> None:
    async def main() -> None:
        program = await calc_program(error_rate=1.0, error_status=503, retry_after="0")
        x, y = arithmetic_data(3)
        await program.evaluate(x, y, verbose=0)

    with pytest.raises(LMCallsFailingError, match="All 3 LM calls") as info:
        asyncio.run(main())
    assert "ServiceUnavailable" in str(info.value) and "api_base" in str(info.value)


def test_a_fit_whose_calls_all_fail_raises_with_the_server_message(
    calc_program: Callable[..., Any],
) -> None:
    async def main() -> None:
        program = await calc_program(error_rate=1.0, error_status=400, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(12)
        await program.fit(x, y, batch_size=4, epochs=3, verbose=0)

    with pytest.raises(LMCallsFailingError, match="Injected failure") as info:
        asyncio.run(main())
    # A 400 that does not name the response format: the hint names the mode that was sent.
    assert "structured_output='json_schema'" in str(info.value)
    assert "pin structured_output='json_object' or 'json_text'" in str(info.value)


def test_retried_5xx_requests_are_counted_as_calls(calc_program: Callable[..., Any]) -> None:
    """Issue 11 item 13: every request sent is a call; retries are in the logs."""

    async def main() -> dict[str, float]:
        program = await calc_program(fail_first=1, error_status=500)
        x, y = arithmetic_data(4)
        return await program.evaluate(x, y, verbose=0)

    logs = asyncio.run(main())
    assert logs["reward"] == 1.0
    assert logs["lm_calls"] == 8 and logs["retries"] == 4 and logs["failed_calls"] == 0


# -- helpers -----------------------------------------------------------------------------------


async def _gather(coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros))


def test_the_mode_is_on_each_lm_call_span(
    calc_program: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace (real MLflow, sqlite store) shows which mode every LM call went out in."""
    import mlflow

    from promptfit.observability import disable_observability, enable_observability

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        uri = enable_observability()

        async def main() -> None:
            program = await calc_program(like="vllm")
            x, y = arithmetic_data(3)
            await program.evaluate(x, y, verbose=0)

        asyncio.run(main())
        mlflow.flush_trace_async_logging()
        client = mlflow.MlflowClient(uri)
        experiment_id = client.get_experiment_by_name("promptfit").experiment_id
        traces = client.search_traces(locations=[experiment_id], max_results=50)
        modes = [
            s.attributes.get("structured_output")
            for t in traces
            for s in t.data.spans
            if s.span_type == "CHAT_MODEL"
        ]
        assert modes and set(modes) == {"json_object_schema"}
    finally:
        disable_observability()


def test_an_lm_configuration_error_reaches_the_caller_unwrapped(
    calc_program: Callable[..., Any],
) -> None:
    """A bad key stops evaluate with LMConfigurationError itself, not an ExceptionGroup."""

    async def main() -> None:
        program = await calc_program(fail_first=100, error_status=401)
        x, y = arithmetic_data(4)
        await program.evaluate(x, y, batch_size=4, verbose=0)

    with pytest.raises(LMConfigurationError, match="api_key") as info:
        asyncio.run(main())
    assert not isinstance(info.value, LMCallsFailingError)
    assert info.value.__cause__ is not None  # the provider's own exception


@pytest.mark.parametrize("options", [{"error_status": 401}, {"error_status": 500}])
def test_a_run_that_never_got_a_reply_saves_no_negotiated_mode(
    options: dict[str, Any], calc_program: Callable[..., Any]
) -> None:
    """Only a mode a reply came back in is saved as negotiated: a program saved after a run
    that failed from its start must not claim the mode it merely started in."""

    async def main() -> pf.Program:
        program = await calc_program(fail_first=100, **options, lm_kwargs={"max_retries": 0})
        x, y = arithmetic_data(8)
        with pytest.raises(LMConfigurationError):  # LMCallsFailingError is one too
            await program.evaluate(x, y, batch_size=8, verbose=0)
        return program

    lm = _lm_of(asyncio.run(main()))
    assert lm.output_mode == "json_schema"
    assert lm.get_config()["structured_output_mode"] is None


def test_a_saved_program_keeps_the_negotiated_mode(
    calc_program: Callable[..., Any],
    llm_server: FakeLLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> pf.Program:
        program = await calc_program(like="openai")
        x, y = arithmetic_data(2)
        await program.evaluate(x, y, verbose=0)
        return program

    program = asyncio.run(main())
    path = program.save(tmp_path / "calc.json")
    assert '"structured_output_mode": "json_object"' in path.read_text(encoding="utf-8")
    # A new process: no endpoint memory, only the file.
    from promptfit.language_models import language_model as lm_module

    monkeypatch.setattr(lm_module, "_ENDPOINT_MODES", {})
    loaded = pf.load_program(path, api_key="sk-test")
    lm = _lm_of(loaded)
    assert lm.output_mode == "json_object" and lm.structured_output == "auto"
    before = llm_server.stats()["format_rejected"]
    x, y = arithmetic_data(3)
    loaded.compile(reward=pf.rewards.ExactMatch())
    logs = asyncio.run(loaded.evaluate(x, y, verbose=0))
    assert logs["reward"] == 1.0
    assert llm_server.stats()["format_rejected"] == before  # no second negotiation
