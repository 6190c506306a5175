"""The aiohttp app and the command line of the server process (the child side).

Injected failures, malformed replies, latency, server likes and the admin endpoints
(``/admin/stats``, ``/admin/reset``, ``/admin/health``) live here; what the answer *says* is
the brains' job (:mod:`.brains`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .brains import generate_content
from .likes import SERVER_LIKES, format_of
from .spec import BRAINS, ModelSpecError, parse_model
from .stats import _State
from .text import _message_text, _sha256, _unit_float, canonical_json

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["main"]

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def _error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    from aiohttp import web

    err_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "error")
    )
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=dict(headers or {}))


def _build_app(state: _State, max_concurrency: int = 0) -> web.Application:
    from aiohttp import web

    # A real inference server has a fixed number of slots (vLLM's max_num_seqs, llama.cpp's
    # --parallel): requests beyond it wait. ``max_concurrency`` > 0 reproduces that.
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None

    async def chat(request: web.Request) -> web.StreamResponse:
        if slots is not None:
            async with slots:
                return await _counted(request)
        return await _counted(request)

    async def _counted(request: web.Request) -> web.StreamResponse:
        state.stats.in_flight += 1
        state.stats.max_in_flight = max(state.stats.max_in_flight, state.stats.in_flight)
        try:
            return await _chat(request)
        finally:
            state.stats.in_flight -= 1

    async def _chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error_response(400, "Request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error_response(400, "Request must be a JSON object with a 'messages' list.")
        model = body.get("model")
        if not isinstance(model, str):
            return _error_response(400, "Missing 'model'.")
        stats = state.stats
        stats.requests += 1
        stats.by_model[model] = stats.by_model.get(model, 0) + 1
        try:
            spec = parse_model(model)
        except ModelSpecError as exc:
            return _error_response(404, f"The model {model!r} does not exist: {exc}")

        canon = canonical_json(body)
        key = (model, _sha256(canon))
        attempt = state.attempts.get(key, 0)
        state.attempts[key] = attempt + 1
        rf = body.get("response_format")
        wants_schema = isinstance(rf, dict) and rf.get("type") == "json_schema"
        if wants_schema:
            stats.with_json_schema += 1

        if spec.latency_ms > 0:
            await asyncio.sleep(spec.latency_ms / 1000.0)

        if body.get("stream"):
            return _error_response(
                400, "Streaming is not supported by the fake server; set stream=false."
            )
        mode = format_of(body)
        stats.by_format[mode] = stats.by_format.get(mode, 0) + 1
        like = SERVER_LIKES.get(spec.like)
        if like is not None and mode not in like.accepts:
            stats.format_rejected += 1
            return web.json_response(like.error(mode, rf), status=like.status)
        if spec.no_json_schema and wants_schema:
            stats.json_schema_rejected += 1
            return _error_response(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not "
                "supported with this model.",
            )

        seed = str(spec.seed)
        fail = attempt < spec.fail_first or (
            spec.error_rate > 0
            and _unit_float("error", canon, str(attempt), seed) < spec.error_rate
        )
        if fail:
            stats.injected_errors += 1
            headers = {"Retry-After": spec.retry_after} if spec.error_status in {429, 503} else {}
            return _error_response(
                spec.error_status,
                f"Injected failure (attempt {attempt + 1}) from fake server.",
                headers,
            )

        try:
            content, value = generate_content(body, spec)
        except Exception as exc:  # a bug here must surface as a readable 500, not a hang
            return _error_response(
                500, f"Fake server failed to build a reply: {type(exc).__name__}: {exc}"
            )

        malformed = attempt - spec.fail_first < spec.malformed_first or (
            spec.malformed_rate > 0
            and _unit_float("malformed", canon, str(attempt), seed) < spec.malformed_rate
        )
        if malformed:
            stats.malformed += 1
            full = json.dumps(
                value if isinstance(value, dict) and value else {"answer": ""}, ensure_ascii=False
            )
            content = full[: max(2, len(full) // 2)]

        prompt_chars = sum(len(_message_text(m)) for m in body["messages"] if isinstance(m, dict))
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, len(content) // 4)
        payload = {
            "id": "chatcmpl-" + _sha256(canon, str(attempt))[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return web.json_response(payload)

    async def stats_handler(request: web.Request) -> web.Response:
        return web.json_response(state.stats.as_json())

    async def reset_handler(request: web.Request) -> web.Response:
        model = request.query.get("model")
        state.reset(model)
        return web.json_response({"ok": True})

    async def models_handler(request: web.Request) -> web.Response:
        data = [
            {"id": b, "object": "model", "created": 0, "owned_by": "promptfit"}
            for b in sorted(BRAINS)
        ]
        return web.json_response({"object": "list", "data": data})

    async def health_handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_get("/models", models_handler)
    app.router.add_get("/admin/stats", stats_handler)
    app.router.add_post("/admin/reset", reset_handler)
    app.router.add_get("/admin/health", health_handler)
    return app


async def _serve(
    host: str, port: int, backlog: int, parent_pid: int | None, max_concurrency: int = 0
) -> None:
    from aiohttp import web

    state = _State()
    app = _build_app(state, max_concurrency)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog, reuse_address=True)
    await site.start()
    bound_port = runner.addresses[0][1]
    # A wildcard bind is announced as loopback: that is where local clients connect.
    shown_host = host if host not in {"0.0.0.0", "::", ""} else "127.0.0.1"
    sys.stdout.write(f"READY http://{shown_host}:{bound_port}/v1\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            # Why: a test process killed with SIGKILL cannot stop us; do not linger.
            if parent_pid is not None and os.getppid() != parent_pid:
                break
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until SIGTERM/SIGINT.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description="Deterministic OpenAI-compatible fake LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this parent process goes away"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        help="requests served at once; the rest wait (0: no limit)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(args.host, args.port, args.backlog, args.parent_pid, args.max_concurrency)
        )
    return 0
