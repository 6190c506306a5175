"""Tests for the fake OpenAI-compatible server in ``promptfit.testing.fake_server``.

Why: every other promptfit test, benchmark and guide relies on this server to behave
like a real provider (HTTP errors, ``Retry-After``, JSON-schema responses) and to be
deterministic. Requests go through real ``litellm.acompletion`` where the client side
matters, and through plain ``httpx`` where we need to see raw status codes and headers.

All tests share one server (module fixture); each test uses its own model name (the
``tag`` option) so that attempt memory and per-model counters never collide.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import jsonschema
import litellm
import pytest
from pydantic import BaseModel, Field

from promptfit.testing import FakeLLMServer
from promptfit.testing.fake_server import count_examples, parse_model, skeleton

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    """One server process for the whole module: starting one costs ~0.5 s."""
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: FakeLLMServer) -> Iterator[httpx.Client]:
    """Raw HTTP client with keep-alive, for checking statuses and headers directly."""
    with httpx.Client(base_url=server.base_url, timeout=10.0, trust_env=False) as client:
        yield client


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _response_format(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAI ``json_schema`` response_format built from a pydantic model."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": model.__name__,
            "schema": model.model_json_schema(),
            "strict": True,
        },
    }


async def _acomplete(
    srv: FakeLLMServer,
    model: str,
    messages: list[dict[str, Any]],
    output: type[BaseModel] | None = None,
    **kwargs: Any,
) -> str:
    """One real ``litellm.acompletion`` call against the fake server; returns content."""
    if output is not None:
        kwargs["response_format"] = _response_format(output)
    resp = await litellm.acompletion(
        model=f"openai/{model}",
        api_base=srv.base_url,
        api_key="sk-test",
        messages=messages,
        max_retries=0,
        **kwargs,
    )
    content = resp.choices[0].message.content
    assert isinstance(content, str)
    return content


def _complete(
    srv: FakeLLMServer,
    model: str,
    messages: list[dict[str, Any]],
    output: type[BaseModel] | None = None,
    **kwargs: Any,
) -> str:
    """Sync wrapper so tests need no async plugin (the lead owns conftest)."""
    return asyncio.run(_acomplete(srv, model, messages, output, **kwargs))


def _user(inp: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Input:\n{json.dumps(inp)}"}]


def _raw(http: httpx.Client, model: str, content: str, **body: Any) -> httpx.Response:
    """POST a chat completion with plain httpx, to see raw statuses and headers."""
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return http.post("/chat/completions", json=payload)


# --------------------------------------------------------------------------------------
# brains through real litellm with a json_schema response_format
# --------------------------------------------------------------------------------------


class Colour(enum.Enum):
    """Enum field: the skeleton must pick a valid member."""

    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    """Nested model: exercises ``$defs``/``$ref`` resolution."""

    note: str
    count: int


class EchoOut(BaseModel):
    """Many field kinds at once, to prove replies always validate."""

    text: str
    other: str
    number: float
    flag: bool
    colour: Colour
    tags: list[str]
    inner: Inner
    maybe: Inner | None = None
    when: datetime


def test_echo_fills_every_field_and_copies_first_input_string(server: FakeLLMServer) -> None:
    """Echo must produce schema-valid JSON (nested $defs, enum, optional, datetime)."""
    content = _complete(server, "echo?tag=echo1", _user({"q": "hello world", "r": "x"}), EchoOut)
    out = EchoOut.model_validate_json(content)
    assert out.text == "hello world"
    assert out.other == "hello world"
    assert out.colour is Colour.RED
    assert out.maybe is not None  # every property is filled, required or not


class ArithOut(BaseModel):
    """Chain-of-thought style output with an integer answer."""

    reasoning: str
    answer: int


class ArithStrOut(BaseModel):
    """String answer: the result must be sent as text."""

    answer: str


@pytest.mark.parametrize(
    ("question", "expected"), [("What is 12 * 7?", 84), ("3 + 4", 7), ("10 - 25", -15)]
)
def test_arith_solves_expression(server: FakeLLMServer, question: str, expected: int) -> None:
    """Arith answers ``a op b`` correctly when no skill gate is set."""
    out = ArithOut.model_validate_json(
        _complete(server, "arith?tag=arith1", _user({"question": question}), ArithOut)
    )
    assert out.answer == expected
    assert out.reasoning.endswith(f"= {expected}")


def test_arith_string_answer_field(server: FakeLLMServer) -> None:
    """A string ``answer`` field gets the result as text."""
    content = _complete(server, "arith?tag=arith2", _user({"question": "6 * 7"}), ArithStrOut)
    assert ArithStrOut.model_validate_json(content).answer == "42"


class SentimentOut(BaseModel):
    """Literal label, the common classification shape."""

    label: Literal["positive", "negative"]


class Polarity(enum.Enum):
    """Upper-case enum values: the label must be mapped, not copied."""

    POS = "POSITIVE"
    NEG = "NEGATIVE"


class SentimentEnumOut(BaseModel):
    """Label under the ``sentiment`` name plus a reasoning field."""

    reasoning: str
    sentiment: Polarity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I loved it, a wonderful and delightful film", "positive"),
        ("boring plot and a waste of time", "negative"),
        ("good start but awful ending", "negative"),  # tie -> negative
        ("no keywords at all", "negative"),
    ],
)
def test_sentiment_labels(server: FakeLLMServer, text: str, expected: str) -> None:
    """Keyword vote, ties negative; works for Literal and for differently-cased enums."""
    out = SentimentOut.model_validate_json(
        _complete(server, "sentiment?tag=s1", _user({"text": text}), SentimentOut)
    )
    assert out.label == expected
    enum_out = SentimentEnumOut.model_validate_json(
        _complete(server, "sentiment?tag=s1", _user({"text": text}), SentimentEnumOut)
    )
    assert enum_out.sentiment.value == expected.upper()


class JudgeOut(BaseModel):
    """LM-as-judge output with a bounded score."""

    critique: str
    score: float = Field(ge=0.0, le=1.0)


@pytest.mark.parametrize(
    ("prediction", "ground_truth", "expected"),
    [
        ({"Answer": " Paris ", "n": 1}, {"n": 1, "answer": "paris"}, 1.0),
        ("  YES", "yes", 1.0),
        ({"answer": "Lyon"}, {"answer": "Paris"}, 0.0),
    ],
)
def test_judge_scores_normalised_equality(
    server: FakeLLMServer, prediction: Any, ground_truth: Any, expected: float
) -> None:
    """The judge brain gives 1.0 iff prediction == ground truth after normalising."""
    inp = {"prediction": prediction, "ground_truth": ground_truth}
    out = JudgeOut.model_validate_json(_complete(server, "judge?tag=j1", _user(inp), JudgeOut))
    assert out.score == expected
    assert out.critique


class ProposeOut(BaseModel):
    """Instruction-proposal output."""

    instructions: str


def test_propose_is_deterministic_and_uses_text_option(server: FakeLLMServer) -> None:
    """Instruction proposals: option text + prompt-derived variant, stable across calls."""
    model = "propose?tag=p1&text=Think+step+by+step."
    first = ProposeOut.model_validate_json(
        _complete(server, model, _user({"task": "a"}), ProposeOut)
    )
    again = ProposeOut.model_validate_json(
        _complete(server, model, _user({"task": "a"}), ProposeOut)
    )
    assert re.fullmatch(r"Think step by step\. \(variant \d+\)", first.instructions)
    assert first == again
    default = ProposeOut.model_validate_json(
        _complete(server, "propose?tag=p1", _user({"task": "a"}), ProposeOut)
    )
    assert default.instructions.startswith("Answer carefully and precisely. (variant ")


def test_propose_tries_the_first_edit_the_optimizer_has_not_tried(
    server: FakeLLMServer,
) -> None:
    """Shown current and scored instructions, the brain appends the first untried edit."""
    from promptfit.testing.fake_server import PROPOSAL_EDITS

    model = "propose?tag=p2&text=Be+exact."

    def propose(current: str, scored: list[str]) -> str:
        payload = {
            "current_instructions": current,
            "scored_instructions": [{"instructions": t, "score": 0.0} for t in scored],
        }
        reply = _complete(server, model, _user(payload), ProposeOut)
        return ProposeOut.model_validate_json(reply).instructions

    assert propose("Start.", []) == f"Be exact. {PROPOSAL_EDITS[0]}"
    tried = [f"Be exact. {PROPOSAL_EDITS[0]}", f"x {PROPOSAL_EDITS[1]}"]
    assert propose("Start.", tried) == f"Be exact. {PROPOSAL_EDITS[2]}"
    assert propose(PROPOSAL_EDITS[2], tried) == f"Be exact. {PROPOSAL_EDITS[3]}"
    # Every edit tried: back to a prompt-derived variant.
    assert re.fullmatch(
        r"Be exact\. \(variant \d+\)", propose("Start.", [" ".join(PROPOSAL_EDITS)])
    )


# --------------------------------------------------------------------------------------
# without response_format
# --------------------------------------------------------------------------------------


def test_schema_embedded_in_prompt_gets_raw_json(server: FakeLLMServer) -> None:
    """Fallback prompts embed the schema as text; the reply must be that schema's JSON."""
    schema = json.dumps(ArithOut.model_json_schema())
    messages = [
        {"role": "system", "content": f"Reply with JSON matching this schema:\n{schema}"},
        {"role": "user", "content": '{"question": "2 * 21"}'},
    ]
    content = _complete(server, "arith?tag=nos1", messages)
    assert ArithOut.model_validate_json(content).answer == 42


