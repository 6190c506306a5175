"""Hostile program files: safe mode judges the real route, and every defect is a SerializationError.

Issue 11, items 1 and 8, and the in-process network guard of ``tests/_network_guard.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.errors import SerializationError, UnsafeFileError
from tests import _network_guard
from tests.conftest import Answer, Query, arithmetic_data
from tests.test_saving import _saved_with_lm as _program_file


# -- the network guard ---------------------------------------------------------------------------
def test_network_guard_refuses_and_records_non_loopback_connections() -> None:
    with _network_guard.expect_refusal() as refused:
        with pytest.raises(ConnectionRefusedError, match="only talks to loopback"):
            socket.create_connection(("203.0.113.7", 80), timeout=1)
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("attacker.example", 443)
    assert refused == ["connect to 203.0.113.7:80", "getaddrinfo('attacker.example')"]
    assert _network_guard.is_loopback_host("127.0.0.1") and _network_guard.is_loopback_host("::1")


# -- item 1: the route litellm would take ---------------------------------------------------------
@pytest.mark.parametrize(
    ("lm_config", "named"),
    [
        # The bypass: oobabooga takes its endpoint from the model string.
        ({"model": "oobabooga/http://203.0.113.9:5000", "api_base": None}, "203.0.113.9"),
        ({"model": "openai/https://attacker.example/v1", "api_base": None}, "attacker.example"),
        ({"model": "huggingface/bigcode/starcoder", "api_base": None}, "'huggingface'"),
        ({"model": "openai/gpt-4o", "api_base": None}, "'openai'"),
        ({"model": "together_ai/meta-llama/x", "api_base": None}, "api.together"),
        ({"model": "bedrock/anthropic.claude", "api_base": "http://127.0.0.1:9"}, "'bedrock'"),
        ({"model": "nonsense-provider/x", "api_base": None}, "cannot tell which provider"),
        ({"model": "openai/x", "api_base": "http://127.0.0.1.attacker.example/v1"}, "api_base="),
        ({"model": "openai/x", "api_base": 42}, "not a URL"),
    ],
)
def test_safe_mode_judges_where_litellm_would_send_requests(
    tmp_path: Path, lm_config: dict[str, Any], named: str
) -> None:
    path = _program_file(tmp_path, **lm_config)
    with pytest.raises(UnsafeFileError, match="safe_mode=False") as caught:
        pf.load_program(path, api_key="sk-test-secret-key")
    assert named in str(caught.value)
    assert "sk-test-secret-key" not in str(caught.value)


def test_allowed_providers_allow_a_provider_only_at_its_own_endpoint(tmp_path: Path) -> None:
    hosted = _program_file(tmp_path, model="openai/gpt-4o", api_base=None)
    (lm,) = pf.load_program(hosted, allowed_providers=["openai"]).language_models
    assert lm.model == "openai/gpt-4o"

    elsewhere = _program_file(tmp_path, model="openai/gpt-4o", api_base="https://evil.example")
    with pytest.raises(UnsafeFileError, match=r"evil\.example"):
        pf.load_program(elsewhere, allowed_providers=["openai"])
    in_model = _program_file(tmp_path, model="oobabooga/http://198.51.100.1:1", api_base=None)
    with pytest.raises(UnsafeFileError, match=r"198\.51\.100\.1"):
        pf.load_program(in_model, allowed_providers=["oobabooga"])
    with pytest.raises(pf.errors.ConfigurationError, match="list of litellm provider names"):
        pf.load_program(hosted, allowed_providers="openai")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "lm_config",
    [
        {"model": "oobabooga/http://127.0.0.1:5000", "api_base": None},
        {"model": "ollama/llama3", "api_base": None},  # litellm's default is localhost:11434
        {"model": "hosted_vllm/x", "api_base": "http://localhost:8000/v1"},
    ],
)
def test_safe_mode_allows_loopback_routes(tmp_path: Path, lm_config: dict[str, Any]) -> None:
    (lm,) = pf.load_program(_program_file(tmp_path, **lm_config)).language_models
    assert lm.model == lm_config["model"]


def test_a_refused_file_spends_no_request(
    tmp_path: Path, make_lm: Callable[..., pf.LanguageModel]
) -> None:
    """The bypass of the issue, end to end: nothing reaches the attacker's host."""
    path = _program_file(tmp_path, model="oobabooga/http://203.0.113.9:5000", api_base=None)
    with pytest.raises(UnsafeFileError):
        pf.load_program(path)
    assert _network_guard.violations() == []


