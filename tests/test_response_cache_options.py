"""``cache=False`` and ``cache=<path>`` do what they say, in real processes.

Why: issue 8 made the default response cache persistent on disk and promised that the two other
settings keep working. ``test_response_cache.py`` checks the default; these check the others by
behaviour, not by attribute: with ``cache=False`` a repeated evaluation pays again and nothing is
written to the per-user cache; with ``cache=<path>`` a second process pays for nothing, the
replies live in that file, the per-user cache is untouched, and ``~`` means the home directory
(it once created a directory named ``~`` in the working directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promptfit.language_models.cache import default_cache_path
from promptfit.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parents[1]

_EVALUATE_TWICE = """
import asyncio, json, sys
import promptfit as pf

class Query(pf.DataModel):
    question: str

class Answer(pf.DataModel):
    answer: str

async def main():
    cache = {"False": False}.get(sys.argv[3], sys.argv[3])
    lm = pf.LanguageModel(
        model=sys.argv[1], api_base=sys.argv[2], api_key="sk-test", cache=cache
    )
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(data_model=Answer, language_model=lm, name="answer")(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs)
    program.compile(reward=pf.rewards.ExactMatch())
    xs = [{"question": f"What is {i} + {i}?"} for i in range(6)]
    ys = [{"answer": str(2 * i)} for i in range(6)]
    first = await program.evaluate(xs, ys, verbose=0)
    second = await program.evaluate(xs, ys, verbose=0)
    print(json.dumps([first["lm_calls"], second["lm_calls"], first["reward"]]))

asyncio.run(main())
"""


def _run(server: FakeLLMServer, model: str, cache: str, cwd: Path, home: Path) -> list[Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HOME": str(home),
    }
    done = subprocess.run(
        [sys.executable, "-c", _EVALUATE_TWICE, model, server.base_url, cache],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: list[Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_cache_false_pays_every_time_and_writes_nothing(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    model = FakeLLMServer.model("arith", tag="cache-off")
    for _ in range(2):
        first, second, reward = _run(llm_server, model, "False", tmp_path, tmp_path / "home")
        assert (first, second, reward) == (6, 6, 1.0)
    assert not default_cache_path().exists()


@pytest.mark.parametrize("spelling", ["absolute", "home"])
def test_cache_path_is_shared_by_processes_and_leaves_the_default_alone(
    llm_server: FakeLLMServer, tmp_path: Path, spelling: str
) -> None:
    model = FakeLLMServer.model("arith", tag=f"cache-path-{spelling}")
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    given = str(tmp_path / "mine.sqlite") if spelling == "absolute" else "~/mine.sqlite"
    where = tmp_path / "mine.sqlite" if spelling == "absolute" else home / "mine.sqlite"
    assert _run(llm_server, model, given, work, home)[:2] == [6, 0]
    assert _run(llm_server, model, given, work, home)[:2] == [0, 0]  # a new process pays nothing
    assert where.is_file()
    assert not (work / "~").exists()
    assert not default_cache_path().exists()
