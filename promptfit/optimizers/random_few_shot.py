"""``RandomFewShot``: search over few-shot example sets drawn from good training runs."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from promptfit.optimizers.demonstrations import add_demo, label_demo, sample_diverse
from promptfit.optimizers.optimizer import PopulationOptimizer
from promptfit.training.arguments import check_int, check_number

if TYPE_CHECKING:
    from promptfit.training.outcome import BatchOutcome

__all__ = ["RandomFewShot"]


class RandomFewShot(PopulationOptimizer):
    """Pick few-shot examples for every trainable generator from high-reward predictions.

    After each training batch, the generator inputs and outputs of every example whose reward
    reached ``min_reward`` join a pool of demonstrations (per generator, deduplicated). Example
    sets of ``k`` demonstrations are sampled as challengers, spread over the distinct outputs
    in the pool (balanced labels for a classifier: see
    :mod:`promptfit.optimizers.demonstrations`) (up to ``num_candidates`` racing at
    a time, scored concurrently); one replaces the current variables only when it wins its
    race (see :class:`~promptfit.optimizers.PopulationOptimizer`).

    Args:
        k: Examples per generator.
        min_reward: Lowest reward for a prediction to become a demonstration.
        num_candidates: Example sets tried per batch.
        population_size: Scored candidates kept.
        confidence: 1 - the chance that a challenger which is in truth no better replaces the
            current variables (see :class:`~promptfit.optimizers.PopulationOptimizer`).
        max_looks: Training batches a challenger may race before it is dropped.
        max_lm_calls: Most LM calls the whole fit may make (proposals and scoring
            included), or ``None``.
        max_pool: Demonstrations kept per generator (oldest dropped first).
        use_labels: Also use the labelled ``(x, y)`` pair of an example the program got
            wrong, for a generator that reads ``x`` and whose output model accepts ``y``
            (this breaks the cold start where no prediction is right yet).
        seed: RNG seed (defaults to the ``fit`` seed).

    Example:
        ```python
        import promptfit as pf

        optimizer = pf.optimizers.RandomFewShot(k=4, num_candidates=2)
        ```
    """

    def __init__(
        self,
        k: int = 4,
        min_reward: float = 1.0,
        num_candidates: int = 1,
        population_size: int = 10,
        max_pool: int = 256,
        use_labels: bool = True,
        confidence: float = 0.95,
        max_looks: int = 5,
        max_lm_calls: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            num_candidates=num_candidates,
            population_size=population_size,
            confidence=confidence,
            max_looks=max_looks,
            max_lm_calls=max_lm_calls,
            seed=seed,
        )
        check_int("k", k, minimum=1)
        check_number("min_reward", min_reward, minimum=0.0)
        check_int("max_pool", max_pool, minimum=1)
        self.k = k
        self.min_reward = min_reward
        self.max_pool = max_pool
        self.use_labels = use_labels
        self.pool: dict[str, list[dict[str, Any]]] = {}

    def _add(self, module: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        add_demo(self.pool.setdefault(module, []), inputs, outputs, self.max_pool)

    def observe(self, outcome: BatchOutcome) -> None:
        for x, y, traces, reward in zip(
            outcome.x, outcome.y, outcome.traces, outcome.rewards, strict=False
        ):
            for trace in traces:
                if reward >= self.min_reward and trace.outputs is not None:
                    self._add(trace.module, trace.inputs, trace.outputs)
                elif self.use_labels:
                    label = label_demo(self.program, trace.module, x, y, trace.inputs)
                    if label is not None:
                        self._add(trace.module, trace.inputs, label)

    async def propose(self, parent: dict[str, Any], outcome: BatchOutcome) -> dict[str, Any] | None:
        candidate = copy.deepcopy(parent)
        changed = False
        for path, value in candidate.items():
            module = path.split("/", 1)[0]
            pool = self.pool.get(module)
            if not pool or "examples" not in value:
                continue
            value["examples"] = sample_diverse(self.rng, pool, self.k)
            changed = True
        return candidate if changed else None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pool": copy.deepcopy(self.pool)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pool = copy.deepcopy(state["pool"])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "k": self.k,
            "min_reward": self.min_reward,
            "max_pool": self.max_pool,
            "use_labels": self.use_labels,
        }
