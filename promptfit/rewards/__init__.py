"""Rewards: how good one prediction is, in [0, 1]."""

from promptfit.rewards.exact_match import ExactMatch
from promptfit.rewards.function_reward import FunctionReward, get_reward
from promptfit.rewards.lm_as_judge import JudgeVerdict, LMAsJudge
from promptfit.rewards.reward import Reward

__all__ = ["ExactMatch", "FunctionReward", "JudgeVerdict", "LMAsJudge", "Reward", "get_reward"]