def test_no_schema_replies_with_fenced_json(server: FakeLLMServer) -> None:
    """Without any schema, brains wrap their known fields in a ```json fence."""
    content = _complete(server, "arith?tag=nos2", _user({"question": "9 + 1"}))
    match = re.search(r"```json\n(.*?)\n```", content, re.DOTALL)
    assert match is not None
    assert json.loads(match.group(1))["answer"] == "10"
    assert _complete(server, "echo?tag=nos2", _user({"q": "hi"})) == "OK"


# --------------------------------------------------------------------------------------
# failure injection
# --------------------------------------------------------------------------------------


def test_fail_first_429_sends_retry_after(server: FakeLLMServer, http: httpx.Client) -> None:
    """fail_first fails each distinct request N times with Retry-After, then succeeds."""
    model = "arith?tag=ff1&fail_first=2&error_status=429&retry_after=0.05"
    for attempt in range(2):
        resp = _raw(http, model, "1 + 1")
        assert resp.status_code == 429, attempt
        assert resp.headers["Retry-After"] == "0.05"
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "code"}
    assert _raw(http, model, "1 + 1").status_code == 200
    # A different body is a different request: it starts failing again.
    assert _raw(http, model, "2 + 2").status_code == 429


def test_fail_first_through_litellm(server: FakeLLMServer) -> None:
    """Litellm sees a RateLimitError, and an identical retry counts as the next attempt."""
    model = "arith?tag=ff2&fail_first=1&error_status=429&retry_after=0.01"
    with pytest.raises(litellm.RateLimitError):
        _complete(server, model, _user({"question": "5 * 5"}), ArithOut)
    out = ArithOut.model_validate_json(
        _complete(server, model, _user({"question": "5 * 5"}), ArithOut)
    )
    assert out.answer == 25


