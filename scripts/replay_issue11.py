"""Replay every sub-case listed in issue 11 against today's code and print what each one does.

Why a script and not only tests: the issue lists ~90 concrete inputs (hostile files, bad
arguments, broken stores). The tests guard them one by one; this script replays them all in one
run, on a real fake-LLM server on 127.0.0.1, and prints one line per case: the exception type
it ends in (a promptfit typed error) or the correct behaviour it shows instead. A case that ends
in a raw exception or in the wrong behaviour is marked ``FAIL`` and the exit status is 1.

Usage::

    python scripts/replay_issue11.py            # every case (about a minute)
    python scripts/replay_issue11.py --item 8   # one item

Nothing leaves loopback: every model either points at the local test server or is refused
before any request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import promptfit as pf
from promptfit.callbacks import Callback
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.errors import PromptfitError
from promptfit.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
EVIL = "http://203.0.113.9:5000/v1"  # TEST-NET-3: never routed, and never contacted here


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer")


def data(n: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    x = [{"question": f"What is {i} + {2 * i + 1}?"} for i in range(n)]
    y = [{"answer": str(3 * i + 1)} for i in range(n)]
    return x, y


class Expect:
    """What a case must end in: a typed error (its class) or a correct run (``None``)."""

    def __init__(self, error: type[BaseException] | None, note: str = "") -> None:
        self.error = error
        self.note = note


CASES: list[tuple[int, str, Expect, Callable[[], Any]]] = []


def case(item: int, name: str, error: type[BaseException] | None = PromptfitError) -> Any:
    """Register a case; the function raises the typed error, or returns what it checked."""

    def register(fn: Callable[[], Any]) -> Callable[[], Any]:
        CASES.append((item, name, Expect(error), fn))
        return fn

    return register


# -- shared fixtures -------------------------------------------------------------------------------
class Env:
    server: FakeLLMServer
    work: Path
    tags = iter(range(10**6))


def lm(brain: str = "arith", **options: Any) -> pf.LanguageModel:
    lm_options = {
        k: options.pop(k)
        for k in list(options)
        if k in {"cache", "max_retries", "retry_min_wait", "retry_max_wait", "extra_headers"}
    }
    lm_options.setdefault("cache", False)
    lm_options.setdefault("retry_min_wait", 0.01)
    lm_options.setdefault("retry_max_wait", 0.05)
    options.setdefault("tag", f"replay-{os.getpid()}-{next(Env.tags)}")
    return pf.LanguageModel(
        model=FakeLLMServer.model(brain, **options),
        api_base=Env.server.base_url,
        api_key="sk-replay-secret",
        **lm_options,
    )


async def program(
    model: pf.LanguageModel | None = None, reward: Any = None, **compile_kw: Any
) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(data_model=Answer, language_model=model or lm(), name="answer")(
        inputs
    )
    prog = pf.Program(inputs=inputs, outputs=outputs, name="calc")
    prog.compile(
        reward=reward or pf.rewards.ExactMatch(),
        optimizer=pf.optimizers.RandomFewShot(k=1),
        metrics=[pf.metrics.Accuracy(), pf.metrics.F1Score()],
        **compile_kw,
    )
    return prog


def calls(prog: pf.Program) -> int:
    return sum(m.usage.calls for m in prog.all_language_models())


def fresh_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=Env.work))


# -- item 1: safe mode judges the real route ------------------------------------------------------
def program_file(directory: Path, **lm_config: Any) -> Path:
    model = pf.LanguageModel(model="openai/arith", api_base="http://127.0.0.1:9/v1", name="m")
    inputs = pf.Input(data_model=Query)
    outputs = asyncio.run(pf.Generator(data_model=Answer, language_model=model, name="g")(inputs))
    path = pf.Program(inputs=inputs, outputs=outputs, name="p").save(directory / "p.json")
    document = json.loads(path.read_text())
    document["config"]["modules"]["g"]["config"]["language_model"].update(lm_config)
    path.write_text(json.dumps(document))
    return path


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


ROUTES: list[tuple[str, str | None, dict[str, str]]] = [
    ("oobabooga/http://203.0.113.9:5000", None, {}),  # the reproduction
    ("oobabooga/x", None, {"OOBABOOGA_API_BASE": EVIL}),
    ("ollama/llama3", None, {"OLLAMA_API_BASE": EVIL}),
    ("ollama_chat/llama3", None, {"OLLAMA_API_BASE": EVIL}),
    ("openai/gpt-4o", None, {"OPENAI_BASE_URL": EVIL}),
    ("openai/gpt-4o", None, {"OPENAI_API_BASE": EVIL}),
    ("openai/https://attacker.example/v1", None, {}),
    ("gpt-4o", None, {}),
    ("huggingface/bigcode/starcoder", None, {}),
    ("huggingface/https://x.endpoints.huggingface.cloud", None, {}),
    ("azure/deployment", None, {"AZURE_API_BASE": EVIL}),
    ("azure/deployment", "http://127.0.0.1:9", {}),
    ("bedrock/anthropic.claude", "http://127.0.0.1:9", {}),
    ("custom_openai/x", None, {}),
    ("custom_openai/x", EVIL, {}),
    ("hosted_vllm/x", None, {"HOSTED_VLLM_API_BASE": EVIL}),
    ("lm_studio/x", None, {"LM_STUDIO_API_BASE": EVIL}),
    ("llamafile/x", None, {"LLAMAFILE_API_BASE": EVIL}),
    ("litellm_proxy/x", None, {"LITELLM_PROXY_API_BASE": EVIL}),
    ("text-completion-openai/x", None, {}),
    ("text-completion-openai/x", None, {"OPENAI_API_BASE": EVIL}),
    ("vllm/facebook/opt-125m", None, {}),
    ("github_copilot/gpt-4", "http://127.0.0.1:9/v1", {}),
    ("chatgpt/gpt-5", None, {}),
    ("together_ai/meta-llama/x", None, {}),
    ("nonsense-provider/x", None, {}),
    ("openai/x", "http://127.0.0.1.attacker.example/v1", {}),
    ("openai/x", "http://user@127.0.0.1:9@203.0.113.9/v1", {}),
    ("openai/x", ["http://127.0.0.1:9/v1", EVIL], {}),  # one bad replica
    ("local//etc/passwd.gguf", None, {}),
]


def _route_case(model: str, api_base: Any, env: dict[str, str]) -> Callable[[], Any]:
    def run() -> Any:
        path = program_file(fresh_dir("route"), model=model, api_base=api_base)
        with environ(**env):
            pf.load_program(path)
        return "loaded"

    return run


for _model, _base, _env in ROUTES:
    _label = f"model={_model!r} api_base={_base!r}" + (f" env={sorted(_env)}" if _env else "")
    CASES.append((1, _label, Expect(pf.errors.UnsafeFileError), _route_case(_model, _base, _env)))


@case(1, "file sets base_url / extra_headers (litellm arguments)", pf.errors.UnsafeFileError)
def _file_kwargs() -> Any:
    path = program_file(fresh_dir("route"), base_url=EVIL, extra_headers={"X": "y"})
    pf.load_program(path)


@case(1, "loopback routes still load (hosted_vllm, ollama default, [::1])", None)
def _loopback_loads() -> str:
    for model, base in [
        ("hosted_vllm/x", "http://localhost:8000/v1"),
        ("ollama/llama3", None),
        ("openai/x", "http://[::1]:9/v1"),
    ]:
        pf.load_program(program_file(fresh_dir("route"), model=model, api_base=base))
    return "all three loaded"


@case(1, "allowed_providers=['openai'] at its own endpoint only", None)
def _allowed() -> str:
    hosted = program_file(fresh_dir("route"), model="openai/gpt-4o", api_base=None)
    pf.load_program(hosted, allowed_providers=["openai"])
    elsewhere = program_file(fresh_dir("route"), model="openai/gpt-4o", api_base=EVIL)
    try:
        pf.load_program(elsewhere, allowed_providers=["openai"])
    except pf.errors.UnsafeFileError:
        return "hosted openai loads; the same with a remote api_base is UnsafeFileError"
    raise AssertionError("a remote api_base was allowed")


# -- crashed runs for items 2 and 7 ----------------------------------------------------------------
class Crash(Callback):
    def __init__(self, at: int | None) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.at:
            raise RuntimeError("simulated crash")


def run_callbacks(run: Path, crash: int | None) -> list[Callback]:
    return [
        pf.callbacks.CSVLogger(run / "log.csv"),
        pf.callbacks.ProgramCheckpoint(
            str(run / "ckpt" / "e{epoch}.json"), monitor="reward", keep_top_k=1
        ),
        pf.callbacks.EarlyStopping(monitor="reward", patience=5),
        Crash(crash),
        BackupAndRestore(run / "backup"),
    ]


_TEMPLATE: list[Path] = []


def crashed_run() -> Path:
    """A copy of one run directory whose 3-epoch fit crashed after epoch 1."""
    if not _TEMPLATE:
        template = fresh_dir("template")

        async def go() -> None:
            prog = await program(lm(min_examples=1, tag="replay-template"))
            x, y = data(4)
            await prog.fit(
                x, y, epochs=3, batch_size=2, verbose=0, seed=3,
                callbacks=run_callbacks(template, crash=1),
            )  # fmt: skip

        with contextlib.suppress(RuntimeError):
            asyncio.run(go())
        _TEMPLATE.append(template)
    run = fresh_dir("run") / "run"
    shutil.copytree(_TEMPLATE[0], run, symlinks=True)
    return run


def resume(run: Path) -> pf.History:
    """Resume ``run``; raises the refusal. An LM call paid before a refusal is a failure."""
    programs: list[pf.Program] = []

    async def go() -> pf.History:
        prog = await program(lm(min_examples=1, tag="replay-template"))
        programs.append(prog)
        x, y = data(4)
        return await prog.fit(
            x, y, epochs=3, batch_size=2, verbose=0, seed=3, callbacks=run_callbacks(run, None)
        )

    try:
        return asyncio.run(go())
    except PromptfitError:
        if programs and calls(programs[0]):
            raise AssertionError(f"{calls(programs[0])} LM calls paid before the error") from None
        raise


def edit_backup(run: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    path = run / "backup" / "backup.json"
    document = json.loads(path.read_text())
    edit(document["fit_state"])
    path.write_text(json.dumps(document))


def callback_state(state: dict[str, Any], name: str) -> dict[str, Any]:
    (key,) = [k for k in state["callbacks"] if k.endswith(f":{name}")]
    return state["callbacks"][key]


# -- item 2 ----------------------------------------------------------------------------------------
@case(2, "manifest entry sub/victim.json through a symlinked dir + ProgramCheckpoint.saved")
def _symlink_delete() -> None:
    run = crashed_run()
    outside = run.parent / "outside"
    outside.mkdir()
    victim = outside / "victim.json"
    victim.write_text("precious")
    ckpt = run / "ckpt"
    (ckpt / "sub").symlink_to(outside, target_is_directory=True)
    manifest = json.loads((ckpt / "checkpoints.json").read_text())
    entry = dict(manifest["checkpoints"][0], path="sub/victim.json", value=-1.0, tags=[])
    manifest["checkpoints"].insert(0, entry)
    (ckpt / "checkpoints.json").write_text(json.dumps(manifest))
    edit_backup(
        run, lambda s: callback_state(s, "ProgramCheckpoint")["saved"].insert(0, "sub/victim.json")
    )
    try:
        resume(run)
    finally:
        if victim.read_text() != "precious":
            raise AssertionError("the victim outside the run was deleted or changed")


@case(2, "manifest entry ../outside.json (read by best_checkpoint)")
def _dotdot_read() -> None:
    run = crashed_run()
    path = run / "ckpt" / "checkpoints.json"
    manifest = json.loads(path.read_text())
    manifest["checkpoints"][0]["path"] = "../../outside.json"
    path.write_text(json.dumps(manifest))
    pf.checkpoints.best_checkpoint(run / "ckpt")


# -- item 3 ----------------------------------------------------------------------------------------
@case(3, "two processes resume one backup dir: the second fails at once naming the holder", None)
def _two_processes() -> str:
    work = fresh_dir("lock")
    script = ROOT / "tests" / "_scripts" / "fit_script.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [Env.server.base_url, str(work), "--epochs", "6", "--latency-ms", "150"]
    first = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lock = work / "backup" / ".promptfit.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):
        if time.monotonic() > deadline or first.poll() is not None:
            raise AssertionError("the first run never took the lock")
        time.sleep(0.05)
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True
    )
    took = time.monotonic() - started
    first_running = first.poll() is None
    first.communicate()
    if second.returncode == 0 or "BackupLockedError" not in second.stderr:
        raise AssertionError(f"second run: rc={second.returncode} {second.stderr[-300:]}")
    if f"pid {first.pid}" not in second.stderr or not first_running or first.returncode != 0:
        raise AssertionError("holder not named, or the first run did not finish cleanly")
    with (work / "log.csv").open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    if epochs != list(range(len(epochs))):
        raise AssertionError(f"log.csv epochs interleaved: {epochs}")
    return (
        f"second exited {second.returncode} with BackupLockedError naming pid {first.pid} in "
        f"{took:.1f} s (incl. interpreter start); first exited 0; log.csv epochs {epochs}"
    )


@case(3, "(audit) a symlink planted as the backup dir's lock file", pf.errors.CheckpointError)
def _lock_symlink() -> None:
    directory = fresh_dir("lock") / "b"
    directory.mkdir()
    victim = directory.parent / "victim.txt"
    victim.write_text("precious")
    (directory / ".promptfit.lock").symlink_to(victim)

    async def go() -> None:
        prog = await program()
        x, y = data(2)
        await prog.fit(x, y, epochs=1, verbose=0, callbacks=[BackupAndRestore(directory)])

    try:
        asyncio.run(go())
    finally:
        if victim.read_text() != "precious":
            raise AssertionError("the link's target was written")


@case(3, "two fits in one process on one backup dir", pf.errors.BackupLockedError)
def _two_fits_one_process() -> None:
    directory = fresh_dir("lock") / "b"

    async def go() -> None:
        a, b = await program(), await program()
        x, y = data(4)
        await asyncio.gather(
            a.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(directory)]),
            b.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(directory)]),
        )

    asyncio.run(go())


# -- item 4 ----------------------------------------------------------------------------------------
@case(4, "two fits sharing one LanguageModel count their own lm_calls", None)
def _shared_usage() -> str:
    async def alone(n: int, batch: int) -> list[int]:
        prog = await program(lm(latency_ms=5))
        x, y = data(n)
        hist = await prog.fit(x, y, epochs=2, batch_size=batch, verbose=0, seed=0, shuffle=False)
        return list(hist.history["lm_calls"])

    async def together() -> tuple[list[int], list[int], list[int], list[int]]:
        ref_a, ref_b = await alone(6, 3), await alone(10, 5)
        shared = lm(latency_ms=5)
        a, b = await program(shared), await program(shared)
        xa, ya = data(6)
        xb, yb = data(10)
        ha, hb = await asyncio.gather(
            a.fit(xa, ya, epochs=2, batch_size=3, verbose=0, seed=0, shuffle=False),
            b.fit(xb, yb, epochs=2, batch_size=5, verbose=0, seed=0, shuffle=False),
        )
        return ref_a, ref_b, list(ha.history["lm_calls"]), list(hb.history["lm_calls"])

    ref_a, ref_b, got_a, got_b = asyncio.run(together())
    if (got_a, got_b) != (ref_a, ref_b):
        raise AssertionError(f"alone {ref_a}/{ref_b}, shared {got_a}/{got_b}")
    return f"lm_calls per epoch alone {ref_a} and {ref_b}, shared the same"


# -- item 5 ----------------------------------------------------------------------------------------
@case(5, "extra_headers Authorization / api_key nested / AWS key / URL token never written", None)
def _credentials() -> str:
    secrets = ["hdr-SECRET-1", "nested-SECRET-2", "aws-SECRET-3", "url-SECRET-4"]
    work = fresh_dir("creds")
    model = pf.LanguageModel(
        model=FakeLLMServer.model("arith", tag="replay-creds"),
        api_base=Env.server.base_url,
        api_key="sk-replay-secret",
        cache=False,
        extra_headers={"Authorization": f"Bearer {secrets[0]}"},
        extra_body={"nested": {"api_key": secrets[1]}},
        aws_secret_access_key=secrets[2],
        proxy_url=f"https://u:{secrets[3]}@proxy.example/?token={secrets[3]}",
    )

    async def go() -> None:
        prog = await program(model)
        x, y = data(4)
        await prog.fit(
            x, y, epochs=2, batch_size=2, verbose=0,
            callbacks=[
                pf.callbacks.ProgramCheckpoint(str(work / "ckpt" / "e{epoch}.json")),
                pf.callbacks.CSVLogger(work / "log.csv"),
                BackupAndRestore(work / "backup", delete_checkpoint=False),
            ],
        )  # fmt: skip
        prog.save(work / "program.json")

    asyncio.run(go())
    files = [p for p in work.rglob("*") if p.is_file()]
    leaked = [
        (p.name, s) for p in files for s in [*secrets, "sk-replay-secret"] if s in p.read_text()
    ]
    if leaked:
        raise AssertionError(f"credentials written: {leaked}")
    return f"{len(files)} files written, none holds a credential"


# -- item 6 ----------------------------------------------------------------------------------------
def _unusable_store(breaker: Callable[[Path], None]) -> str:
    from promptfit.observability.enable import disable_observability, enable_observability

    work = fresh_dir("store")
    breaker(work / "mlflow.db")
    old = os.getcwd()
    os.chdir(work)
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            started = time.monotonic()
            enable_observability()
            enabled = time.monotonic() - started

            async def go() -> pf.History:
                prog = await program()
                x, y = data(6)
                return await prog.fit(x, y, epochs=3, batch_size=3, verbose=0)

            started = time.monotonic()
            history = asyncio.run(go())
            fitted = time.monotonic() - started
    finally:
        os.chdir(old)
        disable_observability()
    ours = [str(r.message) for r in records if str(r.message).startswith("promptfit:")]
    if len(ours) != 1 or len(history.epoch) != 3:
        raise AssertionError(f"{len(ours)} promptfit warnings, {len(history.epoch)} epochs")
    return (
        f"enable_observability {enabled:.2f} s, 3-epoch fit {fitted:.2f} s, "
        f"{len(records)} warnings in all, 1 from promptfit"
    )


@case(6, "./mlflow.db is a directory", None)
def _store_directory() -> str:
    return _unusable_store(lambda path: path.mkdir())


@case(6, "./mlflow.db is not a database", None)
def _store_garbage() -> str:
    return _unusable_store(lambda path: path.write_bytes(b"not sqlite\n" * 100))


@case(6, "./mlflow.db read-only (chmod; chattr +i for root), the issue's case", None)
def _store_read_only() -> str:
    import sqlite3

    made: list[Path] = []

    def read_only(path: Path) -> None:
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        made.append(path)
        if os.geteuid() != 0:
            path.chmod(0o444)
            path.parent.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(path)], check=False).returncode:
            raise AssertionError("root cannot make the file read-only here (no chattr +i)")

    try:
        return _unusable_store(read_only)
    finally:
        for path in made:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(path)], check=False)
            path.parent.chmod(0o755)


@case(6, "./mlflow.db that cannot be written (its journal cannot be created)", None)
def _store_unwritable() -> str:
    import sqlite3

    def unwritable(path: Path) -> None:
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        (path.parent / f"{path.name}-journal").mkdir()  # fails for root too

    return _unusable_store(unwritable)


# -- item 7 ----------------------------------------------------------------------------------------
def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(state: dict[str, Any]) -> None:
        node = state
        for key in path[:-1]:
            node = callback_state(node, key[1:]) if str(key).startswith("@") else node[key]
        node[path[-1]] = value

    return apply


BACKUP_EDITS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("epoch: -5", _set("epoch", value=-5)),
    ("epoch: 10**6", _set("epoch", value=10**6)),
    ("step: 10**6", _set("step", value=10**6)),
    ("stop_training: 'no'", _set("stop_training", value="no")),
    ("CSVLogger header 'abc'", _set("@CSVLogger", "header", value="abc")),
    ("metric renamed", _set("metrics", "accuracy", "name", value="evil")),
    ("metric mask changed", _set("metrics", "accuracy", "in_mask", value=["question"])),
    ("reward_total 'x'", _set("reward_total", value="x")),
    ("optimizer calls_measured null", _set("optimizer", "calls_measured", value=None)),
    ("variables of the wrong shape", _set("variables", "answer/examples", value="no")),
    ("ProgramCheckpoint saved ['../x.json']", _set("@ProgramCheckpoint", "saved", value=["../x"])),
    # Found by the audit: values a fit installs or returns only later.
    ("(audit) EarlyStopping best_variables of the wrong shape",
     _set("@EarlyStopping", "best_variables", value={"answer/prompt": "no"})),
    ("(audit) History reward 'x'", _set("@History", "history", "reward", value=["x"])),
    ("(audit) optimizer epoch_incumbents garbage",
     _set("optimizer", "epoch_incumbents", value={"k": {"answer/prompt": 5}})),
]  # fmt: skip


def _backup_case(edit: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
    def run() -> Any:
        directory = crashed_run()
        edit_backup(directory, edit)
        log_before = (directory / "log.csv").read_bytes()
        try:
            resume(directory)
        finally:
            if (directory / "log.csv").read_bytes() != log_before:
                raise AssertionError("log.csv was rewritten")

    return run


for _name, _edit in BACKUP_EDITS:
    CASES.append((7, f"backup {_name}", Expect(pf.errors.CheckpointError), _backup_case(_edit)))


@case(7, "Metric.load_state_dict({'name': 'evil'}) directly", ValueError)
def _metric_rename() -> None:
    pf.metrics.MeanReward().load_state_dict({**pf.metrics.MeanReward().state_dict(), "name": "x"})


# -- item 8 ----------------------------------------------------------------------------------------
_VALID: list[dict[str, Any]] = []


def valid_document() -> dict[str, Any]:
    if not _VALID:
        inputs = pf.Input(data_model=Query)
        generator = pf.Generator(data_model=Answer, language_model=lm(), name="g")
        outputs = asyncio.run(generator(inputs))
        path = pf.Program(inputs=inputs, outputs=outputs, name="p").save(
            fresh_dir("valid") / "valid.json"
        )
        _VALID.append(json.loads(path.read_text()))
    return json.loads(json.dumps(_VALID[0]))


def _file_case(mutate: Callable[[dict[str, Any]], Any] | bytes) -> Callable[[], Any]:
    def run() -> Any:
        path = fresh_dir("file") / "bad.json"
        if isinstance(mutate, bytes):
            path.write_bytes(mutate)
        else:
            document = valid_document()
            mutate(document)
            path.write_text(json.dumps(document))
        pf.load_program(path, safe_mode=False)

    return run


def _lm_cfg(d: dict[str, Any]) -> dict[str, Any]:
    return d["config"]["modules"]["g"]["config"]["language_model"]


def _schema(schema: dict[str, Any], class_name: str = "Query") -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["config"]["nodes"][0]["data_model"].update(
        schema=schema, class_name=class_name
    )


FILE_CASES: list[tuple[str, Callable[[dict[str, Any]], Any] | bytes]] = [
    ("KeyError 'config' (no config)", lambda d: d.pop("config")),
    ("KeyError 'name' (module without name)", lambda d: d["config"]["modules"]["g"]["config"].pop("name")),  # noqa: E501
    ("IndexError (outputs: [])", lambda d: d["config"].update(outputs=[])),
    ("AttributeError (modules a list)", lambda d: d["config"].update(modules=[])),
    ("AttributeError (language_model a string)", lambda d: d["config"]["modules"]["g"]["config"].update(language_model="x")),  # noqa: E501
    ("OverflowError (max_concurrency: Infinity)", lambda d: _lm_cfg(d).update(max_concurrency=float("inf"))),  # noqa: E501
    ("RecursionError (self-referencing $ref)", _schema({"title": "Query", "type": "object", "$defs": {"A": {"$ref": "#/$defs/A"}}, "properties": {"question": {"$ref": "#/$defs/A"}}})),  # noqa: E501
    ("RecursionError (100k-deep JSON)", b"[" * 100_000 + b"]" * 100_000),
    ("PydanticUserError (field named _secret)", _schema({"title": "Q", "type": "object", "properties": {"_secret": {"type": "string"}}}, "NotRegistered")),  # noqa: E501
    ("UnicodeDecodeError (non-UTF-8 file)", b'{"format": "promptfit.program", "version": 1, "x": "\xff"}'),  # noqa: E501
    ("ValueError (5000-digit integer)", b'{"format": "promptfit.program", "version": ' + b"9" * 5000 + b"}"),  # noqa: E501
    ("version: -1 accepted", lambda d: d.update(version=-1)),
    ("version: true accepted", lambda d: d.update(version=True)),
]  # fmt: skip

for _name, _mutate in FILE_CASES:
    CASES.append((8, _name, Expect(pf.errors.SerializationError), _file_case(_mutate)))


def _fifo_case(name: str) -> Callable[[], Any]:
    def run() -> Any:
        directory = fresh_dir("fifo")
        os.mkfifo(directory / name)
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                if name == "program.json":
                    pf.load_program(directory / name)
                else:
                    BackupAndRestore(directory)._read_backup()
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(timeout=10)
        if worker.is_alive():
            with open(os.open(directory / name, os.O_WRONLY | os.O_NONBLOCK), "w"):
                pass
            raise AssertionError(f"reading a FIFO named {name} blocked for 10 s")
        if outcome[0] is not None:
            raise outcome[0]

    return run


CASES.append((8, "FIFO named program.json", Expect(PromptfitError), _fifo_case("program.json")))
CASES.append((8, "FIFO named backup.json", Expect(PromptfitError), _fifo_case("backup.json")))


# -- item 9 ----------------------------------------------------------------------------------------
def _reward_case(value: Any, batch_size: int = 1, **compile_kw: Any) -> Callable[[], Any]:
    def reward(y_true: dict[str, Any], y_pred: dict[str, Any]) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    def run() -> Any:
        async def go() -> pf.History:
            prog = await program(reward=reward, **compile_kw)
            x, y = data(3)
            return await prog.fit(x, y, epochs=1, batch_size=batch_size, verbose=0, seed=0)

        history = asyncio.run(go())
        return f"reward logged {history.history['reward']}"

    return run


for _value, _label in [
    (5, "5"), (-3, "-3"), (float("inf"), "inf"), (None, "None"), ("0.5", "a string"),
    (KeyError("label"), "raises KeyError"),
]:  # fmt: skip
    CASES.append(
        (9, f"reward returns {_label} (batch_size=1)", Expect(pf.errors.RewardError),
         _reward_case(_value))
    )  # fmt: skip
CASES.append(
    (9, "reward raises, reward_errors='record' (a recorded failure)", Expect(None),
     _reward_case(KeyError("label"), reward_errors="record"))
)  # fmt: skip


# -- item 10 ---------------------------------------------------------------------------------------
def _fit_case(**kwargs: Any) -> Callable[[], Any]:
    def run() -> Any:
        holder: list[pf.Program] = []

        async def go() -> None:
            prog = await program()
            holder.append(prog)
            x, y = data(4)
            arguments: dict[str, Any] = {"x": x, "y": y, "epochs": 1, "verbose": 0, **kwargs}
            await prog.fit(**arguments)

        try:
            asyncio.run(go())
        except PromptfitError:
            if calls(holder[0]):
                raise AssertionError("LM calls paid before the error") from None
            raise
        return "accepted"

    return run


FIT_ARGS: list[tuple[str, dict[str, Any]]] = [
    ('validation_split="0.5"', {"validation_split": "0.5"}),
    ('initial_epoch="1"', {"initial_epoch": "1", "epochs": 3}),
    ("seed=object()", {"seed": object()}),
    ('verbose="loud"', {"verbose": "loud"}),
    ("a single callback not in a list", {"callbacks": pf.callbacks.History()}),
    ("epochs=True", {"epochs": True}),
    ("batch_size=True", {"batch_size": True}),
    ("initial_epoch=0.5", {"initial_epoch": 0.5, "epochs": 3}),
    ("validation_batch_size=0", {"validation_batch_size": 0}),
    ("empty validation_data", {"validation_data": ([], [])}),
    ("y rows of {}", {"y": [{}] * 4}),
    ("misspelled field in x", {"x": [{"question": "1+1", "qestion": "typo"}] * 4}),
    ("lone surrogate in x", {"x": [{"question": "bad \ud800"}] * 4}),
    ("(audit) one callback instance twice", {"callbacks": [pf.callbacks.History()] * 2}),
    ("(audit) two BackupAndRestore",
     {"callbacks": [BackupAndRestore("b1"), BackupAndRestore("b2")]}),
]  # fmt: skip
for _name, _kwargs in FIT_ARGS:
    CASES.append((10, f"fit({_name})", Expect(PromptfitError), _fit_case(**_kwargs)))


def _call(fn: Callable[[], Any]) -> Callable[[], Any]:
    return fn


for _name, _fn in [
    ('LanguageModel(max_concurrency="8")', lambda: pf.LanguageModel("openai/x", max_concurrency="8")),  # noqa: E501
    ("LanguageModel(cache=123)", lambda: pf.LanguageModel("openai/x", cache=123)),
    ("LanguageModel(timeout=-1)", lambda: pf.LanguageModel("openai/x", timeout=-1)),
    ('LanguageModel(model="nonsense")', lambda: pf.LanguageModel("nonsense")),
    ('RandomFewShot(k="4")', lambda: pf.optimizers.RandomFewShot(k="4")),
    ('(audit) LanguageModel(cache="")', lambda: pf.LanguageModel("openai/x", cache="")),
    ("evaluate([], [])", lambda: asyncio.run(asyncio.run(program()).evaluate([], [], verbose=0))),
]:  # fmt: skip
    CASES.append((10, _name, Expect(PromptfitError), _call(_fn)))


# -- item 11 ---------------------------------------------------------------------------------------
def _cache_case(prepare: Callable[[Path], Path]) -> Callable[[], Any]:
    from promptfit.language_models.cache import ResponseCache

    def run() -> str:
        path = prepare(fresh_dir("cache"))
        model = lm()
        model.cache = ResponseCache(path=path)

        async def go() -> dict[str, float]:
            prog = await program(model)
            x, y = data(6)
            await prog.evaluate(x, y, verbose=0)
            return await prog.evaluate(x, y, verbose=0)

        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            logs = asyncio.run(go())
        ours = [r for r in records if "response cache" in str(r.message)]
        if len(ours) != 1 or logs["reward"] != 1.0 or logs["failed_calls"]:
            raise AssertionError(f"{len(ours)} cache warnings, logs {logs}")
        return f"1 warning, every call succeeded (reward {logs['reward']}), cache bypassed"

    return run


def _cache_unwritable(directory: Path) -> Path:
    import sqlite3

    path = directory / "cache.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    (directory / "cache.sqlite-journal").mkdir()
    return path


def _cache_not_db(directory: Path) -> Path:
    (directory / "cache.sqlite").write_bytes(b"this is not SQLite" * 100)
    return directory / "cache.sqlite"


CASES.append((11, "unwritable SQLite cache", Expect(None), _cache_case(_cache_unwritable)))
CASES.append((11, "cache pointed at a non-database file", Expect(None), _cache_case(_cache_not_db)))


@case(11, "file's cache path through a symlink out of the working directory")
def _cache_symlink() -> None:
    work = fresh_dir("cachelink")
    outside = fresh_dir("outside")
    (work / "link").symlink_to(outside, target_is_directory=True)
    old = os.getcwd()
    os.chdir(work)
    try:
        path = program_file(work, model="openai/x", api_base="http://127.0.0.1:9/v1")
        document = json.loads(path.read_text())
        _lm_cfg_any(document)["cache"] = "link/c.sqlite"
        path.write_text(json.dumps(document))
        pf.load_program(path)
    finally:
        os.chdir(old)


def _lm_cfg_any(document: dict[str, Any]) -> dict[str, Any]:
    return document["config"]["modules"]["g"]["config"]["language_model"]


# -- item 12 ---------------------------------------------------------------------------------------
_WARNINGS_AS_ERRORS = """
import asyncio, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import promptfit as pf
from promptfit.testing import FakeLLMServer
class Answer(pf.DataModel):
    answer: str
