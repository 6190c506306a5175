"""``FakeLLMServer``: run the server in a child process and talk to it (the parent side)."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlencode

import httpx

from .spec import _OPTION_PARSERS, BRAINS

__all__ = ["FakeLLMServer"]


class FakeLLMServer:
    """Run the fake OpenAI-compatible server in a child process and talk to it.

    The server lives in its own process so that it never shares an event loop (or the
    GIL) with the code under test: at high concurrency the client must be the
    bottleneck, not the server.

    Args:
        host: Interface to bind; keep the default loopback address.
        port: TCP port; ``0`` lets the OS pick a free one.
        startup_timeout: Seconds to wait for the child to print ``READY``.
        backlog: Listen backlog of the server socket.
        max_concurrency: Requests served at once, like an inference server's slots (vLLM's
            ``max_num_seqs``, llama.cpp's ``--parallel``); the rest wait. 0: no limit.

    Example:
        >>> import asyncio, litellm
        >>> with FakeLLMServer() as srv:  # doctest: +SKIP
        ...     resp = asyncio.run(
        ...         litellm.acompletion(
        ...             model=FakeLLMServer.model("arith", latency_ms=5),  # "openai/arith?..."
        ...             messages=[{"role": "user", "content": '{"question": "2 + 3"}'}],
        ...             **srv.litellm_kwargs(),  # api_base=srv.base_url, api_key="sk-test"
        ...         )
        ...     )
        ...     print(resp.choices[0].message.content)
        ...     print(srv.stats()["requests"])
        Sure, here is my answer. ... "answer": "5" ...
        1
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 30.0,
        backlog: int = 4096,
        max_concurrency: int = 0,
    ) -> None:
        self.host = host
        self.max_concurrency = max_concurrency
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.backlog = backlog
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._base_url: str | None = None
        self._port: int | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the server process and block until it is listening.

        Returns:
            ``self``, so ``srv = FakeLLMServer().start()`` works.

        Raises:
            RuntimeError: If already started, or the child exits before ``READY``.
            TimeoutError: If ``READY`` does not arrive within ``startup_timeout``.
        """
        if self._proc is not None:
            raise RuntimeError("FakeLLMServer is already started")
        # Files, not pipes: nobody has to drain them, and they outlive this call
        # (closed in ``_cleanup``), so a context manager does not fit.
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # Run the package's __main__.py as a file (same program as ``python -m``) so that
        # starting the server does not import the whole promptfit package and its heavy deps.
        cmd = [
            sys.executable,
            str(Path(__file__).resolve().parent / "__main__.py"),
            "--host",
            self.host,
            "--port",
            str(self._requested_port),
            "--backlog",
            str(self.backlog),
            "--parent-pid",
            str(os.getpid()),
            "--max-concurrency",
            str(self.max_concurrency),
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            line = self._read(self._stdout)
            if "READY " in line:
                url = line.split("READY ", 1)[1].split()[0]
                self._base_url = url
                self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
                break
            code = self._proc.poll()
            if code is not None:
                err = self._read(self._stderr)
                self._cleanup()
                raise RuntimeError(
                    f"fake LLM server exited with code {code} before it was ready; stderr:\n{err}"
                )
            if time.monotonic() > deadline:
                err = self._read(self._stderr)
                self.stop()
                raise TimeoutError(
                    f"fake LLM server not ready after {self.startup_timeout} s; stderr:\n{err}"
                )
            time.sleep(0.01)
        self._client = httpx.Client(
            base_url=f"http://{self.host}:{self._port}", timeout=10.0, trust_env=False
        )
        return self

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._client is not None:
            self._client.close()
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()
        self._proc = None
        self._client = None
        self._stdout = self._stderr = None

    @staticmethod
    def _read(handle: IO[bytes] | None) -> str:
        if handle is None:
            return ""
        handle.seek(0)
        return handle.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- properties --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: pass as litellm's ``api_base``."""
        if self._base_url is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._base_url

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id (``None`` when stopped): benchmarks read its CPU time."""
        return self._proc.pid if self._proc is not None else None

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def model(brain: str, provider: str = "openai", **options: Any) -> str:
        """Build a model name, e.g. ``model("arith", latency_ms=50)``.

        Args:
            brain: One of :data:`BRAINS`.
            provider: litellm provider prefix (``""`` for none).
            **options: Options from the module docstring; booleans become 0/1.

        Returns:
            For example ``"openai/arith?latency_ms=50"``.
        """
        if brain not in BRAINS:
            raise ValueError(f"unknown brain {brain!r}")
        clean = {k: int(v) if isinstance(v, bool) else v for k, v in options.items()}
        unknown = set(clean) - set(_OPTION_PARSERS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        name = f"{brain}?{urlencode(clean)}" if clean else brain
        return f"{provider}/{name}" if provider else name

    def litellm_kwargs(self) -> dict[str, str]:
        """``api_base``/``api_key`` keyword arguments for ``litellm.acompletion``."""
        return {"api_base": self.base_url, "api_key": "sk-test"}

    def _admin(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._client

    def stats(self) -> dict[str, Any]:
        """Counters since start/last reset.

        Returns:
            ``{"requests", "by_model", "injected_errors", "malformed",
            "with_json_schema", "json_schema_rejected", "in_flight", "max_in_flight"}``.
        """
        resp = self._admin().get("/admin/stats")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def reset(self, model: str | None = None) -> None:
        """Zero the counters and forget per-request attempt numbers.

        Args:
            model: If given (as sent on the wire, without provider prefix), only that
                model's attempt memory and ``by_model`` count are cleared, so parallel
                tests using other models are unaffected.
        """
        params = {"model": model} if model is not None else None
        resp = self._admin().post("/admin/reset", params=params)
        resp.raise_for_status()
