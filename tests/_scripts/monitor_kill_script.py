"""A fit tracked by a Monitor that kills itself (SIGKILL) right after a prompt registration.

Used by ``tests/test_mlflow_native.py``: issue 14 asks that a killed-and-resumed run adds no
duplicate prompt versions. The dangerous moment is between a new best's registration and the
backup of the same epoch: the process dies with the version in the registry but a backup of the
epoch before, so the resumed fit trains that epoch again and registers the same prompt again.
A callback placed between the Monitor and ``BackupAndRestore`` waits (at the end of epoch
``--kill-epoch``) until the registry holds that epoch's version for this run, then sends
SIGKILL to its own process: no ``finally``, no ``on_train_end``, the run left ``RUNNING``.

Usage::

    python tests/_scripts/monitor_kill_script.py BASE_URL WORKDIR STORE_URI [--kill-epoch N]

Writes ``WORKDIR/result.json`` (``run_id``, ``val_reward`` history) when the fit completes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import promptfit as pf
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.callbacks.callback import Callback
from promptfit.callbacks.monitor import Monitor
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint
from promptfit.saving.atomic import atomic_write_json
from promptfit.testing import FakeLLMServer

PROMPT = "killed.answer"


class Query(pf.DataModel):
    question: str = pf.Field(description="An arithmetic question")


class Answer(pf.DataModel):
    answer: str = pf.Field(description="The numeric answer")


class KillAfterRegistration(Callback):
    """SIGKILL this process at the end of epoch ``epoch``, once its version is registered."""

    def __init__(self, epoch: int, monitor: Monitor, store: str) -> None:
        super().__init__()
        self.epoch, self.monitor, self.store = epoch, monitor, store

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch != self.epoch:
            return
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.store, registry_uri=self.store)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                versions = client.search_prompt_versions(PROMPT)
            except Exception:
                versions = []
            if any(
                v.tags.get("promptfit.run_id") == self.monitor.run_id
                and v.tags.get("promptfit.epoch") == str(epoch + 1)
                for v in getattr(versions, "prompt_versions", versions) or []
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.1)
        print("the version of the killed epoch never appeared", file=sys.stderr)
        os._exit(3)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("store")
    parser.add_argument("--kill-epoch", type=int, default=-1)
    args = parser.parse_args(argv)
    os.environ["PROMPTFIT_CACHE_DIR"] = str(args.workdir / "cache")
    # accuracy=0.7: the answers depend on the prompt, so the validation score climbs and the
    # checkpoint saves several new bests (with these seeds: after epochs 1, 2 and 4).
    lm = pf.LanguageModel(
        model=FakeLLMServer.model("arith", accuracy=0.7, seed=1, tag="killed"),
        api_base=args.base_url,
        api_key="sk-fake",
        max_retries=0,
    )
    inputs = pf.Input(data_model=Query)
    outputs = await pf.Generator(
        data_model=Answer, language_model=lm, instructions="Answer with a number.", name="answer"
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=pf.optimizers.RandomFewShot(k=2),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"])],
    )
    monitor = Monitor(
        tracking_uri=args.store, experiment_name="killed", prompt_name="killed.{module}"
    )
    checkpoint = ProgramCheckpoint(
        filepath=str(args.workdir / "ckpt" / "calc-{epoch:02d}.json"),
        monitor="val_reward",
        save_best_only=True,
    )
    callbacks: list[Callback] = [checkpoint, monitor]
    if args.kill_epoch >= 0:
        callbacks.append(KillAfterRegistration(args.kill_epoch, monitor, args.store))
    callbacks.append(BackupAndRestore(backup_dir=args.workdir / "backup"))
    xs = [{"question": f"What is {i} + {2 * i + 1}?"} for i in range(12)]
    ys = [{"answer": str(3 * i + 1)} for i in range(12)]
    history = await program.fit(
        xs, ys, epochs=4, batch_size=3, verbose=0, validation_split=0.25, seed=3,
        callbacks=callbacks,
    )  # fmt: skip
    atomic_write_json(
        args.workdir / "result.json",
        {"run_id": monitor.run_id, "val_reward": history.history["val_reward"]},
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
