"""The MLflow UI shows a promptfit run's registered prompt, data set and logged model.

A real browser (Debian's headless ``chromium``) opens the run page that ``mlflow server``
serves for a fit tracked on the SQLite store, lets the page's JavaScript fetch the run
(``--virtual-time-budget``), and the rendered DOM must name the prompt version and the data
set. A screenshot is kept beside the test's temp files for a human to look at. Skipped only
where chromium is not installed (``scripts/_install_chromium.sh`` installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import arithmetic_data
from test_monitor import MlflowServer

from promptfit.callbacks.monitor import Monitor
from promptfit.callbacks.program_checkpoint import ProgramCheckpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile.mkdir()
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
            "--window-size=1400,1800", *extra, url,
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.mlflow_server
def test_run_page_shows_prompt_version_and_dataset(
    calc_program: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    monitor = Monitor(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment_name="ui")

    async def fit() -> None:
        program = await calc_program()
        checkpoint = ProgramCheckpoint(
            filepath=str(tmp_path / "ckpt" / "calc-{epoch:02d}.json"),
            monitor="reward",
            save_best_only=True,
        )
        x, y = arithmetic_data(6)
        await program.fit(x, y, epochs=2, batch_size=3, verbose=0, callbacks=[checkpoint, monitor])

    asyncio.run(fit())
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(monitor.run_id)
    version = client.get_prompt_version_by_alias("calc.answer", "latest-trained").version
    digest = run.inputs.dataset_inputs[0].dataset.digest

    server = MlflowServer(root)
    server.start()
    try:
        server.wait()
        url = f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
        shot = tmp_path / "run_page.png"
        _chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    finally:
        server.kill()
    html = dom.stdout
    assert run.info.run_id in html, dom.stderr[-2000:]
    assert f"calc.answer (v{version})" in html  # "Registered prompts" of the run
    assert f"calc-train ({digest})" in html  # the Datasets panel: name and digest
    assert shot.exists() and shot.stat().st_size > 20_000 and shot.read_bytes()[:4] == b"\x89PNG"
