"""Shared plumbing for the guides and the examples: which language model to use, where to write.

Every guide and example builds its language models with :func:`language_model`, so the same
script runs unchanged on three kinds of backend:

``local`` (the default)
    The embedded offline model, ``pf.LanguageModel(model="local/gemma-3-270m")``. It needs
    ``python scripts/install.py`` (or ``promptfit setup-local``) and nothing else: no server,
    no key, no network. It is a 270M-parameter *base* model, so expect modest scores; it is
    there so that every script runs for real on a laptop.

``fake``
    promptfit's deterministic test server (:class:`promptfit.testing.FakeLLMServer`), a real
    OpenAI-compatible HTTP server on 127.0.0.1, started once per process and stopped at exit.
    Each call of :func:`language_model` picks a *brain* (``arith``, ``sentiment``, ``echo``,
    ``judge``, ``propose``) so the guide's task is answered deterministically, and may pass the
    server's options (``min_examples=2``, ``hint="carefully"``, ``latency_ms=50``,
    ``fail_first=2``...) to simulate a model that needs few-shot examples, a model that needs a
    word in its instructions, a slow model or a flaky one. This is what CI runs.

anything else
    A litellm model string, e.g. ``openai/gpt-4o-mini`` or ``ollama/llama3``. The key comes
    from the provider's usual environment variable (``OPENAI_API_KEY``...), which litellm
    reads itself; ``--api-base`` (or ``PROMPTFIT_GUIDE_API_BASE``) points at a server.

Choose with ``--lm BACKEND`` on the command line or the ``PROMPTFIT_GUIDE_LM`` environment
variable (the flag wins)::

    python guides/04_training.py                  # embedded model
    python guides/04_training.py --lm fake        # deterministic test server
    PROMPTFIT_GUIDE_LM=openai/gpt-4o-mini python guides/04_training.py

Files a script writes go to a fresh temporary directory that is deleted at exit, or to
``--out DIR`` (kept) when you want to look at them afterwards.

Brains and server options only matter on the ``fake`` backend; elsewhere they are ignored,
because they describe the simulated model, not the program.

The guides from 04 on teach training and its callbacks rather than how to build a program
(guide 01 does that), so they share one small task, defined at the end of this file: the
``Query`` and ``Answer`` data models, :func:`arithmetic` for the data and :func:`calculator`
for the compiled program.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import promptfit as pf

__all__ = [
    "FAKE_OPTIONS",
    "LOCAL_MODEL",
    "Answer",
    "Query",
    "add_arguments",
    "arithmetic",
    "backend",
    "calculator",
    "cli",
    "describe_backend",
    "language_model",
    "note_determinism",
    "output_dir",
    "section",
]

LOCAL_MODEL = "local/gemma-3-270m"
ENV_LM = "PROMPTFIT_GUIDE_LM"
ENV_API_BASE = "PROMPTFIT_GUIDE_API_BASE"

#: Options of the fake server (see ``promptfit.testing.fake_server``). They go into the
#: model name on the ``fake`` backend; every other keyword goes to ``pf.LanguageModel``.
FAKE_OPTIONS = frozenset(
    {
        "latency_ms",
        "fail_first",
        "error_rate",
        "error_status",
        "retry_after",
        "malformed_first",
        "malformed_rate",
        "no_json_schema",
        "like",
        "seed",
        "min_examples",
        "hint",
        "text",
        "tag",
    }
)

_settings: argparse.Namespace | None = None
_server: Any = None
_server_lock = threading.Lock()
_out: Path | None = None


# -- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--lm``, ``--api-base`` and ``--out`` to a script's own argument parser."""
    parser.add_argument(
        "--lm",
        default=None,
        help=f"'local' (default, {LOCAL_MODEL}), 'fake' (deterministic test server) or any "
        f"litellm model string. Also read from ${ENV_LM}.",
    )
    parser.add_argument(
        "--api-base",
        default=None,
        help=f"Endpoint for a litellm model string (also ${ENV_API_BASE}).",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="Directory for the files the script writes (kept). Default: a temporary "
        "directory deleted at exit.",
    )
    return parser


