"""Retention rules of ``checkpoints/retention.py``, tested as the pure functions they are.

Why property tests: retention deletes paid-for programs from disk, and its bugs hide in the
combinations (ties, missing values, NaN, overwritten paths, tolerances that run out while a
better checkpoint appears later). Hypothesis drives whole save sequences through
:func:`apply_save` and checks each step against a model written independently here: the
earliest of the equal-best values is best, exactly ``k`` files are kept by rank plus the
newest and the tagged ones, and each ``tolerance_t`` tag sits where an early stop with
patience ``t`` would have left the run. ``test_program_checkpoint.py`` checks the same rules
through ``ProgramCheckpoint`` and real fits.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from promptfit.callbacks._monitoring import MetricMonitor
from promptfit.checkpoints import retention
from promptfit.checkpoints.manifest import make_entry

# Few distinct values so ties are common; None is a save whose logs lacked the monitor.
VALUES = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.none(), st.just(float("nan")))
MODES = st.sampled_from(["max", "min"])


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _simulate(
    values: list[float | None],
    mode: str,
    k: int | None,
    patiences: list[int],
    paths: list[str] | None = None,
) -> list[tuple[retention.SaveResult, list[str]]]:
    """Run one save per value through apply_save; returns each step's result and its path."""
    monitor = MetricMonitor("score", mode, 0.0, owner="test")
    entries: list[dict[str, Any]] = []
    owned: list[str] = []
    marks = retention.initial_marks(None, patiences)
    steps = []
    for index, value in enumerate(values):
        rel = paths[index] if paths else f"c-{index}.json"
        is_best = value is not None and monitor.improved(value, marks.best)
        entry = make_entry(
            rel,
            epoch=index + 1,
            batch=None,
            monitor="score",
            mode=mode,
            value=value,
            metrics={"score": value},
            kind="program",
        )
        result = retention.apply_save(
            entries, owned, marks, entry, current=value, is_best=is_best, keep_top_k=k, mode=mode
        )
        entries, owned, marks = result.entries, result.owned, result.marks
        # A snapshot: the next save re-tags the same entry dicts in place.
        steps.append((copy.deepcopy(result), [e["path"] for e in entries]))
    return steps


def _expected_best(values: list[float | None], mode: str) -> int | None:
    """The earliest index holding the best finite value."""
    best: int | None = None
    for index, value in enumerate(values):
        if _finite(value) and (best is None or _better(value, values[best], mode)):  # type: ignore[arg-type]
            best = index
    return best


def _expected_tolerance(values: list[float | None], mode: str, patience: int) -> int | None:
    """Where ``EarlyStopping(patience)`` would stop: its best index when it runs out."""
    best: int | None = None
    wait = 0
    for index, value in enumerate(values):
        if value is None:
            continue  # no value, no check
        if not math.isnan(value) and (best is None or _better(value, values[best], mode)):  # type: ignore[arg-type]
            best, wait = index, 0
        else:
            wait += 1
            if wait >= patience:
                return best
    return best


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=12), MODES)
def test_improves_is_metric_monitors_rule(values: list[float | None], mode: str) -> None:
    monitor = MetricMonitor("score", mode, 0.0, owner="test")
    for current in values:
        for reference in [None, *values]:
            if current is None or (reference is not None and math.isnan(reference)):
                continue
            assert retention.improves(current, reference, mode) == monitor.improved(  # type: ignore[arg-type]
                current, reference
            )


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=12), MODES)
def test_the_best_tag_ranking_and_lookup_agree_on_the_earliest_best(
    values: list[float | None], mode: str
) -> None:
    steps = _simulate(values, mode, k=None, patiences=[])
    for step, (result, _) in enumerate(steps, start=1):
        expected = _expected_best(values[:step], mode)
        tagged = [e["path"] for e in result.entries if "best" in e["tags"]]
        if expected is None:
            assert tagged == [] and result.marks.best_path is None
            assert retention.best_entry(result.entries, mode) is None  # type: ignore[arg-type]
            continue
        assert tagged == [f"c-{expected}.json"]
        assert result.marks.best_path == f"c-{expected}.json"
        best = retention.best_entry(result.entries, mode)  # type: ignore[arg-type]
        assert best is not None and best["path"] == f"c-{expected}.json"
        assert retention.ranked(result.entries, mode)[0]["path"] == f"c-{expected}.json"  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=14), MODES, st.integers(1, 4))