def test_error_500_has_no_retry_after(server: FakeLLMServer, http: httpx.Client) -> None:
    """Retry-After is only sent for 429/503, like real providers."""
    resp = _raw(http, "echo?tag=ff3&fail_first=1", "x")
    assert resp.status_code == 500
    assert "Retry-After" not in resp.headers
    assert resp.json()["error"]["type"] == "server_error"


def test_error_rate_is_deterministic_across_reset(
    server: FakeLLMServer, http: httpx.Client
) -> None:
    """Same requests after a reset must fail in exactly the same places."""
    model = "echo?tag=er1&error_rate=0.5&seed=7"

    def run() -> list[int]:
        return [_raw(http, model, f"request {i}").status_code for i in range(20) for _ in range(2)]

    first = run()
    server.reset(model)
    second = run()
    assert first == second
    assert set(first) == {200, 500}  # p=0.5 over 40 attempts: both outcomes occur
    other_seed = [
        _raw(http, "echo?tag=er1&error_rate=0.5&seed=8", f"request {i}").status_code
        for i in range(20)
    ]
    assert other_seed != first[::2]


def test_malformed_first_then_valid(server: FakeLLMServer) -> None:
    """malformed_first returns 200 with broken JSON, then the real answer."""
    model = "arith?tag=m1&malformed_first=1"
    bad = _complete(server, model, _user({"question": "1 + 2"}), ArithOut)
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    good = _complete(server, model, _user({"question": "1 + 2"}), ArithOut)
    assert ArithOut.model_validate_json(good).answer == 3


