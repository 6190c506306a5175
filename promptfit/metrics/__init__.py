"""Metrics logged beside the reward."""

from promptfit.metrics.accuracy import Accuracy
from promptfit.metrics.f1_score import F1Score
from promptfit.metrics.mean_reward import MeanReward
from promptfit.metrics.metric import Metric

__all__ = ["Accuracy", "F1Score", "MeanReward", "Metric"]
