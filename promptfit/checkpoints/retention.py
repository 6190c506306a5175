"""Which checkpoints are best, which carry tags and which files ``keep_top_k`` deletes.

Why pure functions: retention decides which paid-for programs are deleted from disk, so its
rules must be exact and testable without a fit, a file system or a language model. Everything
here works on manifest entries (the dicts of ``checkpoints.json``, see
:mod:`promptfit.checkpoints.manifest`) and small immutable values, and returns new values;
:class:`~promptfit.callbacks.ProgramCheckpoint` does the reading, writing and deleting around
them, and :func:`~promptfit.checkpoints.best_checkpoint` ranks with the same function.

**One rule for ties: the earlier checkpoint stays best.** A later checkpoint is better only when
its value is strictly better (as Keras' ``save_best_only`` and ``EarlyStopping`` decide), so the
``best`` tag, the ``keep_top_k`` ranking and :func:`best_checkpoint` all pick the same file of
two equal ones: the one saved first. "Earlier" is manifest order, which is save order.

**Retention** (``keep_top_k=k``): of the checkpoints one ``ProgramCheckpoint`` wrote, the ``k``
best-ranked are kept, plus the tagged ones (``best``, ``tolerance_<t>``) and the newest one (the
file just announced to ``on_checkpoint_saved`` must exist, and :func:`latest_checkpoint` must
find the run's last state); every other file is deleted. So exactly ``k`` files are kept by
rank, never more because of a tie.

**Tolerances**: for each patience ``t`` the best checkpoint is tagged ``tolerance_t`` until the
monitor goes ``t`` consecutive checks without improving; from then on that tolerance is
*exhausted* and its checkpoint is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "TAG_PREFIXES",
    "Marks",
    "SaveResult",
    "Tolerance",
    "apply_save",
    "best_entry",
    "beyond_top_k",
    "entry_value",
    "improves",
    "initial_marks",
    "no_improvement",
    "ranked",
    "retag",
    "tags_of",
]

Mode = Literal["min", "max"]
Entry = dict[str, Any]

#: Tags this module owns on the entries of a ``ProgramCheckpoint``; other tags are left alone.
TAG_PREFIXES = ("best", "tolerance_")


# -- values and ranking --------------------------------------------------------------------------
def entry_value(entry: Mapping[str, Any], monitor: str | None = None) -> float | None:
    """The value an entry recorded for ``monitor``, or ``None`` when it has no usable one.

    An entry saved while monitoring ``monitor`` (or any entry, when ``monitor`` is ``None``)
    gives its ``value``; an entry saved under another key gives ``metrics[monitor]``. Booleans,
    strings and NaN are not values (NaN is stored as ``null`` anyway).
    """
    if monitor is None or entry.get("monitor") == monitor:
        value = entry.get("value")
    else:
        value = (entry.get("metrics") or {}).get(monitor)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def improves(current: float, reference: float | None, mode: Mode) -> bool:
    """Whether ``current`` is strictly better than ``reference`` (``None``: nothing yet).

    Strict, so a tie never moves the ``best`` tag: the earlier checkpoint stays best. NaN never
    improves. (``ProgramCheckpoint`` decides with its :class:`MetricWatcher`, which applies the
    same rule with ``min_delta=0``.)
    """
    if math.isnan(current):
        return False
    if reference is None:
        return True
    return current > reference if mode == "max" else current < reference


def ranked(entries: Sequence[Entry], mode: Mode, monitor: str | None = None) -> list[Entry]:
    """``entries`` best first: by value, earlier entry first on a tie, valueless ones last."""
    sign = 1.0 if mode == "max" else -1.0

    def key(item: tuple[int, Entry]) -> tuple[bool, float, int]:
        index, entry = item
        value = entry_value(entry, monitor)
        return (value is None, -sign * value if value is not None else 0.0, index)

    return [entry for _, entry in sorted(enumerate(entries), key=key)]


def best_entry(entries: Sequence[Entry], mode: Mode, monitor: str | None = None) -> Entry | None:
    """The best entry by :func:`ranked` (the earliest of equal ones), or ``None`` if none has a
    value."""
    order = ranked(entries, mode, monitor)
    if not order or entry_value(order[0], monitor) is None:
        return None
    return order[0]


def beyond_top_k(
    entries: Sequence[Entry], owned: Iterable[str], k: int, mode: Mode, protected: Iterable[str]
) -> list[Entry]:
    """The entries whose files ``keep_top_k=k`` deletes, in manifest order.

    Only entries whose path is in ``owned`` (written by this checkpoint callback) are
    candidates: other runs sharing the directory keep their files. The ``k`` best-ranked
    candidates and every path in ``protected`` (tagged, newest) are kept.
    """
    mine = set(owned)
    candidates = [entry for entry in entries if entry["path"] in mine]
    keep = {entry["path"] for entry in ranked(candidates, mode)[:k]} | set(protected)
    return [entry for entry in candidates if entry["path"] not in keep]


# -- tags ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """The checkpoint one early-stopping ``patience`` would have ended with, so far."""

    patience: int
    epochs_since_improvement: int = 0
    exhausted: bool = False
    path: str | None = None


@dataclass(frozen=True)
class Marks:
    """The best value and the tagged paths of one ``ProgramCheckpoint`` (its resumable state)."""

    best: float | None = None
    best_path: str | None = None
    tolerances: tuple[Tolerance, ...] = field(default_factory=tuple)


def initial_marks(threshold: float | None, patiences: Iterable[int]) -> Marks:
    """Nothing saved yet: the best is the threshold to beat (or ``None``)."""
    return Marks(threshold, None, tuple(Tolerance(p) for p in sorted(set(patiences))))


def _improvement(marks: Marks, current: float, rel: str) -> Marks:
    tolerances = tuple(
        t if t.exhausted else replace(t, path=rel, epochs_since_improvement=0)
        for t in marks.tolerances
    )
    return Marks(current, rel, tolerances)


def no_improvement(marks: Marks) -> Marks:
    """One more check without improvement: a tolerance that reaches its patience freezes."""
    tolerances = []
    for t in marks.tolerances:
        if not t.exhausted:
            waited = t.epochs_since_improvement + 1
            t = replace(t, epochs_since_improvement=waited, exhausted=waited >= t.patience)
        tolerances.append(t)
    return replace(marks, tolerances=tuple(tolerances))


def _overwritten(marks: Marks, rel: str, is_best: bool) -> Marks:
    """A save to an existing path replaces that file: drop the tags it no longer deserves."""
    best_path = None if marks.best_path == rel and not is_best else marks.best_path
    tolerances = tuple(
        replace(t, path=None) if t.path == rel and not (is_best and not t.exhausted) else t
        for t in marks.tolerances
    )
    return replace(marks, best_path=best_path, tolerances=tolerances)


def tags_of(marks: Marks) -> dict[str, list[str]]:
    """``{path: tags}``: ``best`` first, then ``tolerance_<t>`` by increasing ``t``."""
    tags: dict[str, list[str]] = {}
    if marks.best_path is not None:
        tags.setdefault(marks.best_path, []).append("best")
    for t in marks.tolerances:
        if t.path is not None:
            tags.setdefault(t.path, []).append(f"tolerance_{t.patience}")
    return tags


def retag(entries: Sequence[Entry], owned: Iterable[str], tags: Mapping[str, list[str]]) -> None:
    """Give the owned entries exactly the tags in ``tags`` (other tags of theirs are kept).

    Entries of other runs are not touched. Modifies the given entries in place
    (:func:`apply_save` passes its own copies).
    """
    mine = set(owned)
    for entry in entries:
        if entry["path"] in mine:
            kept = [t for t in entry.get("tags", []) if not t.startswith(TAG_PREFIXES)]
            entry["tags"] = kept + list(tags.get(entry["path"], []))


# -- one save ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SaveResult:
    """What a save changes: the manifest's entries, the owned paths, the marks, the deletes."""

    entries: list[Entry]
    owned: list[str]
    marks: Marks
    doomed: list[Entry]


