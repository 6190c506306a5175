"""Load the benchmark data sets with one fixed, documented train/val/test split.

Why a module of its own: several benchmark scripts (optimizers, MLflow tracking) must score on
exactly the same examples, and none of them may let an optimizer or a callback see the test
split. The split is fixed by file and row (see ``benchmarks/data/README.md``), never by a
random draw, so every script and every run agree on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

__all__ = ["DATA_DIR", "SLOTS", "load_split"]

DATA_DIR = Path(__file__).resolve().parent / "data"

SLOTS: tuple[str, ...] = ("date", "time", "people", "first_name", "last_name")
"""Restaurant8k's output fields (each the exact substring of the message, or ``None``)."""

_RESTAURANT_TRAIN_ROWS = 300  # rows 0..299 of train.jsonl train; rows 300..399 validate


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_split(
    dataset: Literal["sst2", "restaurant8k"], split: Literal["train", "val", "test"]
) -> tuple[list[dict], list[dict]]:
    """Return ``(x, y)`` of one split, in file order.

    Args:
        dataset: ``"sst2"`` (x ``{"sentence"}``, y ``{"label"}``) or ``"restaurant8k"``
            (x ``{"text", "requested_slots"}``, y ``{"date", "time", "people",
            "first_name", "last_name"}``).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        Two lists of dicts of equal length.

    Raises:
        ValueError: an unknown dataset or split.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if dataset == "sst2":
        name = {"train": "train", "val": "dev", "test": "test"}[split]
        rows = _read(DATA_DIR / "sst2" / f"{name}.jsonl")
        return [{"sentence": r["sentence"]} for r in rows], [{"label": r["label"]} for r in rows]
    if dataset == "restaurant8k":
        if split == "test":
            rows = _read(DATA_DIR / "restaurant8k" / "test.jsonl")
        else:
            rows = _read(DATA_DIR / "restaurant8k" / "train.jsonl")
            rows = (
                rows[:_RESTAURANT_TRAIN_ROWS] if split == "train" else rows[_RESTAURANT_TRAIN_ROWS:]
            )
        xs = [{"text": r["text"], "requested_slots": list(r["requested_slots"])} for r in rows]
        ys = [{slot: r[slot] for slot in SLOTS} for r in rows]
        return xs, ys
    raise ValueError(f"dataset must be 'sst2' or 'restaurant8k', got {dataset!r}")
