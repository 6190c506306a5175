"""A crash-resumable training run, used by the BackupAndRestore SIGKILL tests.

Why a separate script: a real crash must kill a real process, with no chance to run
``finally`` blocks or flush anything. The tests start this file in a subprocess, SIGKILL it at
chosen moments, run it again on the same work directory and compare the final variables and
history with an uninterrupted run (which they may also run in-process through :func:`run`).

Usage::

    python tests/_scripts/fit_script.py BASE_URL WORKDIR [--save-freq epoch|N]
        [--epochs 6] [--latency-ms 20] [--seed 7] [--double-checkpoint]
        [--optimizer random|bootstrap] [--keep-backup]

or, to pay the slow ``import promptfit`` once for many runs, as a fork server::

    python tests/_scripts/fit_script.py --fork-server

which prints ``{"ready": true}``, then for every JSON line ``{"argv": [...], "stderr": PATH}``
on stdin forks a child running ``main(argv)`` (a real, separately killable process) and
prints ``{"pid": PID}``; when a child ends it prints ``{"exit": PID, "code": CODE}`` (``-9``
after SIGKILL). It exits when stdin closes.

Each run trains the fake server's arithmetic program with ``BackupAndRestore(WORKDIR/backup)``,
``CSVLogger(WORKDIR/log.csv)`` and ``EarlyStopping``; then writes
``WORKDIR/result.json`` with the final variables, the optimizer state and the history.
The LM cache is promptfit's default on-disk cache, in ``WORKDIR/cache`` (``PROMPTFIT_CACHE_DIR``),
shared by the killed process and its resume, as a user's per-user cache would be.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import select
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.csv_logger import CSVLogger
from promptfit.callbacks.early_stopping import EarlyStopping
from promptfit.saving.atomic import atomic_write_json
from promptfit.testing import FakeLLMServer


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer")


def data(n: int, offset: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    xs = [{"question": f"What is {i + offset} + {2 * i + 1}?"} for i in range(n)]
    ys = [{"answer": str(3 * i + 1 + offset)} for i in range(n)]
    return xs, ys


def early_stopping() -> EarlyStopping:
    """EarlyStopping(monitor="reward", patience=2): the runs must stop early, so a resume is
    also checked to keep its patience counter. Imported and built without any fallback: a
    missing callback or a changed signature fails the tests instead of silently running them
    without early stopping."""
    return EarlyStopping(monitor="reward", patience=2, mode="max")


def _optimizer(name: str, base_url: str, latency_ms: float) -> pf.optimizers.Optimizer:
    """``random``: RandomFewShot(k=2). ``bootstrap``: BootstrapFewShot with a teacher LM that
    needs no examples; with batches of 2, races stay open over several batches (mid-search)."""
    if name == "random":
        return pf.optimizers.RandomFewShot(k=2)
    teacher = pf.LanguageModel(
        model=FakeLLMServer.model("arith", latency_ms=latency_ms, tag="resume-teacher"),
        api_base=base_url,
        api_key="sk-fake",
        cache=False,
        max_retries=0,
    )
    return pf.optimizers.BootstrapFewShot(
        max_bootstrapped_demos=2, max_labeled_demos=1, teacher=teacher, num_candidates=2
    )


async def build(base_url: str, latency_ms: float, optimizer: str = "random") -> pf.Program:
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", min_examples=2, latency_ms=latency_ms, tag="resume"),
        api_base=base_url,
        api_key="sk-fake",  # the fake server accepts any key
        max_retries=0,
    )
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="answer"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=_optimizer(optimizer, base_url, latency_ms),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    return program


async def run(
    base_url: str,
    workdir: str | os.PathLike[str],
    *,
    save_freq: str | int = "epoch",
    epochs: int = 6,
    latency_ms: float = 20.0,
    seed: int = 7,
    double_checkpoint: bool = False,
    use_backup: bool = True,
    optimizer: str = "random",
    keep_backup: bool = False,
) -> dict[str, Any]:
    """Train once and write (and return) ``WORKDIR/result.json``."""
    workdir = Path(workdir)
    os.environ["PROMPTFIT_CACHE_DIR"] = str(workdir / "cache")
    program = await build(base_url, latency_ms, optimizer)
    # Small on purpose (every LM call costs test time): 2 batches per epoch, 2 validation rows.
    xs, ys = data(4)
    stopper = early_stopping()
    callbacks: list[Any] = [CSVLogger(workdir / "log.csv"), stopper]
    if use_backup:
        # Listed first on purpose: fit must still run it after the others.
        callbacks.insert(
            0,
            BackupAndRestore(
                workdir / "backup",
                save_freq=save_freq,
                double_checkpoint=double_checkpoint,
                delete_checkpoint=not keep_backup,
            ),
        )
    history = await program.fit(
        xs,
        ys,
        epochs=epochs,
        batch_size=2,
        validation_data=data(2, offset=100),
        seed=seed,
        verbose=0,
        callbacks=callbacks,
    )
    optimizer = program.optimizer
    assert optimizer is not None
    result = {
        "variables": program.get_variables(),
        "optimizer": optimizer.state_dict(),
        "history": history.history,
        "epochs": history.epoch,
        "stopped_epoch": stopper.stopped_epoch,
    }
    atomic_write_json(workdir / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("workdir")
    parser.add_argument("--save-freq", default="epoch")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--double-checkpoint", action="store_true")
    parser.add_argument("--optimizer", choices=["random", "bootstrap"], default="random")
    # Keep the final backup: a run killed after its fit ended (before result.json is written)
    # is then run again from the finished state instead of as a new fit.
    parser.add_argument("--keep-backup", action="store_true")
    args = parser.parse_args(argv)
    save_freq: str | int = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
    asyncio.run(
        run(
            args.base_url,
            args.workdir,
            save_freq=save_freq,
            epochs=args.epochs,
            latency_ms=args.latency_ms,
            seed=args.seed,
            double_checkpoint=args.double_checkpoint,
            optimizer=args.optimizer,
            keep_backup=args.keep_backup,
        )
    )
    print(json.dumps({"done": True}), flush=True)
    return 0


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _run_child(argv: list[str], stderr_path: str) -> None:
    """In a forked child: detach from the server's pipes, run ``main``, never return."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err, 2)
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _emit({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


# Modules litellm imports lazily on its first request (~1 s): loaded once in the fork server
# instead of in every child. Best effort: a name missing in another litellm version is skipped.
_LAZY_MODULES = (
    "anyio._backends._asyncio",
    "jiter",
    "openai.resources",
    "litellm._service_logger",
    "litellm.integrations.prometheus_services",
    "litellm.llms.litellm_proxy.chat.transformation",
    "litellm.llms.openai.chat.gpt_audio_transformation",
    "litellm.llms.openai_like.dynamic_config",
    "litellm.proxy._types",
    "litellm.proxy.openai_files_endpoints.common_utils",
)


def fork_server() -> int:
    """Serve fork requests on stdin (see the module docstring); single-threaded, so fork-safe."""
    for name in _LAZY_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    _emit({"ready": True})
    buffer = b""
    while True:
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], 0.02)
        _reap()
        if not readable:
            continue
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_child(request["argv"], request["stderr"])
            _emit({"pid": pid})
    _reap()
    return 0


if __name__ == "__main__":
    sys.exit(fork_server() if sys.argv[1:] == ["--fork-server"] else main())
