"""Demonstration pools shared by the few-shot optimizers: harvesting, labels, sampling.

Why sampling is *output-diverse*. Small models copy the label they see most often in the
prompt (and the last one): with a classification task, four demonstrations that happen to be
three "negative" and one "positive" push a 270M model to answer "negative" to everything
(Zhao et al., 2021, "Calibrate Before Use", call these the majority-label and recency biases).
Drawing demonstrations round-robin over the distinct outputs in the pool keeps the labels of a
set balanced whenever the pool allows it; for tasks whose outputs are all different (slot
extraction, arithmetic) the rule is plain uniform sampling, so nothing is lost there.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic

__all__ = ["add_demo", "demo_key", "label_demo", "sample_diverse"]


def demo_key(value: Any) -> str:
    """A canonical JSON key of a demonstration's inputs or outputs (for dedup and grouping)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def add_demo(pool: list[dict[str, Any]], inputs: dict[str, Any], outputs: Any, cap: int) -> None:
    """Append ``{"inputs", "outputs"}`` unless the same inputs are already there; keep ``cap``.

    The oldest demonstrations are dropped first, so a long fit keeps learning from its
    recent (and usually better) runs.
    """
    key = demo_key(inputs)
    if any(demo_key(d["inputs"]) == key for d in pool):
        return
    pool.append({"inputs": copy.deepcopy(inputs), "outputs": copy.deepcopy(outputs)})
    del pool[: max(0, len(pool) - cap)]


def label_demo(program: Any, module_name: str, x: Any, y: Any, inputs: dict[str, Any]) -> Any:
    """The label ``y`` as ``module_name``'s demonstration output, or ``None``.

    Only when the generator reads the program input ``x`` itself and its output data model
    accepts ``y``: then the labelled pair is a correct demonstration of that step even when
    the program got the example wrong.
    """
    module = program.get_module(module_name)
    output_model = getattr(module, "output_data_model", None)
    if output_model is None or not hasattr(x, "model_dump") or not isinstance(y, dict):
        return None
    if x.model_dump(mode="json") != inputs:
        return None
    try:
        return output_model.model_validate(y).model_dump(mode="json")
    except pydantic.ValidationError:
        return None


def sample_diverse(
    rng: random.Random,
    pool: Sequence[dict[str, Any]],
    k: int,
    already: Iterable[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Up to ``k`` demonstrations of ``pool``, spread over its distinct outputs.

    Outputs already covered by ``already`` (e.g. bootstrapped demonstrations that labelled
    ones top up) count as taken. Each pick takes a random demonstration of the least-covered
    output (ties broken at random) until ``k`` are chosen; the result is shuffled so no label
    sits in the last slot by construction. With all outputs
    distinct this is uniform sampling without replacement.
    """
    taken_inputs = {demo_key(d["inputs"]) for d in already}
    groups: dict[str, list[dict[str, Any]]] = {}
    for demo in pool:
        if demo_key(demo["inputs"]) not in taken_inputs:
            groups.setdefault(demo_key(demo["outputs"]), []).append(demo)
    covered: dict[str, int] = {}
    for demo in already:
        out = demo_key(demo["outputs"])
        covered[out] = covered.get(out, 0) + 1
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < k:
        open_groups = sorted(key for key, members in groups.items() if members)
        if not open_groups:
            break
        fewest = min(covered.get(key, 0) for key in open_groups)
        key = rng.choice([g for g in open_groups if covered.get(g, 0) == fewest])
        chosen.append(groups[key].pop())
        covered[key] = covered.get(key, 0) + 1
    rng.shuffle(chosen)
    return copy.deepcopy(chosen)
