"""Output-diverse demonstration sampling (promptfit.optimizers.demonstrations)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from promptfit.optimizers.demonstrations import add_demo, sample_diverse


def _pool(labels: list[str]) -> list[dict[str, object]]:
    return [
        {"inputs": {"text": f"t{i}"}, "outputs": {"label": lab}} for i, lab in enumerate(labels)
    ]


@given(
    labels=st.lists(st.sampled_from(["positive", "negative", "neutral"]), min_size=1, max_size=40),
    k=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_labels_are_as_balanced_as_the_pool_allows(labels: list[str], k: int, seed: int) -> None:
    chosen = sample_diverse(random.Random(seed), _pool(labels), k)
    assert len(chosen) == min(k, len(labels))
    assert len({d["inputs"]["text"] for d in chosen}) == len(chosen)  # no repeats
    counts = Counter(d["outputs"]["label"] for d in chosen)
    available = Counter(labels)
    # A label is short of the most frequent chosen one by more than one only when the
    # pool has no more of it.
    top = max(counts.values())
    for label, n in available.items():
        assert counts.get(label, 0) >= min(n, top - 1)


def test_a_skewed_pool_still_gives_a_balanced_set() -> None:
    pool = _pool(["negative"] * 30 + ["positive"] * 3)
    for seed in range(20):
        chosen = sample_diverse(random.Random(seed), pool, 4)
        assert Counter(d["outputs"]["label"] for d in chosen) == {"negative": 2, "positive": 2}


def test_distinct_outputs_reduce_to_uniform_sampling() -> None:
    pool = _pool([f"slot-{i}" for i in range(10)])
    seen = Counter()
    for seed in range(400):
        for demo in sample_diverse(random.Random(seed), pool, 3):
            seen[demo["inputs"]["text"]] += 1
    assert len(seen) == 10 and min(seen.values()) > 0.6 * max(seen.values())


def test_already_chosen_outputs_count_as_covered() -> None:
    pool = _pool(["negative"] * 5 + ["positive"] * 5)
    already = [{"inputs": {"text": "b0"}, "outputs": {"label": "negative"}}] * 2
    chosen = sample_diverse(random.Random(0), pool, 2, already=already)
    assert [d["outputs"]["label"] for d in chosen] == ["positive", "positive"]


def test_add_demo_deduplicates_by_inputs_and_keeps_the_newest() -> None:
    pool: list[dict[str, object]] = []
    for i in range(5):
        add_demo(pool, {"q": i}, {"a": i}, cap=3)
    add_demo(pool, {"q": 4}, {"a": "other"}, cap=3)
    assert [d["inputs"]["q"] for d in pool] == [2, 3, 4]
    assert pool[-1]["outputs"] == {"a": 4}