def cli(
    doc: str | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse the command line of a guide (``--help`` prints ``doc``) and remember the settings.

    Examples with flags of their own build their parser, call :func:`add_arguments` on it and
    pass it here.
    """
    global _settings
    if parser is None:
        parser = add_arguments(
            argparse.ArgumentParser(
                description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
            )
        )
    _settings = parser.parse_args()
    return _settings


def _current() -> argparse.Namespace:
    global _settings
    if _settings is None:
        # Imported without cli(): read only our own flags and leave the rest alone.
        _settings, _ = add_arguments(argparse.ArgumentParser(add_help=False)).parse_known_args()
    return _settings


def backend() -> str:
    """``"local"``, ``"fake"`` or a litellm model string (flag, then env var, then local)."""
    return _current().lm or os.environ.get(ENV_LM) or "local"


# -- language models -----------------------------------------------------------------------------
def _fake_server() -> Any:
    """The process-wide fake server, started on first use and stopped at exit."""
    global _server
    with _server_lock:
        if _server is None:
            from promptfit.testing import FakeLLMServer

            _server = FakeLLMServer().start()  # registers its own stop() with atexit
        return _server


def language_model(brain: str = "arith", **options: Any) -> pf.LanguageModel:
    """A :class:`promptfit.LanguageModel` on the selected backend.

    Args:
        brain: The fake server's brain that answers this guide's task deterministically
            (``arith``, ``sentiment``, ``echo``, ``judge`` or ``propose``); ignored elsewhere.
        **options: Fake-server options (:data:`FAKE_OPTIONS`, ignored on other backends) and
            ``pf.LanguageModel`` keyword arguments (``max_concurrency``, ``cache``,
            ``max_retries``...), used on every backend.

    Example:
        ```python
        lm = language_model("arith", min_examples=2, max_concurrency=8)
        ```
    """
    fake_options = {k: v for k, v in options.items() if k in FAKE_OPTIONS}
    lm_kwargs = {k: v for k, v in options.items() if k not in FAKE_OPTIONS}
    name = backend()
    if name == "fake":
        from promptfit.testing import FakeLLMServer

        server = _fake_server()
        # Fast retries: the fake server's failures are simulated, waiting proves nothing.
        lm_kwargs.setdefault("retry_min_wait", 0.01)
        lm_kwargs.setdefault("retry_max_wait", 0.1)
        lm_kwargs.setdefault("api_key", "sk-test")  # the fake server accepts any key
        return pf.LanguageModel(
            model=FakeLLMServer.model(brain, **fake_options), api_base=server.base_url, **lm_kwargs
        )
    if name == "local":
        return pf.LanguageModel(model=LOCAL_MODEL, **lm_kwargs)
    api_base = _current().api_base or os.environ.get(ENV_API_BASE)
    if api_base is not None:
        lm_kwargs.setdefault("api_base", api_base)
    return pf.LanguageModel(model=name, **lm_kwargs)


def describe_backend() -> str:
    """One line saying which backend the script runs on."""
    name = backend()
    if name == "fake":
        return f"fake test server at {_fake_server().base_url} (deterministic brains)"
    if name == "local":
        return f"embedded offline model {LOCAL_MODEL}"
    return f"litellm model {name}"


# -- output --------------------------------------------------------------------------------------
def output_dir() -> Path:
    """Where the script writes files: ``--out`` (created, kept) or a temp dir deleted at exit."""
    global _out
    if _out is None:
        out = _current().out
        if out is not None:
            _out = Path(out).resolve()
            _out.mkdir(parents=True, exist_ok=True)
        else:
            _out = Path(tempfile.mkdtemp(prefix="promptfit-guide-"))
            atexit.register(shutil.rmtree, _out, ignore_errors=True)
    return _out


def note_determinism(identical: bool) -> None:
    """Explain why a run may differ from its reference: only deterministic models repeat."""
    if not identical:
        print(
            "  (runs match exactly only with a deterministic model such as the fake backend: "
            "the embedded llama.cpp model's answers can shift with the order it processes "
            "requests in, and hosted models are rarely deterministic)"
        )


def section(title: str) -> None:
    """Print a section heading, so the output reads like the guide."""
    print(f"\n== {title} " + "=" * max(0, 72 - len(title)), flush=True)


# -- the calculator the training guides share -------------------------------------------------
# Guide 01 builds this program step by step; guides 04-13 import it from here, so each of them
# shows only what it teaches. The data models carry no docstrings on purpose: pydantic puts a
# class docstring into the JSON schema, which is part of the prompt the model receives. Keep
# their names too: a saved program refers to its data models by name.


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    # max_length keeps a small model from rambling (see guide 01).
    answer: str = pf.Field(description="The numeric answer, digits only", max_length=12)


def arithmetic(
    n: int, offset: int = 0, *, step: int = 2, start: int = 1
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``n`` addition questions and their answers, as the ``x`` and ``y`` lists ``fit`` takes.

    Question ``i`` is "What is {offset + i} + {start + step * i}?".

    Args:
        n: How many examples.
        offset: Shifts the first operand, so that a validation set (``offset=50``, say) asks
            questions the training set does not.
        step: How fast the second operand grows from one question to the next.
        start: The second operand of the first question. Each guide passes its own ``step``
            and ``start``, so each has data of its own: the numbers a guide prints belong to it
            alone, and changing one guide's data never changes another guide's output.

    Example:
        ```python
        x, y = arithmetic(2, step=3, start=2)
        # x == [{"question": "What is 0 + 2?"}, {"question": "What is 1 + 5?"}]
        # y == [{"answer": "2"}, {"answer": "6"}]
        ```
    """
    pairs = [(i + offset, step * i + start) for i in range(n)]
    return (
        [{"question": f"What is {a} + {b}?"} for a, b in pairs],
        [{"answer": str(a + b)} for a, b in pairs],
    )


async def calculator(
    lm: pf.LanguageModel | None = None,
    *,
    k: int = 2,
    optimizer: pf.optimizers.Optimizer | None = None,
    metrics: list[pf.metrics.Metric] | None = None,
) -> pf.Program:
    """A new calculator program (``Query`` -> generator ``"solver"`` -> ``Answer``), compiled.

    The reward is ``ExactMatch`` on ``answer``: an arithmetic answer is right or wrong. Each
    call builds a fresh program, so a guide can run several trainings side by side or rebuild
    "the same program in a new process" (guides 07 and 12).

    Args:
        lm: The generator's language model. By default a new
            ``language_model("arith", min_examples=2)``: on the fake backend it answers wrongly
            until its prompt holds two examples, which gives training something to fix. Pass a
            model to share it between programs (one cache, one usage count: guide 06) or to
            give it options of its own (a price, a dead endpoint: guide 13).
        k: How many few-shot examples the default ``RandomFewShot`` optimizer tries; guide 09
            compares ``k=1`` with ``k=2``.
        optimizer: Replaces ``RandomFewShot(k=k)``, e.g. guide 04's ``InstructionOptimizer``.
        metrics: Metrics logged beside the reward, e.g.
            ``[pf.metrics.Accuracy(in_mask=["answer"])]``. None by default, so the logs hold
            only the reward and the usage keys. Give each program metric objects of its own: a
            metric keeps state while it is evaluated.

    Example:
        ```python
        program = await calculator(metrics=[pf.metrics.Accuracy(in_mask=["answer"])])
        history = await program.fit(*arithmetic(8), epochs=2, batch_size=4)
        ```
    """
    if lm is None:
        lm = language_model("arith", min_examples=2)
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="solver"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calculator")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=optimizer if optimizer is not None else pf.optimizers.RandomFewShot(k=k),
        metrics=metrics,
    )
    return program
