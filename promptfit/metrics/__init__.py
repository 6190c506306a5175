"""Metrics logged beside the reward."""

from promptfit.metrics.f1_score import F1Score
from promptfit.metrics.metric import Accuracy, MeanReward, Metric

__all__ = ["Accuracy", "F1Score", "MeanReward", "Metric"]
