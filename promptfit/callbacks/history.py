"""``History``: the per-epoch logs of a fit, returned by ``fit``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from promptfit.callbacks.callback import Callback

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["History"]


class History(Callback):
    """Records every epoch's logs; ``fit`` adds one automatically and returns it.

    Attributes:
        history: ``{log key: [value per epoch]}``; a key missing in some epochs holds ``None``
            there, so every list has one entry per epoch.
        epoch: The epoch indices recorded.

    Example:
        ```python
        import promptfit as pf

        history = pf.callbacks.History()
        history.on_epoch_end(0, {"reward": 0.5})
        history.to_dataframe()
        ```
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        n = len(self.epoch)
        self.epoch.append(epoch)
        for key in [*logs, *(k for k in self.history if k not in logs)]:
            column = self.history.setdefault(key, [None] * n)
            column.append(logs.get(key))

    def to_dataframe(self) -> pd.DataFrame:
        """The history as a DataFrame indexed by epoch."""
        import pandas as pd  # here: importing pandas is a large part of ``import promptfit``

        return pd.DataFrame(self.history, index=pd.Index(self.epoch, name="epoch"))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = list(state["epoch"])
