"""``ProgbarLogger``: a tqdm progress bar for fit, evaluate and predict."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

from promptfit.callbacks.callback import Callback

__all__ = ["ProgbarLogger"]

_SHOWN = ("reward", "val_reward", "lm_calls", "failed_calls")


def _fmt(logs: dict[str, Any] | None, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (logs or {}).items():
        if keys is not None and key not in keys:
            continue
        out[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return out


class ProgbarLogger(Callback):
    """Show progress: a bar per epoch (``verbose=1``/``"auto"``) or one line per epoch (2).

    ``"auto"`` falls back to one line per epoch when stderr is not a terminal, so CI logs
    are not flooded with carriage returns.

    Args:
        verbose: ``"auto"``, 1 or 2.
        mode: ``"fit"``, ``"evaluate"`` or ``"predict"``.

    Example:
        ```python
        import promptfit as pf

        bar = pf.callbacks.ProgbarLogger(verbose=2)
        ```
    """

    def __init__(self, verbose: int | str = "auto", mode: str = "fit") -> None:
        super().__init__()
        if verbose == "auto":
            verbose = 1 if sys.stderr.isatty() else 2
        self.verbose = int(verbose)
        self.mode = mode
        self._bar: Any = None

    def _open(self, desc: str) -> None:
        self._close()
        if self.verbose == 1:
            self._bar = tqdm(total=self.params.get("steps"), desc=desc, leave=True, unit="batch")

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _advance(self, logs: dict[str, Any] | None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(_fmt(logs, _SHOWN), refresh=False)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._open(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._advance(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.set_postfix(_fmt(logs, _SHOWN))
        self._close()
        if self.verbose == 2:
            parts = " - ".join(f"{k}: {v}" for k, v in _fmt(logs).items())
            print(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')} - {parts}", flush=True)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.mode == "evaluate":
            self._open("Evaluate")

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.mode == "evaluate":
            self._advance(logs)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.mode == "evaluate":
            self._close()

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._open("Predict")

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._advance(None)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        self._close()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._close()

    def get_config(self) -> dict[str, Any]:
        return {"verbose": self.verbose, "mode": self.mode}
