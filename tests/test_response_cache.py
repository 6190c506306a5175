"""The default response cache is on disk: a repeated run pays for no call twice.

Why: a fit that is killed and resumed, or a notebook cell run again, used to re-send every
request the earlier process had answered from its in-memory cache. The default cache is now a
size-bounded SQLite file in promptfit's per-user cache directory (``PROMPTFIT_CACHE_DIR``; each
test gets its own, see conftest). These tests run real evaluations on the test server in
separate processes, bound the file's size, and check that a cache that cannot be used is
reported once and bypassed instead of failing calls or the fit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import promptfit as pf
from promptfit.language_models.cache import ResponseCache, default_cache_path
from promptfit.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parents[1]

_EVALUATE = """
import asyncio, json, sys
import promptfit as pf

class Query(pf.DataModel):
    question: str

class Answer(pf.DataModel):
    answer: str

async def main():
    lm = pf.LanguageModel(model=sys.argv[1], api_base=sys.argv[2], api_key="sk-test")
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(data_model=Answer, language_model=lm, name="answer")(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs)
    program.compile(reward=pf.rewards.ExactMatch())
    xs = [{"question": f"What is {i} + {i}?"} for i in range(8)]
    ys = [{"answer": str(2 * i)} for i in range(8)]
    print(json.dumps(await program.evaluate(xs, ys, verbose=0)))

asyncio.run(main())
"""


def _evaluate_in_a_new_process(server: FakeLLMServer, model: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", _EVALUATE, model, server.base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_second_process_pays_for_nothing_the_first_paid_for(llm_server: FakeLLMServer) -> None:
    model = FakeLLMServer.model("arith", tag="disk-cache")
    first = _evaluate_in_a_new_process(llm_server, model)
    second = _evaluate_in_a_new_process(llm_server, model)
    assert first["reward"] == second["reward"] == 1.0
    assert first["lm_calls"] == 8
    assert second["lm_calls"] == 0
    assert default_cache_path().parent == Path(os.environ["PROMPTFIT_CACHE_DIR"])
    assert default_cache_path().exists()


def test_the_disk_store_is_bounded_and_keeps_the_recently_used(tmp_path: Path) -> None:
    cache = ResponseCache(path=tmp_path / "c.sqlite", max_disk_bytes=20_000)

    async def fill() -> None:
        await cache.put("keep", {"value": {"answer": "x" * 100}})
        for i in range(400):
            await cache.put(f"k{i}", {"value": {"answer": "y" * 100}})
            await cache.get("keep")  # recently used: must survive eviction

    asyncio.run(fill())
    cache.close()
    db = sqlite3.connect(tmp_path / "c.sqlite")
    total, rows = db.execute("SELECT SUM(size), COUNT(*) FROM responses").fetchone()
    kept = db.execute("SELECT COUNT(*) FROM responses WHERE key = 'keep'").fetchone()[0]
    db.close()
    assert total <= 20_000 + 1_000  # the bound, give or take the entries since the last check
    assert 0 < rows < 401
    assert kept == 1


@pytest.mark.parametrize("kind", ["not a database", "a directory", "unwritable", "writes fail"])
def test_an_unusable_cache_warns_once_and_every_call_still_succeeds(
    kind: str,
    tmp_path: Path,
    calc_program: Callable[..., Any],
) -> None:
    path = tmp_path / "cache.sqlite"
    if kind == "not a database":
        path.write_bytes(b"this is not SQLite" * 100)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "writes fail":
        # A valid database that opens and reads but cannot be written, for root too: SQLite
        # cannot create its rollback journal where a directory of that name stands.
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        (tmp_path / "cache.sqlite-journal").mkdir()
    else:
        if os.geteuid() == 0:
            # root writes anywhere; a path under a regular file fails for everyone.
            blocker = tmp_path / "file"
            blocker.write_text("x")
            path = blocker / "cache.sqlite"
        else:
            tmp_path.chmod(0o500)

    async def scenario() -> dict[str, float]:
        program = await calc_program()
        lm = program.all_language_models()[0]
        lm.cache = ResponseCache(path=path)
        xs = [{"question": f"What is {i} + {2 * i + 1}?"} for i in range(6)]
        ys = [{"answer": str(3 * i + 1)} for i in range(6)]
        first = await program.evaluate(xs, ys, verbose=0)
        again = await program.evaluate(xs, ys, verbose=0)  # served from memory
        return {
            "first": first["reward"],
            "failed": first["failed_calls"],
            "again": again["lm_calls"],
        }

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = asyncio.run(scenario())
    ours = [w for w in caught if "response cache" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "cache=False" in str(ours[0].message)
    assert result == {"first": 1.0, "failed": 0, "again": 0}


def test_cache_false_and_a_path_still_work(tmp_path: Path, llm_server: FakeLLMServer) -> None:
    model = FakeLLMServer.model("arith", tag="cache-options")
    off = pf.LanguageModel(model=model, api_base=llm_server.base_url, api_key="k", cache=False)
    assert off.cache is None
    mine = pf.LanguageModel(
        model=model, api_base=llm_server.base_url, api_key="k", cache=tmp_path / "mine.sqlite"
    )
    assert mine.cache is not None and mine.cache.path == tmp_path / "mine.sqlite"
    default = pf.LanguageModel(model=model, api_base=llm_server.base_url, api_key="k")
    assert default.cache is not None and default.cache.path == default_cache_path()
    assert default.get_config()["cache"] is True  # the location is the user's, not the file's