# -- item 8: every defect of a program file is a SerializationError ------------------------------
def _valid(make_lm: Callable[..., pf.LanguageModel], tmp_path: Path) -> dict[str, Any]:
    lm = make_lm("arith")
    inputs = pf.Input(data_model=Query)
    outputs = asyncio.run(pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs))
    path = pf.Program(inputs=inputs, outputs=outputs, name="p").save(tmp_path / "valid.json")
    return json.loads(path.read_text())


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    def lm(d: dict[str, Any]) -> dict[str, Any]:
        return d["config"]["modules"]["g"]["config"]["language_model"]

    def set_(path: list[Any], value: Any) -> Callable[[dict[str, Any]], Any]:
        def apply(d: dict[str, Any]) -> None:
            node = d
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        return apply

    def delete(path: list[Any]) -> Callable[[dict[str, Any]], Any]:
        def apply(d: dict[str, Any]) -> None:
            node = d
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]

        return apply

    schema = ["config", "nodes", 0, "data_model"]
    return [
        ("no config", delete(["config"])),
        ("no name", delete(["config", "modules", "g", "config", "name"])),
        ("outputs empty", set_(["config", "outputs"], [])),
        ("outputs out of range", set_(["config", "outputs"], [99])),
        ("modules a list", set_(["config", "modules"], [])),
        (
            "language_model a string",
            set_(["config", "modules", "g", "config", "language_model"], "x"),
        ),
        ("max_concurrency inf", lambda d: lm(d).update(max_concurrency=float("inf"))),
        ("max_concurrency 0", lambda d: lm(d).update(max_concurrency=0)),
        ("version -1", set_(["version"], -1)),
        ("version true", set_(["version"], True)),
        ("variables a list", set_(["variables"], [1])),
        ("class_name a number", set_(["class_name"], 5)),
        ("nodes a dict", set_(["config", "nodes"], {})),
        ("inputs a string", set_(["config", "nodes", 1, "inputs"], "0")),
        (
            "recursive $ref",
            lambda d: d["config"]["nodes"][0]["data_model"].update(
                schema={
                    "title": "Query",
                    "type": "object",
                    "$defs": {"A": {"$ref": "#/$defs/A"}},
                    "properties": {"question": {"$ref": "#/$defs/A"}},
                }
            ),
        ),
        (
            "field named _secret",
            lambda d: d["config"]["nodes"][0]["data_model"].update(
                schema={
                    "title": "Query",
                    "type": "object",
                    "properties": {"_secret": {"type": "string"}},
                },
                class_name="NotRegisteredQuery",
            ),
        ),
        ("data_model a list", set_(schema, [])),
    ]


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_malformed_program_files_raise_serialization_error(
    make_lm: Callable[..., pf.LanguageModel],
    tmp_path: Path,
    name: str,
    mutate: Callable[[dict[str, Any]], Any],
) -> None:
    data = _valid(make_lm, tmp_path)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SerializationError) as caught:
        pf.load_program(path, safe_mode=False)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"format": "promptfit.program", "version": 1, "x": "\xff\xfe"}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "too deeply|not valid JSON"),
        (b'{"format": "promptfit.program", "version": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"format": "promptfit.program", "version": 1, "config": Infinity}', "class_name|config"),
    ],
    ids=["non-utf8", "100k-deep", "5000-digit int", "Infinity"],
)
def test_undecodable_program_files_raise_serialization_error(
    tmp_path: Path, raw: bytes, match: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    with pytest.raises(SerializationError, match=match):
        pf.load_program(path)


def test_a_fifo_named_program_json_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "program.json"
    os.mkfifo(path)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            pf.load_program(path)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the thread can end, then fail
        with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w"):
            pass
        pytest.fail("load_program blocked on a FIFO")
    assert isinstance(outcome[0], SerializationError)
    assert "not a regular file" in str(outcome[0])


def test_a_valid_file_still_loads_and_runs(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path
) -> None:
    data = _valid(make_lm, tmp_path)
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(data))
    program = pf.load_program(path, api_key="sk-test-secret-key")
    program.compile(reward=pf.rewards.ExactMatch())
    assert asyncio.run(program.evaluate(*arithmetic_data(2), verbose=0))["reward"] == 1.0


