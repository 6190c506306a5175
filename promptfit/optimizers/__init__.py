"""Optimizers: searches over a program's trainable variables."""

from promptfit.optimizers.instruction_optimizer import InstructionOptimizer
from promptfit.optimizers.optimizer import Optimizer, PopulationOptimizer
from promptfit.optimizers.random_few_shot import RandomFewShot

__all__ = ["InstructionOptimizer", "Optimizer", "PopulationOptimizer", "RandomFewShot"]
