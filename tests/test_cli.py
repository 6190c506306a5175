"""``promptfit quickstart`` end to end on the test server (the README's main job, minus the
embedded model, which the local-model tests cover)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from promptfit.testing import FakeLLMServer


def _quickstart(server: FakeLLMServer, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUICKSTART_KEY": "sk-test-secret-key"}
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
    done = _quickstart(llm_server, tmp_path / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test accuracy (held out)" in done.stdout
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("test accuracy"))
    before, after = (float(v) for v in line.split()[-3::2])
    assert after > before
    run = tmp_path / "run"
    assert (run / "sentiment.json").exists()
    assert list((run / "checkpoints").glob("sentiment-*.json"))
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"][: len(rows)]
    assert (run / "mlflow.db").exists()
    assert not (run / "backup" / "backup.json").exists()  # deleted after a clean finish
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv"}:
            assert "sk-test-secret-key" not in path.read_text(errors="ignore")
