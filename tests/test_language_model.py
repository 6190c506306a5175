"""The LM client against a real HTTP server: retries, Retry-After, fallback, cache, usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

import promptfit as pf
from promptfit.errors import ConfigurationError, LMConfigurationError
from promptfit.testing import FakeLLMServer
from tests.conftest import Answer, Query


@pytest.fixture(params=["litellm", "http"])
def lm_transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both transports: their behaviour must be identical."""
    return str(request.param)


def _messages(lm_program: pf.Generator, question: str = "What is 2 + 3?") -> list[dict[str, str]]:
    return lm_program.messages(Query(question=question))


def _gen(lm: pf.LanguageModel) -> pf.Generator:
    gen = pf.Generator(data_model=Answer, language_model=lm, input_data_model=Query)
    return gen


def test_structured_output_is_validated(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert isinstance(result.value, Answer)
    assert result.value.answer == "5"
    assert lm.usage.calls == 1
    assert lm.usage.prompt_tokens > 0 and lm.usage.completion_tokens > 0


def test_transient_errors_are_retried(
    make_lm: Callable[..., pf.LanguageModel], llm_server: FakeLLMServer
) -> None:
    lm = make_lm("arith", fail_first=2, error_status=500)
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert result.value is not None and result.value.answer == "5"
    assert lm.usage.retries == 2
    assert lm.usage.failed_calls == 0


def test_retry_after_is_honoured(make_lm: Callable[..., pf.LanguageModel]) -> None:
    """The wait before a retry is the one the server asked for, not the ~0.01 s backoff.

    Only the retried call is timed, after a warm-up call that went through the same failure
    and retry path: the first request of a process pays litellm's lazy imports (~1 s), which
    once hid an ignored ``Retry-After`` when this test ran alone.
    """
    asked = 0.6
    options = {"fail_first": 1, "error_status": 429}
    waits = {"retry_min_wait": 0.01, "retry_max_wait": 5.0}
    warm = make_lm("arith", retry_after="0", lm_kwargs=waits, **options)
    lm = make_lm("arith", retry_after=str(asked), lm_kwargs=waits, **options)

    async def run() -> tuple[float, float, pf.language_models.Generation]:
        started = time.perf_counter()
        await warm.generate(_messages(_gen(warm)), Answer)
        warm_elapsed = time.perf_counter() - started
        started = time.perf_counter()
        result = await lm.generate(_messages(_gen(lm)), Answer)
        return warm_elapsed, time.perf_counter() - started, result

    warm_elapsed, elapsed, result = asyncio.run(run())
    assert result.value is not None
    assert warm.usage.retries == 1 and lm.usage.retries == 1
    # Retry-After: 0 is raised to retry_min_wait; 0.6 must be waited in full.
    assert elapsed >= asked - 0.05, (elapsed, warm_elapsed)


def test_exhausted_retries_become_a_recorded_failure(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith", fail_first=10, error_status=503, retry_after="0")
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert result.value is None
    assert result.error and "ServiceUnavailable" in result.error
    assert lm.usage.failed_calls == 1
    # Every request sent is a call: the first attempt and its 3 retries (issue 11, item 13).
    assert lm.usage.calls == 4 and lm.usage.retries == 3
    assert lm.usage.tokens == 0  # no reply, no tokens


def test_malformed_json_is_retried(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith", malformed_first=1)
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert result.value is not None and result.value.answer == "5"
    assert lm.usage.retries == 1


def test_authentication_error_stops_immediately(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith", fail_first=5, error_status=401)
    with pytest.raises(LMConfigurationError, match="api_key"):
        asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert lm.usage.retries == 0


def test_json_text_fallback_when_schema_is_rejected(
    make_lm: Callable[..., pf.LanguageModel], llm_server: FakeLLMServer
) -> None:
    lm = make_lm("arith", no_json_schema=1)
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert result.value is not None and result.value.answer == "5"
    assert lm.output_mode == "json_object_schema"  # the next mode the server accepts
    # Later calls go straight to the negotiated mode.
    again = asyncio.run(lm.generate(_messages(_gen(lm), "What is 4 + 4?"), Answer))
    assert again.value is not None and again.value.answer == "8"


def test_cache_makes_repeats_free(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    messages = _messages(_gen(lm))

    async def twice() -> None:
        await lm.generate(messages, Answer)
        await lm.generate(messages, Answer)

    asyncio.run(twice())
    assert lm.usage.calls == 1
    assert lm.usage.cache_hits == 1


def test_identical_concurrent_requests_share_one_call(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith", latency_ms=50)
    messages = _messages(_gen(lm))

    async def many() -> list[pf.language_models.Generation]:
        return await asyncio.gather(*(lm.generate(messages, Answer) for _ in range(10)))

    results = asyncio.run(many())
    assert all(r.value is not None for r in results)
    assert lm.usage.calls == 1


def test_disk_cache_persists_across_clients(
    make_lm: Callable[..., pf.LanguageModel], tmp_path
) -> None:
    path = tmp_path / "cache.sqlite"
    first = make_lm("arith", tag="disk", lm_kwargs={"cache": path})
    asyncio.run(first.generate(_messages(_gen(first)), Answer))
    second = make_lm("arith", tag="disk", lm_kwargs={"cache": path})
    result = asyncio.run(second.generate(_messages(_gen(second)), Answer))
    assert result.cached and second.usage.calls == 0


def test_max_concurrency_bounds_in_flight_requests(
    make_lm: Callable[..., pf.LanguageModel], llm_server: FakeLLMServer
) -> None:
    # 200 ms per reply: all four permitted requests are in flight long before the first one
    # returns, even on a loaded machine, so the bound is reached exactly (a client that sent
    # one request at a time would also pass an upper bound alone).
    lm = make_lm(
        "arith", latency_ms=200, tag="bound", lm_kwargs={"max_concurrency": 4, "cache": False}
    )
    gen = _gen(lm)
    llm_server.reset()

    async def run() -> None:
        await asyncio.gather(
            *(lm.generate(_messages(gen, f"What is {i} + 1?"), Answer) for i in range(16))
        )

    asyncio.run(run())
    stats = llm_server.stats()
    assert lm.usage.calls == 16
    assert stats["max_in_flight"] == 4


def test_config_never_contains_the_key(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith")
    assert "sk-test-secret-key" not in repr(lm.get_config())
    assert "api_key" not in lm.get_config()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"structured_output": "xml"}, "structured_output"),
        ({"structured_output_mode": "grammar"}, "structured_output_mode"),
        # Issue 11 item 10: typed errors that name the fix instead of raw TypeErrors.
        ({"max_concurrency": "8"}, r"max_concurrency.*pass max_concurrency=8"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"cache": 123}, "cache.*True, False or a file path"),
        # Found by the program-file fuzzer: "" (the working directory) only warned at the
        # first call.
        ({"cache": ""}, "cache.*an empty path"),
        ({"cache": "."}, "cache.*a directory"),
        ({"timeout": -1}, r"timeout.*> 0"),
        ({"timeout": "60"}, "timeout"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"retry_min_wait": 5, "retry_max_wait": 1}, "retry_min_wait"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        pf.LanguageModel(model="openai/x", **kwargs)


@pytest.mark.parametrize("model", ["nonsense", "foo/bar", "gpt-4o-mini-typo-but-no-provider"])
def test_a_model_litellm_cannot_route_fails_at_construction(model: str) -> None:
    with pytest.raises(LMConfigurationError, match=r"cannot route.*openai/<served name>"):
        pf.LanguageModel(model=model, api_base="http://127.0.0.1:9/v1")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "local/gemma-3-270m"},
        {"model": "openai/my-model", "api_base": "http://127.0.0.1:9/v1"},
        {"model": "hosted_vllm/my-model", "api_base": "http://127.0.0.1:9/v1"},
        {"model": "my-model", "api_base": "http://127.0.0.1:9/v1", "custom_llm_provider": "openai"},
        {"model": "ollama/llama3"},
    ],
)
def test_routable_models_are_accepted(kwargs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptfit.language_models._litellm import litellm

    # Registering local/ must not leak into other tests' view of litellm's provider map.
    monkeypatch.setattr(litellm, "custom_provider_map", list(litellm.custom_provider_map))
    assert pf.LanguageModel(**kwargs).model == kwargs["model"]


def test_backoff_jitter_respects_retry_min_wait() -> None:
    """Issue 11 item 12: the jitter scales with retry_min_wait (it added up to 1 s before)."""
    lm = pf.LanguageModel(model="openai/x", retry_min_wait=0.01, retry_max_wait=5.0)
    first = [lm._backoff(1, None) for _ in range(200)]
    assert all(0.01 <= w <= 0.015 for w in first)
    third = [lm._backoff(3, None) for _ in range(200)]
    assert all(0.04 <= w <= 0.06 for w in third)
    capped = pf.LanguageModel(model="openai/x", retry_min_wait=1.0, retry_max_wait=2.0)
    assert all(1.0 <= capped._backoff(5, None) <= 2.0 for _ in range(50))


_UNDER_W_ERROR = """
import asyncio, sys
import promptfit as pf
from promptfit.testing import FakeLLMServer

class Answer(pf.DataModel):
    answer: str

base_url, tag, transport = sys.argv[1:]
model = FakeLLMServer.model("arith", fail_first=2, error_status=503, tag=tag)
lm = pf.LanguageModel(model=model, api_base=base_url, api_key="k", cache=False, max_retries=3,
                      retry_min_wait=0.01, retry_max_wait=0.05, transport=transport)

async def main():
    messages = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(40)]
    return await asyncio.gather(*(lm.generate(m, Answer) for m in messages))

results = asyncio.run(main())
print(sum(r.error is not None for r in results), lm.usage.retries)
"""


def test_retries_survive_python_w_error(llm_server: FakeLLMServer, lm_transport: str) -> None:
    """Issue 11 item 12, as reported: under ``python -W error`` a warning raised in the retry
    path (a deprecated tenacity argument) turned every transient failure into a permanent one
    (15 of 40 calls failed). Each of 40 calls here fails twice with a 503, then succeeds."""
    import subprocess
    import sys

    tag = f"w-error-{lm_transport}-{time.monotonic_ns()}"
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _UNDER_W_ERROR, llm_server.base_url, tag,
         lm_transport],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    failed, retries = map(int, out.stdout.split())
    assert (failed, retries) == (0, 80), out.stderr[-2000:]


def test_concurrent_requests_all_fall_back_to_text(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    """Requests in flight when the first refusal arrives must fall back too, not fail."""
    lm = make_lm("arith", no_json_schema=1, latency_ms=30, lm_kwargs={"cache": False})
    gen = _gen(lm)

    async def run() -> list[pf.language_models.Generation]:
        return await asyncio.gather(
            *(lm.generate(_messages(gen, f"What is {i} + 2?"), Answer) for i in range(6))
        )

    results = asyncio.run(run())
    assert [r.value.answer for r in results if r.value] == [str(i + 2) for i in range(6)]
    assert lm.usage.failed_calls == 0


def test_backoff_grows_across_retries(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm(
        "arith",
        fail_first=3,
        error_status=500,
        lm_kwargs={"retry_min_wait": 0.1, "retry_max_wait": 5.0, "max_retries": 3},
    )
    started = time.perf_counter()
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    elapsed = time.perf_counter() - started
    assert result.value is not None
    assert lm.usage.retries == 3
    # 0.1 + 0.2 + 0.4 (plus jitter) when the backoff doubles from the bare first attempt.
    assert elapsed >= 0.65


def test_the_transport_asked_for_is_used(
    make_lm: Callable[..., pf.LanguageModel], lm_transport: str
) -> None:
    lm = make_lm("arith")
    assert lm.transport == lm_transport
    assert lm.get_config()["transport"] == lm_transport


def test_usage_of_a_model_without_a_price_costs_nothing(
    make_lm: Callable[..., pf.LanguageModel],
) -> None:
    lm = make_lm("arith", lm_kwargs={"cache": False})
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    assert result.value is not None
    assert lm.usage.cost == 0.0
    assert lm.usage.prompt_tokens > 0


def test_both_transports_count_the_same_usage(llm_server: FakeLLMServer) -> None:
    usages = []
    for transport in ("litellm", "http"):
        lm = pf.LanguageModel(
            model=FakeLLMServer.model("arith", tag=f"same-usage-{transport}"),
            api_base=llm_server.base_url,
            api_key="sk-test",
            cache=False,
            transport=transport,  # type: ignore[arg-type]
        )
        result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
        assert result.value is not None and result.value.answer == "5"
        usages.append(lm.usage.as_dict())
    assert usages[0] == usages[1]


def test_a_timeout_is_retried_then_recorded(make_lm: Callable[..., pf.LanguageModel]) -> None:
    lm = make_lm("arith", latency_ms=600, lm_kwargs={"timeout": 0.1, "max_retries": 1})
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    # The server counts a request when it answers: let the abandoned ones finish, so they
    # are not counted during a later test.
    time.sleep(0.7)
    assert result.value is None
    assert result.error and result.error.startswith("Timeout")
    assert lm.usage.retries == 1 and lm.usage.calls == 2 and lm.usage.failed_calls == 1


def test_an_unreachable_server_is_retried_then_recorded(lm_transport: str) -> None:
    lm = pf.LanguageModel(
        model="openai/nobody",
        api_base="http://127.0.0.1:9/v1",
        api_key="x",
        cache=False,
        max_retries=1,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
        transport=lm_transport,  # type: ignore[arg-type]
    )
    result = asyncio.run(lm.generate(_messages(_gen(lm)), Answer))
    # litellm maps the openai SDK's connection error to InternalServerError; so does "http".
    assert result.error and result.error.startswith("InternalServerError")
    assert "Connection error" in result.error
    assert lm.usage.retries == 1 and lm.usage.failed_calls == 1


def test_a_missing_key_stops_at_once(
    llm_server: FakeLLMServer, lm_transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith"),
        api_base=llm_server.base_url,
        cache=False,
        transport=lm_transport,  # type: ignore[arg-type]
    )
    with pytest.raises(LMConfigurationError):
        asyncio.run(lm.generate(_messages(_gen(lm)), Answer))


def test_auto_picks_litellm_wherever_the_lean_path_could_differ() -> None:
    def transport(**kwargs: object) -> str:
        return pf.LanguageModel(**kwargs).transport  # type: ignore[arg-type]

    base = "http://127.0.0.1:9/v1"
    assert transport(model="openai/my-model", api_base=base) == "http"
    assert transport(model="openai/my-model", api_base=base, top_p=0.5) == "http"
    # litellm prices this model: its cost accounting (tiers, cached tokens) stays litellm's.
    assert transport(model="openai/gpt-4o-mini", api_base=base) == "litellm"
    assert transport(model="openai/my-model") == "litellm"  # no api_base
    assert transport(model="openai/my-model", api_base=base, extra_headers={"a": "b"}) == (
        "litellm"
    )
    assert transport(model="ollama/llama3", api_base=base) == "litellm"
    with pytest.raises(ConfigurationError, match="transport='http' cannot serve"):
        pf.LanguageModel(model="ollama/llama3", api_base=base, transport="http")
    with pytest.raises(ConfigurationError, match="`transport` must be one of"):
        pf.LanguageModel(model="openai/x", transport="grpc")  # type: ignore[arg-type]


def test_http_cost_uses_litellm_prices() -> None:
    from promptfit.language_models._litellm import litellm
    from promptfit.language_models.http_transport import token_cost

    prompt, completion = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=500
    )
    assert token_cost("openai/gpt-4o-mini", 1000, 500) == pytest.approx(prompt + completion)
    assert token_cost("openai/no-such-model", 1000, 500) == 0.0


@pytest.fixture(scope="module")
def second_server() -> Iterator[FakeLLMServer]:
    """A second replica of the test server (its own process and counters)."""
    with FakeLLMServer() as server:
        yield server


def _replica_lm(
    bases: list[str], lm_transport: str, tag: str, **kwargs: object
) -> pf.LanguageModel:
    options = {"cache": False, "max_retries": 0, "retry_min_wait": 0.01, "retry_max_wait": 0.02}
    options.update(kwargs)
    return pf.LanguageModel(
        model=FakeLLMServer.model("arith", tag=tag, latency_ms=30),
        api_base=bases,
        api_key="sk-test",
        transport=lm_transport,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def _ask_many(lm: pf.LanguageModel, n: int) -> list[pf.language_models.Generation]:
    gen = _gen(lm)

    async def run() -> list[pf.language_models.Generation]:
        return await asyncio.gather(
            *(lm.generate(_messages(gen, f"What is {i} + 1?"), Answer) for i in range(n))
        )

    return asyncio.run(run())


def test_replicas_share_the_requests_each_within_its_concurrency(
    llm_server: FakeLLMServer, second_server: FakeLLMServer, lm_transport: str
) -> None:
    llm_server.reset()
    second_server.reset()
    lm = _replica_lm(
        [llm_server.base_url, second_server.base_url],
        lm_transport,
        f"spread-{lm_transport}",
        max_concurrency=3,
    )
    results = _ask_many(lm, 24)
    assert [r.value.answer for r in results if r.value] == [str(i + 1) for i in range(24)]
    first, second = llm_server.stats(), second_server.stats()
    assert first["requests"] + second["requests"] == 24 == lm.usage.calls
    assert first["requests"] >= 6 and second["requests"] >= 6
    assert first["max_in_flight"] <= 3 and second["max_in_flight"] <= 3


def test_a_dead_replica_fails_over_without_losing_a_call(
    llm_server: FakeLLMServer, lm_transport: str
) -> None:
    llm_server.reset()
    lm = _replica_lm(
        ["http://127.0.0.1:9/v1", llm_server.base_url], lm_transport, f"dead-{lm_transport}"
    )
    results = _ask_many(lm, 8)
    assert all(r.value is not None for r in results), [r.error for r in results]
    assert lm.usage.failed_calls == 0 and lm.usage.retries == 0
    # Every request sent is a call (the refused ones too); tokens only for the 8 replies.
    assert llm_server.stats()["requests"] == 8
    assert lm.usage.calls >= 8
    single = _replica_lm([llm_server.base_url], lm_transport, f"dead-{lm_transport}")
    _ask_many(single, 8)
    assert lm.usage.prompt_tokens == single.usage.prompt_tokens
    assert lm.usage.completion_tokens == single.usage.completion_tokens


def test_a_dead_replica_cools_down_instead_of_being_tried_first_by_every_request(
    llm_server: FakeLLMServer, lm_transport: str
) -> None:
    """A dead replica fails fast, so it always has the fewest requests in flight: without a
    cooldown, every other request was sent to it first (16 sequential questions, 8 refused
    connections). With it, the dead replica is tried once per cooldown window."""
    llm_server.reset()
    lm = _replica_lm(
        ["http://127.0.0.1:9/v1", llm_server.base_url], lm_transport, f"cool-{lm_transport}"
    )
    gen = _gen(lm)

    async def run() -> float:
        started = time.monotonic()
        for i in range(16):
            result = await lm.generate(_messages(gen, f"What is {i} + 1?"), Answer)
            assert result.value is not None, result.error
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert llm_server.stats()["requests"] == 16
    dead_tries = lm.usage.calls - 16
    # One try, then one more per expired cooldown (1 s, then 2 s, 4 s ...).
    assert 1 <= dead_tries <= 1 + int(elapsed), (dead_tries, elapsed)
    assert lm.usage.failed_calls == 0


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[FakeLLMServer]:
    """A slow replica: it serves one request at a time (the rest wait in its queue)."""
    with FakeLLMServer(max_concurrency=1) as server:
        yield server


def test_a_slower_replica_gets_fewer_requests(
    llm_server: FakeLLMServer, one_slot_server: FakeLLMServer, lm_transport: str
) -> None:
    """The replica is picked when a slot frees, so each replica pulls work at its own pace.

    Picking on arrival split the 80 requests 40/40 up front, and the fast replica then sat
    idle while the slow one worked through its queue one request at a time.
    """
    if lm_transport != "http":
        # The picker is the same code on both transports; on litellm's ~5 ms of CPU per call
        # a loaded machine makes the client, not the replicas, set the pace (then an even
        # split is the right answer), so the property is checked where the replicas lead.
        pytest.skip("the replica picker is shared; checked on the lean transport")
    llm_server.reset()
    one_slot_server.reset()
    lm = pf.LanguageModel(
        # 100 ms, so that the client's own CPU per call (litellm's is several ms) stays
        # small against the replicas' pace.
        model=FakeLLMServer.model("arith", tag=f"pull-{lm_transport}", latency_ms=100),
        api_base=[one_slot_server.base_url, llm_server.base_url],
        api_key="sk-test",
        transport=lm_transport,  # type: ignore[arg-type]
        cache=False,
        max_concurrency=4,
    )
    results = _ask_many(lm, 80)
    assert [r.value.answer for r in results if r.value] == [str(i + 1) for i in range(80)]
    slow, fast = one_slot_server.stats()["requests"], llm_server.stats()["requests"]
    assert slow + fast == 80 == lm.usage.calls
    # The fast replica answers four at a time, the slow one one (plus the three it still
    # holds at the end): about 61 against 19.
    assert fast >= 2 * slow, (slow, fast)
    assert llm_server.stats()["max_in_flight"] <= 4


def test_failover_and_retries_count_every_request_and_the_tokens_once(
    llm_server: FakeLLMServer, second_server: FakeLLMServer, lm_transport: str
) -> None:
    """Each replica fails the first attempt of every request (a 503 from a live server):
    the request fails over to the other replica, which fails too, then the retry succeeds."""
    llm_server.reset()
    second_server.reset()
    tag = f"once-{lm_transport}"
    options = {"fail_first": 1, "error_status": 503, "retry_after": "0"}
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", tag=tag, **options),
        api_base=[llm_server.base_url, second_server.base_url],
        api_key="sk-test",
        transport=lm_transport,  # type: ignore[arg-type]
        cache=False,
        max_retries=2,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
    )
    results = _ask_many(lm, 6)
    assert [r.value.answer for r in results if r.value] == [str(i + 1) for i in range(6)]
    sent = llm_server.stats()["requests"] + second_server.stats()["requests"]
    # Per question: one 503 from each replica (failover), then one answer after one retry.
    assert sent == 18 == lm.usage.calls
    assert lm.usage.retries == 6 and lm.usage.failed_calls == 0
    single = _replica_lm([llm_server.base_url], lm_transport, tag)
    _ask_many(single, 6)
    assert lm.usage.prompt_tokens == single.usage.prompt_tokens > 0
    assert lm.usage.completion_tokens == single.usage.completion_tokens > 0


def test_replicas_negotiate_once_and_never_fail_a_refusal_over(
    llm_server: FakeLLMServer, second_server: FakeLLMServer, lm_transport: str
) -> None:
    """Replicas of a llama-cpp-python-like server refuse json_schema with a 500: that 500 is
    a refusal, not a dead replica, so it is neither failed over nor retried; one refused
    request in all, then every request goes out as json_object with the schema."""
    llm_server.reset()
    second_server.reset()
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", tag=f"negotiate-{lm_transport}", like="llamacpp"),
        api_base=[llm_server.base_url, second_server.base_url],
        api_key="sk-test",
        transport=lm_transport,  # type: ignore[arg-type]
        cache=False,
        max_retries=2,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
    )
    results = _ask_many(lm, 12)
    assert [r.value.answer for r in results if r.value] == [str(i + 1) for i in range(12)]
    first, second = llm_server.stats(), second_server.stats()
    assert first["format_rejected"] + second["format_rejected"] == 1
    assert first["requests"] + second["requests"] == 13 == lm.usage.calls
    assert lm.usage.retries == 0 and lm.output_mode == "json_object_schema"


@pytest.mark.parametrize("api_base", [[], ["http://a/v1", "http://a/v1"], [1], 5])
def test_bad_replica_lists_are_refused(api_base: object) -> None:
    with pytest.raises(ConfigurationError, match="one per replica"):
        pf.LanguageModel(model="openai/x", api_base=api_base)  # type: ignore[arg-type]