lm = pf.LanguageModel(model=FakeLLMServer.model("arith", fail_first=2, error_status=503,
    tag=sys.argv[2]), api_base=sys.argv[1], api_key="k", cache=False, max_retries=3,
    retry_min_wait=0.01, retry_max_wait=0.05)
async def go():
    return await asyncio.gather(*(lm.generate(
        [{"role": "user", "content": f"What is {i} + 1?"}], Answer) for i in range(40)),
        return_exceptions=True)
results = asyncio.run(go())
failed = sum(isinstance(r, BaseException) or r.error is not None for r in results)
print(failed, lm.usage.retries)
"""


@case(12, "40 calls, 2 transient 503s each, under python -W error", None)
def _warnings_as_errors() -> str:
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _WARNINGS_AS_ERRORS, Env.server.base_url,
         f"replay-w-{os.getpid()}"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(out.stderr[-500:])
    failed, retries = map(int, out.stdout.split()[-2:])
    if failed:
        raise AssertionError(f"{failed}/40 calls failed under -W error")
    return f"0/40 calls failed, {retries} retries"


@case(12, "backoff jitter scales with retry_min_wait", None)
def _jitter() -> str:
    model = pf.LanguageModel("openai/x", retry_min_wait=0.01, retry_max_wait=5.0)
    waits = [model._backoff(1, None) for _ in range(200)]
    if max(waits) > 0.05:
        raise AssertionError(f"first wait up to {max(waits):.3f} s with retry_min_wait=0.01")
    return f"first waits {min(waits):.4f}-{max(waits):.4f} s with retry_min_wait=0.01"


# -- item 13 ---------------------------------------------------------------------------------------
@case(13, "5xx then retried: every request sent is counted in lm_calls; retries logged", None)
def _fault_accounting() -> str:
    model = lm(error_rate=0.2, seed=5, max_retries=4)
    wire = model.model.split("/", 1)[1]
    Env.server.reset(wire)

    async def go() -> dict[str, float]:
        prog = await program(model)
        x, y = data(30)
        return await prog.evaluate(x, y, verbose=0)

    logs = asyncio.run(go())
    sent = Env.server.stats()["by_model"].get(wire, 0)
    if logs["lm_calls"] != sent or "retries" not in logs or logs["retries"] <= 0:
        raise AssertionError(f"server saw {sent}, logs {logs}")
    return f"server saw {sent} requests, logs lm_calls={logs['lm_calls']} retries={logs['retries']}"


@case(13, "every call fails (server answers 500 forever)", pf.errors.LMCallsFailingError)
def _all_fail() -> None:
    async def go() -> None:
        prog = await program(lm(error_rate=1.0, max_retries=1))
        x, y = data(6)
        await prog.fit(x, y, epochs=2, batch_size=3, verbose=0)

    asyncio.run(go())


@case(13, "every call fails, fail_fast=False: one warning, the fit ends", None)
def _all_fail_warn() -> str:
    async def go() -> pf.History:
        prog = await program(lm(error_rate=1.0, max_retries=0))
        x, y = data(6)
        return await prog.fit(x, y, epochs=2, batch_size=3, verbose=0, fail_fast=False)

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        history = asyncio.run(go())
    ours = [str(r.message) for r in records if "fail" in str(r.message).lower()]
    if len(ours) != 1:
        raise AssertionError(f"{len(ours)} warnings: {ours}")
    return f"1 warning; logs failed_calls={history.history['failed_calls']}"


# -- running ---------------------------------------------------------------------------------------
def run_case(expect: Expect, fn: Callable[[], Any]) -> tuple[bool, str]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            result = fn()
    except AssertionError as error:
        return False, f"WRONG: {error}"
    except BaseException as error:  # reporting every outcome is the point
        name = type(error).__name__
        first = str(error).splitlines()[0][:110] if str(error) else ""
        if expect.error is not None and isinstance(error, expect.error):
            return True, f"{name}: {first}"
        tb = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return False, f"RAW {name} at {where}: {first}"
    if expect.error is not None:
        return False, f"no error ({result})"
    return True, f"ok: {result}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item", type=int, action="append", help="only these items")
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="replay-issue11-") as work, FakeLLMServer() as server:
        Env.server, Env.work = server, Path(work)
        os.environ["PROMPTFIT_CACHE_DIR"] = str(Path(work) / "promptfit-cache")
        for item, name, expect, fn in CASES:
            if args.item and item not in args.item:
                continue
            passed, outcome = run_case(expect, fn)
            failures += not passed
            print(f"{'ok  ' if passed else 'FAIL'} item {item:>2} | {name} | {outcome}", flush=True)
    print(f"{failures} case(s) failed" if failures else "every case ends as the issue asks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
