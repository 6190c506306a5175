"""What one batch produced, and the one running reward/metric accumulator.

``fit`` (over an epoch's training batches), ``evaluate`` (over its batches, and fit's validation
pass) and the optimizers (over a candidate's scored batch) all turn per-example rewards into a
mean reward and metric values. They used to do it in three places with three sets of counters;
:class:`RewardAccumulator` is now the only one, so "the reward of a run" means the same thing
wherever it is logged, compared or backed up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptfit.metrics.metric import Metric
    from promptfit.training.traces import ModuleTrace

__all__ = ["BatchOutcome", "RewardAccumulator"]


@dataclass
class BatchOutcome:
    """Predictions, rewards and per-module traces of one batch."""

    x: list[Any]
    y: list[Any]
    predictions: list[Any]
    rewards: list[float]
    traces: list[list[ModuleTrace]] = field(default_factory=list)

    @property
    def mean_reward(self) -> float:
        """The batch's mean reward (0 for an empty batch), as :class:`RewardAccumulator` counts."""
        return RewardAccumulator.of(self).mean_reward

    @property
    def failed_predictions(self) -> int:
        """How many examples the program could not answer (``None``): usage counters cannot
        tell that, since a failed example may have made several failed LM calls or none."""
        return sum(p is None for p in self.predictions)


@dataclass
class RewardAccumulator:
    """Running sum of rewards and the states of the metrics over a sequence of batches.

    ``total``/``count`` are what a backup stores as ``reward_total``/``reward_count`` (see
    :class:`~promptfit.training.state.FitProgress`); the metric objects are the program's own,
    so their states are backed up with the program's metrics.

    Args:
        metrics: The compiled metrics, updated example by example (``None``: none).
    """

    metrics: list[Metric] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, outcome: BatchOutcome) -> RewardAccumulator:
        """An accumulator holding just ``outcome``'s rewards (no metrics)."""
        accumulator = cls()
        accumulator.add_rewards(outcome.rewards)
        return accumulator

    def reset(self) -> None:
        """Start over: zero rewards, and every metric's state reset."""
        self.total, self.count = 0.0, 0
        for metric in self.metrics:
            metric.reset_state()

    def add_rewards(self, rewards: Iterable[float]) -> None:
        """Count rewards without metrics (candidate scoring, where metrics are not logged)."""
        for reward in rewards:
            self.total += reward
            self.count += 1

    def add(self, outcome: BatchOutcome) -> None:
        """Count every example of a scored batch: its reward and every metric's update."""
        for yt, yp, r in zip(outcome.y, outcome.predictions, outcome.rewards, strict=True):
            for metric in self.metrics:
                metric.update_state(yt, yp, r)
        self.add_rewards(outcome.rewards)

    @property
    def mean_reward(self) -> float:
        """Mean reward of the examples counted so far (0 before the first one)."""
        return self.total / self.count if self.count else 0.0

    def results(self) -> dict[str, float]:
        """``{"reward": mean reward, <metric name>: value, ...}``: the reward part of logs."""
        logs: dict[str, float] = {"reward": self.mean_reward}
        for metric in self.metrics:
            logs[metric.name] = float(metric.result())
        return logs
