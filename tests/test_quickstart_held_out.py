"""The quickstart's before/after scores come from reviews nothing in the fit ever saw.

Why: issue 8 found the quickstart reporting accuracy on the validation reviews that
EarlyStopping and ProgramCheckpoint used to pick the best epoch, which flatters the result.
The claim now printed ("test accuracy (held out)") is checked on the wire: the quickstart runs
in a child process against the test server through a recording proxy, and the requests are
split into the evaluation before the fit, the fit, and the evaluation after it. Every test
review is scored before and after; no request of the fit (training batches, the optimizer's
candidate scoring, validation, EarlyStopping and ProgramCheckpoint) carries a test review,
neither as the input nor as a few-shot demonstration.

Through the same proxy, the README's other promise: a quickstart interrupted with Ctrl-C and run
again resumes to the same result, both processes together sending what one run sends (plus the
requests in flight at the interrupt), and a second run of a finished quickstart sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from promptfit.datasets import load_reviews
from promptfit.testing import FakeLLMServer

TRAIN, VAL, TEST = 12, 12, 24  # the quickstart's default split


class RecordingProxy:
    """Forwards every request to ``upstream`` and keeps the request bodies, in order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.bodies: list[str] = []
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST":
            self.bodies.append(body.decode("utf-8"))
        # The upstream base URL ends with /v1, as the request path starts with it.
        root = self.upstream.removesuffix("/v1")
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self._session.request(
            request.method, f"{root}{request.rel_url}", data=body, headers=headers
        ) as reply:
            return web.Response(
                body=await reply.read(), status=reply.status, content_type=reply.content_type
            )

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        assert self._ready.wait(30), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture()
def proxy(llm_server: FakeLLMServer) -> Iterator[RecordingProxy]:
    with RecordingProxy(llm_server.base_url) as recording:
        yield recording


def _carried(body: str, texts: list[str]) -> set[int]:
    """Indices of the ``texts`` that appear in a request body (as JSON strings)."""
    return {i for i, text in enumerate(texts) if json.dumps(text)[1:-1] in body}


def _command(
    proxy: RecordingProxy, out: Path, tag: str = "held-out", *extra: str, **options: object
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "promptfit.cli",
        "quickstart",
        *extra,
        "--model",
        FakeLLMServer.model("sentiment", min_examples=2, tag=tag, **options),
        "--api-base",
        f"{proxy.base_url}/v1",
        "--api-key-env",
        "QUICKSTART_KEY",
        "--out",
        str(out),
        "--no-monitor",
        "--verbose",
        "0",
    ]


_ENV = {**os.environ, "QUICKSTART_KEY": "sk-fake"}

# Runs ``python -m promptfit.cli ...`` with Ctrl-C handled as in a terminal. A process started
# in the background by a shell without job control (a CI runner, `(cmd &)`) inherits SIGINT
# *ignored*; Python then installs no KeyboardInterrupt handler, asyncio.run none of its own, and
# the quickstart would never see the test's Ctrl-C (it ran to the end, exit 0).
_DEFAULT_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'promptfit'; runpy.run_module('promptfit.cli', run_name='__main__')"
)


def _with_default_sigint(command: list[str]) -> list[str]:
    assert command[1:3] == ["-m", "promptfit.cli"], command
    return [command[0], "-c", _DEFAULT_SIGINT, *command[3:]]


def test_the_reported_scores_come_from_reviews_the_fit_never_saw(
    proxy: RecordingProxy, tmp_path: Path
) -> None:
    done = subprocess.run(
        _command(proxy, tmp_path / "run"), capture_output=True, text=True, env=_ENV, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"reviews (train/val/test)   {TRAIN}/{VAL}/{TEST}" in done.stdout

    x, _ = load_reviews()
    texts = [review.review for review in x]
    train, val, test = (
        texts[:TRAIN],
        texts[TRAIN : TRAIN + VAL],
        texts[TRAIN + VAL : TRAIN + VAL + TEST],
    )
    assert len(test) == TEST and not set(test) & set(train + val)
    bodies = proxy.bodies
    assert bodies, "the quickstart sent no request through the proxy"
    with_test = [bool(_carried(body, test)) for body in bodies]
    # The evaluation before the fit: a run of requests each carrying a test review, together
    # all 24 of them; nothing else precedes the fit.
    first_fit = with_test.index(False)
    before = bodies[:first_fit]
    assert set().union(*(_carried(b, test) for b in before)) == set(range(TEST))
    # The fit: not one request carries a test review, as input or demonstration, up to the
    # evaluation after it (which may be served from the cache, so it can be empty).
    last_fit = len(with_test) - 1 - with_test[::-1].index(False)
    fit = bodies[first_fit : last_fit + 1]
    leaked = [i for i, body in enumerate(fit) if _carried(body, test)]
    assert not leaked, f"{len(leaked)} requests of the fit carry a test review"
    # It did train and validate, on the training and validation reviews.
    assert any(_carried(body, train) for body in fit)
    assert any(_carried(body, val) for body in fit)
    assert all(_carried(body, test) for body in bodies[last_fit + 1 :])


def _line(stdout: str, start: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(start))


def test_interrupted_and_repeated_quickstarts_pay_for_nothing_twice(
    proxy: RecordingProxy, tmp_path: Path
) -> None:
    """What the README promises: Ctrl-C and run it again, it resumes and pays for no call
    twice; a second run of the finished quickstart makes no LM call at all.

    Ctrl-C must land while the run still has calls to make after its first epoch's backup.
    On the test server's keyword-vote "skill" the default split's validation reviews tie the
    zero-shot prompt, so the variables never change and everything after epoch 0 is a cache
    hit: the rest of the run takes milliseconds. The 20/16 split changes the variables, so
    the held-out evaluation after the fit makes 24 new calls, at 200 ms each.
    """

    def command(out: Path) -> list[str]:
        split = ("--train-size", "20", "--val-size", "16")
        return _command(proxy, out, "resume", *split, latency_ms=200)

    done = subprocess.run(
        command(tmp_path / "whole"),
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    whole = len(proxy.bodies)
    accuracy = _line(done.stdout, "test accuracy")

    # Ctrl-C once the first epoch is backed up, then the same command again.
    out = tmp_path / "interrupted"
    sent = len(proxy.bodies)
    run = subprocess.Popen(
        _with_default_sigint(command(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    deadline = time.monotonic() + 120
    while True:
        assert run.poll() is None, "the quickstart ended before it could be interrupted"
        assert time.monotonic() < deadline, "no epoch backup in 120 s"
        try:
            if json.loads((out / "backup" / "backup.json").read_text())["fit_state"]["epoch"]:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.005)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stdout + stderr
    assert "run the same command again" in stdout.lower()
    assert "Traceback" not in stderr
    resumed = subprocess.run(command(out), capture_output=True, text=True, env=_ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _line(resumed.stdout, "test accuracy") == accuracy
    # Both processes together sent what one run sends, plus at most the requests that were in
    # flight, unanswered, when Ctrl-C came (the quickstart keeps at most 32 in flight).
    assert whole <= len(proxy.bodies) - sent <= whole + 32

    # The finished quickstart again: every reply is in its cache.
    sent = len(proxy.bodies)
    again = subprocess.run(command(out), capture_output=True, text=True, env=_ENV, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(proxy.bodies) == sent
    assert _line(again.stdout, "LM calls (cache hits)").split()[-2] == "0"
    assert _line(again.stdout, "test accuracy") == accuracy
