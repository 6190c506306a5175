"""``scripts/replay_issue11.py`` keeps working (the audit of issue 11 replays with it).

Only item 8 (program files, no LM call) runs here: the suite guards every case on its own; this
checks that the script itself has not rotted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_replay_script_runs_and_every_case_passes() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "replay_issue11.py"), "--item", "8"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(lines) >= 15 and all(line.startswith("ok") for line in lines)
    assert "every case ends as the issue asks" in out.stdout