def test_keep_top_k_keeps_exactly_k_by_rank_plus_newest(
    values: list[float | None], mode: str, k: int
) -> None:
    steps = _simulate(values, mode, k=k, patiences=[])
    for step, (result, kept) in enumerate(steps, start=1):
        # The model: rank every save so far (finite values first, better first, earlier first
        # on a tie); the first k stay, and so does the newest.
        order = sorted(
            range(step),
            key=lambda i: (
                not _finite(values[i]),
                0.0 if not _finite(values[i]) else (-values[i] if mode == "max" else values[i]),  # type: ignore[operator]
                i,
            ),
        )
        expected = {f"c-{i}.json" for i in order[:k]} | {f"c-{step - 1}.json"}
        assert set(kept) == expected
        assert len(kept) == min(k, step) + (0 if step - 1 in order[:k] else 1)
        assert kept == sorted(kept, key=lambda p: int(p[2:-5]))  # manifest stays in save order
        assert sorted(result.owned) == sorted(kept)
        assert {e["path"] for e in result.doomed}.isdisjoint(kept)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(VALUES, min_size=1, max_size=14),
    MODES,
    st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True),
    st.one_of(st.none(), st.integers(1, 3)),
)
def test_tolerance_tags_sit_where_early_stopping_would_stop(
    values: list[float | None], mode: str, patiences: list[int], k: int | None
) -> None:
    result, kept = _simulate(values, mode, k=k, patiences=patiences)[-1]
    for patience in patiences:
        expected = _expected_tolerance(values, mode, patience)
        holders = [e["path"] for e in result.entries if f"tolerance_{patience}" in e["tags"]]
        assert holders == ([] if expected is None else [f"c-{expected}.json"])
        if expected is not None:
            assert f"c-{expected}.json" in kept  # a tagged file is never deleted


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(VALUES, st.sampled_from(["a.json", "b.json", "c.json"])), max_size=12),
    MODES,
    st.one_of(st.none(), st.integers(1, 2)),
)
def test_overwritten_paths_keep_one_entry_and_honest_tags(
    saves: list[tuple[float | None, str]], mode: str, k: int | None
) -> None:
    values = [value for value, _ in saves]
    paths = [path for _, path in saves]
    for result, kept in _simulate(values, mode, k=k, patiences=[1], paths=paths):
        assert len(kept) == len(set(kept))
        for entry in result.entries:
            if "best" in entry["tags"]:
                # A tag names the file's current content: its value is the best recorded.
                assert entry["value"] == result.marks.best
        tagged = {p for p in retention.tags_of(result.marks)}
        assert tagged <= set(kept)


def test_ranked_puts_valueless_entries_last_and_reads_other_monitors() -> None:
    entries = [
        {"path": "a", "monitor": "val_reward", "value": None, "metrics": {}},
        {"path": "b", "monitor": "val_reward", "value": 0.5, "metrics": {"val_loss": 0.3}},
        {"path": "c", "monitor": "val_loss", "value": 0.2, "metrics": {"val_reward": 0.5}},
        {"path": "d", "monitor": "val_reward", "value": True, "metrics": {}},
    ]
    assert [e["path"] for e in retention.ranked(entries, "max", "val_reward")] == [
        "b",
        "c",
        "a",
        "d",
    ]
    best = retention.best_entry(entries, "min", "val_loss")
    assert best is not None and best["path"] == "c"
    assert retention.best_entry(entries[:1], "max") is None
