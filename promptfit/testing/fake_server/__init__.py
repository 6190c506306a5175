"""A deterministic, OpenAI-compatible chat-completions server for tests and benchmarks.

Why this exists: promptfit sends every LM call through ``litellm.acompletion``. Mocking
that function would skip the HTTP client, retries, ``Retry-After`` handling, JSON-schema
``response_format`` plumbing and connection pooling -- exactly the places where real bugs
hide. Instead, tests start this real HTTP server on ``127.0.0.1`` (in a separate process,
so it never competes with the client's event loop) and point litellm at it::

    litellm.acompletion(model="openai/arith?min_examples=2", api_base=srv.base_url,
                        api_key="sk-test", messages=[...])

Behaviour is selected per *model name* so that tests running in parallel against one
server do not interfere. A model name is ``<brain>`` or ``<brain>?k=v&k=v`` (URL query
syntax).

Brains (what the answer content is):

* ``echo`` -- every string field gets the first string value of the input JSON.
* ``arith`` -- solves ``a op b`` (ints, ``+ - *``) found in the input; fills ``answer``.
* ``sentiment`` -- keyword-based positive/negative label in ``label``/``sentiment``.
* ``judge`` -- LM-as-judge: ``score`` 1.0 if ``prediction`` equals ``ground_truth``.
* ``propose`` -- instruction proposals for optimizers: ``instructions`` field. Shown an
  optimizer's current and scored instructions, it appends the first untried edit of
  ``PROPOSAL_EDITS`` to option ``text``, so an optimizer must search past rejected ones.

Options (all optional):

* ``latency_ms`` (float, 0) -- sleep before answering (errors included).
* ``fail_first`` (int, 0) -- first N attempts of each distinct request body fail.
* ``error_rate`` (float, 0) -- each attempt fails with this probability, decided
  deterministically from sha256(body, attempt number, seed).
* ``error_status`` (int, 500) -- HTTP status of injected failures.
* ``retry_after`` (str, "1") -- ``Retry-After`` header value for 429/503 failures.
* ``malformed_first`` (int, 0) -- after the ``fail_first`` failures, the next N attempts
  of each distinct request return 200 with content that is not valid JSON.
* ``malformed_rate`` (float, 0) -- each (non-failed) attempt is malformed with this
  probability (deterministic, like ``error_rate``).
* ``no_json_schema`` (bool, 0) -- reject ``response_format`` of type ``json_schema``
  with a 400, to exercise a client's JSON-in-text fallback.
* ``like`` (str) -- answer a ``response_format`` the way a real server does when it does
  not support it, with that server's status and error body: ``vllm`` (400, takes
  ``json_object`` with a ``schema``), ``ollama`` (400, takes ``json_object``, ignores its
  ``schema``), ``openai`` (400, takes a bare ``json_object`` only), ``llamacpp`` (500 like
  llama-cpp-python, takes ``json_object`` with a ``schema``), ``fastapi`` (422 validation
  error, takes no ``response_format`` at all). See :data:`SERVER_LIKES`.
* ``seed`` (int, 0) -- seed for the deterministic ``*_rate`` decisions.
* ``min_examples`` (int, 0) -- skill gate: fewer few-shot examples -> wrong answers.
* ``hint`` (str) -- skill gate: word missing from the system message -> wrong answers.
* ``accuracy`` (float, 1) -- skill gate: each (whole prompt, seed) is answered right with
  this probability, decided deterministically from sha256 of the prompt. Two different
  prompts then have the *same* accuracy but independent mistakes: the null case a search
  optimizer must not mistake for an improvement.
* ``text`` (str) -- base text of the ``propose`` brain.
* ``tag`` (str) -- ignored; makes otherwise identical model names distinct.

Run standalone with ``python -m promptfit.testing.fake_server --host 127.0.0.1 --port 0``;
it prints ``READY http://127.0.0.1:<port>/v1`` once listening.

The package, one job per module: :mod:`.spec` (model-name grammar), :mod:`.text` and
:mod:`.schema` (JSON helpers, schema skeletons), :mod:`.brains` (what the answer says),
:mod:`.likes` (how real servers refuse a ``response_format``), :mod:`.stats` (counters),
:mod:`.app` (the aiohttp app and the child's command line) and :mod:`.client`
(:class:`FakeLLMServer`, the parent side).
"""

from __future__ import annotations

from .app import main
from .brains import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    PROPOSAL_EDITS,
    count_examples,
    generate_content,
    proposal_text,
    sentiment_label,
)
from .client import FakeLLMServer
from .likes import SERVER_LIKES, ServerLike, format_of
from .schema import skeleton
from .spec import BRAINS, DEFAULT_PROPOSAL, ModelSpec, ModelSpecError, parse_model
from .text import canonical_json

__all__ = [
    "BRAINS",
    "DEFAULT_PROPOSAL",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "PROPOSAL_EDITS",
    "SERVER_LIKES",
    "FakeLLMServer",
    "ModelSpec",
    "ModelSpecError",
    "ServerLike",
    "canonical_json",
    "count_examples",
    "format_of",
    "generate_content",
    "main",
    "parse_model",
    "proposal_text",
    "sentiment_label",
    "skeleton",
]
