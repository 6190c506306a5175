"""``promptfit quickstart`` end to end on the test server (the README's main job, minus the
embedded model, which the local-model tests cover)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from promptfit.testing import FakeLLMServer

SECRET = "sk-test-secret-key"


def _quickstart(server: FakeLLMServer, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUICKSTART_KEY": SECRET}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "promptfit.cli",
            "quickstart",
            "--model",
            FakeLLMServer.model("sentiment", min_examples=2, tag="cli"),
            "--api-base",
            server.base_url,
            "--api-key-env",
            "QUICKSTART_KEY",
            "--out",
            str(out),
            "--verbose",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_quickstart_improves_and_writes_everything(
    llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    # The test server's sentiment "skill" is a keyword vote, which ties the zero-shot answer
    # ("positive") on the default validation reviews (12-23), so a tie keeps the zero-shot
    # prompt; on reviews 20-35 the keyword vote is better, so this split shows the gain.
    done = _quickstart(llm_server, tmp_path / "run", "--train-size", "20", "--val-size", "16")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reviews (train/val/test)   20/16/24" in done.stdout
    assert "test accuracy (held out)" in done.stdout
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("test accuracy"))
    before, after = (float(v) for v in line.split()[-3::2])
    assert after > before
    run = tmp_path / "run"
    assert (run / "sentiment.json").exists()
    assert list((run / "checkpoints").glob("sentiment-*.json"))
    epochs_run = int(
        next(ln for ln in done.stdout.splitlines() if ln.startswith("epochs run")).split()[-1]
    )
    rows = list(csv.DictReader((run / "history.csv").open()))
    # One row per epoch run (EarlyStopping may end the 2-epoch run after epoch 0).
    assert epochs_run >= 1
    assert [r["epoch"] for r in rows] == [str(e) for e in range(epochs_run)]
    assert all(r["val_reward"] not in ("", "NA") for r in rows)
    assert (run / "mlflow.db").exists()
    assert not (run / "backup" / "backup.json").exists()  # deleted after a clean finish
    # The API key is in no file the run wrote: text, JSON, CSV, the MLflow sqlite store and
    # its artifacts, the LM cache, whatever the extension (bytes, so binary files count too).
    written = [path for path in run.rglob("*") if path.is_file()]
    assert {"sentiment.json", "history.csv", "mlflow.db", "lm_cache.sqlite"} <= {
        path.name for path in written
    }
    leaking = [str(path) for path in written if SECRET.encode() in path.read_bytes()]
    assert not leaking