def test_environment_derived_endpoints_are_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ollama/...`` is local by default, but litellm takes its endpoint from the environment."""
    path = _program_file(tmp_path, model="ollama/llama3", api_base=None)
    monkeypatch.setenv("OLLAMA_API_BASE", "http://203.0.113.3:11434")
    with pytest.raises(UnsafeFileError, match=r"203\.0\.113\.3"):
        pf.load_program(path)
    monkeypatch.setenv("OLLAMA_API_BASE", "http://127.0.0.1:11434")
    assert pf.load_program(path).language_models[0].model == "ollama/llama3"


EVIL = "http://203.0.113.9:5000/v1"


@pytest.mark.parametrize(
    ("model", "api_base", "env", "named"),
    [
        # Every form of litellm model string that carries or implies a remote endpoint (issue
        # 11, item 1): in the model string, in a provider's *_API_BASE variable, or a hosted
        # provider the user did not allow.
        ("oobabooga/http://203.0.113.9:5000", None, {}, "203.0.113.9"),
        ("oobabooga/x", None, {"OOBABOOGA_API_BASE": EVIL}, "'oobabooga'"),
        ("ollama/llama3", None, {"OLLAMA_API_BASE": EVIL}, "203.0.113.9"),
        ("ollama_chat/llama3", None, {"OLLAMA_API_BASE": EVIL}, "'ollama_chat'"),
        ("ollama/http://203.0.113.9:11434", None, {}, "203.0.113.9"),
        ("openai/gpt-4o", None, {"OPENAI_BASE_URL": EVIL}, "'openai'"),
        ("openai/gpt-4o", None, {"OPENAI_API_BASE": EVIL}, "'openai'"),
        ("gpt-4o", None, {}, "'openai'"),
        ("huggingface/bigcode/starcoder", None, {}, "'huggingface'"),
        ("huggingface/https://x.endpoints.huggingface.cloud", None, {}, "huggingface.cloud"),
        ("azure/deployment", None, {"AZURE_API_BASE": EVIL}, "'azure'"),
        ("azure/deployment", "http://127.0.0.1:9", {}, "'azure'"),
        ("custom_openai/x", None, {}, "'custom_openai'"),
        ("custom_openai/x", EVIL, {}, "203.0.113.9"),
        ("hosted_vllm/x", None, {"HOSTED_VLLM_API_BASE": EVIL}, "203.0.113.9"),
        ("lm_studio/x", None, {"LM_STUDIO_API_BASE": EVIL}, "203.0.113.9"),
        ("llamafile/x", None, {"LLAMAFILE_API_BASE": EVIL}, "203.0.113.9"),
        ("litellm_proxy/x", None, {"LITELLM_PROXY_API_BASE": EVIL}, "203.0.113.9"),
        ("text-completion-openai/x", None, {}, "'text-completion-openai'"),
        ("text-completion-openai/x", None, {"OPENAI_API_BASE": EVIL}, "'text-completion-openai'"),
        ("vllm/facebook/opt-125m", None, {}, "'vllm'"),
        # Resolving these runs an OAuth device flow against the provider's login server; a
        # loopback api_base does not make them local.
        ("github_copilot/gpt-4", None, {}, "'github_copilot'"),
        ("github_copilot/gpt-4", "http://127.0.0.1:9/v1", {}, "'github_copilot'"),
        ("chatgpt/gpt-5", None, {}, "'chatgpt'"),
    ],
)
def test_every_litellm_route_form_is_judged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    api_base: str | None,
    env: dict[str, str],
    named: str,
) -> None:
    """Refused in safe mode, naming the endpoint or provider, without a single request (the
    network guard fails the test on any attempt beyond loopback, even a swallowed one)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = _program_file(tmp_path, model=model, api_base=api_base)
    with pytest.raises(UnsafeFileError, match="safe_mode=False") as caught:
        pf.load_program(path)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("model", "api_base", "env"),
    [
        ("hosted_vllm/x", "http://127.0.0.1:9/v1", {"HOSTED_VLLM_API_BASE": EVIL}),
        ("lm_studio/x", None, {"LM_STUDIO_API_BASE": "http://localhost:1234/v1"}),
        ("llamafile/x", None, {}),  # litellm's default is 127.0.0.1:8080
        ("custom_openai/x", "http://127.0.0.1:9/v1", {}),
        ("text-completion-openai/x", "http://[::1]:9/v1", {}),
    ],
)
def test_loopback_forms_still_load(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    api_base: str | None,
    env: dict[str, str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (lm,) = pf.load_program(_program_file(tmp_path, model=model, api_base=api_base)).language_models
    assert lm.model == model


def test_a_login_provider_is_never_resolved(tmp_path: Path) -> None:
    """litellm's github_copilot/chatgpt resolution starts an OAuth device flow (a request to
    github.com, then polling for minutes): neither safe mode, nor building the client, nor an
    allowed load may start it. The network guard records the attempt if one is made."""
    pf.LanguageModel(model="github_copilot/gpt-4", cache=False)
    pf.LanguageModel(model="x/gpt-4", custom_llm_provider="chatgpt", cache=False)
    path = _program_file(tmp_path, model="github_copilot/gpt-4", api_base=None)
    (lm,) = pf.load_program(path, allowed_providers=["github_copilot"]).language_models
    assert lm.model == "github_copilot/gpt-4"
    assert _network_guard.violations() == []


def test_custom_providers_need_to_be_allowed(tmp_path: Path) -> None:
    from promptfit.language_models._litellm import litellm

    entry = {"provider": "mycorp", "custom_handler": object()}
    litellm.custom_provider_map.append(entry)
    try:
        path = _program_file(tmp_path, model="mycorp/model-1", api_base=None)
        with pytest.raises(UnsafeFileError, match="'mycorp'"):
            pf.load_program(path)
        (lm,) = pf.load_program(path, allowed_providers=["mycorp"]).language_models
        assert lm.model == "mycorp/model-1"
    finally:
        litellm.custom_provider_map.remove(entry)


@pytest.mark.parametrize("model", ["local//etc/passwd.gguf", "local/../../w.gguf", "local/x.gguf"])
def test_the_embedded_model_cannot_be_pointed_at_a_file(tmp_path: Path, model: str) -> None:
    path = _program_file(tmp_path, model=model, api_base=None)
    with pytest.raises(UnsafeFileError, match="loads the model weights from the path"):
        pf.load_program(path)


def test_a_cache_path_through_a_symlink_out_of_the_cwd_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 11: a relative cache path whose directory links outside the working
    directory would write there; safe mode judges the real path."""
    from promptfit.saving.safe_mode import check_file_language_model

    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(work)
    config = {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"}
    check_file_language_model({**config, "cache": "inside/c.sqlite"}, frozenset())
    with pytest.raises(UnsafeFileError, match="response cache"):
        check_file_language_model({**config, "cache": "link/c.sqlite"}, frozenset())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"version": True}, "invalid format version True"),
        ({"version": -1}, "invalid format version -1"),
        ({"variables": [1]}, "no 'variables' object"),
        ({"format": "promptfit.backup"}, "not a promptfit.variables file"),
    ],
)
def test_a_damaged_variables_file_names_its_problem(
    make_lm: Callable[..., pf.LanguageModel], tmp_path: Path, edit: dict[str, Any], match: str
) -> None:
    """load_variables falls back to reading a program file; a variables file with a bad version
    was reported as "not a promptfit.program file", hiding what was wrong."""
    inputs = pf.Input(data_model=Query)
    lm = make_lm("arith")
    outputs = asyncio.run(pf.Generator(data_model=Answer, language_model=lm, name="g")(inputs))
    program = pf.Program(inputs=inputs, outputs=outputs, name="p")
    path = program.save_variables(tmp_path / "v.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(SerializationError, match=match):
        program.load_variables(path)
    program.save(tmp_path / "p.json")
    program.load_variables(tmp_path / "p.json")  # a program file still works
