"""MLflow-native results of a fit (issue 14), on the SQLite store and on a real tracking server.

Each store gets one fit with a ``ProgramCheckpoint`` (so "best" is known) and a validation
split, read back through ``MlflowClient``: prompt versions with their tags and aliases, the
run's linked prompts, the data sets as run inputs, and the program as a logged model. Then a
program loads its prompt back by alias, a crashed-and-resumed fit reuses its versions, and
hostile registry content is refused with a typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import arithmetic_data
from test_monitor import MlflowServer

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.monitor import Monitor
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.errors import ConfigurationError, SerializationError
from promptfit.observability.enable import disable_observability
from promptfit.observability.mlflow_backend import mark_reachable
from promptfit.observability.registry import (
    load_prompts,
    prompt_template,
    prompt_value_from_template,
)

SECRET = "sk-test-secret-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    boot = MlflowServer(tmp_path_factory.mktemp("native_server"))
    boot.start()
    try:
        boot.wait()
        mark_reachable(boot.url)
        yield boot
    finally:
        boot.kill()


@pytest.fixture(params=["sqlite", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "server":
        return str(request.getfixturevalue("server").url)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _observability_off() -> Iterator[None]:
    yield
    disable_observability()


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(client: Any, name: str) -> list[Any]:
    return sorted(client.search_prompt_versions(name), key=lambda v: int(v.version))


class CrashBeforeEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


async def _fit(
    calc_program: Callable[..., Any],
    monitor: Monitor,
    directory: Path,
    extra: list[Callback] | None = None,
    **options: Any,
) -> tuple[pf.Program, Any]:
    program = await calc_program(**options)
    checkpoint = ProgramCheckpoint(
        filepath=str(directory / "ckpt" / "calc-{epoch:02d}.json"), monitor="val_reward",
        save_best_only=True,
    )  # fmt: skip
    x, y = arithmetic_data(8)
    callbacks = [checkpoint, monitor, *(extra or [])]
    history = await program.fit(
        x, y, epochs=3, batch_size=3, verbose=0, validation_split=0.25, callbacks=callbacks, seed=3
    )
    return program, history


def test_trained_prompts_datasets_and_logged_model(
    store: str, calc_program: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = Monitor(tracking_uri=store, experiment_name="native", run_name="native")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        program, history = asyncio.run(_fit(calc_program, monitor, tmp_path))
    ours = [str(r.message) for r in records if str(r.message).startswith("promptfit:")]
    assert not ours, ours
    assert len(history.epoch) == 3
    client = _client(store)
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED"

    # 1. prompt versions: tagged, aliased, linked to the run
    versions = _versions(client, "calc.answer")
    assert versions
    for version in versions:
        tags = version.tags
        assert tags["promptfit.run_id"] == run.info.run_id
        assert tags["promptfit.monitor"] == "val_reward" and float(tags["promptfit.score"]) >= 0
        assert 1 <= int(tags["promptfit.epoch"]) <= 3 and tags["promptfit.module"] == "answer"
    digests = [v.tags["promptfit.digest"] for v in versions]
    assert len(digests) == len(set(digests))  # one version per distinct content
    latest = client.get_prompt_version_by_alias("calc.answer", "latest-trained")
    best = client.get_prompt_version_by_alias("calc.answer", "best")
    final = program.get_module("answer").prompt.value
    assert prompt_value_from_template(latest.template) == final
    assert best.tags["promptfit.epoch"] in {"1", "2", "3"}
    linked = json.loads(run.data.tags["mlflow.linkedPrompts"])
    assert {"name": "calc.answer", "version": str(latest.version)} in linked
    assert SECRET not in json.dumps([v.template for v in versions])

    # 3. data sets as run inputs: training and validation, pandas, digest, source
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation"}
    train, val = inputs["training"], inputs["validation"]
    assert train.name == "calc-train" and val.name == "calc-validation"
    assert train.digest and val.digest and train.digest != val.digest
    assert train.source_type == "code" and train.source
    assert json.loads(train.profile)["num_rows"] == 6 and json.loads(val.profile)["num_rows"] == 2
    columns = {c["name"] for c in json.loads(train.schema)["mlflow_colspec"]}
    assert columns == {"question", "answer"}

    # 4. the program as a logged model: artifacts, metrics linked, output of the run
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    models = [m for m in models if m.source_run_id == run.info.run_id]
    assert len(models) == 1
    model = models[0]
    assert model.name == "calc" and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert files == {"calc.json", "fit_config.json"}
    metrics = {m.key: m.value for m in model.metrics}
    assert metrics["val_reward"] == history.history["val_reward"][-1]
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert SECRET not in "".join(p.read_text() for p in local.rglob("*.json"))

    # 2. a program picks its prompt up from the registry by alias
    saved = tmp_path / "calc.json"
    fresh = asyncio.run(calc_program())
    fresh.get_module("answer").prompt.assign({"instructions": "stale", "examples": []})
    fresh.save(saved)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    loaded = pf.load_program(
        saved,
        language_models={lm.name: lm for lm in fresh.all_language_models()},
        prompts={"answer": "prompts:/calc.answer@latest-trained"},
    )
    assert loaded.get_module("answer").prompt.value == final


def test_each_new_best_is_a_version_and_best_follows_it(
    store: str, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    """A version per new best, holding exactly the prompt of that best's checkpoint file.

    ``accuracy=0.7`` makes the test model's answers depend on the prompt, so the validation
    score climbs over the epochs (0.33, 0.67, 0.67, 1.0 with these seeds) and the checkpoint
    saves three new bests. Each must be a registry version tagged with its epoch and score,
    ``best`` must end on the last of them, and ``latest-trained`` on the final prompt (the
    same content as the last best: the same version, not a copy).
    """
    monitor = Monitor(tracking_uri=store, experiment_name="bests", prompt_name="bests.{module}")
    program = asyncio.run(calc_program(accuracy=0.7, seed=1))
    checkpoint = ProgramCheckpoint(
        filepath=str(tmp_path / "ckpt" / "calc-{epoch:02d}.json"), monitor="val_reward",
        save_best_only=True,
    )  # fmt: skip
    x, y = arithmetic_data(12)
    callbacks = [checkpoint, monitor]
    fit = program.fit(x, y, epochs=4, batch_size=3, verbose=0, validation_split=0.25, seed=3,
                      callbacks=callbacks)  # fmt: skip
    history = asyncio.run(fit)
    saved = sorted((tmp_path / "ckpt").glob("calc-*.json"))
    assert len(saved) >= 2, (history.history["val_reward"], saved)  # else nothing is tested
    client = _client(store)
    versions = _versions(client, "bests.answer")
    by_epoch = {int(v.tags["promptfit.epoch"]): v for v in versions}
    assert len(by_epoch) == len(versions) == len(saved)
    for file in saved:
        epoch = int(file.stem.rsplit("-", 1)[1])
        version = by_epoch[epoch]
        stored = json.loads(file.read_text())["variables"]["answer/prompt"]
        assert prompt_value_from_template(version.template) == stored, epoch
        score = history.history["val_reward"][epoch - 1]
        assert float(version.tags["promptfit.score"]) == score
        assert version.tags["promptfit.monitor"] == "val_reward"
        assert version.tags["promptfit.run_id"] == monitor.run_id
    last = by_epoch[max(by_epoch)]
    best = client.get_prompt_version_by_alias("bests.answer", "best")
    assert best.version == last.version
    latest = client.get_prompt_version_by_alias("bests.answer", "latest-trained")
    assert prompt_value_from_template(latest.template) == program.get_module("answer").prompt.value
    assert latest.version == last.version


def test_resumed_fit_reuses_its_prompt_versions(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    backup = BackupAndRestore(backup_dir=tmp_path / "bk")

    async def attempt(crash_at: int) -> Monitor:
        monitor = Monitor(tracking_uri=store, experiment_name="resume", prompt_name="shop.{module}")
        crash = CrashBeforeEpoch(crash_at)
        with contextlib.suppress(RuntimeError):
            await _fit(calc_program, monitor, tmp_path, [crash, backup], tag="resume-native")
        return monitor

    first = asyncio.run(attempt(crash_at=2))
    client = _client(store)
    before = _versions(client, "shop.answer")
    assert before and client.get_run(first.run_id).info.status == "FAILED"
    second = asyncio.run(attempt(crash_at=-1))
    assert second.run_id == first.run_id
    after = _versions(client, "shop.answer")
    assert [v.version for v in after[: len(before)]] == [v.version for v in before]
    digests = [v.tags["promptfit.digest"] for v in after]
    assert len(digests) == len(set(digests)), digests  # the resume added no duplicate
    assert client.get_prompt_version_by_alias("shop.answer", "latest-trained")
    run = client.get_run(first.run_id)
    contexts = sorted(t.value for d in run.inputs.dataset_inputs for t in d.tags)
    assert contexts == ["training", "validation"]  # logged once, not per attempt


def test_killed_and_resumed_run_adds_no_duplicate_version(
    store: str, llm_server: Any, tmp_path: Path
) -> None:
    """SIGKILL between a new best's registration and that epoch's backup, then resume.

    The killed process registered the epoch-2 best; its last backup is from epoch 1, so the
    resumed fit trains epoch 2 again and saves the same best again. The registry must end with
    one version per distinct prompt of the run (the resume reuses the killed run's version),
    the same MLflow run continued and FINISHED.
    """
    import signal
    import subprocess
    import sys

    script = Path(__file__).parent / "_scripts" / "monitor_kill_script.py"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(script), llm_server.base_url, str(tmp_path), store, *extra]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

    killed = run("--kill-epoch", "1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "result.json").exists()
    client = _client(store)
    before = _versions(client, "killed.answer")
    assert [v.tags["promptfit.epoch"] for v in before] == ["1", "2"]
    run_id = before[0].tags["promptfit.run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # no on_train_end ran

    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["run_id"] == run_id  # the same run continued
    assert client.get_run(run_id).info.status == "FINISHED"
    after = _versions(client, "killed.answer")
    digests = [v.tags["promptfit.digest"] for v in after]
    assert len(digests) == len(set(digests)), [(v.version, v.tags) for v in after]
    assert [v.version for v in after[:2]] == [v.version for v in before]
    assert [v.tags["promptfit.epoch"] for v in after] == ["1", "2", "4"]
    best = client.get_prompt_version_by_alias("killed.answer", "best")
    assert best.version == after[-1].version


def test_off_with_one_argument_each(
    store: str, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    monitor = Monitor(
        tracking_uri=store, experiment_name="off", register_prompts=False, log_datasets=False,
        log_model=False, prompt_name="off.{module}",
    )  # fmt: skip
    asyncio.run(_fit(calc_program, monitor, tmp_path))
    client = _client(store)
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["reward"] >= 0
    assert "off.answer" not in {p.name for p in client.search_prompts()}
    assert not run.inputs.dataset_inputs
    assert not run.outputs.model_outputs and "mlflow.linkedPrompts" not in run.data.tags


def test_monitor_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="prompt_alias"):
        Monitor(prompt_alias="has space")
    with pytest.raises(ConfigurationError, match="best_alias"):
        Monitor(best_alias="7")
    with pytest.raises(ConfigurationError, match="prompt_name"):
        Monitor(prompt_name="{program}.{nope}")
    config = Monitor(prompt_name="shop.{module}", register_prompts=False).get_config()
    assert Monitor.from_config(config).get_config() == config


def test_registry_content_is_untrusted_input(
    store: str, calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    client = _client(store)
    program = asyncio.run(calc_program())
    good = {
        "instructions": "Add.",
        "examples": [{"inputs": {"question": "1+1"}, "outputs": {"answer": "2"}}],
    }
    evil = {"model_name": "evil", "extra_params": {"api_base": "http://8.8.8.8"}}
    client.register_prompt("ok", prompt_template(good), model_config=evil)
    client.register_prompt("text", "Just answer.")
    assert load_prompts(program, {"answer": "prompts:/ok/1"}, tracking_uri=store)
    assert program.get_module("answer").prompt.value == good  # model_config is never read
    generator = asyncio.run(calc_program()).get_module("answer")  # a generator on its own
    assert load_prompts(generator, {"answer": "prompts:/ok@latest"}, tracking_uri=store) == {
        "answer": "prompts:/ok/1"
    }
    assert generator.prompt.value == good
    assert all("8.8.8.8" not in str(lm.get_config()) for lm in program.all_language_models())
    load_prompts(program, {"answer": "prompts:/text/1"}, tracking_uri=store)
    assert program.get_module("answer").prompt.value == {
        "instructions": "Just answer.",
        "examples": [],
    }

    deep = "[" * 5000 + "]" * 5000
    hostile = {
        "roles": [
            {"role": "system", "content": "x"}, {"role": "assistant", "content": "{{inputs}}"},
        ],
        "not_json": [
            {"role": "system", "content": "x"}, {"role": "user", "content": "not json"},
            {"role": "assistant", "content": "{}"}, {"role": "user", "content": "{{inputs}}"},
        ],
        "schema": prompt_template({"instructions": "x", "examples": [
            {"inputs": {"question": "q"}, "outputs": {"wrong_field": 1}}]}),
        "deep": [
            {"role": "system", "content": "x"}, {"role": "user", "content": deep},
            {"role": "assistant", "content": "{}"}, {"role": "user", "content": "{{inputs}}"},
        ],
    }  # fmt: skip
    for name, template in hostile.items():
        client.register_prompt(name, template)
    before = program.get_module("answer").prompt.value
    for name in hostile:
        with pytest.raises(SerializationError, match=f"prompts:/{name}/1"):
            load_prompts(program, {"answer": f"prompts:/{name}/1"}, tracking_uri=store)
    with pytest.raises(SerializationError, match="Could not load"):
        load_prompts(program, {"answer": "prompts:/missing@best"}, tracking_uri=store)
    with pytest.raises(ConfigurationError, match="prompts:/"):
        load_prompts(program, {"answer": "https://evil.example/prompt"}, tracking_uri=store)
    with pytest.raises(pf.errors.VariableValidationError, match="not a generator"):
        load_prompts(program, {"nope": "prompts:/ok/1"}, tracking_uri=store)
    assert program.get_module("answer").prompt.value == before  # nothing was assigned


def test_loading_from_a_missing_or_dead_registry_fails_at_once(
    calc_program: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment whose registry is not there gets a typed error, quickly, and no side effect.

    No store configured: MLflow would create an empty ``./mlflow.db`` only to answer "not
    found"; the file must not appear and the message must say no tracking URI was given. A
    server that answers 503 to everything: MLflow's own default is 7 retries with backoff
    (minutes per prompt); the load must give up after one retry, as the Monitor does.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    program = asyncio.run(calc_program())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SerializationError, match="no tracking_uri was given"):
        load_prompts(program, {"answer": "prompts:/calc.answer@best"})
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(SerializationError, match="does not exist"):
        pf.load_program(
            _saved(program, tmp_path), language_models=_clients(program),
            prompts={"answer": "prompts:/calc.answer@best"},
        )  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists()

    requests: list[str] = []

    class Unavailable(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(SerializationError, match="Could not load"):
            load_prompts(program, {"answer": "prompts:/calc.answer@best"}, tracking_uri=uri)
    finally:
        server.shutdown()
        server.server_close()
    assert 1 <= len(requests) <= 2, requests  # one retry, not MLflow's default seven
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored


def _saved(program: pf.Program, directory: Path) -> Path:
    path = directory / "program.json"
    program.save(path)
    return path


def _clients(program: pf.Program) -> dict[str, Any]:
    return {lm.name: lm for lm in program.all_language_models()}