def test_malformed_rate_is_deterministic(server: FakeLLMServer, http: httpx.Client) -> None:
    """malformed_rate decisions repeat exactly after a reset."""
    model = "echo?tag=m2&malformed_rate=0.5"

    def run() -> list[bool]:
        outcomes = []
        for i in range(16):
            content = _raw(http, model, f"r{i}", response_format={"type": "json_object"}).json()
            text = content["choices"][0]["message"]["content"]
            try:
                json.loads(text)
                outcomes.append(True)
            except json.JSONDecodeError:
                outcomes.append(False)
        return outcomes

    first = run()
    server.reset(model)
    assert run() == first
    assert set(first) == {True, False}


def test_no_json_schema_rejects_response_format(server: FakeLLMServer, http: httpx.Client) -> None:
    """no_json_schema: 400 invalid_request_error on json_schema, plain prompts still work."""
    model = "arith?tag=njs1&no_json_schema=1"
    with pytest.raises(litellm.BadRequestError, match="response_format"):
        _complete(server, model, _user({"question": "2 + 2"}), ArithOut)
    resp = _raw(http, model, "2 + 2", response_format=_response_format(ArithOut))
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "```json" in _complete(server, model, _user({"question": "2 + 2"}))


def test_stream_is_rejected(server: FakeLLMServer, http: httpx.Client) -> None:
    """Streaming is unsupported and must say so with an OpenAI-style 400."""
    resp = _raw(http, "echo?tag=st1", "x", stream=True)
    assert resp.status_code == 400
    assert "stream" in resp.json()["error"]["message"].lower()


def test_unknown_brain_and_option_are_loud(server: FakeLLMServer, http: httpx.Client) -> None:
    """Typos in model names must fail, not silently fall back to defaults."""
    assert _raw(http, "nope", "x").status_code == 404
    resp = _raw(http, "echo?latency=5", "x")
    assert resp.status_code == 404
    assert "latency" in resp.json()["error"]["message"]


# --------------------------------------------------------------------------------------
# skill gates
# --------------------------------------------------------------------------------------


