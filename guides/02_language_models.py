"""Guide 02: language models.

Every LM call in promptfit goes through one class, ``pf.LanguageModel``, and through litellm
behind it. That single choke point is where the things you do not want to rewrite per
project live:

* **Any provider, one string.** ``model`` is a litellm model string: ``"openai/gpt-4o-mini"``,
  ``"anthropic/claude-3-5-haiku-latest"``, ``"ollama/llama3"``, ``"openai/<name>"`` plus
  ``api_base=`` for any OpenAI-compatible server (vLLM, llama.cpp, LM Studio...), or
  ``"local/gemma-3-270m"`` for the embedded offline model. Constructing a client never touches
  the network, but a string litellm cannot route (``"gpt4"`` without a provider) is refused
  there, with ``LMConfigurationError``.
* **Bounded concurrency.** A batch runs its examples concurrently; ``max_concurrency`` caps
  the requests in flight *per model*, so one client can be shared by every module, reward and
  optimizer of a run without tripping the provider's rate limit.
* **Retries that are safe to leave on.** Transient errors (timeouts, 429, 5xx, a reply that
  is not valid JSON for the schema) are retried with jittered exponential backoff that honours
  ``Retry-After``. A call that still fails becomes a recorded failure (``None``, scored 0),
  not an exception: one flaky request must not kill a paid-for epoch. Errors no retry can fix
  (bad key, unknown model) raise ``LMConfigurationError`` at once instead.
* **A cache keyed by the whole request.** Re-running an evaluation costs nothing. The key is a
  hash of model, endpoint, messages, schema and sampling parameters; the API key is never part
  of it. ``cache="file.sqlite"`` makes it persistent across processes.
* **Structured output, negotiated.** The client asks for a JSON-schema ``response_format``;
  if the server answers that it does not support it (whatever the status: 400, 422 or 500),
  it steps down to ``json_object`` with the schema (llama.cpp, vLLM), then a bare
  ``json_object``, then JSON in the text, remembers what works, and validates the reply
  against the data model either way. See docs/concepts/own-server.md.
* **Usage counters.** Calls (every request sent, retries included), tokens, cost, cache hits,
  failures and retries, per model and per ``fit``/``evaluate``.

Run it::

    python guides/02_language_models.py --lm fake
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from _common import backend, cli, describe_backend, language_model, output_dir, section

import promptfit as pf
from promptfit.errors import LMConfigurationError


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer, digits only", max_length=12)


async def build(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number."
    )(inputs)
    return pf.Program(inputs=inputs, outputs=outputs)


QUESTIONS = [{"question": f"What is {i} + {i + 3}?"} for i in range(6)]


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())

    section("1. Model strings and configuration")
    hosted = pf.LanguageModel(model="openai/gpt-4o-mini", api_key="sk-not-a-real-key")
    print(hosted)
    # get_config() is what a saved program stores: note that the key is not in it.
    config = hosted.get_config()
    print("config keys:", sorted(config))
    print("api key in config:", "sk-not-a-real-key" in str(config))

    section("2. Concurrency: max_concurrency caps requests in flight")
    # The fake backend adds 100 ms of latency per request so the effect is visible; the
    # embedded model runs one request at a time whatever the setting (one CPU model).
    # The first request of a process pays for litellm's lazy imports: warm up first.
    await (await build(language_model("arith", tag="warm-up")))(Query(question="What is 1 + 1?"))
    for limit in (1, 6):
        lm = language_model("arith", latency_ms=100, tag=f"c{limit}", max_concurrency=limit)
        program = await build(lm)
        started = time.perf_counter()
        await program.predict(QUESTIONS, batch_size=len(QUESTIONS), verbose=0)
        elapsed = time.perf_counter() - started
        print(f"max_concurrency={limit}: {len(QUESTIONS)} calls in {elapsed:.2f} s")

    section("3. Retries: transient failures are retried, then recorded")
    # fail_first=2: the fake server answers the first two attempts of each request with HTTP
    # 500. The client retries with backoff and the third attempt succeeds.
    flaky = language_model("arith", fail_first=2, max_retries=3, retry_min_wait=0.05)
    program = await build(flaky)
    print("answer:", await program(Query(question="What is 20 + 22?")))
    print("usage :", flaky.usage)
    # With too few retries the call fails, and the failure is a value, not an exception.
    broken = language_model("arith", fail_first=5, tag="broken", max_retries=1)
    generator = (await build(broken)).modules[0]
    generation = await broken.generate(generator.messages(Query(question="What is 1 + 1?")), Answer)
    print("Generation:", generation.value, "| error:", (generation.error or "-")[:80])
    print("usage :", broken.usage)

    section("4. Errors no retry can fix stop the run at once")
    # A typo in the model name: retrying cannot help, so it is an error, not a recorded
    # failure. An unknown local model is caught as soon as the client is built; a provider
    # that rejects the key or the model raises LMConfigurationError at the first call.
    try:
        typo = pf.LanguageModel(model="local/gemma-3-270mm")
        await typo.generate([{"role": "user", "content": "hi"}], Answer)
    except (LMConfigurationError, ValueError) as error:
        print(f"{type(error).__name__}:", str(error)[:110], "...")

    section("5. The response cache")
    lm = language_model("arith")
    program = await build(lm)
    await program(Query(question="What is 7 * 6?"))
    await program(Query(question="What is 7 * 6?"))
    print(f"two identical calls -> calls={lm.usage.calls}, cache_hits={lm.usage.cache_hits}")
    # A persistent cache survives the process: a second client on the same file pays nothing.
    path = output_dir() / "lm_cache.sqlite"
    first = language_model("arith", cache=path)
    await (await build(first))(Query(question="What is 9 * 9?"))
    second = language_model("arith", cache=path)
    await (await build(second))(Query(question="What is 9 * 9?"))
    print(f"new client, same file -> calls={second.usage.calls}, hits={second.usage.cache_hits}")

    section("6. Structured output, negotiated")
    # The promptfit logger says, once, which mode a negotiation settled on.
    logging.basicConfig(stream=sys.stdout, format="  [log] %(message)s")
    logging.getLogger("promptfit").setLevel(logging.INFO)
    # like=llamacpp makes the fake server refuse a json_schema response_format with HTTP 500,
    # as llama-cpp-python's server does; "auto" (the default) then sends json_object with the
    # schema, which that server accepts, and keeps doing so.
    picky = language_model("arith", like="llamacpp", structured_output="auto")
    print("auto      ->", await (await build(picky))(Query(question="What is 5 + 8?")))
    print(
        "mode      ->",
        picky.output_mode,
        "| saved as",
        picky.get_config()["structured_output_mode"],
    )
    # Pinning a mode skips the negotiation ("json_text": the schema in the prompt only).
    text_only = language_model("arith", tag="text", structured_output="json_text")
    print("json_text ->", await (await build(text_only))(Query(question="What is 5 + 9?")))
    # On the embedded model, json_text also turns off the grammar that makes its output valid
    # JSON: a 270M base model then rarely produces the schema, and the call fails (None).
    logging.getLogger("promptfit").setLevel(logging.WARNING)

    section("7. Usage")
    lm = language_model("arith", tag="usage")
    program = await build(lm)
    program.compile(reward=pf.rewards.ExactMatch())
    answers = [{"answer": str(2 * i + 3)} for i in range(len(QUESTIONS))]
    logs = await program.evaluate(QUESTIONS, answers, verbose=0)
    print("evaluate logs :", logs)
    print("lm.usage      :", lm.usage.as_dict())
    # Totals over every LM of the program, its reward and its optimizer:
    print("usage_totals():", program.usage_totals().as_dict())
    if backend() not in ("fake", "local"):
        print("(cost comes from litellm's price table for hosted models)")


if __name__ == "__main__":
    asyncio.run(main())
