"""Shared fixtures: one real OpenAI-compatible server on 127.0.0.1 for the whole session."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest
from _local_model_support import pytest_collection_modifyitems  # noqa: F401  (a pytest hook)

import promptfit as pf
from promptfit.testing import FakeLLMServer

# Model-name tags unique across the whole test process (see make_lm).
_TAGS = itertools.count()

pytest_plugins = ["tests._network_guard"]  # refuse and fail any traffic beyond loopback


@pytest.fixture(autouse=True)
def _own_response_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own promptfit cache directory (the default response cache is on disk).

    Without it, a reply cached by one test (or by an earlier run of the suite) would turn
    another test's LM call into a cache hit and change what it counts.
    """
    monkeypatch.setenv("PROMPTFIT_CACHE_DIR", str(tmp_path_factory.mktemp("promptfit-cache")))


@pytest.fixture(scope="session")
def llm_server() -> Iterator[FakeLLMServer]:
    """The fake LLM server (a real HTTP server in a subprocess)."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture()
def lm_transport() -> str:
    """The ``transport=`` of the clients ``make_lm`` builds.

    ``"auto"`` here; the language-model test modules override this fixture with one
    parametrized over ``"litellm"`` and ``"http"``, so their every test runs on both paths.
    """
    return "auto"


@pytest.fixture()
def make_lm(llm_server: FakeLLMServer, lm_transport: str) -> Callable[..., pf.LanguageModel]:
    """Build a LanguageModel on the fake server: ``make_lm("arith", latency_ms=5)``.

    A unique ``tag`` keeps each test's request memory (fail_first...) and the client's
    negotiated-format memory separate. The counter is process-wide: a per-test counter
    with ``id(factory)`` repeated tags once a collected closure's id was reused.
    """

    def factory(
        brain: str = "arith", *, lm_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> pf.LanguageModel:
        options.setdefault("tag", f"{os.getpid()}-{next(_TAGS)}")
        kwargs = {
            "max_retries": 3,
            "retry_min_wait": 0.01,
            "retry_max_wait": 0.2,
            "transport": lm_transport,
        }
        kwargs.update(lm_kwargs or {})
        return pf.LanguageModel(
            model=FakeLLMServer.model(brain, **options),
            api_base=llm_server.base_url,
            api_key="sk-test-secret-key",
            **kwargs,
        )

    return factory


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer")


def arithmetic_data(n: int, offset: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    xs = [{"question": f"What is {i + offset} + {2 * i + 1}?"} for i in range(n)]
    ys = [{"answer": str(3 * i + 1 + offset)} for i in range(n)]
    return xs, ys


@pytest.fixture()
def calc_program(make_lm: Callable[..., pf.LanguageModel]) -> Callable[..., Any]:
    """An async factory of a one-generator arithmetic program, compiled."""

    async def build(brain: str = "arith", optimizer: Any = None, **options: Any) -> pf.Program:
        lm = make_lm(brain, **options)
        inputs = pf.Input(data_model=Query)
        outputs = await pf.Generator(
            data_model=Answer,
            language_model=lm,
            instructions="Answer with a number.",
            name="answer",
        )(inputs)
        program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
        program.compile(
            reward=pf.rewards.ExactMatch(in_mask=["answer"]),
            optimizer=optimizer or pf.optimizers.RandomFewShot(k=2),
            metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
        )
        return program

    return build
