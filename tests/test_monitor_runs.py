"""How a Monitor's run begins, continues and ends, against REAL MLflow stores.

Each behaviour is checked on the embedded SQLite store and, where the network matters, on a
real ``mlflow server`` started by this module (behind a fault-injecting HTTP proxy for lost
replies and a hung server). Runs, metrics, inputs and artifacts are read back through
``mlflow.MlflowClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import arithmetic_data
from test_monitor import MlflowServer, OnEpochEnd, _client, _history, _wait_for

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.monitor import Monitor
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.errors import BackupMismatchError
from promptfit.observability.enable import disable_observability
from promptfit.observability.mlflow_backend import mark_reachable

STORES = ["sqlite", pytest.param("server", marks=pytest.mark.mlflow_server)]


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_runs_server"))
    server.start()
    try:
        server.wait()
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True)
def _observability_off() -> Iterator[None]:
    yield
    disable_observability()


@pytest.fixture()
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The tracking URI of the parametrized store (``store`` is ``sqlite`` or ``server``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    server: MlflowServer = request.getfixturevalue("mlflow_server")
    mark_reachable(server.url)
    return server.url


def _fit(program: pf.Program, callbacks: list[Callback], epochs: int, **kwargs: Any) -> Any:
    x, y = arithmetic_data(6)
    return asyncio.run(
        program.fit(x, y, epochs=epochs, batch_size=3, verbose=0, callbacks=callbacks, **kwargs)
    )


def _runs(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else list(client.search_runs([found.experiment_id]))


def _promptfit_warnings(records: list[warnings.WarningMessage]) -> list[str]:
    return [str(r.message) for r in records if "promptfit" in str(r.message)]


class Raise(Callback):
    """Raises ``error`` at the beginning of epoch ``epoch``."""

    def __init__(self, epoch: int, error: BaseException) -> None:
        super().__init__()
        self.epoch, self.error = epoch, error

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            raise self.error


class FaultProxy:
    """An HTTP proxy in front of the MLflow server that can lose replies or hang.

    ``lose_dataset_replies``: the first ``runs/log-inputs`` request is forwarded (MLflow stores
    the data sets) but its reply is dropped; every retry gets the 500 that MLflow answers when
    a retry races the first insert (its UNIQUE constraint). ``hang``: from then on, requests
    are held without an answer until :meth:`close`. ``delay``: seconds each request waits
    before it is forwarded (a slow server that still answers every call); ``delays``: the same
    for the requests whose path ends with a key, e.g. ``{"/runs/create": 3.0}``.
    """

    def __init__(self, target_port: int) -> None:
        proxy = self
        self.target_port = target_port
        self.hang = threading.Event()
        self.release = threading.Event()
        self.lose_dataset_replies = False
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.dataset_requests = 0
        self.held = 0  # requests held by the hang
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.hang.is_set():
                    with proxy.lock:
                        proxy.held += 1
                    proxy.release.wait()
                    self.close_connection = True
                    return
                if proxy.lose_dataset_replies and self.path.endswith("/runs/log-inputs"):
                    with proxy.lock:
                        proxy.dataset_requests += 1
                        first = proxy.dataset_requests == 1
                    if first:
                        proxy.forward(self.command, self.path, self.headers, body)
                        self.close_connection = True  # the reply is lost
                        return
                    error = json.dumps({
                        "error_code": "INTERNAL_ERROR",
                        "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                        "datasets.experiment_id, datasets.name, datasets.digest",
                    }).encode()  # fmt: skip
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                delay = proxy.delay + sum(
                    seconds for end, seconds in proxy.delays.items() if self.path.endswith(end)
                )
                if delay:
                    time.sleep(delay)
                status, headers, data = proxy.forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# -- Monitor(run_id=...) ----------------------------------------------------------------------
@pytest.mark.parametrize("store_uri", STORES, indirect=True)
def test_run_id_continues_the_runs_step_numbers(
    store_uri: str, calc_program: Callable[..., Any]
) -> None:
    program = asyncio.run(calc_program())
    first = Monitor(tracking_uri=store_uri, experiment_name="continued", log_batch_metrics=True)
    _fit(program, [first], epochs=2)
    assert first.run_id is not None
    second = Monitor(
        tracking_uri=store_uri, experiment_name="continued", log_batch_metrics=True,
        run_id=first.run_id,
    )  # fmt: skip
    assert second.get_config()["run_id"] == first.run_id
    _fit(program, [second], epochs=2)

    client = _client(store_uri)
    assert second.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert len(_runs(client, "continued")) == 1
    # Two epochs, then two more: steps 0-3, never a second point at 0 or 1.
    assert [s for s, _ in _history(client, first.run_id, "reward")] == [0, 1, 2, 3]
    # Two batches of 3 per epoch: global batch steps 0-3 in the first fit, 4-7 in the second.
    assert [s for s, _ in _history(client, first.run_id, "batch/reward")] == list(range(8))


# -- a backup at the first epoch end ------------------------------------------------------------
@pytest.mark.mlflow_server
def test_first_backup_knows_the_run_a_slow_server_is_creating(
    mlflow_server: MlflowServer, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """The backup taken at the first epoch end must hold the run id, however slow the server.

    The server answers each call of the run's creation (looking the experiment up, creating
    the run) after 3 s: more than the 5 s the backup used to wait in all, less than the 5 s it
    now allows per unanswered call. Without the id in the backup, the resumed fit after the
    crash started a second run (and registered its prompts again under another run id).
    """
    proxy = FaultProxy(mlflow_server.port)
    proxy.delays = {"/experiments/get-by-name": 3.0, "/runs/create": 3.0}
    mark_reachable(proxy.url)
    backup = BackupAndRestore(backup_dir=tmp_path / "bk")

    async def attempt(crash_at: int) -> Monitor:
        program = await calc_program(tag="slow-create")
        monitor = Monitor(tracking_uri=proxy.url, experiment_name="slow-create")
        x, y = arithmetic_data(6)
        callbacks = [monitor, Raise(crash_at, RuntimeError("crash")), backup]
        with contextlib.suppress(RuntimeError):
            await program.fit(x, y, epochs=2, batch_size=3, verbose=0, callbacks=callbacks)
        return monitor

    try:
        first = asyncio.run(attempt(crash_at=1))
        second = asyncio.run(attempt(crash_at=-1))
    finally:
        proxy.close()
    assert first.run_id is not None and second.run_id == first.run_id
    client = _client(mlflow_server.url)
    assert len(_runs(client, "slow-create")) == 1
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(client, first.run_id, "reward")] == [0, 1]


# -- a refused resume ---------------------------------------------------------------------------
@pytest.mark.parametrize("store_uri", STORES, indirect=True)
def test_refused_resume_leaves_no_extra_run(
    store_uri: str, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    async def attempt(offset: int, crash_at: int) -> Monitor:
        program = await calc_program(tag="refused-resume")
        monitor = Monitor(tracking_uri=store_uri, experiment_name="refused")
        callbacks = [
            ProgramCheckpoint(
                filepath=str(tmp_path / "ckpt" / "calc-{epoch:02d}.json"), monitor="reward",
                save_best_only=True,
            ),
            monitor,
            Raise(crash_at, RuntimeError("simulated crash")),
            BackupAndRestore(backup_dir=tmp_path / "backup"),
        ]  # fmt: skip
        x, y = arithmetic_data(6, offset=offset)
        await program.fit(x, y, epochs=3, batch_size=3, verbose=0, callbacks=callbacks)
        return monitor

    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(attempt(offset=0, crash_at=2))
    client = _client(store_uri)
    [crashed] = _runs(client, "refused")
    assert crashed.info.status == "FAILED"
    # Other data: the backup does not match this fit, so BackupAndRestore refuses it.
    with pytest.raises(BackupMismatchError):
        asyncio.run(attempt(offset=100, crash_at=-1))
    runs = _runs(client, "refused")
    assert [r.info.run_id for r in runs] == [crashed.info.run_id], [
        (r.info.status, r.info.run_id) for r in runs
    ]


# -- the best checkpoint comes from this fit's on_checkpoint_saved events ---------------------
def test_best_checkpoint_is_this_fits_not_the_directorys(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "ckpt"

    def checkpoint(prefix: str) -> ProgramCheckpoint:
        return ProgramCheckpoint(
            filepath=str(folder / f"{prefix}-{{epoch:02d}}.json"), monitor="reward",
            save_best_only=True,
        )  # fmt: skip

    good = asyncio.run(calc_program())  # answers right: reward 1.0
    _fit(good, [checkpoint("old"), Monitor(tracking_uri=uri, experiment_name="best")], epochs=1)
    weak = asyncio.run(calc_program(min_examples=50))  # needs 50 examples: reward 0.0
    monitor = Monitor(tracking_uri=uri, experiment_name="best")
    _fit(weak, [checkpoint("new"), monitor], epochs=1)

    client = _client(uri)
    local = Path(client.download_artifacts(monitor.run_id, "checkpoints", str(tmp_path / "dl")))
    uploaded = sorted(p.name for p in local.rglob("*.json"))
    # The directory's best (old-01.json, reward 1.0) belongs to another fit.
    assert uploaded == ["new-01.json"], uploaded


# -- data sets stored before a reply was lost -------------------------------------------------
@pytest.mark.mlflow_server
def test_dataset_stored_before_a_lost_reply_counts_as_logged(
    mlflow_server: MlflowServer, calc_program: Callable[..., Any]
) -> None:
    proxy = FaultProxy(mlflow_server.port)
    proxy.lose_dataset_replies = True
    mark_reachable(proxy.url)
    try:
        program = asyncio.run(calc_program())
        monitor = Monitor(tracking_uri=proxy.url, experiment_name="lost-reply")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            history = _fit(program, [monitor], epochs=2)
    finally:
        proxy.close()
    assert len(history.epoch) == 2
    assert proxy.dataset_requests >= 2  # the lost reply and the retry that hit the constraint
    assert not _promptfit_warnings(records), _promptfit_warnings(records)  # no outage, no rejection
    client = _client(mlflow_server.url)
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["calc-train"]
    assert [s for s, _ in _history(client, monitor.run_id, "reward")] == [0, 1]


# -- KILLED -----------------------------------------------------------------------------------
@pytest.mark.parametrize("store_uri", STORES, indirect=True)
@pytest.mark.parametrize("how", ["keyboard_interrupt", "cancelled"])
def test_interrupted_fit_ends_the_run_killed(
    store_uri: str, how: str, calc_program: Callable[..., Any]
) -> None:
    program = asyncio.run(calc_program())
    monitor = Monitor(tracking_uri=store_uri, experiment_name="killed-status")
    x, y = arithmetic_data(6)

    if how == "keyboard_interrupt":
        stop = Raise(1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            _fit(program, [monitor, stop], epochs=3)
    else:

        async def cancel_at_epoch_one() -> None:
            async with anyio.create_task_group() as group:

                async def at_epoch(epoch: int) -> None:
                    if epoch == 0:
                        group.cancel_scope.cancel()
                        await anyio.sleep(0)  # the cancellation is delivered here

                async def run_fit() -> None:
                    callbacks = [monitor, OnEpochEnd(at_epoch)]
                    await program.fit(x, y, epochs=3, batch_size=3, verbose=0, callbacks=callbacks)

                group.start_soon(run_fit)

        asyncio.run(cancel_at_epoch_one())

    client = _client(store_uri)
    run_id = monitor.run_id
    assert run_id is not None
    # A cancelled fit never waits for the upload: the worker ends the run in the background.
    assert asyncio.run(_wait_for(lambda: client.get_run(run_id).info.status == "KILLED", 120))
    assert [s for s, _ in _history(client, run_id, "reward")] == [0]


# -- flush_timeout ----------------------------------------------------------------------------
@pytest.mark.mlflow_server
def test_flush_timeout_bounds_the_wait_for_a_hung_server(
    mlflow_server: MlflowServer,
    calc_program: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each hung request would block the worker for 10 minutes: only flush_timeout ends the wait.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")
    proxy = FaultProxy(mlflow_server.port)
    mark_reachable(proxy.url)
    direct = _client(mlflow_server.url)
    monitor = Monitor(tracking_uri=proxy.url, experiment_name="hung", flush_timeout=1.0)
    # A watchdog answers the hung requests two minutes after the hang began: a Monitor that
    # waited for the upload instead of flush_timeout would return only then, its worker done.
    watchdog = threading.Timer(120, proxy.release.set)

    async def hang_after_first_epoch(epoch: int) -> None:
        if epoch == 0:  # once the first upload is complete, the server stops answering
            assert await _wait_for(
                lambda: (
                    monitor.run_id is not None
                    and bool(direct.get_metric_history(monitor.run_id, "reward"))
                    # the configuration is the last thing the first upload sends
                    and bool(direct.list_artifacts(monitor.run_id, "promptfit"))
                ),
                120,
            )
            await anyio.sleep(0.5)  # the worker marks the upload done
            proxy.hang.set()
            watchdog.start()

    before = set(threading.enumerate())
    try:
        program = asyncio.run(calc_program())
        with (
            caplog.at_level(logging.INFO, logger="promptfit"),
            warnings.catch_warnings(record=True) as records,
        ):
            warnings.simplefilter("always")
            history = _fit(program, [monitor, OnEpochEnd(hang_after_first_epoch)], epochs=2)
        # fit returned while this fit's upload was still held by the hung server: the wait
        # was bounded by flush_timeout, not by the upload.
        workers = [
            t
            for t in threading.enumerate()
            if t.name == "promptfit-mlflow-monitor" and t not in before
        ]
        assert workers and all(t.is_alive() for t in workers)
        assert proxy.held >= 1 and not proxy.release.is_set()
    finally:
        watchdog.cancel()
        proxy.close()
    assert len(history.epoch) == 2
    unsent = [r for r in caplog.records if "before the end" in r.getMessage()]
    assert unsent, [r.getMessage() for r in caplog.records]
    assert direct.get_run(monitor.run_id).info.status == "RUNNING"  # the end never arrived
    # The cut-off upload is said once, as the server not answering (whether the hang caught
    # an epoch's upload or only the last one).
    ours = _promptfit_warnings(records)
    assert len(ours) == 1 and "is unreachable" in ours[0], ours


@pytest.mark.mlflow_server
def test_a_slow_server_that_answers_gets_the_whole_last_upload(
    mlflow_server: MlflowServer, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """The end of a fit waits for a server that keeps answering, past ``flush_timeout``.

    Every request is answered, but only after ``proxy.delay`` (a loaded machine, a server
    emptying a long outage's buffer): the last upload (metrics, prompt versions, artifacts,
    the logged model, the run's end) takes many times ``flush_timeout`` in all, while no call
    goes unanswered for that long. It must land in full and end the run FINISHED; a total
    ``flush_timeout`` cut it off and left the run RUNNING for good.
    """
    proxy = FaultProxy(mlflow_server.port)
    mark_reachable(proxy.url)
    direct = _client(mlflow_server.url)
    monitor = Monitor(tracking_uri=proxy.url, experiment_name="slow", flush_timeout=3.0)
    checkpoint = ProgramCheckpoint(
        filepath=str(tmp_path / "ckpt" / "calc-{epoch:02d}.json"), monitor="reward",
        save_best_only=True,
    )  # fmt: skip

    async def slow_down_after_first_epoch(epoch: int) -> None:
        if epoch == 0:
            assert await _wait_for(
                lambda: (
                    monitor.run_id is not None
                    and bool(direct.get_metric_history(monitor.run_id, "reward"))
                ),
                120,
            )
            proxy.delay = 0.4

    try:
        program = asyncio.run(calc_program())
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            history = _fit(
                program, [checkpoint, monitor, OnEpochEnd(slow_down_after_first_epoch)], epochs=2
            )
    finally:
        proxy.close()
    assert len(history.epoch) == 2
    assert not _promptfit_warnings(records), _promptfit_warnings(records)
    run = direct.get_run(monitor.run_id)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(direct, monitor.run_id, "reward")] == [0, 1]
    assert run.data.metrics["usage/calls"] > 0
    assert run.outputs.model_outputs  # the logged model, one of the last things sent
    latest = direct.get_prompt_version_by_alias("calc.answer", "latest-trained")
    assert latest.tags["promptfit.run_id"] == monitor.run_id


# -- items MLflow refuses ---------------------------------------------------------------------
@pytest.mark.parametrize("store_uri", STORES, indirect=True)
def test_params_and_tags_mlflow_refuses_cost_only_themselves(
    store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow refuses a whole ``log_batch`` for one bad item; the others must still land.

    The run already has ``epochs`` with another value (MLflow never changes a param), and one
    tag key resolves to another path: each batch they are in is refused, the upload step
    falls back to one call per item (``upload_steps._send_one_by_one``), drops just those two
    with ONE warning, and sends everything else, across MLflow's 100-item batches.
    """
    import mlflow

    from promptfit.observability import upload_steps
    from promptfit.observability.uploader import RunPlan, RunUploader

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    name = f"refused-{time.monotonic_ns()}"
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    client.log_param(run_id, "epochs", "5")
    plan = RunPlan(
        uri=store_uri, experiment=name, run_name=None, config_payload={}, params={}, tags={},
        model_params={}, dataset_jobs=[], secrets=[], program_name="calc",
    )  # fmt: skip
    uploader = RunUploader(plan)  # the real outbox (its worker waits for a kick that never comes)
    try:
        uploader.run_id = run_id
        many = {f"p{i:03d}": str(i) for i in range(150)}
        uploader.params = {"epochs": "3", **many}
        uploader.tags = {"team": "search", "../escape": "x", "note": "kept"}
        with (
            caplog.at_level(logging.DEBUG, logger="promptfit"),
            warnings.catch_warnings(record=True) as records,
        ):
            warnings.simplefilter("always")
            upload_steps.send_params(uploader, client)
    finally:
        uploader.abandon()
        uploader.thread.join(30)
    assert not uploader.params and not uploader.tags  # nothing left to retry for ever
    run = client.get_run(run_id)
    assert run.data.params == {"epochs": "5", **many}  # the first value is kept
    assert run.data.tags["team"] == "search" and run.data.tags["note"] == "kept"
    assert "../escape" not in run.data.tags
    ours = _promptfit_warnings(records)
    assert len(ours) == 1 and "rejected" in ours[0] and "'epochs'" in ours[0], ours
    rejected = [r.getMessage() for r in caplog.records if "MLflow rejected" in r.getMessage()]
    assert any("param 'epochs'" in m for m in rejected), rejected
    assert any("tag '../escape'" in m for m in rejected), rejected