def _demos(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for question, answer in pairs:
        messages.append({"role": "user", "content": json.dumps({"question": question})})
        messages.append({"role": "assistant", "content": json.dumps({"answer": answer})})
    return messages


def test_min_examples_gate_arith(server: FakeLLMServer) -> None:
    """Too few few-shot examples -> deterministic wrong answer (r + 1); enough -> right."""
    model = "arith?tag=g1&min_examples=2"
    ask = _user({"question": "7 * 6"})
    zero = ArithOut.model_validate_json(_complete(server, model, ask, ArithOut))
    assert zero.answer == 43
    one = ArithOut.model_validate_json(
        _complete(server, model, _demos([("1 + 1", "2")]) + ask, ArithOut)
    )
    assert one.answer == 43
    two = _demos([("1 + 1", "2"), ("2 * 3", "6")]) + ask
    assert ArithOut.model_validate_json(_complete(server, model, two, ArithOut)).answer == 42


def test_min_examples_gate_sentiment(server: FakeLLMServer) -> None:
    """Sentiment without enough demos always says positive."""
    model = "sentiment?tag=g2&min_examples=1"
    ask = _user({"text": "a terrible, dull movie"})
    assert (
        SentimentOut.model_validate_json(_complete(server, model, ask, SentimentOut)).label
        == "positive"
    )
    demo = [
        {"role": "user", "content": '{"text": "great"}'},
        {"role": "assistant", "content": '{"label": "positive"}'},
    ]
    assert (
        SentimentOut.model_validate_json(_complete(server, model, demo + ask, SentimentOut)).label
        == "negative"
    )


def test_count_examples_ignores_schemas_and_reasoning_fields() -> None:
    """Embedded schemas are not examples; labelled demos without reasoning still count."""
    schema = ArithOut.model_json_schema()
    prompt = (
        f"schema: {json.dumps(schema)}\n"
        + '{"answer": 1}\n{"x": {"answer": 2, "reasoning": ""}}\n{"q": 1}'
    )
    assert count_examples(prompt, schema) == 2


def test_hint_gate(server: FakeLLMServer) -> None:
    """hint=WORD: wrong unless WORD (any case) is in the system message."""
    model = "arith?tag=g3&hint=carry"
    ask = _user({"question": "19 + 23"})
    assert ArithOut.model_validate_json(_complete(server, model, ask, ArithOut)).answer == 43
    wrong_role = [{"role": "user", "content": "Remember to carry."}, *ask]
    assert ArithOut.model_validate_json(_complete(server, model, wrong_role, ArithOut)).answer == 43
    system = [{"role": "system", "content": "Add digits and CARRY the tens."}, *ask]
    assert ArithOut.model_validate_json(_complete(server, model, system, ArithOut)).answer == 42


# --------------------------------------------------------------------------------------
# stats, usage, concurrency, process handling
# --------------------------------------------------------------------------------------


def test_usage_and_response_shape(server: FakeLLMServer, http: httpx.Client) -> None:
    """Token usage follows the documented chars//4 rule; the body is OpenAI-shaped."""
    content = "x" * 40
    body = _raw(http, "echo?tag=u1", content).json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "echo?tag=u1"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 10
    assert usage["completion_tokens"] == 1  # "OK"
    assert usage["total_tokens"] == 11


def test_stats_counting_and_reset(server: FakeLLMServer, http: httpx.Client) -> None:
    """Counters track requests per model, injected errors, malformed replies, schemas."""
    server.reset()
    assert server.stats()["requests"] == 0
    _complete(server, "echo?tag=c1", _user({"q": "a"}), SentimentOut)
    _complete(server, "echo?tag=c1", _user({"q": "b"}))
    _raw(http, "echo?tag=c2&fail_first=1", "x")
    _raw(http, "echo?tag=c3&malformed_first=1", "x")
    stats = server.stats()
    assert stats["requests"] == 4
    assert stats["by_model"] == {
        "echo?tag=c1": 2,
        "echo?tag=c2&fail_first=1": 1,
        "echo?tag=c3&malformed_first=1": 1,
    }
    assert stats["injected_errors"] == 1
    assert stats["malformed"] == 1
    assert stats["with_json_schema"] == 1
    server.reset()
    stats = server.stats()
    assert stats["requests"] == stats["injected_errors"] == stats["malformed"] == 0
    assert stats["by_model"] == {}
    # attempt memory is gone too: fail_first fails again
    assert _raw(http, "echo?tag=c2&fail_first=1", "x").status_code == 500


def test_64_concurrent_requests_are_not_serialised(server: FakeLLMServer) -> None:
    """64 calls through litellm must overlap at the server: it must never be the bottleneck.

    Checked by the server's own count of requests in flight, not by a wall-clock bound
    (which failed on a loaded machine and belongs in ``benchmarks/``): each request holds
    its slot for 300 ms, so a serialising server would never see more than one at a time.
    """
    model = "arith?tag=conc&latency_ms=300"

    async def run() -> None:
        await _acomplete(server, model, _user({"question": "0 + 0"}), ArithOut)  # warm the client
        server.reset()
        outs = await asyncio.gather(
            *(
                _acomplete(server, model, _user({"question": f"{i} + 1"}), ArithOut)
                for i in range(64)
            )
        )
        assert [ArithOut.model_validate_json(o).answer for o in outs] == [i + 1 for i in range(64)]

    asyncio.run(run())
    stats = server.stats()
    assert stats["requests"] == 64
    assert stats["max_in_flight"] >= 16, stats


def test_start_failure_reports_child_stderr() -> None:
    """A server that cannot bind must fail fast with the child's error, not time out."""
    srv = FakeLLMServer(host="256.0.0.1", startup_timeout=20.0)
    with pytest.raises(RuntimeError, match="stderr"):
        srv.start()
    assert not srv.running


def test_module_cli_prints_ready() -> None:
    """``python -m promptfit.testing.fake_server`` announces its URL on stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "promptfit.testing.fake_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"READY http://127\.0\.0\.1:\d+/v1\n", line), line
        url = line.split()[1]
        assert (
            httpx.get(url.removesuffix("/v1") + "/admin/stats", trust_env=False).json()["requests"]
            == 0
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_model_name_helper_round_trips() -> None:
    """``FakeLLMServer.model`` builds names that ``parse_model`` reads back."""
    name = FakeLLMServer.model("arith", latency_ms=50, no_json_schema=True, hint="carry")
    assert name == "openai/arith?latency_ms=50&no_json_schema=1&hint=carry"
    spec = parse_model(name)
    assert (spec.brain, spec.latency_ms, spec.no_json_schema, spec.hint) == (
        "arith",
        50.0,
        True,
        "carry",
    )


# --------------------------------------------------------------------------------------
# schema skeletons (no server)
# --------------------------------------------------------------------------------------


class Node(BaseModel):
    """Recursive model: skeleton generation must terminate."""

    name: str
    children: list[Node] = []
    parent: Node | None = None


class Constrained(BaseModel):
    """Constraints a naive ``""``/``0`` skeleton would violate."""

    word: str = Field(min_length=3)
    small: int = Field(ge=5, le=9)
    positive: float = Field(gt=0)
    pair: tuple[int, str]
    mapping: dict[str, int]
    items: list[Inner] = Field(min_length=2)
    tree: Node
    kind: Literal["a", "b"]


def test_skeleton_validates_for_constrained_and_recursive_models() -> None:
    """Skeletons must satisfy constraints and terminate on recursive schemas."""
    schema = Constrained.model_json_schema()
    value = skeleton(schema)
    jsonschema.validate(value, schema)
    Constrained.model_validate(value)


def test_max_concurrency_makes_requests_wait_for_a_slot() -> None:
    """``FakeLLMServer(max_concurrency=N)`` serves N requests at once, like an engine's slots."""
    body = {
        "model": "arith?latency_ms=100",
        "messages": [{"role": "user", "content": '{"question": "What is 1 + 1?"}'}],
    }

    async def burst(base_url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(
                *(client.post(f"{base_url}/chat/completions", json=body) for _ in range(8))
            )
        return [r.status_code for r in replies]

    with FakeLLMServer(max_concurrency=2) as server:
        assert asyncio.run(burst(server.base_url)) == [200] * 8
        stats = server.stats()
    assert stats["requests"] == 8
    assert stats["max_in_flight"] == 2


def test_pid_names_the_server_process_while_it_runs() -> None:
    """Benchmarks read the server's CPU time from its process (``/proc/<pid>/stat``)."""
    server = FakeLLMServer().start()
    try:
        pid = server.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, 0)  # the process exists
    finally:
        server.stop()
    assert server.pid is None