def apply_save(
    entries: Sequence[Entry],
    owned: Sequence[str],
    marks: Marks,
    entry: Entry,
    *,
    current: float | None,
    is_best: bool,
    keep_top_k: int | None,
    mode: Mode,
) -> SaveResult:
    """Record the checkpoint ``entry`` (already written) and decide what to delete.

    Args:
        entries: The manifest's entries before the save, in save order (missing files
            already pruned).
        owned: Paths this ``ProgramCheckpoint`` wrote earlier, oldest first.
        marks: Best value and tags before the save.
        entry: The new record (see ``make_entry``).
        current: The monitored value of the save (``None`` when the logs lacked it; a NaN
            counts as a check without improvement).
        is_best: Whether ``current`` improves strictly on ``marks.best``.
        keep_top_k: ``None`` keeps every file.
        mode: ``"max"`` or ``"min"``.

    Returns:
        The new entries (the deleted ones removed, tags set), owned paths, marks, and the
        removed entries whose files the caller deletes after writing the manifest.
    """
    rel = entry["path"]
    marks = _overwritten(marks, rel, is_best)
    if current is not None:
        marks = _improvement(marks, current, rel) if is_best else no_improvement(marks)
    # Copies: the caller's entries are left as they were (a manifest that then fails to be
    # written must not keep tags it never recorded).
    new_entries = [dict(e) for e in entries if e["path"] != rel] + [dict(entry)]
    present = {e["path"] for e in new_entries}
    mine = [p for p in owned if p != rel and p in present] + [rel]
    tags = tags_of(marks)
    retag(new_entries, mine, tags)
    doomed: list[Entry] = []
    if keep_top_k is not None:
        doomed = beyond_top_k(new_entries, mine, keep_top_k, mode, {rel, *tags})
        gone = {e["path"] for e in doomed}
        new_entries = [e for e in new_entries if e["path"] not in gone]
        mine = [p for p in mine if p not in gone]
    return SaveResult(new_entries, mine, marks, doomed)
